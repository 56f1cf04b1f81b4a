#!/usr/bin/env python3
"""How fast is wasmig's pure-Python interpreter, in wasm instructions per second, next to pywasm?

Two workloads, each a hand-written ``.wat`` file in this directory, assembled with ``wat2wasm``
at run time so both engines execute byte-for-byte the same module (no ``.wasm`` is committed):

- ``fib.wat``      recursive Fibonacci: call/return-heavy, no memory.
- ``memloop.wat``  fill an i32 array in linear memory and sum it, ``reps`` times: loads,
                   stores, locals and branches.

Instruction counts are exact, from the programs' structure (documented in the .wat files):

- fib(n):        5 * F(n+1) + 13 * (F(n+1) - 1)   (F(n+1) leaf calls, F(n+1) - 1 inner calls)
- memloop(n, r): 5 + r * (21 + 34 * n)

An instruction is "counted" unless it is one of ``block loop end else nop drop`` -- the
structural markers that most interpreters compile away (the same convention as wasmtime's
fuel, which additionally charges one unit per function return). ``--verify`` checks both
formulas against wasmtime's fuel meter (fuel == count + number of calls) when the
``wasmtime`` package is installed.

Runs of the two engines are interleaved (wasmig, pywasm, wasmig, ...) so that drift in machine
load hits both alike; each engine gets a fresh instance and an untimed warm-up call first
(wasmig compiles function bodies lazily on the first call, pywasm decodes up front), and the
median of ``--runs`` timed calls is reported. Exit status 0 on success, 1 if an engine returns
a wrong result.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing


def fibs(n: int) -> list[int]:
    f = [0, 1]
    while len(f) <= n + 1:
        f.append(f[-1] + f[-2])
    return f


def fib_count(n: int) -> int:
    leaves = fibs(n)[n + 1]
    return 5 * leaves + 13 * (leaves - 1)


def fib_calls(n: int) -> int:
    return 2 * fibs(n)[n + 1] - 1


def memloop_count(n: int, reps: int) -> int:
    return 5 + reps * (21 + 34 * n)


def memloop_result(n: int, reps: int) -> int:
    """What ``run(n, reps)`` returns (as a signed i32): the sum over all reps of sum(i*r + 1)."""
    total = sum(n * 1 + r * (n * (n - 1) // 2) for r in range(reps)) & 0xFFFFFFFF
    return total - (1 << 32) if total & 0x80000000 else total


@dataclass
class Workload:
    name: str
    wat: str
    export: str
    args: tuple[int, ...]
    warmup_args: tuple[int, ...]
    instructions: int
    calls: int
    expected: int


def workloads(scale: float) -> list[Workload]:
    # Sized so pywasm needs ~1.5 s per call and wasmig ~0.1-0.3 s: long enough for stable timings,
    # short enough that the whole script stays well under a minute.
    fib_n = 22 if scale >= 1 else 16
    n, reps = max(10, int(2000 * scale)), 10
    return [
        Workload("fib", "fib.wat", "fib", (fib_n,), (5,), fib_count(fib_n), fib_calls(fib_n), fibs(fib_n)[fib_n]),
        Workload(
            "memloop", "memloop.wat", "run", (n, reps), (10, 1), memloop_count(n, reps), 1, memloop_result(n, reps)
        ),
    ]


def assemble(wat: str) -> bytes:
    exe = shutil.which("wat2wasm") or "/usr/bin/wat2wasm"
    try:
        return subprocess.run([exe, str(HERE / wat), "--output=-"], capture_output=True, check=True).stdout
    except FileNotFoundError:
        sys.exit("wat2wasm not found: install wabt (`make wabt` or `apt-get install wabt`)")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"wat2wasm failed on {wat}:\n{exc.stderr.decode()}")


# --- engines: each returns a fresh "call(args) -> int" for a module ------------------------------
Caller = Callable[[tuple[int, ...]], int]


def wasmig_engine(data: bytes, export: str) -> Caller:
    import wasmig

    inst = wasmig.Instance(wasmig.Module.from_bytes(data), imports={}, engine="interp")
    func = inst.exports[export]
    return lambda args: func(*args)


def pywasm_engine(data: bytes, export: str) -> Caller:
    import pywasm

    runtime = pywasm.core.Runtime()
    inst = runtime.instance(pywasm.core.ModuleDesc.from_reader(io.BytesIO(data)))

    def call(args: tuple[int, ...]) -> int:
        (result,) = runtime.invocate(inst, export, list(args))
        return result - (1 << 32) if result & 0x80000000 else result  # pywasm returns i32 unsigned

    return call


ENGINES: dict[str, Callable[[bytes, str], Caller]] = {"wasmig": wasmig_engine, "pywasm": pywasm_engine}


def available_engines() -> list[str]:
    names = []
    try:
        import wasmig

        if hasattr(wasmig, "Instance"):
            names.append("wasmig")
        else:
            print("note: wasmig.Instance does not exist yet; skipping wasmig", file=sys.stderr)
    except ImportError as exc:
        print(f"note: cannot import wasmig ({exc}); skipping it", file=sys.stderr)
    try:
        import pywasm  # noqa: F401

        names.append("pywasm")
    except ImportError:
        print("note: pywasm is not installed (pip install pywasm); skipping it", file=sys.stderr)
    return names


def verify_counts(wl: Workload, data: bytes) -> None:
    """Check the instruction formula against wasmtime's fuel meter (fuel = count + calls)."""
    try:
        import wasmtime
    except ImportError:
        print("  (wasmtime not installed: cannot --verify)")
        return
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    engine = wasmtime.Engine(cfg)
    store = wasmtime.Store(engine)
    budget = 10**12
    store.set_fuel(budget)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, data), [])
    inst.exports(store)[wl.export](store, *wl.args)
    fuel = budget - store.get_fuel()
    ok = fuel == wl.instructions + wl.calls
    print(f"  verify {wl.name}: wasmtime fuel {fuel} = {wl.instructions} instructions + {wl.calls} calls: {ok}")
    if not ok:
        sys.exit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per engine and workload (default 5)")
    ap.add_argument("--scale", type=float, default=1.0, help="workload size factor (<1 for a quick smoke run)")
    ap.add_argument("--verify", action="store_true", help="check the instruction formulas with wasmtime fuel")
    ap.add_argument("--engines", default=None, help="comma-separated subset of: " + ",".join(ENGINES))
    opts = ap.parse_args()

    engines = available_engines() if opts.engines is None else opts.engines.split(",")
    if not engines:
        print("no engine available", file=sys.stderr)
        return 1
    print(f"python {sys.version.split()[0]}, {opts.runs} interleaved runs per engine, median reported")
    failed = False
    summary: list[tuple[str, dict[str, float]]] = []
    for wl in workloads(opts.scale):
        data = assemble(wl.wat)
        args_s = ", ".join(map(str, wl.args))
        print(f"\n{wl.name}({args_s}): {wl.instructions:,} instructions, {wl.calls:,} calls, {len(data)} bytes")
        if opts.verify:
            verify_counts(wl, data)
        callers: dict[str, Caller] = {}
        for name in engines:
            callers[name] = ENGINES[name](data, wl.export)
            callers[name](wl.warmup_args)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(opts.runs):
            for name in engines:
                t0 = time.perf_counter()
                result = callers[name](wl.args)
                times[name].append(time.perf_counter() - t0)
                if result != wl.expected:
                    print(f"  {name}: WRONG RESULT {result}, expected {wl.expected}")
                    failed = True
        rates: dict[str, float] = {}
        for name in engines:
            med = statistics.median(times[name])
            rates[name] = wl.instructions / med
            spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
            print(f"  {name:7s} median {med:7.3f} s  ({spread})  {rates[name] / 1e6:6.3f} M instr/s")
        if "wasmig" in rates and "pywasm" in rates:
            print(f"  ratio wasmig/pywasm: {rates['wasmig'] / rates['pywasm']:.2f}x")
        summary.append((wl.name, rates))

    print("\nsummary (M instr/s):")
    for name, rates in summary:
        cells = "  ".join(f"{e}={r / 1e6:.3f}" for e, r in rates.items())
        ratio = f"  wasmig/pywasm={rates['wasmig'] / rates['pywasm']:.2f}x" if len(rates) == 2 else ""
        print(f"  {name:8s} {cells}{ratio}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
