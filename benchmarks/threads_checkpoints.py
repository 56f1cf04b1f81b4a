#!/usr/bin/env python3
"""What do checkpoints cost a multi-threaded program, and what does the checkpointable module
cost against plain wasmtime? (issue 20: "overhead of the instrumented multi-threaded module vs
plain wasmtime reported in a benchmark")

``tests/programs/pthread_compute.c``: T threads (default 4) of integer mixing on data of their
own. Side by side in one run, each row a median of ``--rounds`` interleaved runs of the process's
CPU time (``resource.getrusage``: every thread's user + system time, the background thread that
makes a checkpoint durable included):

- wasmtime, the plain module (``Engine.run_threaded_command``: how `wasmig run` runs threads);
- wasmtime, the instrumented module (the fast variant, ``instrument(count_steps=False)``) in
  every thread's instance: what a checkpointable run of threads executes;
- for each engine that captures threads (``Engine.captures_threads``; the interpreter, and
  wasmtime once it advertises it): the checkpointable :class:`~wasmig.engines.base.Program` under
  a :class:`~wasmig.session.loop.Session` writing into a checkpoint directory, with 0 checkpoints
  and with ``--checkpoints`` N requested from another thread at even intervals of a warm
  0-checkpoint run's wall time divided by N + 2 (room for a slower run; a request the run ends
  before is not taken: the number actually taken is shown). An engine that does not
  capture threads gets a "not supported" row, never a number.

The interpreter runs far fewer iterations (``--interp-iterations``) than wasmtime
(``--iterations``): rows are compared per iteration and thread (ns), and each checkpoint row with
its own engine's 0-checkpoint row (the cost of a checkpoint: the CPU difference over the number
taken).

    PYTHONPATH=. python benchmarks/threads_checkpoints.py [--threads 4] [--rounds 5] [--checkpoints 5]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wasmig  # noqa: E402
from tests.threaded_programs import threaded_module  # noqa: E402
from wasmig import engines  # noqa: E402
from wasmig.session.loop import Session  # noqa: E402
from wasmig.session.policy import CheckpointPolicy  # noqa: E402
from wasmig.wasi.preview1 import Wasi  # noqa: E402


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    cpu: float
    wall: float
    checkpoints: int = 0


def _expect(out: io.BytesIO, code: int, threads: int, iterations: int) -> None:
    want = b"threads %d iterations %d " % (threads, iterations)
    if code != 0 or not out.getvalue().startswith(want):
        raise SystemExit(f"pthread_compute {threads} {iterations}: exit {code}, output {out.getvalue()!r}")


def plain(module: wasmig.Module, threads: int, iterations: int) -> Timed:
    """wasmtime, the plain module: how `wasmig run` runs a threaded program."""
    out = io.BytesIO()
    wasi = Wasi(["prog", str(threads), str(iterations)], stdout=out)
    wall, cpu = time.perf_counter(), _cpu()
    code = engines.get("wasmtime").run_threaded_command(module, wasi)
    timed = Timed(_cpu() - cpu, time.perf_counter() - wall)
    _expect(out, code, threads, iterations)
    wasi.close()
    return timed


def instrumented(module: wasmig.Module, code: bytes, threads: int, iterations: int) -> Timed:
    """wasmtime, every thread's instance the instrumented module (``code``)."""
    from wasmig.engines.wasmtime.threads import ThreadedRun

    out = io.BytesIO()
    wasi = Wasi(["prog", str(threads), str(iterations)], stdout=out)
    run = ThreadedRun(module, wasi, code=code)  # compiled (or loaded from the cache) before timing
    wall, cpu = time.perf_counter(), _cpu()
    exit_code = run.run()
    timed = Timed(_cpu() - cpu, time.perf_counter() - wall)
    _expect(out, exit_code, threads, iterations)
    wasi.close()
    return timed


def checkpointed(engine: str, module: wasmig.Module, threads: int, iterations: int, checkpoints: int,
                 interval: float) -> Timed:
    """The engine's checkpointable program under a Session writing into a fresh checkpoint
    directory, ``checkpoints`` requests ``interval`` seconds apart from another thread."""
    out = io.BytesIO()
    wasi = Wasi(["prog", str(threads), str(iterations)], stdout=out)
    program = engines.get(engine).program(module, wasi, checkpoints=True)
    with tempfile.TemporaryDirectory() as directory:
        policy = CheckpointPolicy(directory=directory)
        session = Session(program, policy, None)
        stop = threading.Event()

        def requests() -> None:
            for _ in range(checkpoints):
                if stop.wait(interval):
                    return
                session.request()

        requester = threading.Thread(target=requests, daemon=True)
        wall, cpu = time.perf_counter(), _cpu()
        requester.start()
        code = session.run(resume=False)
        timed = Timed(_cpu() - cpu, time.perf_counter() - wall, len(policy.written))
        stop.set()
        requester.join()
    _expect(out, code, threads, iterations)
    wasi.close()
    return timed


@dataclass
class Row:
    engine: str
    variant: str
    iterations: int
    run: Callable[[], Timed] | None  # None: not supported
    why: str = ""
    samples: list[Timed] | None = None

    def median(self, what: Callable[[Timed], float]) -> float:
        assert self.samples
        return statistics.median(what(t) for t in self.samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=50_000_000, help="per thread, on wasmtime")
    ap.add_argument("--interp-iterations", type=int, default=1_000_000, help="per thread, on an interpreter")
    ap.add_argument("--checkpoints", type=int, default=5, help="checkpoints requested in a run")
    args = ap.parse_args()
    from wasmig.instrument.unwind import instrument

    module = threaded_module("pthread_compute")
    fast = instrument(module, count_steps=False).data
    assert fast is not None
    t = args.threads
    rows = [Row("wasmtime", "plain module", args.iterations, lambda: plain(module, t, args.iterations)),
            Row("wasmtime", "instrumented module per thread", args.iterations,
                lambda: instrumented(module, fast, t, args.iterations))]
    for name in sorted(engines.NAMES, key=lambda name: name != "wasmtime"):  # wasmtime's rows together
        engine = engines.get(name)
        n = args.interp_iterations if engine.needs_ir else args.iterations
        if not engine.captures_threads:
            why = "not supported: the engine does not capture threads yet"
            rows += [Row(name, "checkpointable program, 0 checkpoints", n, None, why),
                     Row(name, f"checkpointable program, {args.checkpoints} requested", n, None, why)]
            continue
        checkpointed(name, module, t, n, 0, 0.0)  # warm: caches
        # the requests spread over a warm run's wall time, with room at the end for a slower run
        interval = checkpointed(name, module, t, n, 0, 0.0).wall / (args.checkpoints + 2)
        rows += [Row(name, "checkpointable program, 0 checkpoints", n,
                     lambda name=name, n=n: checkpointed(name, module, t, n, 0, 0.0)),
                 Row(name, f"checkpointable program, {args.checkpoints} requested", n,
                     lambda name=name, n=n, interval=interval: checkpointed(name, module, t, n, args.checkpoints,
                                                                             interval))]
    for row in rows:
        if row.run is not None and row.engine == "wasmtime" and row.iterations == args.iterations:
            row.run()  # warm: the compiled-module caches
        row.samples = []
    for _ in range(args.rounds):
        for row in rows:
            if row.run is not None:
                assert row.samples is not None
                row.samples.append(row.run())
    base = rows[0].median(lambda s: s.cpu) / (t * args.iterations)
    print(f"pthread_compute, {t} threads; CPU time (getrusage, all threads), median of {args.rounds} interleaved "
          f"rounds; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'engine':9} {'variant':40} {'iterations':>11} {'checkpoints':>11} {'cpu s':>8} {'ns/iteration':>12} "
          f"{'vs plain wasmtime':>17} {'vs 0 checkpoints':>16} {'per checkpoint':>14}")
    zero: dict[str, tuple[float, float]] = {}  # engine -> (cpu s, ns per iteration) of its 0-checkpoint row
    for row in rows:
        if row.run is None:
            print(f"{row.engine:9} {row.variant:40} {row.iterations:>11,} {row.why}")
            continue
        cpu = row.median(lambda s: s.cpu)
        taken = row.median(lambda s: s.checkpoints)
        per = cpu / (t * row.iterations)
        vs_zero = per_checkpoint = "-"
        if "checkpointable" in row.variant:
            if row.engine not in zero:
                zero[row.engine] = (cpu, per)
            else:
                vs_zero = f"{cpu / zero[row.engine][0]:.3f}x"
                if taken:
                    per_checkpoint = f"{(cpu - zero[row.engine][0]) / taken * 1000:.1f} ms"
        print(f"{row.engine:9} {row.variant:40} {row.iterations:>11,} {taken:>11g} {cpu:>8.3f} {per * 1e9:>12.2f} "
              f"{per / base:>16.3f}x {vs_zero:>16} {per_checkpoint:>14}")


if __name__ == "__main__":
    main()
