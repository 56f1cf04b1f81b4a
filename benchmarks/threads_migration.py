#!/usr/bin/env python3
"""How long is an eight-thread program stopped when it moves live between two daemons?

``tests/programs/threads_migrate.c`` (eight workers under a mutex, two condition variables and a
barrier; the main thread sleeps between rounds) is started with ``wasmig run --migratable
--engine interp`` and moved with ``wasmig migrate PID --to`` to a ``wasmig serve --engine interp``
daemon on loopback (``--target-engines interp,wasmtime``: a daemon on each engine, alternating in
each run; both land threads), with pre-copy and with ``--no-precopy`` (stop-and-copy). Beside it,
in the same run and alternating with it, the single-threaded ``tests/programs/migrate_work.c``
with the same heap, moved the same way: the baseline the threads are compared with. Cells:

- ``8 threads, waiting``: the main thread sleeps 1 s a round, the workers wait on a condition
  variable meanwhile (most stops find them so, the main thread in its sleep);
- ``8 threads, computing``: no sleep, the workers rewrite their slices of the heap all the time
  (pre-copy has pages to resend, the stop finds them computing);
- ``1 thread``: migrate_work, sleeping 1 s a round.

Each migration's own summary line gives the figures (median over ``--runs`` alternating runs):
total (request -> the target's confirmation), downtime (the program stopped at the source -> the
target's confirmation that it runs it), MB sent (module included: a fresh daemon state
directory each time), pre-copy rounds. The daemon's log says what the stop found (``restored 9
threads: W waiting, H in a host call, R runnable``): the median of W is shown. Wall times on a
shared machine: the load average is printed at the start and the end.

    PYTHONPATH=. python benchmarks/threads_migration.py [--heaps 1024,4096] [--runs 5]
        [--target-engines interp,wasmtime]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.migration import Tree, credentials, free_port, migrate, wasmig  # noqa: E402
from tests.threaded_programs import compile_threaded  # noqa: E402
from wasmig.toolchain import compile_c  # noqa: E402

RESTORED = re.compile(r"restored (\d+) threads: (\d+) waiting, (\d+) in a host call, (\d+) runnable")
FOREVER = "1000000"  # rounds: the program is still running whenever it is moved
SLEEP_MS = "1000"


@dataclass(frozen=True)
class Cell:
    """A program and its arguments (for a heap of ``kib`` KiB)."""

    name: str
    threaded: bool
    sleeps: bool

    def command(self, program: Path, kib: int) -> list[str]:
        sleep = SLEEP_MS if self.sleeps else "0"
        if self.threaded:  # threads_migrate ROUNDS SLEEP_MS KIB
            return [str(program), FOREVER, sleep, str(kib)]
        return [str(program), FOREVER, str(kib), sleep]  # migrate_work ROUNDS KIB SLEEP_MS


CELLS = (Cell("8 threads, waiting", True, True), Cell("8 threads, computing", True, False),
         Cell("1 thread", False, True))


@dataclass
class Moved:
    total_s: float
    downtime_ms: float
    mb_sent: float
    rounds: int
    waiting: int | None  # threads the stop found waiting (None: a single-threaded program)


def one(cell: Cell, program: Path, kib: int, precopy: bool, tree: Tree, tmp: Path, target: str = "interp") -> Moved:
    """Start the program, move it once to a daemon on engine ``target``, return what the migration reported."""
    address = f"127.0.0.1:{free_port()}"
    state = Path(tempfile.mkdtemp(dir=tmp))
    env = tree.env(tmp)
    out = state / "guest.out"
    with open(state / "serve.err", "wb") as err, open(out, "wb") as guest_out:
        daemon = subprocess.Popen(wasmig("serve", "--listen", address, *tree.serve_auth(tmp), "--engine", target,
                                         "--state-dir", str(state)), stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True, env=env, cwd=tree.root)
        guest = subprocess.Popen(wasmig("run", "--migratable", "--engine", "interp", *cell.command(program, kib)),
                                 stdout=guest_out, stderr=subprocess.DEVNULL, env=env, cwd=tree.root)
    try:
        deadline = time.monotonic() + 120
        while b"round 2 " not in out.read_bytes() or b"listening" not in (state / "serve.err").read_bytes():
            if time.monotonic() > deadline or guest.poll() is not None:
                raise SystemExit(f"{cell.name}: the program or the daemon did not start")
            time.sleep(0.02)
        m = migrate(guest.pid, address, precopy, tree, tmp, env, f"{cell.name}: ")
        guest.wait(30)
        restored = None
        if cell.threaded:
            deadline = time.monotonic() + 10
            while (found := RESTORED.search((state / "serve.err").read_text())) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{cell.name}: the daemon did not say what it restored")
                time.sleep(0.02)
            restored = int(found.group(2))
        return Moved(float(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(4)), restored)
    finally:
        if guest.poll() is None:
            guest.kill()
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heaps", default="1024,4096", help="heap sizes in KiB (the workers' shared buffer)")
    ap.add_argument("--runs", type=int, default=5, help="migrations per cell and mode (median reported)")
    ap.add_argument("--target-engines", default="interp", help="the daemons' engines, alternating (interp,wasmtime)")
    args = ap.parse_args(argv)
    targets = args.target_engines.split(",")
    programs = {True: compile_threaded("threads_migrate"), False: compile_c(HERE.parent / "tests" / "programs"
                                                                              / "migrate_work.c")}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        credentials(tmp)
        this = Tree.at(HERE.parent, "this")
        print(f"live migration on loopback, interp -> {' / '.join(targets)} daemon, median of {args.runs} "
              f"alternating runs per cell; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
        print(f"{'heap':>8} {'daemon':>8} {'program':>22} | {'pre-copy: total s':>17} {'downtime ms':>11} "
              f"{'MB sent':>8} {'rounds':>6} {'waiting':>7} | {'stop-and-copy: total s':>22} {'downtime ms':>11} "
              f"{'MB sent':>8} "
              f"| {'downtime vs 1 thread':>20}")
        for kib in (int(x) for x in args.heaps.split(",")):
            moved: dict[tuple[str, Cell, bool], list[Moved]] = {(t, c, p): [] for t in targets for c in CELLS
                                                                 for p in (True, False)}
            for _ in range(args.runs):
                for cell in CELLS:
                    for precopy in (True, False):
                        for target in targets:
                            moved[target, cell, precopy].append(one(cell, programs[cell.threaded], kib, precopy, this,
                                                                    tmp, target))
            for target in targets:
                _report(kib, target, moved)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def _report(kib: int, target: str, moved: dict[tuple[str, Cell, bool], list[Moved]]) -> None:
    """The rows of the daemons on engine ``target``: each cell's medians."""
    single = statistics.median(m.downtime_ms for m in moved[target, CELLS[-1], True])
    for cell in CELLS:
        p, s = moved[target, cell, True], moved[target, cell, False]
        waits = [m.waiting for m in p if m.waiting is not None]
        down = statistics.median(m.downtime_ms for m in p)
        print(f"{kib:>5}KiB {target:>8} {cell.name:>22} | {statistics.median(m.total_s for m in p):>17.2f} "
              f"{down:>11.1f} "
              f"{statistics.median(m.mb_sent for m in p):>8.2f} "
              f"{statistics.median(m.rounds for m in p):>6.0f} "
              f"{statistics.median(waits) if waits else '-':>7} | "
              f"{statistics.median(m.total_s for m in s):>22.2f} "
              f"{statistics.median(m.downtime_ms for m in s):>11.1f} "
              f"{statistics.median(m.mb_sent for m in s):>8.2f} | {down / single:>19.2f}x", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
