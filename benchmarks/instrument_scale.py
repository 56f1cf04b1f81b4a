#!/usr/bin/env python3
"""How the instrumentation pass scales to big modules (issue 15 item 3): time and peak memory.

For each program (CPython 3.12 for WASI, 26 MB; QuickJS-ng, 1.4 MB; fetched and cached by
``tests/real_programs.py``) and each variant of the pass (``fast``: polls only, wasmig's default;
``steps``: the deterministic one that counts stable points), a fresh Python process decodes the
module, then validates, instruments and encodes it, the way ``wasmig run --checkpoint-dir`` does
on a cache miss. It prints, per run, the CPU time of the process (user + system: much less
disturbed than wall time by other load on a shared machine) for decoding and for the pass
(validation, which the pass needs for its stack types, instrumentation and encoding), the wall
time of the pass, and the process's peak resident memory.

``--baseline REV`` runs the same measurement on a git revision of this repository (its files
extracted into a temporary directory, as ``overhead.py --baseline`` does) in the same invocation,
alternating with the working tree, and prints the ratios: before/after side by side in one run.
``--rounds N`` (default 1: a CPython run takes minutes), ``--programs cpython,quickjs``,
``--variants fast,steps``.

A change meant to make the pass faster without changing its output is checked byte for byte
with ``benchmarks/instrument_hashes.py`` (digests recorded with the old pass, compared with the new).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from overhead import baseline_tree  # noqa: E402

from tests import real_programs  # noqa: E402

#: Run in a child process, with the tree under test first on sys.path: prints one JSON line.
CHILD = r"""
import json, resource, sys, time
path, variant = sys.argv[1], sys.argv[2]
import wasmig
from wasmig.instrument.unwind import instrument
w0, c0 = time.perf_counter(), time.process_time()
module = wasmig.Module.from_file(path, validate=False)  # decoded; validation is part of the pass's time
w1, c1 = time.perf_counter(), time.process_time()
done = instrument(module, count_steps=variant == "steps")
data = getattr(done, "data", None)
if data is None:  # a revision whose pass returned the IR only
    from wasmig.binary.encoder import encode_module
    data = encode_module(done.ir)
w2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({"load_cpu": c1 - c0, "load_wall": w1 - w0, "pass_cpu": c2 - c1, "pass_wall": w2 - w1,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "size": len(data),
                  "sites": len(done.sitemap.sites)}))
"""


def measure(tree: Path, wasm: Path, variant: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(wasm), variant], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"instrumenting {wasm.name} ({variant}) in {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", metavar="REV", help="also measure this git revision, side by side")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--programs", default="cpython,quickjs")
    ap.add_argument("--variants", default="fast,steps")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    args = ap.parse_args()
    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for p in programs:
        if p not in real_programs.PROGRAMS:
            sys.exit(f"instrument_scale: unknown program {p!r} (known: {', '.join(real_programs.PROGRAMS)})")
    for v in variants:
        if v not in ("fast", "steps"):
            sys.exit(f"instrument_scale: unknown variant {v!r} (fast, steps)")
    with tempfile.TemporaryDirectory(prefix="wasmig-baseline-") as tmp:
        trees = {"now": REPO}
        if args.baseline:
            trees = {f"{args.baseline}": baseline_tree(args.baseline, Path(tmp)), "now": REPO}
        for name in programs:
            try:
                wasm = real_programs.obtain(name)
            except real_programs.ProgramUnavailable as e:
                print(f"{name}: unavailable ({e})")
                continue
            spec = real_programs.PROGRAMS[name]
            print(f"\n== {spec['title']}: {wasm.stat().st_size} bytes", flush=True)
            for variant in variants:
                results: dict[str, list[dict]] = {t: [] for t in trees}
                for _ in range(args.rounds):
                    for tree_name, tree in trees.items():  # alternating: other load falls on both
                        results[tree_name].append(measure(tree, wasm, variant, args.timeout))
                for tree_name, runs in results.items():
                    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    print(f"  {variant:5} {tree_name:>12}: decode {med['load_cpu']:6.1f} s CPU; "
                          f"pass {med['pass_cpu']:6.1f} s CPU ({med['pass_wall']:6.1f} s wall); "
                          f"peak {med['peak_mb']:6.0f} MB; output {med['size'] / 1e6:6.1f} MB, "
                          f"{int(med['sites'])} sites", flush=True)
                if len(trees) == 2:
                    (_, old), (_, new) = results.items()
                    ratio_cpu = statistics.median(r["pass_cpu"] for r in old) / statistics.median(
                        r["pass_cpu"] for r in new)
                    ratio_mem = statistics.median(r["peak_mb"] for r in old) / statistics.median(
                        r["peak_mb"] for r in new)
                    print(f"  {variant:5} {'ratio':>12}: pass CPU {ratio_cpu:.2f}x faster, "
                          f"peak memory {ratio_mem:.2f}x smaller", flush=True)


if __name__ == "__main__":
    main()
