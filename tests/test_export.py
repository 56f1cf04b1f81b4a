"""``wasmig export`` / ``import`` and restoring a single-file export (``.wsnap``).

Real programs from ``tests/programs`` are checkpointed part-way through the command line, exported,
and restored from the one file (the checkpoint directory gone) on the interpreter and on
wasmtime: the checkpointed run's output followed by the restored run's equals the uninterrupted
run's. An incremental snapshot's export carries its full memory; import goes into a new and an
existing directory (deduplicating pages). A .wsnap is untrusted: every truncation, every flipped
byte of its header and index and a sample elsewhere, and crafted files with valid checksums
(index and snapshot disagreeing, claimed sizes of terabytes, a page that is not what its hash
says, a newer version) must each be one clean error, never a traceback or a half-written file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard

from tests.wasi_harness import REPO, program
from wasmig import toolchain
from wasmig.hashing import blake3
from wasmig.snapshot import packs, wsnap
from wasmig.snapshot.signing import SEAL_SIZE
from wasmig.snapshot.state import SnapshotError
from wasmig.snapshot.store import (
    CheckpointDir,
    _encode,
    _read_container,
    load_snapshot,
    write_single_file,
)
from wasmig.snapshot.store_stats import storage_stats

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV),
    reason="ziglang is not installed (pip install ziglang)",
)
HAS_WASMTIME = importlib.util.find_spec("wasmtime") is not None
TIMEOUT = 120
#: migrate_work 10 rounds over a 64 KiB heap, no sleeping: prints a line per round; steps 5000 and
#: 8000 fall in its rounds (about 3 and 6 lines printed), each round changes a page or two
WORK_ARGS = ("10", "64", "0")


def wasmig(args: Sequence[str | Path], *, cwd: Path, runtime: Path) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               WASMIG_RUNTIME_DIR=str(runtime))
    return subprocess.run([sys.executable, "-m", "wasmig", *map(str, args)], capture_output=True, cwd=cwd, env=env,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def ok(r: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert r.returncode == 0, r.stderr.decode()
    return r


def one_error(r: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """The run failed with exit 1 and exactly one ``wasmig: error:`` line (and no traceback)."""
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    assert err.startswith("wasmig: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


class Work:
    """migrate_work checkpointed at ``steps`` (each a snapshot of one checkpoint directory ``ck``)."""

    def __init__(self, tmp: Path, steps: Sequence[int] = (5000,)) -> None:
        self.tmp = tmp
        self.runtime = tmp / "run"
        self.runtime.mkdir()
        # a private copy of the module, so the tests can take it away from the recorded path
        self.wasm = tmp / "work.wasm"
        shutil.copyfile(program("migrate_work"), self.wasm)
        self.full = ok(self.run("run", "--engine", "interp", self.wasm, *WORK_ARGS)).stdout
        self.ck = tmp / "ck"
        out = b""
        for i, step in enumerate(steps):
            opts = ["--engine", "interp", "--checkpoint-dir", self.ck, "--checkpoint-at-step", step,
                    "--checkpoint-then", "exit"]
            r = ok(self.run(*(["run", *opts, self.wasm, *WORK_ARGS] if i == 0 else ["restore", *opts, self.ck])))
            assert b"checkpoint written" in r.stderr
            out += r.stdout
        self.before = out  # what the checkpointed runs printed
        assert 0 < len(out) < len(self.full)

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return wasmig(args, cwd=self.tmp, runtime=self.runtime)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    """One checkpointed run and its export, shared by the read-only tests below."""
    w = Work(tmp_path_factory.mktemp("work"))
    ok(w.run("export", "ck", "-o", "prog.wsnap"))
    return w


# --- round trips ------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["interp", pytest.param("wasmtime", marks=pytest.mark.skipif(
    not HAS_WASMTIME, reason="wasmtime is not installed"))])
def test_restore_from_the_file_alone(work: Work, tmp_path: Path, engine: str) -> None:
    """The .wsnap moved to a directory of its own (no checkpoint directory, no module beside it, the
    recorded module path gone) restores on either engine and the run ends as the uninterrupted one."""
    there = tmp_path / "elsewhere"
    there.mkdir()
    shutil.copyfile(work.tmp / "prog.wsnap", there / "prog.wsnap")
    hidden = work.wasm.with_suffix(".away")
    work.wasm.rename(hidden)
    try:
        r = ok(wasmig(["restore", "--engine", engine, "prog.wsnap"], cwd=there, runtime=work.runtime))
    finally:
        hidden.rename(work.wasm)
    assert work.before + r.stdout == work.full
    assert sorted(p.name for p in there.iterdir()) == ["prog.wsnap"]  # nothing written beside it


def test_inspect_and_checkpoint_options(work: Work, tmp_path: Path) -> None:
    """``inspect`` reads a .wsnap; ``restore`` takes the checkpoint options (the new checkpoint
    directory gets the module copy from the file), and that directory restores in turn."""
    r = ok(work.run("inspect", "prog.wsnap"))
    assert b"layout wsnap" in r.stdout and b"steps: 5000" in r.stdout
    r = ok(work.run("inspect", "--json", "prog.wsnap"))
    assert b'"layout": "wsnap"' in r.stdout
    ck2 = tmp_path / "ck2"
    r1 = ok(work.run("restore", "--engine", "interp", "--checkpoint-dir", ck2, "--checkpoint-at-step", "8000",
                     "--checkpoint-then", "exit", "prog.wsnap"))
    assert b"checkpoint written" in r1.stderr
    assert list(ck2.glob("module-*.wasm"))
    r2 = ok(work.run("restore", "--engine", "interp", ck2))
    assert work.before + r1.stdout + r2.stdout == work.full


def test_python_api_and_diff(work: Work) -> None:
    """``wasmig.restore("prog.wsnap")`` finds the module in the file; ``diff`` against the original
    snapshot finds no difference."""
    import io

    import wasmig

    out = io.BytesIO()
    inst = wasmig.restore(work.tmp / "prog.wsnap", stdout=out)
    inst.resume()
    assert work.before + out.getvalue() == work.full
    ok(work.run("diff", "prog.wsnap", next(work.ck.glob("snapshots/*.snap"))))


def test_restore_with_dir_mapping(tmp_path: Path) -> None:
    """A program with open files moves with its directory: exported, the directory copied elsewhere,
    restored with ``--dir NEW::GUEST``; output and files equal the uninterrupted run's."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    wasm = program("journal")

    def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return wasmig(args, cwd=tmp_path, runtime=runtime)

    for d in ("full", "data"):
        (tmp_path / d).mkdir()
    full = ok(run("run", "--engine", "interp", "--dir", f"{tmp_path / 'full'}::/data", wasm, "/data", "12"))
    r1 = ok(run("run", "--engine", "interp", "--dir", f"{tmp_path / 'data'}::/data", "--checkpoint-dir", "ck",
                "--checkpoint-at-step", "3000", "--checkpoint-then", "exit", wasm, "/data", "12"))
    assert 0 < len(r1.stdout) < len(full.stdout)
    ok(run("export", "ck", "-o", "j.wsnap"))
    shutil.rmtree(tmp_path / "ck")
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    shutil.rmtree(tmp_path / "data")
    r2 = ok(run("restore", "--engine", "interp", "--dir", f"{tmp_path / 'moved'}::/data", "j.wsnap"))
    assert r1.stdout + r2.stdout == full.stdout
    for f in (tmp_path / "full").iterdir():
        assert (tmp_path / "moved" / f.name).read_bytes() == f.read_bytes(), f.name


def test_incremental_snapshot_exports_its_full_memory(tmp_path: Path) -> None:
    """The second snapshot of a directory stores only the pages that changed; its export holds every
    page it names, restores with the directory deleted, and is the same state as the original."""
    w = Work(tmp_path, steps=(5000, 8000))
    chain = w.run("inspect", "--json", "ck")
    import json

    info = json.loads(ok(chain).stdout)
    second = info["chain"][-1]
    assert second["this"] and second["pages_new"] < info["pages"]["pages_distinct"]
    ok(w.run("export", "ck", "-o", "inc.wsnap"))
    assert storage_stats(tmp_path / "inc.wsnap")["pages_distinct"] == info["pages"]["pages_distinct"]
    original = load_snapshot(w.ck)
    assert load_snapshot(tmp_path / "inc.wsnap") == original
    shutil.rmtree(w.ck)
    r = ok(w.run("restore", "--engine", "interp", "inc.wsnap"))
    assert w.before + r.stdout == w.full


def test_export_a_given_snapshot_is_deterministic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    w = Work(tmp_path, steps=(5000, 8000))
    ok(w.run("export", "ck/snapshots/000001.snap", "-o", "a.wsnap"))
    ok(w.run("export", "ck/snapshots/000001.snap", "-o", "b.wsnap"))
    ok(w.run("export", "ck", "-o", "latest.wsnap"))
    a, b = (tmp_path / "a.wsnap").read_bytes(), (tmp_path / "b.wsnap").read_bytes()
    assert a == b  # same snapshot, same bytes
    assert a != (tmp_path / "latest.wsnap").read_bytes()
    assert load_snapshot(tmp_path / "a.wsnap").steps == 5000
    # an existing output is refused (and left alone) unless --force
    (tmp_path / "taken").write_bytes(b"precious")
    one_error(w.run("export", "ck", "-o", "taken"), "taken exists", "--force")
    assert (tmp_path / "taken").read_bytes() == b"precious"
    ok(w.run("export", "ck", "--force", "-o", "taken"))
    assert (tmp_path / "taken").read_bytes() == (tmp_path / "latest.wsnap").read_bytes()
    one_error(w.run("export", "ck", "-o", "ck"), "is a directory")
    one_error(w.run("export", "ck", "--force", "-o", "ck/snapshots/000002.snap"), "is the snapshot being exported")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_of_a_single_file_snapshot(work: Work, tmp_path: Path) -> None:
    """A single-file snapshot (pages embedded) exports too: the same state, pages moved out."""
    snap = load_snapshot(work.ck)
    single = tmp_path / "single.snap"
    write_single_file(snap, single)
    out = tmp_path / "single.wsnap"
    wsnap.export_snapshot(single, out, module=str(work.wasm))
    assert load_snapshot(out) == snap
    with pytest.raises(SnapshotError, match="cannot find the module"):
        wsnap.export_snapshot(_without_module_path(snap, tmp_path), tmp_path / "x.wsnap")


def _without_module_path(snap: object, tmp_path: Path) -> Path:
    """A single-file snapshot whose recorded module path leads nowhere."""
    import dataclasses

    s = dataclasses.replace(snap, meta=dict(snap.meta, module_path=str(tmp_path / "gone.wasm")))  # type: ignore
    path = tmp_path / "orphan.snap"
    write_single_file(s, path)
    return path


def test_export_errors(tmp_path: Path) -> None:
    w = Work(tmp_path)
    one_error(w.run("export", "ck/snapshots/000009.snap", "-o", "x.wsnap"), "000009.snap", "No such file")
    one_error(w.run("export", "nowhere", "-o", "x.wsnap"), "nowhere")
    (tmp_path / "empty" / "snapshots").mkdir(parents=True)
    one_error(w.run("export", "empty", "-o", "x.wsnap"), "no snapshots")
    one_error(w.run("export", "ck", "-o", "no/such/dir/x.wsnap"), "cannot write")
    one_error(w.run("export", "ck", "--module", program("hello"), "-o", "x.wsnap"), "not the module")
    # the module copy and the recorded path both gone: --module is needed
    for m in w.ck.glob("module-*.wasm"):
        m.unlink()
    w.wasm.rename(tmp_path / "kept.wasm")
    one_error(w.run("export", "ck", "-o", "x.wsnap"), "cannot find the module", "--module")
    ok(w.run("export", "ck", "--module", "kept.wasm", "-o", "x.wsnap"))
    # a page missing from the store, or corrupt: no output, no temporary file
    page = sorted(p for p in (w.ck / "pages").rglob("*") if p.is_file())[0]
    data = page.read_bytes()
    page.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    one_error(w.run("export", "ck", "--module", "kept.wasm", "-o", "y.wsnap"), page.name)
    page.unlink()
    # (a pack is named by no manifest: its absence shows as the pages it held going missing)
    one_error(w.run("export", "ck", "--module", "kept.wasm", "-o", "y.wsnap"), "missing",
              "is missing from the page store (ck/pages)" if page.name.startswith("pack-") else page.name)
    one_error(w.run("export", "x.wsnap", "-o", "z.wsnap"), "already a .wsnap")
    assert not (tmp_path / "y.wsnap").exists() and not (tmp_path / "z.wsnap").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- import -----------------------------------------------------------------------------------------
def test_import_into_a_new_and_an_existing_directory(work: Work, tmp_path: Path) -> None:
    wfile = work.tmp / "prog.wsnap"
    r = ok(work.run("import", wfile, tmp_path / "new"))
    made = Path(r.stdout.decode().strip())
    assert made == tmp_path / "new" / "snapshots" / "000001.snap"
    original = next(work.ck.glob("snapshots/*.snap"))
    assert made.read_bytes() == original.read_bytes()  # the snapshot file, byte for byte
    r = ok(work.run("restore", "--engine", "interp", tmp_path / "new"))
    assert work.before + r.stdout == work.full
    # into a directory that has the snapshot already: a new number, no page written twice
    existing = tmp_path / "existing"
    shutil.copytree(work.ck, existing)
    pages_before = sorted(p.relative_to(existing) for p in (existing / "pages").rglob("*"))
    r = ok(work.run("import", wfile, existing))
    assert Path(r.stdout.decode().strip()) == existing / "snapshots" / "000002.snap"
    assert sorted(p.relative_to(existing) for p in (existing / "pages").rglob("*")) == pages_before
    r = ok(work.run("restore", "--engine", "interp", existing))
    assert work.before + r.stdout == work.full
    assert CheckpointDir(existing).gc(dry_run=True)["pages_removed"] == 0
    # a missing page store subdirectory and module copy are put back
    shutil.rmtree(existing / "pages")
    for m in existing.glob("module-*.wasm"):
        m.write_bytes(b"not the module")
    ok(work.run("import", wfile, existing))
    r = ok(work.run("restore", "--engine", "interp", existing))
    assert work.before + r.stdout == work.full
    # not a directory, and a corrupt file: nothing created
    (tmp_path / "afile").write_bytes(b"")
    one_error(work.run("import", wfile, tmp_path / "afile"), "not a directory")
    bad = tmp_path / "bad.wsnap"
    bad.write_bytes(wfile.read_bytes()[:-1])
    one_error(work.run("import", bad, tmp_path / "never"), "bad.wsnap", "truncated")
    assert not (tmp_path / "never").exists()
    one_error(work.run("import", tmp_path / "missing.wsnap", tmp_path / "never"), "missing.wsnap")
    assert not (tmp_path / "never").exists()


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("failing", ["module copy", "snapshot file"])
def test_an_import_that_fails_on_a_full_disk_leaves_no_pack(work: Work, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """A full disk after the pages' pack was published (at the module copy, or the snapshot file)
    left that pack behind, named by no snapshot, until a gc; the import now takes it back."""
    import errno
    import fcntl

    from wasmig.snapshot import store as store_module

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    where, name = (wsnap, "_atomic_write") if failing == "module copy" else (store_module, "write_temp")
    monkeypatch.setattr(where, name, full)
    target = tmp_path / "d"
    with pytest.raises(SnapshotError, match="No space left on device"):
        wsnap.import_wsnap(work.tmp / "prog.wsnap", target)
    # no pack, nor temporary file; the module copy, once written, stays (as a run's: a writer of the
    # same module in the directory may have found it there since, and relies on it)
    kept = [p.name for p in work.ck.glob("module-*.wasm")]
    assert len(kept) == 1 and _files(target) == [".gc-lock", *(kept if failing == "snapshot file" else [])]
    monkeypatch.undo()
    wsnap.import_wsnap(work.tmp / "prog.wsnap", target)  # and the next import just works
    (pack,) = (target / "pages").glob("*.pack")
    hashes = {h for h, _, _ in packs.read_index(pack)}
    store = CheckpointDir(target)
    assert not store.discard_pack(pack, hashes) and pack.exists()  # a snapshot names its pages
    for snap in (target / "snapshots").glob("*.snap"):
        snap.unlink()
    with open(target / ".gc-lock", "rb") as lock:  # a writer at work: left for gc
        fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
        assert not store.discard_pack(pack, hashes) and pack.exists()
    assert store.discard_pack(pack, hashes) and not pack.exists()


def test_module_file_prefix_matches_the_session() -> None:
    from wasmig.session.modules import MODULE_FILE_PREFIX

    assert wsnap.MODULE_FILE_PREFIX == MODULE_FILE_PREFIX


# --- untrusted input --------------------------------------------------------------------------------
def _layout(data: bytes) -> dict[str, int]:
    _, _, s, m, n, p = struct.unpack_from("<12sIQQQQ", data)
    table = 48 + 36 * n
    return {"s": s, "m": m, "n": n, "p": p, "index_end": table + 32, "snap": table + 32,
            "module": table + 32 + s, "pages": table + 32 + s + m}


def _all_errors(path: Path, tmp: Path, same_state_ok: object = None) -> None:
    """Loading and importing ``path`` are each a clean one-line SnapshotError naming it, or, given
    ``same_state_ok`` (a snapshot), load exactly that state: a flipped bit in a zstd frame that
    does not change the page it decompresses to. ``storage_stats`` (which reads the manifest and
    index, not the pages) fails the same way or succeeds."""
    def clean(e: SnapshotError) -> None:
        msg = str(e)
        assert "\n" not in msg and "internal error" not in msg and str(path) in msg, msg

    try:
        snap = load_snapshot(path)
    except SnapshotError as e:
        clean(e)
        with pytest.raises(SnapshotError) as ei:
            wsnap.import_wsnap(path, tmp / "imp")
        clean(ei.value)
        assert not (tmp / "imp").exists()
    else:
        assert same_state_ok is not None and snap == same_state_ok, "a corrupt file loaded another state"
    try:
        storage_stats(path)
    except SnapshotError as e:
        clean(e)


def test_every_truncation_and_flipped_byte_is_an_error(work: Work, tmp_path: Path) -> None:
    data = (work.tmp / "prog.wsnap").read_bytes()
    lay = _layout(data)
    f = tmp_path / "c.wsnap"
    rng = random.Random(14)
    cuts = set(range(0, lay["index_end"] + 1)) | {lay["module"], lay["pages"], len(data) - 1}
    cuts |= {rng.randrange(len(data)) for _ in range(40)}
    for cut in sorted(cuts):
        f.write_bytes(data[:cut])
        if cut >= 7:
            _all_errors(f, tmp_path)
        else:
            with pytest.raises(SnapshotError):
                load_snapshot(f)
    flips = set(range(0, lay["index_end"])) | {rng.randrange(len(data)) for _ in range(150)}
    flips |= {rng.randrange(lay["pages"], len(data)) for _ in range(50)}
    original = load_snapshot(work.tmp / "prog.wsnap")
    for pos in sorted(flips):
        if pos < 7:
            continue  # no longer a .wsnap at all (below)
        mutated = bytearray(data)
        mutated[pos] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(mutated))
        _all_errors(f, tmp_path, original if pos >= lay["pages"] else None)
    f.write_bytes(data + b"\0")
    _all_errors(f, tmp_path)
    f.write_bytes(b"XASMIG-WSNAP" + data[12:])
    with pytest.raises(SnapshotError, match="bad magic"):
        load_snapshot(f)


def _build(snapshot: bytes, module: bytes, pages: list[tuple[bytes, bytes]], *, version: int = 1,
           header: dict[str, int] | None = None) -> bytes:
    """A .wsnap with a valid header-and-index hash from arbitrary parts (``header`` overrides fields)."""
    fields = {"s": len(snapshot), "m": len(module), "n": len(pages), "p": sum(len(c) for _, c in pages)}
    fields.update(header or {})
    head = struct.pack("<12sIQQQQ", b"WASMIG-WSNAP", version, fields["s"], fields["m"], fields["n"], fields["p"])
    table = b"".join(struct.pack("<32sI", h, len(c)) for h, c in pages)
    digest = blake3(head)
    digest.update(table)
    return head + table + digest.digest() + snapshot + module + b"".join(c for _, c in pages)


def _parts(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    lay = _layout(data)
    snapshot = data[lay["snap"]:lay["module"]]
    module = data[lay["module"]:lay["pages"]]
    pages, off = [], lay["pages"]
    for i in range(lay["n"]):
        h, n = struct.unpack_from("<32sI", data, 48 + 36 * i)
        pages.append((h, data[off:off + n]))
        off += n
    return snapshot, module, pages


def _resnap(snapshot: bytes, change: object) -> bytes:
    """The snapshot file with its manifest changed by ``change(manifest)``, checksum valid."""
    manifest = _read_container(io.BytesIO(snapshot), len(snapshot)).manifest  # (after it: checksum, seal)
    change(manifest)  # type: ignore[operator]
    return b"".join(_encode(manifest))


def test_crafted_files_with_valid_checksums(work: Work, tmp_path: Path) -> None:
    data = (work.tmp / "prog.wsnap").read_bytes()
    snapshot, module, pages = _parts(data)
    assert len(pages) >= 2
    f = tmp_path / "crafted.wsnap"
    assert _build(snapshot, module, pages) == data

    def refused(content: bytes, needle: str) -> None:
        f.write_bytes(content)
        _all_errors(f, tmp_path)
        with pytest.raises(SnapshotError, match=needle):
            load_snapshot(f)

    extra = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"\1" * 65536)
    extra_page = (blake3(b"\1" * 65536).digest(), extra)
    refused(_build(snapshot, module, sorted(pages + [extra_page])), "does not name")
    refused(_build(snapshot, module, pages[1:]), "is not in it")
    refused(_build(snapshot, module, pages[::-1]), "out of order")
    refused(_build(snapshot, module, [pages[0], pages[0], *pages[1:]]), "out of order")
    swapped = [(pages[0][0], pages[1][1]), (pages[1][0], pages[0][1]), *pages[2:]]
    refused(_build(snapshot, module, swapped), "hash mismatch")
    refused(_build(snapshot, module, [(pages[0][0], b""), *pages[1:]]), "0 bytes")
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 24))
    refused(_build(snapshot, module, [(pages[0][0], bomb), *pages[1:]]), "decompresses to")
    refused(_build(snapshot, module + b"\0", pages), "sha256 mismatch")
    refused(_build(snapshot, module, pages, version=2), "newer format version 2")
    refused(_build(snapshot, module, pages, header={"s": 1 << 40}), "limit")
    refused(_build(snapshot, module, pages, header={"m": 1 << 40}), "limit")
    refused(_build(snapshot, module, pages, header={"n": 1 << 40}), "limit")
    refused(_build(snapshot, module, pages, header={"p": 1 << 40}), "page data")
    end = len(snapshot) - SEAL_SIZE  # the checksum's end: the seal follows it
    flipped = snapshot[:end - 1] + bytes([snapshot[end - 1] ^ 1]) + snapshot[end:]
    refused(_build(flipped, module, pages), "its snapshot: snapshot is corrupt")
    refused(_build(snapshot[:-1], module, pages), "its snapshot: truncated")
    refused(_build(snapshot[:end - 1], module, pages), "its snapshot: truncated")

    def embed(m: dict) -> None:  # a page embedded instead of named
        m["memories"][0]["data"][0] = pages[0][1]

    refused(_build(_resnap(snapshot, embed), module, pages), "neither a hash nor a page")

    def other_module(m: dict) -> None:
        m["module_sha256"] = hashlib.sha256(b"other").hexdigest()

    refused(_build(_resnap(snapshot, other_module), module, pages), "sha256 mismatch")

    def huge(m: dict) -> None:  # 5 memories of 4 GiB of zero pages: 20 GiB to allocate
        m["memories"] = [dict(m["memories"][0], size_pages=65536, min=1, max=None, data=[None] * 65536)
                         for _ in range(5)]

    refused(_build(_resnap(snapshot, huge), module, []), "memory pages in all")

    def bad_field(m: dict) -> None:
        m["frames"] = "nope"

    refused(_build(_resnap(snapshot, bad_field), module, pages), "frames")
    f.write_bytes(b"")
    with pytest.raises(SnapshotError):
        load_snapshot(f)


def test_cli_errors_on_bad_files(work: Work, tmp_path: Path) -> None:
    """Through the command line: one ``wasmig: error:`` line and exit 1 for restore, inspect, import."""
    data = (work.tmp / "prog.wsnap").read_bytes()
    lay = _layout(data)
    cases = {
        "truncated.wsnap": data[:len(data) // 2],
        "flipped.wsnap": data[:lay["pages"] + 3] + bytes([data[lay["pages"] + 3] ^ 0x40]) + data[lay["pages"] + 4:],
        "newer.wsnap": data[:12] + struct.pack("<I", 9) + data[16:],
        "header.wsnap": data[:10],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        for cmd in (["restore", "--engine", "interp"], ["inspect"], ["import"]):
            args = [*cmd, tmp_path / name] + ([tmp_path / "imported"] if cmd == ["import"] else [])
            one_error(work.run(*args), name)
    assert not (tmp_path / "imported").exists()


def test_a_name_longer_than_the_filesystem_allows_is_one_error(work: Work, tmp_path: Path) -> None:
    """``-o`` / DIRECTORY whose name exceeds NAME_MAX: stat fails with ENAMETOOLONG (not absence), which
    pathlib's ``is_dir``/``exists`` raise: one line naming the problem, nothing written."""
    long = tmp_path / ("x" * 300)
    one_error(work.run("export", "ck", "-o", long), "cannot write", "File name too long")
    one_error(work.run("import", work.tmp / "prog.wsnap", long), "cannot import", "File name too long")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_output_name_is_named_as_such(work: Work) -> None:
    one_error(work.run("export", "ck", "-o", ""), "-o: the output file name is empty")
