#!/usr/bin/env python3
"""Does a program run as fast after a checkpoint/restore on wasmtime as one never stopped?

On wasmtime a rewind re-enters every frame that was live at the checkpoint through its *rewind
copy* (docs/instrument.md), and those frames finish their activation there. If the copy's code
is slower than the normal body, a program whose hot loop is in such a frame stays slower for
the rest of its life (issue 15: QuickJS about 10x after one checkpoint, CPython about 1.4x).

Method: each workload (C, ``wasmig.toolchain.compile_c`` at -O2, the fast variant that every
``wasmig run``/``restore`` on wasmtime uses) runs in one process with ``Checkpointable``:

- ``0``: ``start()`` to the end, uninterrupted;
- ``k`` (1 and 5 by default): ``start()``, and ``k`` times: a checkpoint request, the guest
  unwinds, and ``resume()`` rewinds it in the same instance (what a restore runs; the snapshot's
  memory is not copied out and back, which does not change the code the program then runs in).
  The time is that of the ``start()`` and ``resume()`` calls together, so it includes the unwinds
  and rewinds themselves (well under a millisecond each here).

When the requests come (:func:`request_times`): spread evenly over the run, from the workload's
start-up (``--gap`` for the C programs; after the interpreter's start-up for QuickJS and CPython)
to 80% of the uninterrupted run's length, measured by the untimed warm-up run -- all in the
process's CPU time (:class:`GuestClock`; nearly all of it the guest's), so a loaded machine, where a run's
wall time is anything from 1x to 30x its CPU time, does not move them. Spacing them by a fixed
gap of wall time instead let CPython's run end before its third request, so its "5 checkpoints"
column held 2. Each column prints how many checkpoints the runs really took (``taken``, the
fewest and most over the runs); a run that ends before all its requests is marked with ``*``.

Runs alternate (0, 1, 5, 0, 1, 5, ...) for ``--runs`` rounds (default 5); the table gives each
count's median and its ratio to the uninterrupted median (the goal: 1.00 within 3%), in wall
time and in the process's CPU time (the guest thread's, nearly all of it: steadier than wall
time on a machine shared with other work, which a descheduling does not add to). Every run's
output must equal the uninterrupted one's. Workloads:

- ``spin``: ``tests/programs/spin.c``, two nested loops without stores in one function, live
  for the whole run;
- ``dispatch``: ``timing/dispatch.c``, a bytecode VM (a ``switch`` in a ``for (;;)``, one opcode
  handled by a call), the shape of an interpreter's dispatch loop;
- ``quickjs``: QuickJS-ng (``tests/real_programs.py``: fetched from PyPI and cached) running the
  n-body phase of ``benchmarks/real_programs.py``'s script through ``qjs -e``, each request 0.4 s
  after start-up, so the frame rewound into ``JS_CallInternal``'s copy runs the JavaScript loop
  for the rest of the run (issue 15's case). Skipped with a note when the program cannot be
  obtained;
- ``cpython``: CPython 3.12 for WASI (the same cache) running the n-body phase of the CPython
  script through ``python -c``, the requests after its 1 s of start-up: the frame of
  ``_PyEval_EvalFrameDefault`` that runs the script (Python calls do not recurse in C) is rewound
  and runs the loop for the rest of the run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from real_programs import BENCH_JS, BENCH_PY  # noqa: E402  (benchmarks/real_programs.py)

import wasmig  # noqa: E402
from tests.real_programs import ProgramUnavailable, obtain  # noqa: E402  (the big programs' download cache)
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402
from wasmig.toolchain import compile_c  # noqa: E402
from wasmig.wasi.preview1 import ProcExit, Wasi  # noqa: E402

#: the n-body phase of real_programs.py's QuickJS script, run by ``qjs -e``
QUICKJS_NBODY = BENCH_JS[:BENCH_JS.index("class Odd")] + 'console.log("energy " + nbody(300000).toFixed(9));\n'
#: the n-body phase of real_programs.py's CPython script, run by ``python -c``
CPYTHON_NBODY = BENCH_PY[:BENCH_PY.index("class Odd")] + 'print("energy %.9f" % nbody(100000))\n'

#: (name, C source or None for a program of tests/real_programs.py, argv, seconds of start-up before
#: the first request or None: --gap)
WORKLOADS = (
    ("spin", HERE.parent / "tests" / "programs" / "spin.c", ["spin", "20", "100000000"], None),
    ("dispatch", HERE / "timing" / "dispatch.c", ["dispatch", "1", "25000000"], None),
    ("quickjs", None, ["qjs", "-e", QUICKJS_NBODY], 0.4),
    ("cpython", None, ["python", "-c", CPYTHON_NBODY], 1.0),
)


class GuestClock:
    """Requests a checkpoint when the process has spent given CPU seconds: a watcher thread reads
    the process's CPU clock every few milliseconds. (The guest runs in a worker thread of its own
    for each start()/resume() call, and the main thread only waits, so the process's CPU time is
    the guest's, plus this watcher's few microseconds a wake-up.)"""

    def __init__(self, request: Callable[[], None]) -> None:
        self.clock = time.CLOCK_PROCESS_CPUTIME_ID
        self.request = request
        self._due: float | None = None  # the guest CPU time of the next request
        self.lock = threading.Lock()  # a request is made only while it is still due
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def now(self) -> float:
        return time.clock_gettime(self.clock)

    def set_due(self, due: float | None) -> None:
        with self.lock:
            self._due = due

    def _watch(self) -> None:
        while not self.stop.wait(0.002):
            with self.lock:
                if self._due is not None and self.now() >= self._due:
                    self._due = None
                    self.request()

    def close(self) -> None:
        self.stop.set()
        self.watcher.join()


def request_times(checkpoints: int, startup: float, length: float) -> list[float]:
    """When to request each of ``checkpoints`` checkpoints, in CPU seconds of the program's run:
    evenly spaced from ``startup`` to 80% of an uninterrupted run of ``length`` seconds (the
    margin: a later run may be faster than the warm-up that measured it). A run too short for
    that gets its requests ``startup`` seconds apart, and ends before the last ones."""
    last = 0.8 * length
    if checkpoints <= 1 or last <= startup:
        return [startup * (k + 1) for k in range(checkpoints)]
    step = (last - startup) / (checkpoints - 1)
    return [startup + k * step for k in range(checkpoints)]


def run_once(module: wasmig.Module, args: list[str], at: list[float]
             ) -> tuple[float, float, bytes, int, float]:
    """(wall seconds, process CPU seconds, stdout, checkpoints taken, guest CPU seconds) of one
    run's start()/resume() calls with a checkpoint requested at each of the times ``at`` (CPU
    seconds of the process in the start()/resume() calls so far)."""
    out = io.BytesIO()
    runner = Checkpointable(module, Wasi(list(args), stdin=b"", stdout=out, stderr=io.BytesIO()))
    runner.arm(None)
    spent = cpu = guest = 0.0
    ended = False
    taken = 0
    checkpoints = len(at)
    clock = GuestClock(runner.request)
    for k in range(checkpoints + 1):
        g0 = clock.now()
        clock.set_due(g0 + max(0.0, at[k] - guest) if k < checkpoints else None)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            if k == 0:
                runner.start()
            else:
                runner.resume()
        except ProcExit:
            ended = True
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        clock.set_due(None)
        guest += clock.now() - g0
        if ended or not runner.unwound:  # _start returned (exit status 0) or called proc_exit
            ended = True
            break
        taken += 1
        runner.frames()  # the checkpoint's frames (untimed): resume() rewinds them
        runner.arm(None)
    clock.close()
    if not ended:
        raise RuntimeError(f"{args[0]}: did not end after {checkpoints} checkpoints")
    return spent, cpu, out.getvalue(), taken, guest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--counts", default="0,1,5", help="checkpoints per run, comma-separated (0 first)")
    ap.add_argument("--gap", type=float, default=0.05,
                    help="seconds of a C workload's run before its first request")
    ap.add_argument("--workloads", default=",".join(w[0] for w in WORKLOADS))
    a = ap.parse_args()
    counts = [int(x) for x in a.counts.split(",")]
    if counts[0] != 0:
        counts.insert(0, 0)
    wanted = a.workloads.split(",")
    print(f"restore speed on wasmtime (fast variant): median of {a.runs} alternating runs, requests "
          f"spread from start-up ({a.gap:g} s for the C programs) to 80% of the run")
    print(f"   {'workload':<10} {'time':<5}" + "".join(f" {f'{c} ckpt s':>10} {'ratio':>6}" for c in counts)
          + "   taken")
    for name, source, args, own_gap in WORKLOADS:
        if name not in wanted:
            continue
        if source is None:
            try:
                module = wasmig.Module.from_file(obtain(name))
            except ProgramUnavailable as e:
                print(f"   {name}: skipped ({e})")
                continue
        else:
            module = wasmig.Module.from_file(compile_c(source))
        startup = a.gap if own_gap is None else own_gap
        run_once(module, args, [])  # warm the instrumented-module and artifact caches
        length = run_once(module, args, [])[4]  # the uninterrupted run's CPU time: where requests go
        times: dict[int, list[float]] = {c: [] for c in counts}
        cpus: dict[int, list[float]] = {c: [] for c in counts}
        taken: dict[int, list[int]] = {c: [] for c in counts}
        expected: bytes | None = None
        for _ in range(a.runs):
            for c in counts:
                t, cpu, out, n, _ = run_once(module, args, request_times(c, startup, length))
                if expected is None:
                    expected = out
                elif out != expected:
                    raise RuntimeError(f"{name}: output after {c} checkpoints differs: {out!r} vs {expected!r}")
                times[c].append(t)
                cpus[c].append(cpu)
                taken[c].append(n)
        for what, samples in (("wall", times), ("cpu", cpus)):
            base = statistics.median(samples[0])
            row = f"   {name if what == 'wall' else '':<10} {what:<5}"
            for c in counts:
                m = statistics.median(samples[c])
                row += f" {m:>10.3f} {m / base:>6.3f}"
            if what == "wall":
                row += "   " + " ".join(_taken(c, taken[c]) for c in counts)
            print(row, flush=True)


def _taken(stated: int, taken: list[int]) -> str:
    """``taken`` as the fewest and most checkpoints of the runs, ``*`` when fewer than stated."""
    lo, hi = min(taken), max(taken)
    return (str(lo) if lo == hi else f"{lo}-{hi}") + ("*" if lo < stated else "")


if __name__ == "__main__":
    main()
