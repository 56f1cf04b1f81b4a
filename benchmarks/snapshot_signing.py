#!/usr/bin/env python3
"""What signing snapshots (issue 17) costs a checkpoint and a restore, measured side by side.

A checkpoint's write (:meth:`wasmig.snapshot.store.CheckpointDir.write`) now appends a seal: one
Ed25519 signature of the 32-byte checksum it already computed (the key is read once per process).
A restore reads the seal and verifies it once. This runs, alternately in one process, the write
of the same snapshot sealed and unsealed (``_encode(sign=False)``), and the reader's seal check,
for guest memories of the given sizes, each into a fresh checkpoint directory so every page is
new (the checkpoint's worst case). CPU time (``time.process_time``: the machine is shared and
loaded, so wall time mostly measures other processes) and wall time, medians over ``--runs``
alternating pairs; the ratio sealed/unsealed is the figure to read (issue 17: at most 1.10). On a
loaded machine the pairs' ratio wanders by +-20% either way, so the seal's own cost is measured
too, directly (median CPU time of one seal): the sealed write's extra cost is that, whatever the
noise.

It also times, in fresh interpreters alternately, importing the snapshot reader without and
with the signing module (the ``cryptography`` package), which a restore now pays once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wasmig.snapshot import store  # noqa: E402
from wasmig.snapshot.signing import own_key_pair  # noqa: E402
from wasmig.snapshot.state import MemoryState, Snapshot  # noqa: E402


def snapshot_of(mib: int) -> Snapshot:
    """A snapshot whose pages are all distinct and non-zero (nothing elided or deduplicated)."""
    pages = mib * 16
    data = b"".join(i.to_bytes(8, "little") * 8192 for i in range(1, pages + 1))
    return Snapshot(module_sha256="0" * 64, steps=None, point="idle", frames=[],
                    memories=[MemoryState(1, None, data)], tables=[], globals=[], dropped_data=[],
                    dropped_elems=[], wasi=None)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def unsealed_encode(manifest: dict, *, sign: bool = True) -> list[bytes]:
    return ORIGINAL_ENCODE(manifest, sign=False)


ORIGINAL_ENCODE = store._encode


def write_pair(snap: Snapshot, root: Path, i: int) -> dict[str, tuple[float, float]]:
    out = {}
    order = ("sealed", "unsealed") if i % 2 == 0 else ("unsealed", "sealed")
    for kind in order:
        where = root / f"{kind}-{i}"
        if kind == "sealed":
            out[kind] = timed(lambda where=where: store.CheckpointDir(where).write(snap))
        else:
            with mock.patch.object(store, "_encode", unsealed_encode):
                out[kind] = timed(lambda where=where: store.CheckpointDir(where).write(snap))
        shutil.rmtree(where)
    return out


def verify_time(snap: Snapshot, root: Path, runs: int) -> float:
    """Median CPU seconds of reading a sealed snapshot file's container and verifying its seal."""
    path = store.CheckpointDir(root / "verify").write(snap)
    samples = []
    for _ in range(runs):
        c, _ = timed(lambda: store.read_sealed(path)[1].seal.valid())
        samples.append(c)
    return statistics.median(samples)


def seal_cost(runs: int = 2000) -> float:
    """Median CPU seconds of making one seal (what a sealed write adds to an unsealed one: the
    checksum is computed either way), per call over batches of 100."""
    from wasmig.snapshot.signing import seal_for

    batches = []
    for _ in range(runs // 100):
        c0 = time.process_time()
        for _ in range(100):
            seal_for(b"\x01" * 32)
        batches.append((time.process_time() - c0) / 100)
    return statistics.median(batches)


def import_times(runs: int) -> tuple[float, float]:
    """Median wall seconds of ``import wasmig.snapshot.store`` without and with the signing module."""
    plain, signed = [], []
    code = {False: "import wasmig.snapshot.store",
            True: "import wasmig.snapshot.store, wasmig.snapshot.signing"}
    for i in range(runs):
        for with_signing in ((False, True) if i % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code[with_signing]], check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            (signed if with_signing else plain).append(time.perf_counter() - t0)
    return statistics.median(plain), statistics.median(signed)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,16,64", help="guest memory sizes in MiB (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=9, help="alternating pairs per size (default: %(default)s)")
    ap.add_argument("--dir", default=None, help="where to write (default: the system temp dir)")
    args = ap.parse_args(argv)
    keys = tempfile.mkdtemp(prefix="wasmig-bench-keys-")
    os.environ["WASMIG_KEY_DIR"] = keys
    assert own_key_pair() is not None  # made now, not inside the first timed write
    print(f"load average {os.getloadavg()[0]:.1f}; CPU time (process_time) and wall time, medians of "
          f"{args.runs} alternating pairs")
    print(f"{'MiB':>5} {'unsealed cpu':>13} {'sealed cpu':>11} {'ratio':>6} {'unsealed wall':>14} "
          f"{'sealed wall':>12} {'ratio':>6} {'verify cpu':>11}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for mib in (int(s) for s in args.sizes.split(",")):
            snap = snapshot_of(mib)
            pairs = [write_pair(snap, root, i) for i in range(args.runs)]
            med = {k: [statistics.median(p[k][j] for p in pairs) for j in (0, 1)] for k in ("sealed", "unsealed")}
            verify = verify_time(snap, root, args.runs)
            print(f"{mib:>5} {med['unsealed'][0] * 1e3:>11.1f}ms {med['sealed'][0] * 1e3:>9.1f}ms "
                  f"{med['sealed'][0] / med['unsealed'][0]:>6.3f} {med['unsealed'][1] * 1e3:>12.1f}ms "
                  f"{med['sealed'][1] * 1e3:>10.1f}ms {med['sealed'][1] / med['unsealed'][1]:>6.3f} "
                  f"{verify * 1e3:>9.2f}ms")
    print(f"one seal (Ed25519 signature of the checksum): {seal_cost() * 1e6:.0f} us of CPU per snapshot written")
    plain, signed = import_times(args.runs)
    print(f"import wasmig.snapshot.store: {plain * 1e3:.0f} ms; with the signing module (cryptography): "
          f"{signed * 1e3:.0f} ms (+{(signed - plain) * 1e3:.0f} ms, once per restore)")
    print(f"load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(keys, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
