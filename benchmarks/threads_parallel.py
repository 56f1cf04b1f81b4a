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
- ``waits``: ``pthread_condvar.c`` (1,200 items through a 4-slot queue: waits and notifies by
  the thousand) with waits and notifies through the host (the default:
  wasmig/engines/wasmtime/host_waits.py) and with wasmtime's own, CPU time ratio; and what the
  rewrite costs a run (decode, reroute, encode; median of 5, CPU time).
- ``instrumented``: every thread's instance the instrumented module (the fast variant,
  ``instrument(module, count_steps=False)``: what a checkpointable run of threads will execute,
  issue 20 step 3) against the plain module, T=2, CPU time ratio, on ``pthread_compute`` and on
  ``pthread_condvar``.
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
from wasmig.binary.encoder import encode_module  # noqa: E402
from wasmig.engines.wasmtime.host_waits import route_waits_to_host  # noqa: E402
from wasmig.engines.wasmtime.runtime import ENGINE_SETTINGS, THREADS_SETTINGS  # noqa: E402
from wasmig.engines.wasmtime.threads import ThreadedRun  # noqa: E402
from wasmig.instrument.unwind import instrument  # noqa: E402
from wasmig.wasi.preview1 import Wasi  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(module: wasmig.Module, args: list[str], expect: bytes, **options: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``module`` with ``args``, ``ThreadedRun``'s
    ``options``; checks that it exited 0 and its output starts with ``expect``."""
    out = io.BytesIO()
    wasi = Wasi(["prog", *args], stdout=out)
    run = ThreadedRun(module, wasi, **options)  # compiled (or loaded from the cache) before timing
    wall, cpu = time.perf_counter(), _cpu()
    code = run.run()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    if code != 0 or not out.getvalue().startswith(expect):
        raise SystemExit(f"{args}: exit {code}, output {out.getvalue()!r}")
    wasi.close()
    return wall, cpu


def run_once(module: wasmig.Module, threads: int, iterations: int, settings: Mapping[str, Any]) -> tuple[float, float]:
    """:func:`timed` for ``pthread_compute THREADS ITERATIONS``."""
    return timed(module, [str(threads), str(iterations)], b"threads %d iterations %d " % (threads, iterations),
                 settings=settings)


def rewrite_seconds(module: wasmig.Module) -> float:
    """CPU seconds to decode ``module``, reroute its waits and encode it (median of 5)."""
    times = []
    for _ in range(5):
        started = time.process_time()
        again = wasmig.Module.from_bytes(module.data or b"", features={"threads"})
        routed = route_waits_to_host(again.ir)
        assert routed is not None
        encode_module(routed)
        times.append(time.process_time() - started)
    return statistics.median(times)


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
    condvar = threaded_module("pthread_condvar")
    waits: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for host in (True, False):
            waits[host].append(timed(condvar, [], b"consumed 1200 ", host_waits=host)[1])
    host, native = statistics.median(waits[True]), statistics.median(waits[False])
    print(f"waits: pthread_condvar cpu {host:.3f} s through the host, {native:.3f} s wasmtime's own: "
          f"ratio {host / native:.2f}; the rewrite {rewrite_seconds(condvar) * 1000:.1f} ms cpu per run "
          f"({len(condvar.data or b''):,} bytes)")
    instrumented: dict[str, list[float]] = {"compute plain": [], "compute instrumented": [],
                                            "condvar plain": [], "condvar instrumented": []}
    compute_fast = instrument(module, count_steps=False).data
    condvar_fast = instrument(condvar, count_steps=False).data
    for _ in range(args.rounds):
        compute_args, compute_out = ["2", str(args.iterations)], b"threads 2 iterations %d " % args.iterations
        instrumented["compute plain"].append(timed(module, compute_args, compute_out)[1])
        instrumented["compute instrumented"].append(timed(module, compute_args, compute_out, code=compute_fast)[1])
        instrumented["condvar plain"].append(timed(condvar, [], b"consumed 1200 ")[1])
        instrumented["condvar instrumented"].append(timed(condvar, [], b"consumed 1200 ", code=condvar_fast)[1])
    median = {name: statistics.median(values) for name, values in instrumented.items()}
    for kernel in ("compute", "condvar"):
        fast, plain = median[kernel + " instrumented"], median[kernel + " plain"]
        print(f"instrumented (fast variant) / plain, {kernel}, 2+ threads: cpu {fast:.3f} s / {plain:.3f} s "
              f"= {fast / plain:.3f}")
    print(f"epoch checks: cpu ratio {cpu['1 thread'] / cpu['1 thread, no epochs']:.3f} "
          "(with epoch interruption / without)")


if __name__ == "__main__":
    main()
