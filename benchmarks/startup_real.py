#!/usr/bin/env python3
"""What does a checkpointable ``wasmig run`` cost at start-up for a big module, cached and not?

Issue 18 item 6 makes ``wasmig run`` on wasmtime run the instrumented (fast) variant by default,
so that any run can be checkpointed or migrated; ``--plain`` runs the module as it is. This
measures what that costs before the guest does any work, for the large real programs of
``tests/real_programs.py`` (QuickJS: 1.4 MB of code; CPython: 26 MB), each given a trivial
script (``qjs -e ''``, ``python -c pass``):

- **uncached**: a fresh, empty ``$WASMIG_CACHE``, so the run compiles the module (and, for the
  instrumented variant, instruments it first);
- **cached**: the same command again, everything taken from that cache.

The variants' flags are arguments (``--plain-args``, ``--instrumented-args``), so the same script
measures a wasmig that predates the change (plain: ``run``; instrumented: ``run --checkpoint-dir
{tmp}``) and one that has it (``run --plain`` and ``run``). Each figure is the median of
``--runs`` whole processes (uncached: each with its own empty cache), the variants alternating;
wall and CPU seconds (user + system of the child: the shared machine's other load disturbs it
much less) are printed, with the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import real_programs  # noqa: E402  (the shared download cache of the big programs)

GUEST_ARGS = {"quickjs": ["-e", ""], "cpython": ["-c", "pass"]}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(flags: list[str], program: Path, guest: list[str], cache: Path, timeout: float) -> tuple[float, float, str]:
    """(wall, cpu, stderr) of one ``python -m wasmig`` process with ``$WASMIG_CACHE`` = ``cache``."""
    scratch = Path(tempfile.mkdtemp(prefix="wasmig-startup-"))
    try:
        cmd = [sys.executable, "-m", "wasmig", *[f.replace("{tmp}", str(scratch / "ck")) for f in flags],
               str(program), *guest]
        env = dict(os.environ, WASMIG_CACHE=str(cache), PYTHONPATH=str(REPO))
        cpu0, wall0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False)
        wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return wall, cpu, proc.stderr.decode(errors="replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", default="quickjs,cpython", help="comma-separated (default quickjs,cpython)")
    ap.add_argument("--plain-args", default="run --plain", help="wasmig arguments of the plain variant")
    ap.add_argument("--instrumented-args", default="run", help="wasmig arguments of the instrumented variant")
    ap.add_argument("--runs", type=int, default=3, help="processes per figure; medians are printed")
    ap.add_argument("--uncached-runs", type=int, default=1, help="uncached processes per variant (slow)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds one process may take")
    args = ap.parse_args()
    variants = {"plain": shlex.split(args.plain_args), "instrumented": shlex.split(args.instrumented_args)}
    print(f"# benchmarks/startup_real.py: load average {os.getloadavg()[0]:.1f}; variants: "
          + "; ".join(f"{k} = wasmig {shlex.join(v)}" for k, v in variants.items()))
    for name in args.programs.split(","):
        program = real_programs.obtain(name)
        guest = GUEST_ARGS[name]
        caches = {v: Path(tempfile.mkdtemp(prefix=f"wasmig-cache-{v}-")) for v in variants}
        try:
            uncached: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            notes: dict[str, str] = {}
            for i in range(args.uncached_runs):
                for v, flags in variants.items():
                    if i:
                        shutil.rmtree(caches[v])
                        caches[v].mkdir()
                    wall, cpu, stderr = one_run(flags, program, guest, caches[v], args.timeout)
                    uncached[v].append((wall, cpu))
                    notes[v] = " | ".join(line for line in stderr.splitlines() if line.startswith("wasmig:"))
            cached: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            for _ in range(args.runs):
                for v, flags in variants.items():
                    wall, cpu, _ = one_run(flags, program, guest, caches[v], args.timeout)
                    cached[v].append((wall, cpu))
        finally:
            for c in caches.values():
                shutil.rmtree(c, ignore_errors=True)
        for v in variants:
            u, c = uncached[v], cached[v]
            med = statistics.median
            print(f"{name:8} {v:12} uncached {med(w for w, _ in u):7.2f} s wall ({med(x for _, x in u):7.2f} cpu)"
                  f"   cached {med(w for w, _ in c):6.3f} s wall ({med(x for _, x in c):6.3f} cpu)")
            if notes.get(v):
                print(f"{'':8} {v:12} first run's stderr: {notes[v][:400]}")
        sys.stdout.flush()
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
