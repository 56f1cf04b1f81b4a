"""The on-disk snapshot store: round trips, deduplication, corruption, crashes and concurrent writers.

The store's contract (docs/snapshot-format.md) is that a snapshot either loads exactly as written
or raises a one-line SnapshotError naming the file, and that no crash can damage an earlier
snapshot. The corruption test mutates files at random (1,000 mutations, seeded), the crash test
SIGKILLs real writer processes, and a hypothesis test feeds structurally mutated (but correctly
hashed) manifests to the reader to exercise validation past the checksum.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from blake3 import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.snapshot_synth import make_memory, make_snapshot, writer_snapshot
from wasmig.snapshot.inspect import diff, format_summary, summarize
from wasmig.snapshot.packs import PackStore, PackWriter, read_index
from wasmig.snapshot.state import FORMAT_VERSION, NEWEST_FORMAT_VERSION, PAGE_SIZE, MemoryState, Snapshot, SnapshotError
from wasmig.snapshot.store import (
    HEADER_SIZE,
    MAGIC,
    CheckpointDir,
    load_snapshot,
    write_single_file,
)
from wasmig.snapshot.store_stats import checkpoint_chain, storage_stats

ROOT = Path(__file__).resolve().parent.parent


def page_files(store: CheckpointDir) -> list[Path]:
    """The page store's files under their final names: packs (and layout-1 page files)."""
    return sorted(p for p in store.pages_dir.rglob("*") if p.is_file() and not p.name.startswith("."))


def stored_pages(store: CheckpointDir) -> list[str]:
    """Every stored copy of a page, by hash (a page stored twice, by two writers, counts twice)."""
    found = PackStore(store.pages_dir)
    found.refresh()
    assert not found.damaged, found.damaged
    return sorted([h for entries in found.packs.values() for h, _, _ in entries] +
                  [e.name for e in found.legacy_files()])


def read_index_of(pack: bytes) -> list[tuple[str, int, int]]:
    """:func:`read_index` of a pack's bytes."""
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(pack)
        f.flush()
        return read_index(Path(f.name))


def assert_pages_intact(store: CheckpointDir) -> None:
    """Every page under a final name is complete: each pack's index verifies and each of its pages
    decompresses to the hash it is filed under."""
    dctx = zstandard.ZstdDecompressor()
    for p in page_files(store):
        for h, off, n in read_index(p):
            with open(p, "rb") as f:
                f.seek(off)
                assert blake3(dctx.decompress(f.read(n))).hexdigest() == h


def rehash(path: Path, manifest: Any, version: int = FORMAT_VERSION) -> None:
    """Write ``manifest`` as a *well-formed* container (right length and hash): only validation can object."""
    body = msgpack.packb(manifest, use_bin_type=True)
    head = MAGIC + struct.pack("<II", version, len(body))
    path.write_bytes(head + body + blake3(head + body).digest())


def read_manifest(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<I", raw, len(MAGIC) + 4)
    return msgpack.unpackb(raw[HEADER_SIZE:HEADER_SIZE + length])


def assert_clean_error(err: SnapshotError, path: Path) -> None:
    msg = str(err)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    assert "internal error" not in msg, f"a failure slipped past the specific handlers: {msg}"


# --- round trips -------------------------------------------------------------------------------------
def test_round_trip_checkpoint_dir(tmp_path: Path) -> None:
    snap = make_snapshot(1, pages=24, memories=2)
    store = CheckpointDir(tmp_path / "ck")
    assert store.snapshots() == [] and store.latest() is None
    assert not (tmp_path / "ck").exists()  # nothing is created until the first write
    path = store.write(snap)
    assert path == tmp_path / "ck" / "snapshots" / "000001.snap"
    assert load_snapshot(path) == snap
    assert load_snapshot(tmp_path / "ck") == snap  # a directory means its latest snapshot
    assert store.load() == snap and store.load(1) == snap and store.load(path) == snap
    snap2 = make_snapshot(2, pages=24)
    path2 = store.write(snap2)
    assert store.snapshots() == [path, path2] and store.latest() == path2
    assert load_snapshot(tmp_path / "ck") == snap2 and load_snapshot(path) == snap


def test_prepare_makes_the_directories_a_first_write_needs(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A run prepares its store once under way: the first write then makes no directory (no
    directory fsync in its pause), and a directory that cannot be made is one SnapshotError."""
    store = CheckpointDir(tmp_path / "ck")
    store.prepare()
    assert all((tmp_path / "ck" / d).is_dir() for d in ("pages", "snapshots"))
    store.prepare()  # again: nothing to do
    made: list[str] = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: (made.append(str(p)), real_mkdir(p, *a, **k))[1])
    snap = make_snapshot(3, pages=4)
    assert load_snapshot(store.write(snap)) == snap and made == []
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SnapshotError, match="cannot write snapshot"):
        CheckpointDir(tmp_path / "file" / "ck").prepare()


def test_round_trip_single_file(tmp_path: Path) -> None:
    snap = make_snapshot(3, pages=24, memories=2)
    stats = write_single_file(snap, tmp_path / "out" / "x.snap")
    assert load_snapshot(tmp_path / "out" / "x.snap") == snap
    assert stats.pages_total == 26 and stats.pages_zero + stats.pages_new == 26
    assert stats.snapshot_bytes == (tmp_path / "out" / "x.snap").stat().st_size
    # Self-contained: it loads from anywhere, with no page store next to it.
    moved = tmp_path / "elsewhere.snap"
    shutil.copy(tmp_path / "out" / "x.snap", moved)
    assert load_snapshot(moved) == snap
    assert storage_stats(moved)["layout"] == "single-file"


def test_empty_and_zero_memories(tmp_path: Path) -> None:
    snap = make_snapshot(4)
    snap.memories = [MemoryState(0, 0, b""), MemoryState(3, None, bytes(3 * PAGE_SIZE))]
    store = CheckpointDir(tmp_path)
    assert load_snapshot(store.write(snap)) == snap
    assert stored_pages(store) == []
    assert store.last_stats is not None and store.last_stats.pages_zero == 3
    write_single_file(snap, tmp_path / "s.snap")
    assert load_snapshot(tmp_path / "s.snap") == snap


def test_invalid_snapshot_is_refused_before_writing(tmp_path: Path) -> None:
    snap = make_snapshot(5)
    snap.steps = -1
    with pytest.raises(SnapshotError, match="refusing to write an invalid snapshot"):
        CheckpointDir(tmp_path / "ck").write(snap)
    assert not (tmp_path / "ck" / "pages").exists() or stored_pages(CheckpointDir(tmp_path / "ck")) == []
    snap = make_snapshot(5)
    snap.memories[0].data += b"x"
    with pytest.raises(SnapshotError, match="not a whole number of pages"):
        write_single_file(snap, tmp_path / "s.snap")


# --- deduplication and statistics --------------------------------------------------------------------
def test_dedup_within_and_across_snapshots(tmp_path: Path) -> None:
    rng = random.Random(7)
    unique = [rng.randbytes(PAGE_SIZE) for _ in range(150)]
    layout = unique + [bytes(PAGE_SIZE)] * 50 + [unique[i] for i in range(0, 100, 2)] + unique[:6]
    rng.shuffle(layout)  # 256 pages: 150 distinct, 50 zero, 56 repeats
    snap = make_snapshot(8)
    snap.memories = [MemoryState(1, None, b"".join(layout))]
    store = CheckpointDir(tmp_path)
    first = store.write(snap)
    s = store.last_stats
    assert s is not None
    assert (s.pages_total, s.pages_zero, s.pages_new, s.pages_deduplicated) == (256, 50, 150, 56)
    assert len(stored_pages(store)) == 150
    assert s.bytes_written == s.page_bytes_written + s.snapshot_bytes == (
        sum(p.stat().st_size for p in page_files(store)) + first.stat().st_size)

    # 1% of the pages change: only those are written.
    data = bytearray(snap.memories[0].data)
    changed = [p for p in rng.sample(range(256), 40) if data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] != bytes(PAGE_SIZE)][:3]
    for p in changed:
        data[p * PAGE_SIZE] ^= 0xFF
    snap.memories[0].data = bytes(data)
    second = CheckpointDir(tmp_path).write(snap)  # a fresh instance (another process) dedups just as well
    s2 = CheckpointDir(tmp_path).last_stats
    assert s2 is None  # statistics belong to the instance that wrote
    loaded = load_snapshot(second)
    assert loaded == snap and load_snapshot(first) != snap
    assert len(stored_pages(store)) == 153
    info = storage_stats(second)
    assert storage_stats(tmp_path) == info  # a directory means its latest snapshot
    assert info["layout"] == "checkpoint-dir"
    assert (info["pages_total"], info["pages_zero"]) == (256, 50)
    assert info["pages_shared_with_previous"] == info["pages_distinct"] - 3

    again = CheckpointDir(tmp_path)
    again.write(snap)
    assert again.last_stats is not None
    assert (again.last_stats.pages_new, again.last_stats.pages_deduplicated) == (0, 206)


def test_one_percent_incremental(tmp_path: Path) -> None:
    rng = random.Random(9)
    snap = make_snapshot(9)
    snap.memories = [MemoryState(1, None, rng.randbytes(400 * PAGE_SIZE))]
    store = CheckpointDir(tmp_path)
    store.write(snap)
    data = bytearray(snap.memories[0].data)
    for p in rng.sample(range(400), 4):
        data[p * PAGE_SIZE + 100] ^= 1
    snap.memories[0].data = bytes(data)
    store.write(snap)
    assert store.last_stats is not None
    assert (store.last_stats.pages_new, store.last_stats.pages_deduplicated) == (4, 396)
    assert store.last_stats.page_bytes_written < 5 * PAGE_SIZE


def _three_snapshots(tmp_path: Path) -> tuple[CheckpointDir, list[Path], list[Snapshot]]:
    """Three snapshots of one directory, each changing 4 of 64 random pages."""
    rng = random.Random(21)
    store = CheckpointDir(tmp_path)
    data = bytearray(rng.randbytes(64 * PAGE_SIZE))
    paths, snaps = [], []
    for k in range(3):
        if k:
            for p in rng.sample(range(64), 4):
                data[p * PAGE_SIZE] ^= 0xFF
        snap = make_snapshot(30 + k)
        snap.memories = [MemoryState(1, None, bytes(data))]
        paths.append(store.write(snap))
        snaps.append(snap)
    return store, paths, snaps


def test_deleting_an_older_snapshot_never_breaks_a_newer_and_gc_frees_its_pages(tmp_path: Path) -> None:
    store, paths, snaps = _three_snapshots(tmp_path)
    assert len(stored_pages(store)) == 64 + 4 + 4
    chain = checkpoint_chain(tmp_path)
    assert chain is not None and [c["snapshot"] for c in chain] == [p.name for p in paths]
    assert [c["pages_new"] for c in chain] == [64, 4, 4] and [c["this"] for c in chain] == [False, False, True]
    assert chain[1]["new_bytes"] < chain[0]["new_bytes"] / 10
    assert checkpoint_chain(paths[1]) is not None and checkpoint_chain(paths[1])[1]["this"]  # type: ignore[index]

    assert store.gc() == {"snapshots": 3, "pages_kept": 72, "pages_removed": 0, "bytes_removed": 0,
                          "temp_files_removed": 0}
    paths[0].unlink()
    assert load_snapshot(paths[1]) == snaps[1] and load_snapshot(paths[2]) == snaps[2]
    dry = store.gc(dry_run=True)
    assert (dry["pages_removed"], dry["pages_kept"]) == (4, 68) and len(stored_pages(store)) == 72
    done = CheckpointDir(tmp_path).gc()
    assert (done["pages_removed"], done["pages_kept"]) == (4, 68) and done["bytes_removed"] > 4 * PAGE_SIZE
    assert len(stored_pages(store)) == 68
    assert load_snapshot(paths[1]) == snaps[1] and load_snapshot(paths[2]) == snaps[2]
    chain = checkpoint_chain(paths[2])
    assert chain is not None and [c["pages_new"] for c in chain] == [64, 4]


def test_gc_refuses_while_a_snapshot_is_unreadable(tmp_path: Path) -> None:
    """A damaged snapshot's pages may be all that is left of it: gc deletes nothing then."""
    store, paths, _ = _three_snapshots(tmp_path)
    paths[0].unlink()
    raw = bytearray(paths[1].read_bytes())
    raw[HEADER_SIZE + 5] ^= 0xFF
    paths[1].write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match=paths[1].name):
        store.gc()
    assert len(stored_pages(store)) == 72


def test_gc_waits_for_a_snapshot_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer's new pages are unreferenced until its snapshot file is installed; a gc started
    in between waits for it (the directory's lock) instead of deleting them."""
    import threading

    store, paths, snaps = _three_snapshots(tmp_path)
    paths[0].unlink()
    pages_written = threading.Event()
    original = CheckpointDir._install

    def slow_install(self: CheckpointDir, chunks: list[bytes]) -> Path:
        pages_written.set()
        time.sleep(0.5)
        return original(self, chunks)

    monkeypatch.setattr(CheckpointDir, "_install", slow_install)
    snap = make_snapshot(40)
    snap.memories = [MemoryState(1, None, random.Random(5).randbytes(8 * PAGE_SIZE))]
    writer = threading.Thread(target=lambda: store.write(snap))
    writer.start()
    assert pages_written.wait(10)
    stats = CheckpointDir(tmp_path).gc()  # blocks until the writer is done
    writer.join()
    assert stats["snapshots"] == 3 and stats["pages_removed"] == 4
    assert load_snapshot(CheckpointDir(tmp_path).latest()) == snap  # type: ignore[arg-type]


def test_gc_and_chain_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wasmig.cli import main

    def invoke(*args: str) -> tuple[int, str]:
        """(exit code, stdout and stderr) of ``wasmig ARGS`` run in this process."""
        with pytest.raises(SystemExit) as e:
            main(list(args))
        out, err = capsys.readouterr()
        return e.value.code, out + err

    _, paths, _ = _three_snapshots(tmp_path / "ck")
    code, output = invoke("inspect", str(tmp_path / "ck"))
    assert code == 0, output
    assert "checkpoint directory (3 snapshots" in output and "* 000003.snap" in output
    assert "4 new" in output
    paths[0].unlink()
    code, output = invoke("gc", str(tmp_path / "ck"))
    assert code == 0 and "removed 4 unreferenced pages" in output, output
    code, output = invoke("gc", str(tmp_path))
    assert code == 1 and "not a checkpoint directory" in output


# --- errors ------------------------------------------------------------------------------------------
def test_newer_version_is_refused(tmp_path: Path) -> None:
    store = CheckpointDir(tmp_path)
    path = store.write(make_snapshot(10))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, len(MAGIC), NEWEST_FORMAT_VERSION + 1)
    path.write_bytes(raw)  # the hash no longer matches either: the version is checked first
    with pytest.raises(SnapshotError) as e:
        load_snapshot(path)
    newer = NEWEST_FORMAT_VERSION + 1
    assert f"newer format version {newer}, this wasmig reads {NEWEST_FORMAT_VERSION}" in str(e.value)
    assert_clean_error(e.value, path)


def test_missing_and_non_snapshots(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = [
        (tmp_path / "nope.snap", "No such file"),
        (tmp_path, "not a checkpoint directory"),
    ]
    (tmp_path / "empty" / "snapshots").mkdir(parents=True)
    cases.append((tmp_path / "empty", "has no snapshots"))
    (tmp_path / "text.snap").write_text("hello")
    cases.append((tmp_path / "text.snap", "bad magic"))
    (tmp_path / "zero.snap").write_bytes(b"")
    cases.append((tmp_path / "zero.snap", "bad magic"))
    (tmp_path / "short.snap").write_bytes(MAGIC[:4])
    cases.append((tmp_path / "short.snap", "truncated"))
    for path, text in cases:
        with pytest.raises(SnapshotError, match=text) as e:
            load_snapshot(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(SnapshotError, match="has no snapshots"):
        CheckpointDir(tmp_path / "empty").load()


def test_snapshot_without_its_page_store(tmp_path: Path) -> None:
    path = CheckpointDir(tmp_path / "ck").write(make_snapshot(11))
    alone = tmp_path / "alone.snap"
    shutil.copy(path, alone)
    with pytest.raises(SnapshotError, match="references a page store") as e:
        load_snapshot(alone)
    assert_clean_error(e.value, alone)


def test_hostile_page_entries(tmp_path: Path) -> None:
    """A correctly hashed manifest may still name paths outside the store or decompression bombs."""
    store = CheckpointDir(tmp_path / "ck")
    path = store.write(make_snapshot(12))
    manifest = read_manifest(path)
    secret = tmp_path / "ck" / "pages" / "secret"
    secret.write_bytes(b"x")
    for entry, text in [("../secret", "invalid hash"), ("A" * 64, "invalid hash"), (12, "neither"),
                        ("0" * 64, "missing from the page store")]:
        evil = json.loads(json.dumps(manifest, default=lambda b: None))
        evil["memories"][0]["data"][0] = entry
        rehash(path, evil)
        with pytest.raises(SnapshotError, match=text) as e:
            load_snapshot(path)
        assert_clean_error(e.value, path)
    # Bombs: a frame claiming a huge content size, and one with no size that inflates past a page.
    cases = [zstandard.ZstdCompressor(level=1).compress(bytes(64 << 20)),
             zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(64 << 20)),
             zstandard.ZstdCompressor(level=1).compress(bytes(PAGE_SIZE - 1))]
    single = tmp_path / "single.snap"
    write_single_file(make_snapshot(12), single)
    single_manifest = read_manifest(single)
    for bomb in cases:
        for target in (single_manifest,):
            victim = next(i for i, e in enumerate(target["memories"][0]["data"]) if e is not None)
            target["memories"][0]["data"][victim] = bomb
            rehash(single, target)
            with pytest.raises(SnapshotError, match="decompresses to|not a valid compressed") as e:
                load_snapshot(single)
            assert_clean_error(e.value, single)
        [victim_file] = [p for p in page_files(store) if p.suffix == ".pack"]
        saved = victim_file.read_bytes()
        victim_file.unlink()
        bombed = PackWriter(store.pages_dir)  # a well-formed pack whose first page is the bomb
        for k, (h, off, n) in enumerate(read_index_of(saved)):
            bombed.append(h, bomb if k == 0 else saved[off:off + n])
        bombed.commit()
        rehash(path, manifest)
        with pytest.raises(SnapshotError, match="decompresses to|not a valid compressed") as e:
            load_snapshot(path)
        assert_clean_error(e.value, path)
        bombed.final.unlink()
        victim_file.write_bytes(saved)
    assert load_snapshot(path) == make_snapshot(12)


def _mutate_file(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "flip", "overwrite", "truncate", "append", "header"])
    if kind == "flip":
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        i = rng.randrange(len(data))
        data[i:i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    elif kind == "append":
        data += rng.randbytes(rng.randint(1, 100))
    else:  # aim at the header, where the magic, version and length live
        i = rng.randrange(min(HEADER_SIZE + 2, len(data)))
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    return kind


def test_random_corruption_never_loads_wrong_state(tmp_path: Path) -> None:
    store = CheckpointDir(tmp_path / "ck")
    snap_a = make_snapshot(20, pages=12)
    snap_b = make_snapshot(20, pages=12)
    snap_b.memories[0].data = snap_b.memories[0].data[:-PAGE_SIZE] + random.Random(5).randbytes(PAGE_SIZE)
    snap_b.steps += 1
    path_a, path_b = store.write(snap_a), store.write(snap_b)
    single = tmp_path / "single.snap"
    write_single_file(snap_a, single)
    pages = page_files(store)
    expected = {path_a: snap_a, path_b: snap_b, single: snap_a}
    rng = random.Random(20240)
    outcomes = {"error": 0, "same": 0}
    for _ in range(1000):
        target = rng.choice([path_a, path_b, single, "page", "page"])
        if target == "page":
            victim = rng.choice(pages)
            saved = victim.read_bytes()
            action = rng.choice(["delete", "swap", "mutate", "mutate"])
            if action == "delete":
                victim.unlink()
            elif action == "swap":
                victim.write_bytes(rng.choice(pages).read_bytes() if len(pages) > 1 else b"")
            else:
                _mutate_file(rng, victim)
            to_load = [path_a, path_b]
        else:
            victim = target
            saved = victim.read_bytes()
            _mutate_file(rng, victim)
            to_load = [target]
        try:
            for p in to_load:
                try:
                    loaded = load_snapshot(p)
                except SnapshotError as e:
                    assert_clean_error(e, p)
                    outcomes["error"] += 1
                else:
                    assert loaded == expected[p], f"a corrupted {victim.name} loaded as a different state"
                    outcomes["same"] += 1
        finally:
            victim.write_bytes(saved)
    assert outcomes["error"] > 700, outcomes  # the test really did corrupt things
    for p, s in expected.items():
        assert load_snapshot(p) == s


def _node_paths(x: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _node_paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += _node_paths(v, (*prefix, i))
    return out


_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=True) | st.text(max_size=70) | st.binary(max_size=70),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_fuzz_with_valid_checksum(tmp_path: Path, data: st.DataObject) -> None:
    """Past the checksum, a malformed manifest is still a SnapshotError (from validation), never a crash."""
    store = CheckpointDir(tmp_path / "ck")  # tmp_path is shared by all examples: write the base once
    base = store.snapshots_dir / "000001.snap"
    if not base.exists():
        assert store.write(make_snapshot(30, pages=6)) == base
    manifest = read_manifest(base)
    target = tmp_path / "ck" / "snapshots" / "999999.snap"
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _node_paths(manifest)
        where = data.draw(st.sampled_from(paths))
        value = data.draw(_PLAIN)
        if not where:
            manifest = value
            continue
        node = manifest
        for k in where[:-1]:
            node = node[k]
        if data.draw(st.booleans()) and isinstance(node, dict):
            node.pop(where[-1], None)
        else:
            node[where[-1]] = value
    rehash(target, manifest)
    try:
        loaded = load_snapshot(target)
    except SnapshotError as e:
        assert_clean_error(e, target)
    else:
        assert isinstance(loaded, Snapshot)
    try:
        assert isinstance(storage_stats(target), dict)
    except SnapshotError as e:
        assert_clean_error(e, target)


# --- crashes and concurrency ---------------------------------------------------------------------------
def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.snapshot_synth", *args], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def test_kill_9_during_writes(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    single = tmp_path / "single.snap"
    original = make_snapshot(40, pages=16)
    first = CheckpointDir(ck).write(original)
    write_single_file(original, single)
    pages_before = len(stored_pages(CheckpointDir(ck)))
    rng = random.Random(41)
    for round_ in range(20):
        child = _child("write-loop", str(ck), str(single), str(100 + round_), "192")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.45))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
    store = CheckpointDir(ck)
    snaps = store.snapshots()
    assert snaps[0] == first
    assert len(stored_pages(store)) > pages_before, "the children were killed before writing anything"
    assert load_snapshot(first) == original
    for p in snaps:
        load_snapshot(p)  # complete, every page present and intact
    loaded_single = load_snapshot(single)  # the old file or a complete new one, never a mixture
    assert loaded_single == original or loaded_single.meta.get("seed", -1) >= 100
    # Every page under its final name is complete (killed writers only leave *.tmp files behind).
    assert_pages_intact(store)
    assert all(n.endswith(".snap") for n in os.listdir(store.snapshots_dir) if not n.startswith("."))
    assert store.remove_stale_temp_files(older_than_s=0) >= 0
    assert all(not n.startswith(".") for n in os.listdir(store.snapshots_dir))


class _Crash(BaseException):
    """Stands in for the process dying at a given system call (BaseException: nothing catches it)."""


def _failing_at(real: Any, name: str, k: int, seen: list[int]) -> Any:
    """``real``, except that the k-th call (0-based, counted in ``seen`` across all patched calls) crashes."""
    def call(*args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] == k + 1:
            raise _Crash(name)
        return real(*args, **kwargs)
    return call


def test_crash_at_every_durability_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the k-th fsync/rename/link of a write, for every k: the earlier snapshot and the store stay valid.

    Complements the SIGKILL test, whose random moments rarely hit the short install step: here
    every step is hit once, and a snapshot file must never appear before all its pages are durable.
    """
    ck = tmp_path / "ck"
    original = make_snapshot(70, pages=6)
    first = CheckpointDir(ck).write(original)
    newer = make_snapshot(71, pages=6)
    calls: list[str] = []
    real = {name: getattr(os, name) for name in ("fsync", "replace", "link")}

    def counting(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real[name](*args, **kwargs)
        return call

    with monkeypatch.context() as m:
        for name in real:
            m.setattr(os, name, counting(name))
        CheckpointDir(ck).write(newer)
    steps, installed_at = len(calls), calls.index("link")
    # pack fsync + rename, pages/ fsync, snapshot fsync, link, snapshots/ fsync (layout 1 had one
    # fsync and rename per page, and a directory fsync per hash prefix)
    assert steps >= 6 and calls[installed_at - 1] == "fsync"
    for k in range(steps):
        shutil.rmtree(ck)
        assert CheckpointDir(ck).write(original) == first
        seen = [0]
        with monkeypatch.context() as m:
            for name in real:
                m.setattr(os, name, _failing_at(real[name], name, k, seen))
            with pytest.raises(_Crash):
                CheckpointDir(ck).write(newer)
        snaps = CheckpointDir(ck).snapshots()
        assert snaps[0] == first and load_snapshot(first) == original
        if k <= installed_at:  # crashed before (or at) the link that publishes it: not there
            assert len(snaps) == 1
        else:  # crashed after: it is there, complete
            assert len(snaps) == 2 and load_snapshot(snaps[1]) == newer
        assert_pages_intact(CheckpointDir(ck))


def test_concurrent_writers(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    n, pages = 6, 48
    children = [_child("write-n", str(ck), str(w), str(n), str(pages)) for w in range(2)]
    for c in children:
        assert c.stdout is not None and c.stdout.readline().strip() == "ready"
    for c in children:
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
    for c in children:
        assert c.wait(timeout=60) == 0
    snaps = CheckpointDir(ck).snapshots()
    assert [p.name for p in snaps] == [f"{i:06d}.snap" for i in range(1, 2 * n + 1)]
    seen = set()
    for p in snaps:
        s = load_snapshot(p)
        key = (s.meta["writer"], s.meta["i"])
        assert s == writer_snapshot(*key, pages)
        seen.add(key)
    assert seen == {(w, i) for w in range(2) for i in range(n)}


# --- inspect -------------------------------------------------------------------------------------------
class _FakeIR:
    def func_name(self, i: int) -> str:
        return f"fn{i}"


def test_summarize_and_format(tmp_path: Path) -> None:
    snap = make_snapshot(50, pages=8)
    store = CheckpointDir(tmp_path)
    path = store.write(snap)
    summary = summarize(snap, _FakeIR(), store.last_stats)
    json.dumps(summary)  # JSON-able
    assert summary["call_stack"][0]["func"] == snap.frames[-1].func  # innermost first
    assert summary["call_stack"][0]["name"] == f"fn{snap.frames[-1].func}"
    assert summary["stable"] is True and summary["point"] == "loop"
    assert summary["pages"]["pages_total"] == 8
    assert summary["memories"][0]["size_pages"] == 8
    assert [fd["path"] for fd in summary["wasi"]["fds"]][:3] == ["<stdin>", "<stdout>", "/data"]
    text = format_summary(summary)
    assert "call stack (3 frames, innermost first)" in text
    assert "f32 nan:0x7fc00001" in text and "i64 -1" in text
    assert "/data/x offset" in text
    text2 = format_summary(summarize(snap, None, storage_stats(path)))
    assert "pages distinct" in text2


def test_diff() -> None:
    a = make_snapshot(60, pages=8)
    b = make_snapshot(60, pages=8)
    assert diff(a, b) == []
    b.steps += 5
    b.frames[-1].pc = 0x40
    b.frames[-1].stack.append(("i32", 1))
    data = bytearray(b.memories[0].data)
    for p in (1, 2, 3, 6):
        data[p * PAGE_SIZE + 7] ^= 1
    b.memories[0].data = bytes(data)
    b.globals[0].value = ("i32", 43)
    b.tables[0].elements[0] = 3
    b.wasi.fds[3].offset += 10  # type: ignore[union-attr]
    b.wasi.fds.pop()  # type: ignore[union-attr]
    b.wasi.env["NEW"] = "1"  # type: ignore[union-attr]
    lines = diff(a, b)
    text = "\n".join(lines)
    assert f"steps: {a.steps} -> {a.steps + 5} (+5)" in text
    assert "pc 0x5 -> 0x40" in text
    assert "memory 0: 4 of 8 pages changed: 1-3, 6" in text
    assert "global 0: i32 42 -> i32 43" in text
    assert "table 0: 1 elements changed: 0" in text
    assert "fd 4 (/data/x): offset" in text
    assert "fd 5: closed" in text
    assert "env NEW: added" in text


def test_make_memory_is_deterministic() -> None:
    assert make_memory(random.Random(1), 4) == make_memory(random.Random(1), 4)
