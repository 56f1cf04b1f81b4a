"""Synthetic snapshots for the store tests, and the writer processes those tests kill or race.

Kept out of the test module so that child processes (``python -m tests.snapshot_synth ...``)
start quickly (no pytest/hypothesis import) and so the parent can rebuild, bit for bit, the
snapshot a child wrote from the same seed.
"""

from __future__ import annotations

import random
import sys

from wasmig.snapshot.state import (
    PAGE_SIZE,
    FdSnapshot,
    FrameState,
    GlobalState,
    MemoryState,
    Snapshot,
    TableState,
    WasiSnapshot,
)


def make_memory(rng: random.Random, pages: int, zero_frac: float = 0.25, repeat_frac: float = 0.2) -> bytes:
    """Random, zero, repeated (dedup within a snapshot) and compressible pages, in random order."""
    out: list[bytes] = []
    for _ in range(pages):
        r = rng.random()
        if r < zero_frac:
            out.append(bytes(PAGE_SIZE))
        elif r < zero_frac + repeat_frac and out:
            out.append(rng.choice(out))
        elif rng.random() < 0.5:
            out.append(rng.randbytes(PAGE_SIZE))
        else:  # a typical heap page: small integers, mostly zero bytes
            words = [rng.randrange(256) if rng.random() < 0.3 else 0 for _ in range(PAGE_SIZE // 4)]
            out.append(b"".join(w.to_bytes(4, "little") for w in words))
    return b"".join(out)


def make_snapshot(seed: int, pages: int = 16, memories: int = 1, meta: dict | None = None) -> Snapshot:
    """A snapshot exercising every field: frames with every value type, tables, globals, WASI fds."""
    rng = random.Random(seed)
    mems = [MemoryState(1, None if i else 65536, make_memory(rng, pages if i == 0 else 2)) for i in range(memories)]
    frames = [
        FrameState(3, 0x10, [("i32", rng.getrandbits(32)), ("i64", rng.getrandbits(64))], [("f32", 0x7FC00001)]),
        FrameState(7, 0x2A, [("f64", 0x7FF8000000000001), ("funcref", 2), ("funcref", None),
                             ("externref", None)], []),
        FrameState(9, 0x5, [], [("i64", (1 << 64) - 1), ("i32", 0)]),
    ]
    return Snapshot(
        module_sha256=f"{rng.getrandbits(256):064x}",
        steps=rng.randrange(1 << 40),
        point="loop",
        frames=frames,
        memories=mems,
        tables=[TableState("funcref", 4, None, [None, 1, 2, None]), TableState("externref", 1, 8, [None])],
        globals=[GlobalState("i32", True, ("i32", 42)), GlobalState("f64", False, ("f64", 0x400921FB54442D18)),
                 GlobalState("funcref", True, ("funcref", None))],
        dropped_data=[False, True],
        dropped_elems=[True],
        wasi=WasiSnapshot(
            args=["prog.wasm", "--n", "3 words"], env={"HOME": "/", "LANG": "C.UTF-8"}, monotonic_ns=123456789,
            fds=[
                FdSnapshot(0, "stdio", 2, 0x1FF, 0, 0, True, False),
                FdSnapshot(1, "stdio", 2, 0x1FF, 0, 0, False, True),
                FdSnapshot(3, "dir", 3, 0x1FFFFFFF, 0x1FFFFFFF, 0, True, True, preopen="/data", guest_path="/data",
                           host_path="/tmp/data"),
                FdSnapshot(4, "file", 4, 0x1FF, 0, 1, True, True, offset=rng.randrange(1 << 20), guest_path="/data/x",
                           base_preopen="/data", relpath="x", host_path="/tmp/data/x", size=100, mtime_ns=5),
                FdSnapshot(5, "tcp_listener", 6, 0x1FF, 0, 0, True, True, address="127.0.0.1:8080"),
            ]),
        instructions=rng.randrange(1 << 50),
        engine="interp",
        created_ns=rng.randrange(1 << 62),
        meta=meta or {"module_path": "/tmp/prog.wasm", "seed": seed},
    )


def writer_snapshot(writer: int, i: int, pages: int) -> Snapshot:
    """The i-th snapshot of a concurrent writer: shares most pages with the other writer's."""
    snap = make_snapshot(1000, pages, meta={"writer": writer, "i": i})
    data = bytearray(snap.memories[0].data)
    rng = random.Random(writer * 1000 + i)
    for p in rng.sample(range(pages), max(1, pages // 8)):
        data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = rng.randbytes(PAGE_SIZE)
    snap.memories[0].data = bytes(data)
    snap.steps = writer * 1000 + i
    return snap


def _write_loop(directory: str, single: str, seed: int, pages: int) -> None:
    """Write ever-changing large snapshots forever (until SIGKILLed): a quarter of the pages change each time.

    Each iteration writes both into the checkpoint directory and over the single file ``single``.
    """
    from wasmig.snapshot.store import CheckpointDir, write_single_file

    rng = random.Random(seed)
    snap = make_snapshot(seed, pages)
    data = bytearray(snap.memories[0].data)
    store = CheckpointDir(directory)
    print("ready", flush=True)
    while True:
        for p in rng.sample(range(pages), pages // 4):
            data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = rng.randbytes(PAGE_SIZE)
        snap.memories[0].data = bytes(data)
        snap.steps += 1
        if seed % 2:  # alternate the order so that kills also land in the single-file write
            write_single_file(snap, single)
            store.write(snap)
        else:
            store.write(snap)
            write_single_file(snap, single)


def _write_n(directory: str, writer: int, n: int, pages: int) -> None:
    """Write ``n`` snapshots as soon as the parent says go (so two writers really overlap)."""
    from wasmig.snapshot.store import CheckpointDir

    snaps = [writer_snapshot(writer, i, pages) for i in range(n)]
    store = CheckpointDir(directory)
    print("ready", flush=True)
    sys.stdin.readline()
    for s in snaps:
        store.write(s)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "write-loop":
        _write_loop(rest[0], rest[1], int(rest[2]), int(rest[3]))
    elif cmd == "write-n":
        _write_n(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    else:
        raise SystemExit(f"unknown command {cmd}")
