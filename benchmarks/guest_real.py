#!/usr/bin/env python3
"""What does the fast variant cost a real program's guest code, never stopped (issue 15 item 5)?

``benchmarks/real_programs.py`` times whole ``wasmig run`` processes, start-up, Python WASI and all;
this one times only the guest: QuickJS-ng (or CPython) from ``tests/real_programs.py`` running
``real_programs.py``'s steady-state script, on wasmtime-py with wasmig's WASI for every variant
(``wasmig_host.py``; wasmtime's own WASI until session 13, which cannot run a module with the hidden page),
so that only the module's code differs between variants. Variants:

- ``plain``: the module as shipped;
- ``fast``: this tree's fast variant (``instrument(..., count_steps=False).data``, the run module every
  ``wasmig run`` executes);
- ``base-REV`` (``--baseline REV``, repeatable): the fast variant as git revision REV's pass builds it
  (``benchmarks/overhead.py``'s extracted tree and child process);
- ``NAME`` (``--extra NAME=FILE.wasm``, repeatable): any other module, e.g. an experiment's output.

Method: every module is compiled once per code placement (untimed) and serialized; each run is a fresh
process that deserializes it on ``wasmig run``'s engine (the same for every variant), instantiates it with
wasmig's WASI and runs ``_start``; the
time is the CPU time of that thread during ``_start`` (``time.thread_time``), so neither start-up nor
another tenant's load is charged. Each variant is timed at ``--placements K`` code placements (default 4;
``benchmarks/overhead.py``'s :func:`~overhead.placed`: padding stores in the first function move every
later function's machine code by 0, 32, 64 and 96 bytes), because where the hot loops land moves a
program by a few percent with the code unchanged, so one placement per variant cannot tell 2% apart
(``--placements 1``: the module as is, the behaviour before). Runs alternate: each round times, at each
placement in turn, every variant once, the order rotating at every turn; ``--rounds`` rounds (default
7). Every run's stdout must equal the plain run's. It prints each variant's median over all its runs
(every placement) and quartiles, its ratio of medians to ``plain``, the ratio at each placement (the
variant's median there over plain's), and the load average at the start and end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from overhead import PLACEMENTS, baseline_fast, baseline_tree, make_engine, placed  # noqa: E402
from real_programs import SCRIPTS  # noqa: E402

from tests.real_programs import ProgramUnavailable, obtain  # noqa: E402

#: argv of the guest per program (the script is written to the preopened /app; ``--size`` replaces the last)
GUEST_ARGS = {"quickjs": ["qjs", "/app/bench.js", "1"], "cpython": ["python", "/app/bench.py", "1"]}

#: One timed run: a fresh process that deserializes the variant's compiled module (argv: the serialized
#: module, the original module it is a variant of, the host dir to preopen as /app, then the guest's argv)
#: on ``wasmig run``'s engine, runs its ``_start`` with wasmig's WASI (wasmig_host.py) and prints the CPU
#: time of ``_start``'s thread as stderr's last line.
CHILD = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from wasmig_host import bench_engine, timed_start
import wasmtime
from wasmig import Module
engine = bench_engine()
compiled = wasmtime.Module.deserialize_file(engine, sys.argv[1])
host = Module.from_file(sys.argv[2])
t = timed_start(host, compiled, sys.argv[4:], preopens=[(sys.argv[3], "/app")], wasm_engine=engine)
sys.stdout.flush()
print(t, file=sys.stderr)
"""


def run_once(cwasm: Path, program: Path, app: str, argv: list[str]) -> tuple[float, bytes]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cwasm), str(program), app, *argv], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    if proc.returncode != 0:
        raise SystemExit(f"guest_real: {cwasm.name} failed: {proc.stderr.decode(errors='replace')[-1500:]}")
    return float(proc.stderr.decode().strip().splitlines()[-1]), proc.stdout


def build(program: Path, baselines: list[str], extras: list[tuple[str, Path]], tmp: Path) -> dict[str, bytes]:
    """Every variant's module bytes, in report order."""
    from wasmig import Module
    from wasmig.instrument.unwind import instrument

    blobs = {"plain": program.read_bytes(),
             "fast": instrument(Module.from_file(program), count_steps=False).data}
    for rev in baselines:
        blobs[f"base-{rev}"] = baseline_fast(baseline_tree(rev, tmp), program)
    for name, path in extras:
        blobs[name] = path.read_bytes()
    return blobs


def parse_extra(spec: str) -> tuple[str, Path]:
    """``NAME=FILE.wasm`` -> (NAME, path); checked before anything slow runs."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise SystemExit(f"guest_real: --extra wants NAME=FILE.wasm (an existing file), got {spec!r}")
    return name, Path(path)


def schedule(names: list[str], rounds: int, placements: int) -> list[tuple[int, str]]:
    """The timed runs in order, as (placement index, variant): each round visits the placements in
    turn and runs every variant once at each, who goes first rotating at every turn (with one
    placement: each round rotated by one, as before placements)."""
    order = []
    for r in range(rounds):
        for at in range(placements):
            turn = r * placements + at
            order += [(at, name) for name in names[turn % len(names):] + names[:turn % len(names)]]
    return order


def summary(times: dict[str, dict[int, list[float]]]) -> list[str]:
    """One line per variant: the median and quartiles of all its runs (every placement), the ratio
    of that median to plain's, and at each placement the ratio of the medians there."""
    def pooled(name: str) -> list[float]:
        return [t for at in sorted(times[name]) for t in times[name][at]]

    ref = statistics.median(pooled("plain"))
    lines = []
    for name, by_place in times.items():
        xs = pooled(name)
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0], xs[0], xs[0]]
        at = " ".join(f"{statistics.median(by_place[p]) / statistics.median(times['plain'][p]):.3f}"
                      for p in sorted(by_place))
        lines.append(f"{name:24} {statistics.median(xs):7.3f} s CPU ({q[0]:.3f}-{q[2]:.3f})  "
                     f"{statistics.median(xs) / ref:6.3f}x plain"
                     + (f"  by placement {at}" if len(by_place) > 1 else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", choices=sorted(GUEST_ARGS), default="quickjs")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    ap.add_argument("--baseline", action="append", default=[], metavar="REV",
                    help="also the fast variant of git revision REV's pass (repeatable)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=FILE.wasm",
                    help="also this module (repeatable)")
    ap.add_argument("--size", type=int, default=1, metavar="N",
                    help="the script's size argument (default 1; real_programs.py's steady state runs "
                    "QuickJS at 5 and CPython at 6)")
    ap.add_argument("--only", default="", help="comma-separated variants to time (default: all)")
    ap.add_argument("--placements", type=int, default=len(PLACEMENTS), choices=range(1, len(PLACEMENTS) + 1),
                    metavar="K", help=f"code placements each variant is timed at, 1-{len(PLACEMENTS)} (default "
                    f"{len(PLACEMENTS)}; 1: the module as is)")
    args = ap.parse_args(argv)
    extras = [parse_extra(spec) for spec in args.extra]
    try:
        program = obtain(args.program)
    except ProgramUnavailable as e:
        raise SystemExit(f"guest_real: {e}") from None
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="guest-real-") as d:
        tmp = Path(d)
        app = tmp / "app"
        app.mkdir()
        for fname, text in SCRIPTS.items():
            (app / fname).write_text(text.lstrip())
        blobs = build(program, args.baseline, extras, tmp)
        if args.only:
            keep = {"plain", *args.only.split(",")}
            blobs = {k: v for k, v in blobs.items() if k in keep}
        engine = make_engine()
        cwasm: dict[tuple[str, int], Path] = {}
        for name, blob in blobs.items():
            for at in range(args.placements):
                cwasm[name, at] = tmp / f"{name}.{at}.cwasm"
                cwasm[name, at].write_bytes(wasmtime.Module(engine, placed(blob, PLACEMENTS[at])).serialize())
        guest = [*GUEST_ARGS[args.program][:-1], str(args.size)]
        expected = run_once(cwasm["plain", 0], program, str(app), guest)[1]  # untimed warm-up; the reference output
        print(f"{args.program}: {len(blobs)} variants, {args.rounds} rounds at {args.placements} code placements; "
              f"load average at the start {os.getloadavg()[0]:.1f}", flush=True)
        names = list(blobs)
        times: dict[str, dict[int, list[float]]] = {n: {at: [] for at in range(args.placements)} for n in names}
        for at, name in schedule(names, args.rounds, args.placements):
            t, out = run_once(cwasm[name, at], program, str(app), guest)
            if out != expected:
                raise SystemExit(f"guest_real: {name} printed {out[-200:]!r}, plain {expected[-200:]!r}")
            times[name][at].append(t)
        for line in summary(times):
            print(line)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
