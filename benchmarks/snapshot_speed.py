#!/usr/bin/env python3
"""How fast does wasmig write and read snapshots, and how big are they on disk?

A checkpoint pauses the guest while its memory is written, so the store is on the critical path
of every checkpoint and migration. This measures the store alone (``wasmig.snapshot.store``), on
synthetic snapshots whose linear memory is all "touched" (every page allocated):

- ``random``:     every page random bytes: nothing to compress or deduplicate (the worst case).
- ``zero-heavy``: 90% all-zero pages (elided), the rest random: a typical sparse heap.

For 16, 64 and 256 MiB of memory and each kind it reports the median over several runs
(fewer for 256 MiB) of:

- checkpoint: ``CheckpointDir.write`` into an empty directory, and MiB/s of guest memory;
- restore: ``load_snapshot`` of that snapshot (pages read, decompressed and hash-verified);
- on disk: the bytes of every file written (snapshot file + pack file);
- incremental: 1% of the pages get new contents and the snapshot is written again into the
  same directory: time and bytes written (only the changed pages plus the small snapshot file);
- single file: ``write_single_file`` (``--output FILE``) time and size.

Each run uses a fresh directory under ``--dir`` (default: the system temp dir; pass a directory
on the filesystem you care about, since the pack and snapshot files are fsynced and the disk usually
dominates). ``os.sync()`` runs before every timed write so that writeback left over from the
previous run is not charged to it. Restore reads come from the page cache (the files were just
written), so they measure the CPU side of a restore, not a cold disk.

The measurement is :func:`measure_store`, which takes any :class:`Snapshot`: a snapshot captured
from a real engine can be measured the same way. Runs in well under 3 minutes on 2 cores;
``--sizes 16`` for a quick look.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from wasmig.snapshot.state import PAGE_SIZE, MemoryState, Snapshot  # noqa: E402
from wasmig.snapshot.store import CheckpointDir, load_snapshot, write_single_file  # noqa: E402

MiB = 1 << 20


@dataclass
class StoreMeasurement:
    """One run of :func:`measure_store` (seconds and bytes)."""

    memory_bytes: int
    checkpoint_s: float
    restore_s: float
    disk_bytes: int
    incremental_s: float
    incremental_bytes: int
    incremental_pages: int
    single_write_s: float
    single_load_s: float
    single_bytes: int


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def change_pages(snapshot: Snapshot, fraction: float, rng: random.Random) -> int:
    """Give ``fraction`` of the first memory's pages new random contents (at least one); returns how many."""
    mem = snapshot.memories[0]
    data = bytearray(mem.data)
    pages = len(data) // PAGE_SIZE
    chosen = rng.sample(range(pages), max(1, round(pages * fraction)))
    for p in chosen:
        data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = os.urandom(PAGE_SIZE)
    mem.data = bytes(data)
    return len(chosen)


def measure_store(snapshot: Snapshot, workdir: Path, rng: random.Random,
                  change_fraction: float = 0.01) -> StoreMeasurement:
    """Write, read, incrementally rewrite and single-file-write ``snapshot`` under ``workdir`` (emptied first).

    ``snapshot`` is modified (its first memory gets the incremental change), so pass a copy if it
    is needed afterwards.
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    memory_bytes = sum(len(m.data) for m in snapshot.memories)
    store = CheckpointDir(workdir / "ck")
    os.sync()
    checkpoint_s, path = _timed(lambda: store.write(snapshot))
    assert isinstance(path, Path)
    disk = _tree_bytes(workdir / "ck")
    restore_s, loaded = _timed(lambda: load_snapshot(path))
    assert loaded == snapshot, "the store did not round-trip the snapshot"
    del loaded
    changed = change_pages(snapshot, change_fraction, rng)
    os.sync()
    incremental_s, _ = _timed(lambda: store.write(snapshot))
    assert store.last_stats is not None
    incremental_bytes = store.last_stats.bytes_written
    single = workdir / "single.snap"
    os.sync()
    single_write_s, _ = _timed(lambda: write_single_file(snapshot, single))
    single_load_s, _ = _timed(lambda: load_snapshot(single))
    result = StoreMeasurement(memory_bytes, checkpoint_s, restore_s, disk, incremental_s, incremental_bytes, changed,
                              single_write_s, single_load_s, single.stat().st_size)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def synthetic_snapshot(size_mib: int, kind: str, rng: random.Random) -> Snapshot:
    """A snapshot whose only content is one memory of ``size_mib`` MiB of the given kind."""
    pages = size_mib * MiB // PAGE_SIZE
    if kind == "random":
        data = os.urandom(pages * PAGE_SIZE)
    elif kind == "zero-heavy":
        buf = bytearray(pages * PAGE_SIZE)
        for p in rng.sample(range(pages), max(1, pages // 10)):
            buf[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = os.urandom(PAGE_SIZE)
        data = bytes(buf)
    else:
        raise ValueError(f"unknown memory kind {kind!r}")
    return Snapshot(module_sha256="0" * 64, steps=1, point="entry", frames=[],
                    memories=[MemoryState(pages, None, data)], tables=[], globals=[], dropped_data=[],
                    dropped_elems=[], wasi=None)


def median_measurement(runs: list[StoreMeasurement]) -> StoreMeasurement:
    fields = StoreMeasurement.__dataclass_fields__
    return StoreMeasurement(**{f: type(getattr(runs[0], f))(statistics.median(getattr(r, f) for r in runs))
                               for f in fields})


def engine_module() -> object:
    """A module that is all memory (exported, growable): the guest state the engine captures."""
    import wasmig
    from wasmig.binary.encoder import encode_module
    from wasmig.binary.ir import Export, Limits, MemType
    from wasmig.binary.ir import Module as IRModule

    ir = IRModule(mems=[MemType(Limits(1))], exports=[Export("memory", "memory", 0)])
    return wasmig.Module.from_bytes(encode_module(ir))


def measure_engine(size_mib: int, kind: str, workdir: Path, rng: random.Random) -> tuple[float, float]:
    """(checkpoint s, restore s) through the interpreter engine: ``inst.checkpoint()`` + the store
    write, and the store load + ``wasmig.restore`` (memory copied back into a fresh instance)."""
    import wasmig
    from wasmig.snapshot.store import CheckpointDir, load_snapshot

    module = engine_module()
    inst = wasmig.Instance(module)  # type: ignore[arg-type]
    memory = inst.exports["memory"]
    memory.grow(size_mib * 16 - 1)
    template = synthetic_snapshot(size_mib, kind, rng)
    memory.write(0, template.memories[0].data)
    del template
    if workdir.exists():
        shutil.rmtree(workdir)
    os.sync()
    start = time.perf_counter()
    path = CheckpointDir(workdir).write(inst.checkpoint())
    checkpoint_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = wasmig.restore(load_snapshot(path), module=module)  # type: ignore[arg-type]
    restore_s = time.perf_counter() - start
    assert restored.exports["memory"].size_pages == memory.size_pages
    return checkpoint_s, restore_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,64,256", help="memory sizes in MiB (default: %(default)s)")
    ap.add_argument("--kinds", default="random,zero-heavy", help="memory contents (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=5, help="runs per size below 256 MiB (default: %(default)s)")
    ap.add_argument("--big-runs", type=int, default=2, help="runs for sizes of 256 MiB and more (default: %(default)s)")
    ap.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    args = ap.parse_args()
    rng = random.Random(1)
    base = Path(tempfile.mkdtemp(prefix="wasmig-snapbench-", dir=args.dir))
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            runs = args.big_runs if size >= 256 else args.runs
            for kind in args.kinds.split(","):
                results = []
                for _ in range(runs):
                    snap = synthetic_snapshot(size, kind, rng)
                    results.append(measure_store(snap, base / "run", rng))
                    del snap
                rows.append((size, kind, runs, median_measurement(results)))
                print(f"  measured {size} MiB {kind} ({runs} runs)", file=sys.stderr, flush=True)
        engine_rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            for kind in args.kinds.split(","):
                runs = args.big_runs if size >= 256 else args.runs
                pairs = [measure_engine(size, kind, base / "engine", rng) for _ in range(runs)]
                engine_rows.append((size, kind, runs, statistics.median(p[0] for p in pairs),
                                    statistics.median(p[1] for p in pairs)))
                print(f"  measured engine {size} MiB {kind} ({runs} runs)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    head = (f"{'memory':>8} {'contents':<10} {'runs':>4} | {'checkpoint':>16} | {'restore':>16} | {'on disk':>9} | "
            f"{'1% incremental':>22} | {'single file w/r, size':>26}")
    print(head)
    print("-" * len(head))
    for size, kind, runs, m in rows:
        mib = m.memory_bytes / MiB
        print(f"{size:>4} MiB {kind:<10} {runs:>4} | "
              f"{m.checkpoint_s:6.2f} s {mib / m.checkpoint_s:5.0f} MiB/s | "
              f"{m.restore_s:6.2f} s {mib / m.restore_s:5.0f} MiB/s | "
              f"{m.disk_bytes / MiB:5.1f} MiB | "
              f"{m.incremental_s:5.2f} s {m.incremental_bytes / MiB:5.2f} MiB {m.incremental_pages:4d} pg | "
              f"{m.single_write_s:5.2f} s {m.single_load_s:5.2f} s {m.single_bytes / MiB:6.1f} MiB")
    print("\nMiB/s is guest memory per second. Incremental: time and bytes written when the given number of "
          "pages changed.")
    print("\nwhole engine path (interpreter): capture + write, load + restore into a fresh instance")
    print(f"{'memory':>8} {'contents':<10} {'runs':>4} | {'checkpoint':>16} | {'restore':>16}")
    for size, kind, runs, ck, rs in engine_rows:
        print(f"{size:>4} MiB {kind:<10} {runs:>4} | {ck:6.2f} s {size / ck:5.0f} MiB/s | "
              f"{rs:6.2f} s {size / rs:5.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
