#!/usr/bin/env python3
"""What a checkpoint costs in each snapshot store: local checkpoint directory, ``file://``
(object layout on a filesystem) and ``s3://`` (moto's S3 server on loopback, or ``--s3 URL``).

For one synthetic memory (``--mib``, typical heap pages: a quarter zero, the rest small integers
in mostly-zero words, so they compress), each run measures in every store, the stores' order
rotated from run to run (interleaved, so the load of the other agents on this shared machine hits
every store alike):

- **write**: the first checkpoint (every non-zero page new): wall seconds, and the CPU seconds of
  this process (``time.process_time``: hashing, compressing, and the client's request handling;
  moto runs in this process too, so for s3 it includes the server's work);
- **pause**: the part of the write the guest stays stopped for (``WriteStats.pause_seconds``);
- **incremental**: ``--changed`` percent of the pages change and the same store writes again;
- **restore**: ``load_deferred`` + ``copy_into`` a fresh buffer (every page read and verified).

Medians over ``--runs`` runs, printed beside the local directory's as a ratio. Against moto the
s3 figures are the client's and a Python server's costs over loopback, not a real S3's latency:
they show the request count and per-request overhead of one object per page.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from wasmig.snapshot.state import PAGE_SIZE, MemoryState, Snapshot  # noqa: E402
from wasmig.snapshot.stores import SnapshotStore, open_store  # noqa: E402


def heap(rng: random.Random, pages: int) -> bytearray:
    out = bytearray(pages * PAGE_SIZE)
    for j in range(pages):
        if rng.random() < 0.25:
            continue
        words = bytes(rng.randrange(256) if rng.random() < 0.3 else 0 for _ in range(PAGE_SIZE // 4))
        out[j * PAGE_SIZE:(j + 1) * PAGE_SIZE] = b"".join(w.to_bytes(4, "little") for w in words)
    return out


def snapshot_of(memory: bytearray) -> Snapshot:
    return Snapshot(module_sha256="0" * 64, steps=None, point="after_call", frames=[],
                    memories=[MemoryState(min=len(memory) // PAGE_SIZE, max=None, data=memory)],  # type: ignore[arg-type]
                    tables=[], globals=[], dropped_data=[], dropped_elems=[], wasi=None)


def measure(store: SnapshotStore, memory: bytearray, changed: float, rng: random.Random) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    store.write(snapshot_of(memory))
    write, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = store.last_stats
    pages = len(memory) // PAGE_SIZE
    for j in rng.sample(range(pages), max(1, int(pages * changed / 100))):
        memory[j * PAGE_SIZE] = (memory[j * PAGE_SIZE] + 1) & 0xFF
    t0 = time.perf_counter()
    store.write(snapshot_of(memory))
    incremental = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, paged = store.load_deferred()
    target = bytearray(len(memory))
    assert paged is not None
    paged[0].copy_into(memoryview(target), range(len(paged[0])))
    restore = time.perf_counter() - t0
    assert target == memory, "the restore read back other bytes"
    return {"write": write, "write_cpu": cpu, "pause": stats.pause_seconds, "incremental": incremental,
            "restore": restore, "page_objects": stats.pages_new}


def start_moto() -> tuple[object, str]:
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(WASMIG_S3_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="wasmig-bench")
    return server, "s3://wasmig-bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changed", type=float, default=2.0, help="percent of pages changed for the incremental write")
    ap.add_argument("--s3", default=None, help="an s3://bucket/prefix to use instead of moto on loopback")
    args = ap.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server, s3_base = (None, args.s3.rstrip("/")) if args.s3 else start_moto()
    tmp = Path(tempfile.mkdtemp(prefix="wasmig-bench-stores-"))
    rng = random.Random(1)
    base = heap(rng, args.mib * 1024 * 1024 // PAGE_SIZE)
    kinds = ["local", "file", "s3"]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        for run in range(args.runs):
            order = kinds[run % 3:] + kinds[:run % 3]
            for kind in order:
                fresh = uuid.uuid4().hex[:8]
                url = {"local": str(tmp / f"local-{fresh}"), "file": f"file://{tmp}/file-{fresh}",
                       "s3": f"{s3_base}/bench-{fresh}"}[kind]
                results[kind].append(measure(open_store(url), bytearray(base), args.changed, random.Random(run)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    print(f"{args.mib} MiB memory ({len(base) // PAGE_SIZE} pages), incremental: {args.changed}% of pages changed; "
          f"medians of {args.runs} interleaved runs (s3: {'moto on loopback' if server else args.s3})")
    local = {k: statistics.median(r[k] for r in results["local"]) for k in results["local"][0]}
    for kind in kinds:
        med = {k: statistics.median(r[k] for r in results[kind]) for k in results[kind][0]}
        cells = ", ".join(f"{k} {med[k]:.3f} s ({med[k] / local[k]:.1f}x)" for k in
                          ("write", "write_cpu", "pause", "incremental", "restore"))
        print(f"  {kind:5}: {cells}; {int(med['page_objects'])} new pages")


if __name__ == "__main__":
    main()
