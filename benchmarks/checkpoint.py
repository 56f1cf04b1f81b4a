#!/usr/bin/env python3
"""Checkpoint and restore at memory speed? The page store against the floor of its own work.

For each memory size (16, 64, 256 MiB) and kind (``random``: every page random, nothing to
compress or skip; ``zero-heavy``: 90% all-zero pages, the rest random), one run measures side by
side, in this order:

- **floor, 1 core**: what any checkpoint of these bytes must at least do, on one thread: copy
  them (into a buffer allocated and touched beforehand), BLAKE3 every 64 KiB page and zstd-1
  every page (the store's hash and compressor, one context reused);
- **floor, all cores**: the same work in 2 MiB batches on a pool of one thread per core;
- **disk**: ``write`` + ``fsync`` of as many bytes as the checkpoint wrote, into one new file
  (what the disk costs, which no store can avoid: for context, not part of the floor);
- **checkpoint**: ``CheckpointDir.write`` of a snapshot whose memory is a view of a ctypes buffer
  (as a checkpoint on wasmtime reads the guest's memory in place), into a fresh directory after
  ``os.sync()`` (its ``pages/`` and ``snapshots/`` made beforehand by ``CheckpointDir.prepare``, as
  a run makes them once its program is under way); **pause** is the part of it the guest must
  stay stopped for (the memory read:
  zero test, fingerprint, hash, compress and ``write`` into the pack: ``WriteStats.pause_seconds``;
  the fsyncs and the snapshot file come after);
- **restore**: ``load_snapshot_deferred`` + ``PagedMemory.copy_into`` a fresh buffer, as a
  restore on wasmtime writes a new instance's memory (every page read, decompressed into place
  and BLAKE3-verified);
- and for 256 MiB random, **incremental 1%**: 1% of the pages change and the same
  ``CheckpointDir`` writes again (the pages whose xxh3 fingerprint is unchanged are not hashed
  again); its floor is one xxh3 pass over the memory.

Each figure is the median over ``--runs`` runs, the measurements of one run taken one after the
other (interleaved, so load from the other agents on this shared 2-core machine hits floor and
store alike), and printed as a ratio to the floor of the same run. CPU seconds
(``time.process_time``) are printed beside wall seconds: on a loaded machine they show the work
done, wall time what a guest would wait. Restores read the packs just written: from the disk
where the store wrote them with ``O_DIRECT`` (they are not in the page cache then), from the page
cache otherwise. ``--dir`` chooses the filesystem (default: the system temp directory).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import xxhash  # noqa: E402

from wasmig.hashing import blake3  # noqa: E402
from wasmig.snapshot.pagework import BATCH, compressor, default_threads, pool  # noqa: E402
from wasmig.snapshot.state import PAGE_SIZE, MemoryState, Snapshot  # noqa: E402
from wasmig.snapshot.store import CheckpointDir, load_snapshot_deferred  # noqa: E402

MiB = 1 << 20
GOALS = {"random": "<= 1.3x floor (1 core)", "zero-heavy": "<= 0.1 s at 256 MiB",
         "incremental": "<= 60 ms", "restore": "<= 0.3 s at 256 MiB"}


def make_memory(size: int, kind: str, seed: int) -> ctypes.Array[ctypes.c_ubyte]:
    """A buffer standing for a guest's memory (a ctypes array, as wasmtime's memory is read)."""
    rng = random.Random(seed)
    buf = (ctypes.c_ubyte * size)()
    pages = size // PAGE_SIZE
    filled = range(pages) if kind == "random" else rng.sample(range(pages), max(1, pages // 10))
    for p in filled:
        ctypes.memmove(ctypes.addressof(buf) + p * PAGE_SIZE, rng.randbytes(PAGE_SIZE), PAGE_SIZE)
    return buf


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def floor_work(view: memoryview, copy_to: memoryview, lo: int, hi: int) -> None:
    """Copy, BLAKE3 and zstd-1 pages ``lo..hi``: the floor's unit of work."""
    cctx = compressor(1)
    for j in range(lo, hi):
        page = view[j * PAGE_SIZE:(j + 1) * PAGE_SIZE]
        copy_to[j * PAGE_SIZE:(j + 1) * PAGE_SIZE] = page
        blake3(page).digest()
        cctx.compress(page)


def floor(view: memoryview, copy_to: memoryview, threads: int) -> None:
    pages = len(view) // PAGE_SIZE
    ex = pool(threads)
    if ex is None:
        floor_work(view, copy_to, 0, pages)
        return
    for f in [ex.submit(floor_work, view, copy_to, lo, min(lo + BATCH, pages)) for lo in range(0, pages, BATCH)]:
        f.result()


def disk(directory: Path, nbytes: int, data: memoryview) -> None:
    """write + fsync ``nbytes`` (taken from ``data``, repeated) into a new file."""
    path = directory / "disk-floor"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, data[:min(left, len(data), 4 * MiB)])
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def snapshot_of(view: memoryview) -> Snapshot:
    return Snapshot(module_sha256="0" * 64, steps=1, point="entry", frames=[],
                    memories=[MemoryState(1, None, view)], tables=[], globals=[], dropped_data=[],
                    dropped_elems=[], wasi=None, instructions=None, engine="wasmtime", created_ns=0)


def restore(ck: Path, target: memoryview) -> None:
    _, pages = load_snapshot_deferred(ck)
    assert pages is not None
    pages[0].copy_into(target, range(len(pages[0])))


def one_run(base: Path, size: int, kind: str, seed: int, threads: int | None) -> dict[str, float]:
    buf = make_memory(size, kind, seed)
    view = memoryview(buf).cast("B")
    copy_to = memoryview(bytearray(b"\1" * size))  # allocated and touched: the floor's copy is a memcpy
    out: dict[str, float] = {}
    out["floor1"], out["floor1_cpu"] = timed(lambda: floor(view, copy_to, 1))
    out["floorN"], out["floorN_cpu"] = timed(lambda: floor(view, copy_to, default_threads()))
    ck = base / f"ck-{kind}-{size}-{seed}"
    store = CheckpointDir(ck, threads=threads)
    store.prepare()  # its directories, as a run makes them once its program is under way
    snap = snapshot_of(view)
    os.sync()
    out["checkpoint"], out["checkpoint_cpu"] = timed(lambda: store.write(snap))
    stats = store.last_stats
    assert stats is not None
    out["pause"] = stats.pause_seconds
    written = stats.page_bytes_written + stats.snapshot_bytes
    os.sync()
    out["disk"], _ = timed(lambda: disk(base, written, view))
    target = memoryview(bytearray(size))
    out["restore"], out["restore_cpu"] = timed(lambda: restore(ck, target))
    if target != view:
        raise SystemExit("benchmark: the restored memory differs from the checkpointed one")
    if kind == "random" and size == max(SIZES):
        rng = random.Random(seed + 1)
        for p in rng.sample(range(size // PAGE_SIZE), size // PAGE_SIZE // 100):
            buf[p * PAGE_SIZE + rng.randrange(PAGE_SIZE)] ^= 0xFF
        out["xxh3"], _ = timed(lambda: [xxhash.xxh3_128_intdigest(view[o:o + PAGE_SIZE])
                                        for o in range(0, size, PAGE_SIZE)])
        os.sync()
        out["incremental"], out["incremental_cpu"] = timed(lambda: store.write(snap))
        assert store.last_stats is not None
        out["incremental_pause"] = store.last_stats.pause_seconds
        out["incremental_new"] = store.last_stats.pages_new
    shutil.rmtree(ck)
    return out


SIZES = (16 * MiB, 64 * MiB, 256 * MiB)


def main() -> None:
    global SIZES
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16,64,256", help="MiB, comma-separated (default 16,64,256)")
    ap.add_argument("--runs", type=int, default=5, help="runs per size and kind; medians are printed")
    ap.add_argument("--threads", type=int, default=None, help="store threads (default: one per core)")
    ap.add_argument("--dir", default=None, help="where to write (default: the system temp directory)")
    args = ap.parse_args()
    SIZES = tuple(int(s) * MiB for s in args.sizes.split(","))
    base = Path(tempfile.mkdtemp(prefix="wasmig-ckbench-", dir=args.dir))
    print(f"# benchmarks/checkpoint.py: {default_threads()} cores usable, store threads "
          f"{args.threads or default_threads()}, load average {os.getloadavg()[0]:.1f}, dir {base}")
    print(f"# medians of {args.runs} interleaved runs; seconds wall (cpu); "
          "ratio = checkpoint or restore / floor 1 core, in wall time (and in CPU time: the figure to "
          "read when the load average exceeds the cores, which stretches wall times at random)")
    rows = []
    try:
        for kind in ("random", "zero-heavy"):
            for size in SIZES:
                runs = [one_run(base, size, kind, seed, args.threads) for seed in range(args.runs)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((kind, size, med))
                f1, f1_cpu = med["floor1"], med["floor1_cpu"]
                print(f"{kind:10} {size // MiB:4} MiB  floor 1 core {f1:.3f} ({f1_cpu:.3f})  "
                      f"all cores {med['floorN']:.3f} ({med['floorN_cpu']:.3f})  disk {med['disk']:.3f} | "
                      f"checkpoint {med['checkpoint']:.3f} ({med['checkpoint_cpu']:.3f}) = "
                      f"{med['checkpoint'] / f1:.2f}x (cpu {med['checkpoint_cpu'] / f1_cpu:.2f}x)  "
                      f"pause {med['pause']:.3f} = {med['pause'] / f1:.2f}x | "
                      f"restore {med['restore']:.3f} ({med['restore_cpu']:.3f}) = {med['restore'] / f1:.2f}x "
                      f"(cpu {med['restore_cpu'] / f1_cpu:.2f}x)")
                if "incremental" in med:
                    print(f"{'incr 1%':10} {size // MiB:4} MiB  xxh3 pass {med['xxh3']:.3f} | checkpoint "
                          f"{med['incremental']:.3f} ({med['incremental_cpu']:.3f}) = "
                          f"{med['incremental'] / f1:.2f}x floor, {med['incremental'] / med['xxh3']:.2f}x xxh3; "
                          f"pause {med['incremental_pause']:.3f}; {med['incremental_new']:.0f} pages new")
                sys.stdout.flush()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("# goals (issue 18):", "; ".join(f"{k} {v}" for k, v in GOALS.items()))
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
