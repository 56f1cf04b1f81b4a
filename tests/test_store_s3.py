"""Snapshot stores in S3-compatible object storage (and on a shared filesystem), against a real
S3 server: moto's standalone server, started once for the session on 127.0.0.1.

Each test gets a bucket of its own. wasmig runs as a subprocess (``python -m wasmig``) that
finds the server through ``WASMIG_S3_ENDPOINT`` and test credentials in the environment, with
the AWS config files pointed away so that no user setting leaks in."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.s3_server import moto_s3
from tests.snapshot_synth import make_snapshot
from tests.wasi_harness import program

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0
#: migrate_work ROUNDS KIB SLEEP_MS: prints a checksum per round and sleeps in between (where a
#: periodic checkpoint stops it at once); a 256 KiB heap, so a few pages change per round
WORK = ["24", "256", "60"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on loopback for the whole session; the environment pointed at it."""
    with moto_s3(tmp_path_factory.mktemp("aws")) as endpoint:
        yield endpoint


@pytest.fixture()
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture()
def bucket(s3: Any) -> str:
    name = f"wasmig-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def keys_of(s3: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object of ``bucket`` under ``prefix``: key -> size."""
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def stored_pages(s3: Any, bucket: str, top: str = ".wasmig/index/") -> dict[str, int]:
    """Every page the bucket's packs hold (their indexes under ``top``: the live ones by default):
    hash -> its compressed length."""
    from wasmig.snapshot.stores.objpacks import decode_index

    out: dict[str, int] = {}
    for key in keys_of(s3, bucket, top):
        entries, _ = decode_index(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), key)
        out.update({h: n for h, _, n in entries})
    return out


def wasmig(args: list[Any], *, tmp_path: Path, timeout: float = TIMEOUT,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                    WASMIG_RUNTIME_DIR=str(runtime), **(env or {}))
    return subprocess.run([sys.executable, "-m", "wasmig", *map(str, args)], capture_output=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL)


def one_line_error(p: subprocess.CompletedProcess[bytes]) -> str:
    """The run failed with exactly one line on stderr, ``wasmig: error: ...``, and no traceback."""
    text = p.stderr.decode()
    assert p.returncode != 0, text
    assert text.startswith("wasmig: error: ") and text.count("\n") == 1 and "Traceback" not in text, text
    return text


# --- run, restore, inspect --------------------------------------------------------------------------
@pytest.mark.slow
def test_periodic_checkpoints_to_s3_restore_on_both_engines(s3: Any, bucket: str, tmp_path: Path) -> None:
    wasm = program("migrate_work")
    full = wasmig(["run", "--engine", "wasmtime", wasm, *WORK], tmp_path=tmp_path)
    assert full.returncode == 0 and full.stdout.endswith(b"\n") and full.stdout.startswith(b"round 0"), full.stderr
    url = f"s3://{bucket}/runs/work"
    run = wasmig(["run", "--engine", "wasmtime", "--checkpoint-dir", url, "--checkpoint-every", "0.3", wasm, *WORK],
                 tmp_path=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, full.stdout, b"")
    snaps = sorted(k for k in keys_of(s3, bucket, "runs/work/snapshots/") if k.endswith(".snap"))
    assert all(f"{k}.packs" in keys_of(s3, bucket, "runs/work/snapshots/") for k in snaps), "each with its hint"
    assert len(snaps) >= 2, f"--checkpoint-every 0.3 wrote {snaps}"
    assert snaps[0] == "runs/work/snapshots/000001.snap"
    module_keys = [k for k in keys_of(s3, bucket, ".wasmig/modules/")]
    assert len(module_keys) == 1, module_keys
    middle = f"s3://{bucket}/{snaps[len(snaps) // 2]}"
    outputs = {}
    for engine in ("interp", "wasmtime"):
        restored = wasmig(["restore", "--engine", engine, middle], tmp_path=tmp_path)
        assert restored.returncode == 0 and restored.stderr == b"", restored.stderr
        outputs[engine] = restored.stdout
    assert outputs["interp"] == outputs["wasmtime"]
    assert outputs["interp"] and full.stdout.endswith(outputs["interp"]) and outputs["interp"] != full.stdout

    inspected = wasmig(["inspect", "--json", "--verify", url], tmp_path=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    summary = json.loads(inspected.stdout)
    assert summary["pages"]["layout"] == "object-store"
    assert summary["signature"]["own_key"] is True
    chain = summary["chain"]
    assert [c["snapshot"] for c in chain] == [k.rsplit("/", 1)[1] for k in snaps]
    assert chain[-1]["this"] and chain[0]["pages_new"] > 0
    pages = stored_pages(s3, bucket)
    assert not keys_of(s3, bucket, ".wasmig/pages/"), "layout 2: no object per page"
    packs = len(keys_of(s3, bucket, ".wasmig/packs/"))
    assert 1 <= packs <= len(snaps), "at most a pack per checkpoint (none if it had no new page)"
    assert sum(c["pages_new"] for c in chain) == len(pages), "each page of the chain is stored once"
    assert sum(c["new_bytes"] for c in chain) == sum(pages.values())

    # the store URL alone means its latest snapshot, and a restore may checkpoint into S3 again
    # (after the counts above: its checkpoints' new pages go to the bucket's shared packs, a 7th
    # pack for 6 snapshots when the restored run lived long enough for one)
    again = wasmig(["restore", "--checkpoint-dir", f"s3://{bucket}/runs/again", "--checkpoint-every", "0.3", url],
                   tmp_path=tmp_path)
    assert again.returncode == 0 and full.stdout.endswith(again.stdout), again.stderr


def test_file_store_runs_restores_and_shares_pages_below_its_root(tmp_path: Path) -> None:
    """``file://``: the object layout on a (shared) filesystem; stores below a directory holding
    ``.wasmig/`` share its pages."""
    root = tmp_path / "shared"
    (root / ".wasmig").mkdir(parents=True)
    wasm = program("migrate_work")
    args = ["6", "256", "0"]
    full = wasmig(["run", wasm, *args], tmp_path=tmp_path)
    for job in ("a", "b"):
        run = wasmig(["run", "--engine", "interp", "--checkpoint-dir", f"file://{root}/jobs/{job}",
                      "--checkpoint-at-step", "3000", "--checkpoint-then", "exit", wasm, *args], tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (root / "jobs" / "a" / "snapshots").iterdir()) == ["000001.snap",
                                                                                     "000001.snap.packs"]
    from wasmig.snapshot.stores import open_store
    from wasmig.snapshot.stores.objpacks import decode_index

    indexes = list((root / ".wasmig" / "index").iterdir())
    assert len(indexes) == 1, "the second run found every page stored: no pack of its own"
    pages = [h for h, _, _ in decode_index(indexes[0].read_bytes(), str(indexes[0]))[0]]
    a, b = open_store(f"file://{root}/jobs/a"), open_store(f"file://{root}/jobs/b")
    named = {h for store in (a, b) for m in store.load_deferred()[1] or [] for h in m.entries if isinstance(h, str)}
    assert set(pages) == named and len(pages) == len(named), "two runs in the same state: every page stored once"
    restored = wasmig(["restore", f"file://{root}/jobs/b"], tmp_path=tmp_path)
    assert restored.returncode == 0 and restored.stdout and full.stdout.endswith(restored.stdout), restored.stderr


def test_export_from_s3_and_import_into_s3(s3: Any, bucket: str, tmp_path: Path) -> None:
    """``export s3://...`` writes the .wsnap a local export would; ``import FILE s3://...``
    publishes it as the store's next snapshot, which restores."""
    wasm = program("migrate_work")
    args = ["6", "256", "0"]
    full = wasmig(["run", wasm, *args], tmp_path=tmp_path)
    url = f"s3://{bucket}/exp"
    run = wasmig(["run", "--engine", "interp", "--checkpoint-dir", url, "--checkpoint-at-step", "3000",
                  "--checkpoint-then", "exit", wasm, *args], tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "x.wsnap"
    exported = wasmig(["export", "-o", out, url], tmp_path=tmp_path)
    assert exported.returncode == 0 and out.is_file(), exported.stderr
    assert f"exported s3://{bucket}/exp/snapshots/000001.snap".encode() in exported.stderr
    local = wasmig(["restore", out], tmp_path=tmp_path)
    assert local.returncode == 0 and local.stdout and full.stdout.endswith(local.stdout), local.stderr
    imported = wasmig(["import", out, f"s3://{bucket}/imp"], tmp_path=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.decode().strip() == f"s3://{bucket}/imp/snapshots/000001.snap"
    assert s3.get_object(Bucket=bucket, Key="imp/snapshots/000001.snap")["Body"].read() == \
        s3.get_object(Bucket=bucket, Key="exp/snapshots/000001.snap")["Body"].read(), "the sealed bytes, unchanged"
    again = wasmig(["restore", f"s3://{bucket}/imp"], tmp_path=tmp_path)
    assert (again.returncode, again.stdout) == (0, local.stdout), again.stderr
    assert "no such bucket" in one_line_error(wasmig(["import", out, "s3://no-such-bucket-here/x"],
                                                     tmp_path=tmp_path))


_COUNTING_PUT_MODULE = """
import atexit, sys
from wasmig.snapshot.stores.objects import ObjectStore

calls = []
original = ObjectStore.put_module

def counting(self, module):
    calls.append(module.sha256)
    return original(self, module)

ObjectStore.put_module = counting
atexit.register(lambda: print(f"put_module {len(calls)}", file=sys.stderr))
from wasmig.cli import main
main(sys.argv[1:])
"""


def test_the_module_is_kept_once_per_run_not_at_every_checkpoint(s3: Any, bucket: str, tmp_path: Path) -> None:
    """Each checkpoint used to look for the module in the bucket (a HEAD while the guest waited):
    now the run puts it once (gc never removes a kept module), and every snapshot names it."""
    url = f"s3://{bucket}/once"
    env = dict(os.environ, PYTHONPATH=str(REPO), WASMIG_RUNTIME_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", _COUNTING_PUT_MODULE, "run", "--engine", "wasmtime",
                          "--checkpoint-dir", url, "--checkpoint-every", "0.3", program("migrate_work"), *WORK],
                         capture_output=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    snaps = [k for k in keys_of(s3, bucket, "once/snapshots/") if k.endswith(".snap")]
    assert len(snaps) >= 3, f"--checkpoint-every 0.3 wrote {snaps}"
    assert run.stderr.decode().strip() == "put_module 1", run.stderr
    from wasmig.snapshot.stores import open_store

    store = open_store(url)
    module_files = {store.load(s).meta["module_file"] for s in store.snapshots()}
    assert len(module_files) == 1
    sha = module_files.pop()[:-len(".wasm")]
    # why once is enough: no gc removes a kept module, even with every snapshot gone
    for key in snaps:
        s3.delete_object(Bucket=bucket, Key=key)
    store.gc(grace_s=0)
    store.gc(grace_s=0)
    assert store.module_bytes(sha) is not None


def test_a_checkpoint_directorys_gc_keeps_its_module(tmp_path: Path) -> None:
    """The local store's side of the same rule (the run loop puts the module once per run)."""
    from wasmig.module import Module
    from wasmig.snapshot.stores import open_store

    store = open_store(str(tmp_path / "ck"))
    module = Module.from_bytes(program("hello").read_bytes(), decode=False)
    kept = Path(store.put_module(module))
    location = store.write(make_snapshot(15, pages=4))
    Path(location).unlink()
    store.gc()
    assert kept.read_bytes() == program("hello").read_bytes()


# --- dedup ---------------------------------------------------------------------------------------------
def test_two_programs_of_one_module_share_pages_in_the_bucket(s3: Any, bucket: str, tmp_path: Path) -> None:
    wasm = program("migrate_work")
    written = {}
    for job, rounds in (("a", "40"), ("b", "41")):  # different arguments, the same module and heap contents
        run = wasmig(["run", "--engine", "interp", "--checkpoint-dir", f"s3://{bucket}/jobs/{job}",
                      "--checkpoint-at-step", "3000", "--checkpoint-then", "exit", wasm, rounds, "256", "0"],
                     tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr
        written[job] = stored_pages(s3, bucket)
    from wasmig.snapshot.stores import open_store

    distinct = {job: {h for m in open_store(f"s3://{bucket}/jobs/{job}").load_deferred()[1] or []
                      for h in m.entries if isinstance(h, str)} for job in ("a", "b")}
    shared = distinct["a"] & distinct["b"]
    assert len(shared) >= 4, "the two runs have pages in common"
    assert len(written["b"]) == len(distinct["a"] | distinct["b"]), "each distinct page is stored once per bucket"
    assert len(written["b"]) - len(written["a"]) == len(distinct["b"] - distinct["a"]), "b uploaded only its own"
    assert len(keys_of(s3, bucket, ".wasmig/modules/")) == 1
    print(f"[s3] dedup: a {len(distinct['a'])} pages, b {len(distinct['b'])}, shared {len(shared)}; "
          f"bucket holds {len(written['b'])} objects ({sum(written['b'].values())} bytes)")


# --- gc --------------------------------------------------------------------------------------------------
def test_gc_keeps_referenced_pages_and_removes_unreferenced_after_the_grace_period(
        s3: Any, bucket: str, tmp_path: Path) -> None:
    from wasmig.snapshot.stores import open_store

    store = open_store(f"s3://{bucket}/gc")
    first = store.write(make_snapshot(1, pages=24))
    second = store.write(make_snapshot(2, pages=24))
    other = open_store(f"s3://{bucket}/other")
    other.write(make_snapshot(3, pages=8))
    keep = {h for loc in (second,) for m in store.load_deferred(loc)[1] or [] for h in m.entries if isinstance(h, str)}
    keep |= {h for m in other.load_deferred()[1] or [] for h in m.entries if isinstance(h, str)}
    first_key = first.split("/", 3)[3]
    first_bytes = s3.get_object(Bucket=bucket, Key=first_key)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=first_key)  # the user drops the first snapshot
    before = stored_pages(s3, bucket)
    assert len(keys_of(s3, bucket, ".wasmig/packs/")) == 3, "a pack per write"
    doomed = set(before) - keep
    assert doomed, "the first snapshot had pages of its own"

    young = wasmig(["gc", f"s3://{bucket}/gc"], tmp_path=tmp_path)  # default grace: an hour
    assert young.returncode == 0 and b"set aside 0" in young.stdout, young.stdout + young.stderr
    assert stored_pages(s3, bucket) == before

    # the three small packs, old enough, are compacted into one holding the named pages only
    aside = wasmig(["gc", "--grace", "0", f"s3://{bucket}"], tmp_path=tmp_path)
    assert aside.returncode == 0, aside.stderr
    assert f"set aside {len(doomed)} ".encode() in aside.stdout, aside.stdout
    assert set(stored_pages(s3, bucket)) == keep and len(keys_of(s3, bucket, ".wasmig/index/")) == 1
    assert doomed <= set(stored_pages(s3, bucket, ".wasmig/index-aside/"))
    assert store.load(second).memories[0].data == make_snapshot(2, pages=24).memories[0].data
    # a snapshot published meanwhile naming a set-aside page (a writer that saw it before gc did):
    # it reads, and the next gc puts the pack back instead of deleting it
    s3.put_object(Bucket=bucket, Key=first_key, Body=first_bytes)
    assert open_store(f"s3://{bucket}/gc").load(first).memories[0].data == make_snapshot(1, pages=24).memories[0].data
    back = wasmig(["gc", "--grace", "0", f"s3://{bucket}"], tmp_path=tmp_path)
    assert back.returncode == 0 and f"{len(doomed)} named again".encode() in back.stdout, back.stdout
    assert set(stored_pages(s3, bucket)) == keep | doomed
    assert not keys_of(s3, bucket, ".wasmig/index-aside/"), "the packs compacted away are removed"
    s3.delete_object(Bucket=bucket, Key=first_key)
    wasmig(["gc", "--grace", "0", f"s3://{bucket}"], tmp_path=tmp_path)  # set aside again
    removed = wasmig(["gc", "--grace", "0", f"s3://{bucket}"], tmp_path=tmp_path)
    assert removed.returncode == 0 and f"removed {len(doomed)} unreferenced".encode() in removed.stdout, removed.stdout
    assert not keys_of(s3, bucket, ".wasmig/index-aside/")
    assert set(stored_pages(s3, bucket)) == keep
    packs = {k.rsplit("/", 1)[1] for k in keys_of(s3, bucket, ".wasmig/packs/")}
    assert packs == {k.rsplit("/", 1)[1] for k in keys_of(s3, bucket, ".wasmig/index/")}, "no pack left behind"
    assert store.load(second).memories[0].data == make_snapshot(2, pages=24).memories[0].data
    assert other.load().memories[0].data == make_snapshot(3, pages=8).memories[0].data


def test_layout_1_page_objects_are_still_read_and_collected(s3: Any, bucket: str, tmp_path: Path) -> None:
    """A bucket written before packs (one object per page under .wasmig/pages/) restores, and its
    gc sets unnamed pages aside and removes them as before; a new write goes into a pack."""
    from wasmig.snapshot.stores import open_store
    from wasmig.snapshot.stores.objpacks import decode_index

    url = f"s3://{bucket}/old"
    location = open_store(url).write(make_snapshot(12, pages=8))
    [index_key] = keys_of(s3, bucket, ".wasmig/index/")
    pack_key = ".wasmig/packs/" + index_key.rsplit("/", 1)[1]
    pack = s3.get_object(Bucket=bucket, Key=pack_key)["Body"].read()
    entries, _ = decode_index(s3.get_object(Bucket=bucket, Key=index_key)["Body"].read(), index_key)
    for h, off, n in entries:  # the same bucket as layout 1 would have left it
        s3.put_object(Bucket=bucket, Key=f".wasmig/pages/{h}", Body=pack[off:off + n])
    s3.delete_object(Bucket=bucket, Key=index_key)
    s3.delete_object(Bucket=bucket, Key=pack_key)
    assert open_store(url).load().memories[0].data == make_snapshot(12, pages=8).memories[0].data
    restored = wasmig(["inspect", "--verify", url], tmp_path=tmp_path)
    assert restored.returncode == 0, restored.stderr
    again = open_store(url).write(make_snapshot(13, pages=8))
    assert keys_of(s3, bucket, ".wasmig/index/"), "new pages go into a pack"
    s3.delete_object(Bucket=bucket, Key=location.split("/", 3)[3])
    own = {h for h, _, _ in entries} - {h for m in open_store(url).load_deferred(again)[1] or []
                                        for h in m.entries if isinstance(h, str)}
    assert own
    assert open_store(url).gc(grace_s=0)["pages_set_aside"] == len(own)
    assert {k.rsplit("/", 1)[1] for k in keys_of(s3, bucket, ".wasmig/fossils/")} == own
    assert open_store(url).gc(grace_s=0)["pages_removed"] == len(own)
    assert not keys_of(s3, bucket, ".wasmig/fossils/")
    assert open_store(url).load(again).memories[0].data == make_snapshot(13, pages=8).memories[0].data


def test_a_large_pack_goes_up_in_parts_and_reads_back_in_ranges(s3: Any, bucket: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A write's pages over PACK_TARGET_BYTES become several packs, uploaded in parallel, each over
    8 MiB as a multipart upload; a restore reads them back with coalesced ranged GETs."""
    import random

    from wasmig.snapshot.state import PAGE_SIZE, MemoryState, Snapshot
    from wasmig.snapshot.stores import objpacks, open_store
    from wasmig.snapshot.stores.s3 import S3Objects

    monkeypatch.setattr(objpacks, "PACK_TARGET_BYTES", 10 << 20)
    rng = random.Random(5)
    memory = bytearray(rng.randbytes(300 * PAGE_SIZE))  # incompressible: ~19 MiB of pages, two packs
    snap = Snapshot(module_sha256="0" * 64, steps=None, point="after_call", frames=[],
                    memories=[MemoryState(min=300, max=None, data=memory)],  # type: ignore[arg-type]
                    tables=[], globals=[], dropped_data=[], dropped_elems=[], wasi=None)
    parts: list[str] = []
    original = S3Objects._put_multipart

    def counting(self: S3Objects, key: str, data: bytes) -> None:
        parts.append(key)
        original(self, key, data)

    monkeypatch.setattr(S3Objects, "_put_multipart", counting)
    store = open_store(f"s3://{bucket}/big")
    store.write(snap)
    packs = keys_of(s3, bucket, ".wasmig/packs/")
    assert len(packs) == 2 and all(size > 8 << 20 for size in packs.values()), packs
    assert sorted(parts) == sorted(packs), "each pack over 8 MiB went up as a multipart upload"
    gets: list[str] = []
    original_range = S3Objects.get_range

    def counting_range(self: S3Objects, key: str, start: int, length: int) -> bytes | None:
        gets.append(key)
        return original_range(self, key, start, length)

    monkeypatch.setattr(S3Objects, "get_range", counting_range)
    assert open_store(f"s3://{bucket}/big").load().memories[0].data == bytes(memory)
    assert len(gets) <= 6, f"300 pages in {len(gets)} ranged GETs (8 MiB each at most)"


def test_a_reader_reads_the_indexes_its_snapshot_names_not_the_buckets(s3: Any, bucket: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``<snapshot>.packs`` names the packs holding the snapshot's pages: a new reader GETs those
    indexes only (a fleet's bucket holds hundreds); without it, every index of the bucket."""
    from wasmig.snapshot.stores import open_store
    from wasmig.snapshot.stores.s3 import S3Objects

    for n in range(4):
        open_store(f"s3://{bucket}/other{n}").write(make_snapshot(20 + n, pages=6))
    location = open_store(f"s3://{bucket}/mine").write(make_snapshot(30, pages=6))
    assert len(keys_of(s3, bucket, ".wasmig/index/")) == 5
    reads: list[str] = []
    original = S3Objects.get

    def counting(self: S3Objects, key: str, limit: int) -> bytes | None:
        reads.append(key)
        return original(self, key, limit)

    monkeypatch.setattr(S3Objects, "get", counting)
    assert open_store(f"s3://{bucket}/mine").load().memories[0].data == make_snapshot(30, pages=6).memories[0].data
    assert len([k for k in reads if k.startswith(".wasmig/index/")]) == 1, reads
    s3.delete_object(Bucket=bucket, Key=location.split("/", 3)[3] + ".packs")
    reads.clear()
    assert open_store(f"s3://{bucket}/mine").load().memories[0].data == make_snapshot(30, pages=6).memories[0].data
    assert len([k for k in reads if k.startswith(".wasmig/index/")]) == 5, "no hint: every index"


def test_a_pack_without_its_index_is_removed_after_the_grace_period(s3: Any, bucket: str) -> None:
    """A writer killed between its pack and its index leaves a pack no index names: gc deletes it
    once it is older than the grace period, and counts it among the stale temporaries."""
    from wasmig.snapshot.stores import open_store
    from wasmig.snapshot.stores.objpacks import new_pack_id

    store = open_store(f"s3://{bucket}/orphan")
    store.write(make_snapshot(14, pages=4))
    orphan = ".wasmig/packs/" + new_pack_id()
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"x" * 1000)
    assert store.gc()["temp_files_removed"] == 0, "young: it may be a writer's pack about to get its index"
    assert orphan in keys_of(s3, bucket, ".wasmig/packs/")
    stats = store.gc(grace_s=0)
    assert stats["temp_files_removed"] == 1 and stats["bytes_removed"] >= 1000
    assert orphan not in keys_of(s3, bucket, ".wasmig/packs/")
    assert store.load().memories[0].data == make_snapshot(14, pages=4).memories[0].data


# --- atomicity --------------------------------------------------------------------------------------------
_KILLED_WRITER = """
import sys, time
from tests.s3_server import moto_s3
from tests.snapshot_synth import make_snapshot
from wasmig.snapshot.stores import open_store
from wasmig.snapshot.stores.objects import ObjectStore

def publish_never(self, chunks):
    print("pages uploaded", flush=True)
    time.sleep(600)

store = open_store(sys.argv[1])
store.write(make_snapshot(5, pages=4))
ObjectStore._publish = publish_never
store.write(make_snapshot(6, pages=32))
"""


def test_a_writer_killed_before_its_manifest_leaves_no_snapshot(s3: Any, bucket: str, tmp_path: Path) -> None:
    """kill -9 after the pages went up and before the manifest did: readers see the earlier
    snapshot only; the orphaned pages are gc's (after the grace period)."""
    url = f"s3://{bucket}/crash"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, url], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"pages uploaded\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    from wasmig.snapshot.stores import open_store

    store = open_store(url)
    assert [s.rsplit("/", 1)[1] for s in store.snapshots()] == ["000001.snap"]
    assert store.load().memories[0].data == make_snapshot(5, pages=4).memories[0].data
    pages = stored_pages(s3, bucket)
    named = {h for m in store.load_deferred()[1] or [] for h in m.entries if isinstance(h, str)}
    orphans = set(pages) - named
    assert orphans, "the killed writer had uploaded its pages"
    stats = store.gc(grace_s=0)
    assert stats["pages_set_aside"] == len(orphans) and stats["pages_kept"] == len(named)


def test_a_failed_manifest_upload_publishes_nothing(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores import open_store
    from wasmig.snapshot.stores.s3 import S3Objects

    store = open_store(f"s3://{bucket}/fail")

    def refuse(self: S3Objects, key: str, data: bytes) -> bool:
        raise SnapshotError(f"{self.location(key)}: cannot write: injected failure")

    monkeypatch.setattr(S3Objects, "put_new", refuse)
    with pytest.raises(SnapshotError, match="injected failure"):
        store.write(make_snapshot(7, pages=8))
    assert store.snapshots() == [] and not keys_of(s3, bucket, "fail/")
    assert stored_pages(s3, bucket), "the pages went first"


def test_concurrent_writers_get_distinct_numbers(bucket: str) -> None:
    from wasmig.snapshot.stores import open_store

    a, b = open_store(f"s3://{bucket}/race"), open_store(f"s3://{bucket}/race")
    staged = [a.stage(make_snapshot(8, pages=4)), b.stage(make_snapshot(9, pages=4))]
    locations = [s.commit() for s in staged]  # both computed the same next number; the second moves on
    assert [x.rsplit("/", 1)[1] for x in locations] == ["000001.snap", "000002.snap"]
    assert a.load(locations[1]).memories[0].data == make_snapshot(9, pages=4).memories[0].data


# --- untrusted bytes ------------------------------------------------------------------------------------
def test_a_tampered_page_is_refused(s3: Any, bucket: str, tmp_path: Path) -> None:
    import zstandard

    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores import open_store
    from wasmig.snapshot.stores.objpacks import decode_index, encode_index

    url = f"s3://{bucket}/tamper"
    store = open_store(url)
    store.write(make_snapshot(10, pages=8))
    [index_key] = keys_of(s3, bucket, ".wasmig/index/")
    pack_key = ".wasmig/packs/" + index_key.rsplit("/", 1)[1]
    pack = s3.get_object(Bucket=bucket, Key=pack_key)["Body"].read()
    entries, _ = decode_index(s3.get_object(Bucket=bucket, Key=index_key)["Body"].read(), index_key)
    # the first page's frame swapped for another valid page, the index made to match
    forged = zstandard.ZstdCompressor().compress(b"\1" * 65536)
    (h0, off0, n0), rest = entries[0], entries[1:]
    body = pack[:off0] + forged + pack[off0 + n0:]
    shifted = [(h0, off0, len(forged))] + [(h, o + (len(forged) - n0 if o > off0 else 0), n) for h, o, n in rest]
    s3.put_object(Bucket=bucket, Key=pack_key, Body=body)
    s3.put_object(Bucket=bucket, Key=index_key, Body=encode_index(shifted, len(body)))
    with pytest.raises(SnapshotError, match="hash mismatch"):
        open_store(url).load()
    assert "hash mismatch" in one_line_error(wasmig(["inspect", url], tmp_path=tmp_path))
    # an index entry longer than any page may be: refused before anything is read from the pack
    s3.put_object(Bucket=bucket, Key=index_key,
                  Body=encode_index([(h0, 0, 3 * 65536)] + rest, 4 * 65536))
    with pytest.raises(SnapshotError, match="damaged pack index"):
        open_store(url).load()


def test_a_tampered_manifest_is_refused_and_the_seal_covers_it(s3: Any, bucket: str, tmp_path: Path) -> None:
    from wasmig.snapshot.stores import open_store

    url = f"s3://{bucket}/seal"
    location = open_store(url).write(make_snapshot(11, pages=4))
    key = location.split("/", 3)[3]
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[40] ^= 1
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    assert "checksum mismatch" in one_line_error(wasmig(["inspect", url], tmp_path=tmp_path))


# --- bad URLs -----------------------------------------------------------------------------------------------
def test_bad_store_urls_are_one_line_errors(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    wasm = program("hello")
    cases = {
        "s3://Bad_Bucket/x": "not an S3 store URL",
        "s3://no-such-bucket-here/x": "no such bucket",
        "ftp://host/x": "unknown store URL scheme",
        "file://host/x": "file:///absolute/path",
    }
    for url, why in cases.items():
        p = wasmig(["run", "--checkpoint-dir", url, "--checkpoint-every", "1", wasm], tmp_path=tmp_path)
        assert why in one_line_error(p), url
    unreachable = wasmig(["run", "--checkpoint-dir", f"s3://{bucket}/x", wasm], tmp_path=tmp_path,
                         env={"WASMIG_S3_ENDPOINT": f"http://127.0.0.1:{_free_port()}"})
    assert "Could not connect" in one_line_error(unreachable)
    assert "has no snapshots" in one_line_error(wasmig(["restore", f"s3://{bucket}/empty"], tmp_path=tmp_path))
    assert "no such bucket" in one_line_error(wasmig(["gc", "s3://no-such-bucket-here"], tmp_path=tmp_path))
    assert "no such bucket" in one_line_error(wasmig(["inspect", "s3://no-such-bucket-here/x"], tmp_path=tmp_path))


def test_cluster_submit_checks_an_s3_store_before_anything_starts(s3_endpoint: str, tmp_path: Path) -> None:
    """``wasmig cluster submit --store s3://...``: a bucket that is not there is one line, before
    the cluster is even contacted (none runs here)."""
    p = wasmig(["cluster", "submit", "--store", "s3://no-such-bucket-here/jobs", program("hello")], tmp_path=tmp_path)
    assert "--store s3://no-such-bucket-here/jobs" in one_line_error(p) and "no such bucket" in p.stderr.decode()


def test_objects_are_size_checked_before_download(s3: Any, bucket: str) -> None:
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores.s3 import S3Objects

    s3.put_object(Bucket=bucket, Key="big", Body=b"x" * 100_000)
    backend = S3Objects.from_url(f"s3://{bucket}")
    assert backend.get("big", 100_000) == b"x" * 100_000
    with pytest.raises(SnapshotError, match="100000 bytes, more than the 99999"):
        backend.get("big", 99_999)
    assert backend.get("missing", 10) is None


def test_checkpoint_pid_into_s3(s3: Any, bucket: str, tmp_path: Path) -> None:
    """``wasmig checkpoint PID`` of a run that checkpoints into S3 prints the new snapshot's URL."""
    wasm = program("migrate_work")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, PYTHONPATH=str(REPO), WASMIG_RUNTIME_DIR=str(runtime))
    run = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", "wasmtime", "--checkpoint-dir",
                            f"s3://{bucket}/pid", wasm, "400", "256", "50"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        assert run.stdout is not None
        run.stdout.readline()  # running
        deadline = time.monotonic() + 30
        while not (runtime / f"{run.pid}.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        asked = subprocess.run([sys.executable, "-m", "wasmig", "checkpoint", str(run.pid)], capture_output=True,
                               env=env, timeout=TIMEOUT)
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.decode().strip() == f"s3://{bucket}/pid/snapshots/000001.snap"
    finally:
        run.kill()
        run.wait()
    assert [k for k in keys_of(s3, bucket, "pid/snapshots/") if k.endswith(".snap")] == ["pid/snapshots/000001.snap"]



@pytest.mark.parametrize("endpoint, accepted", [
    ("https://s3.example.com", True), ("http://127.0.0.1:9000", True), ("http://localhost:9000", True),
    ("http://[::1]:9000", True), (None, True),
    ("http://minio.internal:9000", False), ("http://10.0.0.5:9000", False), ("ftp://127.0.0.1", False)])
def test_an_s3_endpoint_in_clear_is_refused_off_loopback(endpoint: str | None, accepted: bool) -> None:
    """Nothing crosses a network in clear: plain http is an S3 endpoint on loopback only."""
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores.s3 import check_endpoint

    if accepted:
        check_endpoint(endpoint)
    else:
        with pytest.raises(SnapshotError, match="only over https"):
            check_endpoint(endpoint)


def test_the_cli_refuses_an_http_endpoint_off_loopback_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "WASMIG_S3_ENDPOINT": "http://minio.internal:9000"}
    done = subprocess.run([sys.executable, "-m", "wasmig", "inspect", "s3://bucket/x"], capture_output=True,
                          text=True, env=env, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1 and "only over https" in done.stderr and "Traceback" not in done.stderr, done.stderr
