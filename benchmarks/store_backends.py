#!/usr/bin/env python3
"""What a checkpoint costs in each snapshot store: local checkpoint directory, ``file://``
(object layout on a filesystem) and ``s3://`` (moto's S3 server on loopback, or ``--s3 URL``).

For one synthetic memory (``--mib``, typical heap pages: a quarter zero, the rest small integers
in mostly-zero words, so they compress), each run measures in every store, the stores' order
rotated from run to run (interleaved, so the load of the other agents on this shared machine hits
every store alike):

- **write**: the first checkpoint (every non-zero page new; s3: into a fresh bucket): wall
  seconds, and the CPU seconds of this process (``time.process_time``: hashing, compressing, and
  the client's request handling; moto runs in a process of its own);
- **pause**: the part of the write the guest stays stopped for (``WriteStats.pause_seconds``);
- **incremental**: ``--changed`` percent of the pages change and the same store writes again;
- **restore**: ``load_deferred`` + ``copy_into`` a fresh buffer (every page read and verified)
  through the store that wrote; **restore_cold**: the same through a store opened anew, as a
  restore in another process does (for s3: a new client, and the bucket's indexes read);
  each with its CPU seconds beside;
- and for s3, the first write's page bytes as a single PUT: the floor a write of them can reach
  (layout 1 wrote one object per page; layout 2 writes them as one or a few packs).

Medians over ``--runs`` runs, printed beside the local directory's as a ratio. Against moto the
s3 figures are the client's and a Python server's costs over loopback, not a real S3's latency:
they show the request count and per-request overhead of each layout.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(url: str, memory: bytearray, changed: float, rng: random.Random) -> dict[str, float]:
    store = open_store(url)
    out: dict[str, float] = {}
    out["write"], out["write_cpu"] = timed(lambda: store.write(snapshot_of(memory)))
    stats = store.last_stats
    assert stats is not None
    out["pause"], out["new_pages"] = stats.pause_seconds, stats.pages_new
    backend = getattr(store, "backend", None)
    if backend is not None and getattr(backend, "bucket", None):  # s3: what one pack of these pages would cost
        blob = os.urandom(stats.page_bytes_written)
        out["one_put"], out["one_put_cpu"] = timed(lambda: backend.put(".wasmig/bench-pack", blob))
    pages = len(memory) // PAGE_SIZE
    for j in rng.sample(range(pages), max(1, int(pages * changed / 100))):
        memory[j * PAGE_SIZE] = (memory[j * PAGE_SIZE] + 1) & 0xFF
    out["incremental"], out["incremental_cpu"] = timed(lambda: store.write(snapshot_of(memory)))
    target = bytearray(len(memory))

    def restore(reader: SnapshotStore) -> None:
        _, paged = reader.load_deferred()
        assert paged is not None
        paged[0].copy_into(memoryview(target), range(len(paged[0])))

    out["restore"], out["restore_cpu"] = timed(lambda: restore(store))
    assert target == memory, "the restore read back other bytes"
    target[:] = bytes(len(target))
    out["restore_cold"], out["restore_cold_cpu"] = timed(lambda: restore(open_store(url)))
    assert target == memory, "the cold restore read back other bytes"
    return out


_MOTO = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
print("ready", flush=True)
sys.stdin.read()
"""


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in a process of its own (its CPU is not this process's), on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", _MOTO, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline() == b"ready\n"
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(WASMIG_S3_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    return server, endpoint


def fresh_bucket(endpoint: str) -> str:
    """A new bucket (every page new, as for the first program in it)."""
    import boto3

    name = f"wasmig-bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changed", type=float, default=2.0, help="percent of pages changed for the incremental write")
    ap.add_argument("--s3", default=None, help="an s3://bucket/prefix to use instead of moto on loopback")
    args = ap.parse_args()
    server, endpoint = (None, "") if args.s3 else start_moto()
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
                       "s3": f"{args.s3.rstrip('/') if args.s3 else fresh_bucket(endpoint)}/bench-{fresh}"}[kind]
                results[kind].append(measure(url, bytearray(base), args.changed, random.Random(run)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.kill()
            server.wait()
    print(f"{args.mib} MiB memory ({len(base) // PAGE_SIZE} pages), incremental: {args.changed}% of pages changed; "
          f"medians of {args.runs} interleaved runs (s3: {'moto on loopback' if server else args.s3})")
    local = {k: statistics.median(r[k] for r in results["local"]) for k in results["local"][0]}
    for kind in kinds:
        med = {k: statistics.median(r[k] for r in results[kind]) for k in results[kind][0]}
        cells = ", ".join(f"{k} {med[k]:.3f} s ({med[k] / local[k]:.1f}x)" for k in
                          ("write", "write_cpu", "pause", "incremental", "incremental_cpu", "restore", "restore_cpu",
                           "restore_cold", "restore_cold_cpu"))
        print(f"  {kind:5}: {cells}; {int(med['new_pages'])} new pages")
        if "one_put" in med:
            print(f"         the same bytes as one PUT (one pack per write): {med['one_put']:.3f} s, "
                  f"CPU {med['one_put_cpu']:.3f} s")


if __name__ == "__main__":
    main()
