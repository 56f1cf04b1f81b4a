#!/usr/bin/env python3
"""Do wasm threads run in parallel on wasmtime, and what do the epoch checks cost?

wasmig runs a wasi-threads program on wasmtime with one OS thread per wasm thread
(wasmig/engines/wasmtime/threads.py); wasmtime-py enters wasm through ctypes, which releases the
GIL, so threads computing in wasm should run at once. ``tests/programs/pthread_compute.c`` gives
each of T threads the same integer-mixing loop with nothing shared until the joins. Measured in
this process, interleaved rounds (medians), per run: wall time (``time.perf_counter``) and the
process's CPU time (``resource.getrusage``: every thread's user + system time).

- ``parallel``: T=1 and T=2 threads, each the same work. ``cpu(2)/cpu(1)`` ~ 2 says the work
  doubled; ``cpu(2)/wall(2)`` above 1 is possible only if the two threads ran at the same time
  (on a loaded machine the scheduler may not give them two cores, and it falls towards 1);
  ``wall(2)/wall(1)`` is 1 for perfect parallelism, 2 for none (and noisy under load).
- ``epoch``: T=1 on the run's engine (``THREADS_SETTINGS``: epoch interruption, which lets the
  program's end stop threads still computing) and on an engine without it (``ENGINE_SETTINGS``),
  CPU time ratio: the price of the epoch checks at loop heads and function entries.

    PYTHONPATH=. python benchmarks/threads_parallel.py [--rounds 5] [--iterations 200000000]
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wasmig  # noqa: E402
from tests.threaded_programs import threaded_module  # noqa: E402
from wasmig.engines.wasmtime.runtime import ENGINE_SETTINGS, THREADS_SETTINGS  # noqa: E402
from wasmig.engines.wasmtime.threads import ThreadedRun  # noqa: E402
from wasmig.wasi.preview1 import Wasi  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(module: wasmig.Module, threads: int, iterations: int, settings: Mapping[str, Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; checks that it printed its line and exited 0."""
    out = io.BytesIO()
    wasi = Wasi(["pthread_compute", str(threads), str(iterations)], stdout=out)
    run = ThreadedRun(module, wasi, settings=settings)  # compiled (or loaded from the cache) before timing
    wall, cpu = time.perf_counter(), _cpu()
    code = run.run()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    if code != 0 or not out.getvalue().startswith(b"threads %d iterations %d " % (threads, iterations)):
        raise SystemExit(f"pthread_compute {threads} {iterations}: exit {code}, output {out.getvalue()!r}")
    wasi.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200_000_000, help="per thread")
    args = parser.parse_args()
    module = threaded_module("pthread_compute")
    cells = {"1 thread": (1, THREADS_SETTINGS), "2 threads": (2, THREADS_SETTINGS),
             "1 thread, no epochs": (1, ENGINE_SETTINGS)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cells}
    for threads, settings in cells.values():
        run_once(module, threads, 1000, settings)  # warm: the compiled-module cache
    for _ in range(args.rounds):
        for name, (threads, settings) in cells.items():
            runs[name].append(run_once(module, threads, args.iterations, settings))
    wall = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
    cpu = {name: statistics.median(c for _, c in r) for name, r in runs.items()}
    print(f"pthread_compute, {args.iterations:,} iterations per thread, {args.rounds} interleaved rounds, medians")
    for name in cells:
        print(f"  {name:22s} wall {wall[name]:7.3f} s   cpu {cpu[name]:7.3f} s   "
              f"cpu/wall {cpu[name] / wall[name]:5.2f}")
    print(f"parallel: cpu(2)/cpu(1) {cpu['2 threads'] / cpu['1 thread']:.2f} (2: the work doubled), "
          f"cpu(2)/wall(2) {cpu['2 threads'] / wall['2 threads']:.2f} (>1 only if threads ran at once), "
          f"wall(2)/wall(1) {wall['2 threads'] / wall['1 thread']:.2f} (1: parallel, 2: serial)")
    print(f"epoch checks: cpu ratio {cpu['1 thread'] / cpu['1 thread, no epochs']:.3f} "
          "(with epoch interruption / without)")


if __name__ == "__main__":
    main()
