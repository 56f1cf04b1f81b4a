#!/usr/bin/env python3
"""CPython for WASI on wasmig's pure-Python interpreter (issue 15, item 6): start-up and a short script.

Each run is a whole process, ``python -m wasmig run --engine interp python.wasm ARGS``, as a user starts it; its
stdout is checked against the first run's (and against wasmtime's, when the ``wasmtime`` package is there). Rounds
alternate between the checkouts compared (``--checkout DIR``, repeatable: another wasmig tree, e.g. an export of
the previous commit; this checkout is always one of them), so that the machine's other load falls on all alike.

Printed per workload and checkout: the median and quartiles of wall time and of CPU time (user + system, much less
disturbed by other load on a shared machine), and the interpreter's speed in million wasm instructions per CPU
second, where the instruction count is wasmtime's fuel for the same run (fuel counts every instruction but
``nop``/``block``/``loop``/``end``/``else``/``drop``, plus one per call, the convention of
``benchmarks/interp_speed.py``), measured once with ``wasmtime`` (``--no-fuel`` skips it). The run's time includes
decoding and validating the 26 MB module (a few seconds), which is reported separately by ``--phases``.

Workloads: ``start-up`` is ``-c pass``; ``script`` is a short script that imports ``json``, raises and catches
exceptions, builds dicts and lists and prints a line. The module comes from ``tests/real_programs.py`` (the
sha256-checked PyPI download cache; never committed). ``--rounds N`` (default 3), ``--workloads start-up,script``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests import real_programs  # noqa: E402  (the shared download cache of the big programs)

SCRIPT = """
import json
class Odd(Exception):
    pass
def check(i):
    if i % 3 == 0:
        raise Odd(i)
    return {"i": i, "s": str(i) * 3, "l": [i, i + 1]}
caught = total = 0
for i in range(3000):
    try:
        total += len(check(i)["s"])
    except Odd as e:
        caught += e.args[0] % 7
data = json.dumps({"caught": caught, "total": total, "squares": [i * i for i in range(300)]})
print(len(data), caught, total, sum(i * i for i in range(20000)))
"""

WORKLOADS = {"start-up": ["-c", "pass"], "script": ["-c", SCRIPT]}

PHASES = """
import sys, time
t0 = time.process_time()
from wasmig.module import Module
from wasmig.wasi.preview1 import ProcExit, Wasi
from wasmig.session.command import instantiate_with_wasi
module = Module.from_file(sys.argv[1])
t1 = time.process_time()
inst = instantiate_with_wasi(module, Wasi(["python", *sys.argv[2:]], {}), "interp")
try:
    inst.invoke("_start")
except ProcExit:
    pass
t2 = time.process_time()
print(f"PHASES {t1 - t0:.2f} {t2 - t1:.2f}", file=sys.stderr)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(checkout: Path, wasm: Path, args: list[str], timeout: float) -> tuple[float, float, bytes]:
    """Wall and CPU seconds and stdout of one ``wasmig run --engine interp``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wasmig", "run", "--engine", "interp", str(wasm), *args],
                          capture_output=True, env=env, timeout=timeout, cwd=checkout)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"{checkout}: exit {proc.returncode}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return wall, cpu, proc.stdout


def phases(checkout: Path, wasm: Path, args: list[str], timeout: float) -> tuple[float, float]:
    """CPU seconds of loading (decode + validate) and of running, in one process."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-c", PHASES, str(wasm), *args], capture_output=True, env=env,
                          timeout=timeout, cwd=checkout)
    for line in proc.stderr.decode().splitlines():
        if line.startswith("PHASES "):
            load, run = line.split()[1:]
            return float(load), float(run)
    sys.exit(f"{checkout}: no phases reported\n{proc.stderr.decode(errors='replace')[-2000:]}")


def fuel(wasm: Path, args: list[str]) -> tuple[int, bytes] | None:
    """Wasmtime's fuel for the run (see the module docstring) and its stdout; None without wasmtime."""
    try:
        import wasmtime
    except ImportError:
        return None
    import tempfile

    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    engine = wasmtime.Engine(cfg)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["python", *args]
        wasi.stdout_file = str(out)
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        budget = 10**15
        store.set_fuel(budget)
        inst = linker.instantiate(store, wasmtime.Module.from_file(engine, str(wasm)))
        try:
            inst.exports(store)["_start"](store)
        except wasmtime.ExitTrap as e:
            if e.code != 0:
                sys.exit(f"wasmtime: exit {e.code}")
        return budget - store.get_fuel(), out.read_bytes()


def quartiles(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.2f}"
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return f"{q[0]:.2f}-{q[2]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per workload and checkout (default 3)")
    ap.add_argument("--checkout", action="append", default=[], type=Path,
                    help="another wasmig tree to compare (repeatable)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    ap.add_argument("--no-fuel", action="store_true", help="do not count instructions with wasmtime")
    ap.add_argument("--phases", action="store_true", help="also split each checkout's CPU time into load and run")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run before it counts as failed")
    opts = ap.parse_args()
    if opts.rounds < 1:
        ap.error("--rounds must be at least 1")
    names = opts.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    checkouts = [REPO, *[c.resolve() for c in opts.checkout]]
    for c in checkouts:
        if not (c / "wasmig" / "__init__.py").is_file():
            ap.error(f"{c} is not a wasmig checkout (no wasmig/__init__.py)")
    try:
        wasm = real_programs.obtain("cpython")
    except real_programs.ProgramUnavailable as e:
        sys.exit(f"cannot obtain CPython for WASI: {e}")
    print(f"python {sys.version.split()[0]}, {opts.rounds} round(s), checkouts alternating:")
    for i, c in enumerate(checkouts):
        print(f"  [{i}] {c}")
    for name in names:
        args = WORKLOADS[name]
        counted = None if opts.no_fuel else fuel(wasm, args)
        what = f"{counted[0]:,} instructions (wasmtime fuel)" if counted else "instructions not counted"
        print(f"\n{name}: {what}")
        walls: dict[int, list[float]] = {i: [] for i in range(len(checkouts))}
        cpus: dict[int, list[float]] = {i: [] for i in range(len(checkouts))}
        expected = counted[1] if counted else None
        for r in range(opts.rounds):
            order = list(range(len(checkouts)))
            order = order[r % len(order):] + order[: r % len(order)]
            for i in order:
                wall, cpu, out = run_once(checkouts[i], wasm, args, opts.timeout)
                if expected is None:
                    expected = out
                elif out != expected:
                    sys.exit(f"[{i}] {name}: output differs:\n{out[:300]!r}\nexpected\n{expected[:300]!r}")
                walls[i].append(wall)
                cpus[i].append(cpu)
        for i in range(len(checkouts)):
            w, c = statistics.median(walls[i]), statistics.median(cpus[i])
            rate = f"  {counted[0] / c / 1e6:5.2f} M instr/CPU s" if counted else ""
            print(f"  [{i}] wall {w:7.2f} s ({quartiles(walls[i])})  CPU {c:7.2f} s ({quartiles(cpus[i])}){rate}")
            if opts.phases:
                load, run = phases(checkouts[i], wasm, args, opts.timeout)
                speed = f", run {counted[0] / run / 1e6:.2f} M instr/CPU s" if counted else ""
                print(f"      one more run: load (decode + validate) {load:.2f} s CPU, run {run:.2f} s CPU{speed}")
        if len(checkouts) > 1:
            base = statistics.median(cpus[0])
            for i in range(1, len(checkouts)):
                print(f"  CPU ratio [{i}]/[0]: {statistics.median(cpus[i]) / base:.2f}x")


if __name__ == "__main__":
    main()
