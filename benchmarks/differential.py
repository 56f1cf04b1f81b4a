#!/usr/bin/env python3
"""The full differential checkpoint/restore harness on the real programs (issue 15 item 1): 20 or more snapshots
per program and variant, every one compared across engines and restored on both (tests/differential.py, the
workloads and plans in tests/real_workloads.py; ``make test`` runs the same with 3 points per variant,
tests/test_real_programs.py).

Prints every check as it is made (``ok``/``FAIL``), then per program a table: checks passed of made per variant,
kind (``same snapshot``: wasmtime's and the interpreter's snapshot at one step; ``restore``: a snapshot restored on
an engine and run to the end, compared with the uninterrupted run; ``interp leg``: a fast snapshot run a few
thousand steps on the interpreter, then finished on wasmtime; ``run``: a whole run with its stops, going on after
each) and path (the engine that took the snapshot -> the one that restored it), with the median seconds of one
check, the time of each phase, and every failure. Exit status 1 if any check failed.

``--points N`` (default 20), ``--programs cpython,quickjs``, ``--seed S``, ``--keep DIR`` (failing points'
snapshots, single files, and their /out copies, for ``wasmig restore``). ``--interp-all`` restores every snapshot to
the end on the interpreter too (CPython's plan otherwise restores only its late ones there: one CPython restore is
tens of seconds to minutes on the interpreter), and ``--rounds N`` shortens or lengthens the scripts (each workload's
round count, its first argument after the script) so that a run with ``--interp-all`` stays within an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import real_programs  # noqa: E402
from tests.differential import Engines, Harness, Host, Report  # noqa: E402
from tests.real_workloads import WORKLOADS, plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=20, help="snapshots per program and variant (default 20)")
    parser.add_argument("--programs", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the time)")
    parser.add_argument("--keep", type=Path, default=None, help="keep failing points' snapshots here")
    parser.add_argument("--interp-all", action="store_true",
                        help="restore every snapshot to the end on the interpreter as well")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each script (default: the workload's)")
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    names = [n.strip() for n in args.programs.split(",") if n.strip()]
    for n in names:
        if n not in WORKLOADS:
            parser.error(f"unknown program {n!r}; known: {', '.join(WORKLOADS)}")
    seed = args.seed if args.seed is not None else int(time.time())
    from wasmig.module import Module

    print(f"seed {seed}, {args.points} points per program and variant, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    reports = []
    with tempfile.TemporaryDirectory(prefix="differential-") as tmp:
        for name in names:
            workload = WORKLOADS[name]
            if args.rounds is not None:
                workload = dataclasses.replace(workload, argv=(workload.argv[0], str(args.rounds)))
            try:
                path = real_programs.obtain(workload.program)
            except real_programs.ProgramUnavailable as e:
                sys.exit(f"differential: {e}")
            report = Report(name)
            report.phases["instrumenting and compiling both variants (0 when cached)"] = sum(
                real_programs.prepare_checkpointable(path, count_steps=steps) for steps in (True, False))
            began = time.perf_counter()
            module = Module.from_file(str(path), validate=False)
            print(f"\n== {name}: {path} ({path.stat().st_size} bytes), decoded in {time.perf_counter() - began:.1f} s",
                  flush=True)
            engines = Engines(Host(workload, path, Path(tmp) / name), module)
            checks = plan(name, args.points)
            if args.interp_all:
                checks = dataclasses.replace(checks, interp="all")
            Harness(engines, checks, random.Random(seed), report, keep=args.keep,
                    log=lambda line: print(line, flush=True)).run()
            report.phases["total, the caches warm"] = time.perf_counter() - began
            reports.append(report)
    print()
    for report in reports:
        print(report.table())
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    sys.exit(1 if any(r.failures() for r in reports) else 0)


if __name__ == "__main__":
    main()
