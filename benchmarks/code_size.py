#!/usr/bin/env python3
"""How big is the instrumented code, and how long does Cranelift take to compile it (issue 18 item 3)?

For the kernels of ``benchmarks/overhead.py`` (``benchmarks/kernels/*.c``, compiled at ``-O2``) and,
with ``--programs``, QuickJS-ng and CPython for WASI (``tests/real_programs.py``), the fast variant
of the pass (``instrument(module, count_steps=False)``) makes two modules (docs/instrument.md,
"Two modules"): the *run module* every run executes, and the *rewind module* (the rewind copies)
that a restore or a program going on after a checkpoint compiles besides. Printed per module:

- the code section of the plain module, of the run module and of the rewind module, in bytes
  and as a ratio to plain (the sum of the function bodies' sizes: the fair comparison of
  generated code; a file also holds the site map and origin tags);
- with ``--compile``, the CPU time wasmtime (Cranelift) takes to compile each of the three
  (``time.process_time`` of this process around ``wasmtime.Module(engine, bytes)``: wasmtime
  compiles on a thread pool, whose threads' CPU time counts too; not cached), the median of
  ``--rounds`` alternating rounds;

then the geometric mean of the kernels' ratios. The goal is the run module at <= 2.0x plain.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import wasmtime  # noqa: E402

from wasmig import Module  # noqa: E402
from wasmig.binary.decoder import decode_module  # noqa: E402
from wasmig.binary.features import INSTRUMENTED  # noqa: E402
from wasmig.engines.wasmtime.runtime import engine  # noqa: E402
from wasmig.instrument.unwind import instrument  # noqa: E402
from wasmig.toolchain import compile_c  # noqa: E402


def code_size(wasm: bytes) -> int:
    """The bytes of every function body (the code section without its headers)."""
    return sum(f.body_size for f in decode_module(wasm, features=INSTRUMENTED).funcs)


def compile_cpu(wasm: bytes) -> float:
    started = time.process_time()
    wasmtime.Module(engine(), wasm)
    return time.process_time() - started


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def modules(args: argparse.Namespace) -> list[tuple[str, bytes]]:
    out = []
    wanted = {k for k in args.kernels.split(",") if k}
    for src in sorted((HERE / "kernels").glob("*.c")):
        if not wanted or src.stem in wanted:
            out.append((src.stem, compile_c(src, opt="-O2").read_bytes()))
    if args.programs:
        sys.path.insert(0, str(HERE.parent))
        from tests import real_programs

        for name in args.programs.split(","):
            out.append((name, real_programs.obtain(name).read_bytes()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", default="", help="comma-separated subset of benchmarks/kernels (default: all)")
    ap.add_argument("--programs", default="", help="also these of tests/real_programs.py: quickjs,cpython")
    ap.add_argument("--compile", action="store_true", help="also time Cranelift's compile of each module")
    ap.add_argument("--rounds", type=int, default=1, help="compile rounds (alternating plain, run, rewind)")
    args = ap.parse_args()
    kernel_ratios: dict[str, list[float]] = {"run": [], "rewind": []}
    print(f"{'module':<14} {'plain':>9} {'run':>10} {'ratio':>6} {'rewind':>10} {'ratio':>6} {'pass s':>7}"
          + ("  compile s: plain, run, rewind" if args.compile else ""), flush=True)
    for name, wasm in modules(args):
        module = Module.from_bytes(wasm)
        started = time.process_time()
        done = instrument(module, count_steps=False)
        pass_cpu = time.process_time() - started
        plain = code_size(wasm)
        run = code_size(done.data)
        rewind = code_size(done.rewind) if done.rewind is not None else 0
        line = (f"{name:<14} {plain:>9} {run:>10} {run / plain:>5.2f}x {rewind:>10} {rewind / plain:>5.2f}x "
                f"{pass_cpu:>7.2f}")
        if name in {p.stem for p in (HERE / "kernels").glob("*.c")}:
            kernel_ratios["run"].append(run / plain)
            if rewind:
                kernel_ratios["rewind"].append(rewind / plain)
        if args.compile:
            times: dict[str, list[float]] = {"plain": [], "run": [], "rewind": []}
            blobs = {"plain": wasm, "run": done.data, "rewind": done.rewind}
            for _ in range(args.rounds):
                for key, blob in blobs.items():
                    if blob is not None:
                        times[key].append(compile_cpu(blob))
            line += "  " + ", ".join(f"{statistics.median(t):.3f}" if t else "-" for t in times.values())
        print(line, flush=True)
    if kernel_ratios["run"]:
        run, rewind = geomean(kernel_ratios["run"]), geomean(kernel_ratios["rewind"])
        print(f"kernels ({len(kernel_ratios['run'])}): run module / plain geomean {run:.2f}x, "
              f"rewind module / plain geomean {rewind:.2f}x")


if __name__ == "__main__":
    main()
