"""``python -m wasmig.examples.demo [LIMIT]``: compile a C program to wasm32-wasi and run it on
wasmig's pure-Python interpreter.

What it shows, end to end: ``demo.c`` (a prime sieve) is compiled with zig (``wasmig.toolchain``,
cached under ``.cache/wasm``), decoded and validated (``wasmig.Module``), instantiated on the
interpreter with the minimal WASI (``wasmig.wasi.minimal``) and run from ``_start``. The
program's own output is printed as it is produced, followed by a summary line.

If the ``wasmtime`` package is installed, the same module also runs there, as a cross-check of
the output and to count the executed wasm instructions with wasmtime's fuel meter -- wasmig's
interpreter deliberately does not count instructions (it counts only function entries and loop
iterations, its checkpoint clock), so this is how the demo can quote instructions per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import wasmig
from wasmig.toolchain import ToolchainError, compile_c
from wasmig.wasi.minimal import MinimalWasi

DEMO_C = Path(__file__).resolve().with_name("demo.c")


def wasmtime_reference(path: Path, args: list[str]) -> tuple[int, bytes, int] | None:
    """(exit code, stdout, fuel consumed) on wasmtime, or None when wasmtime is not installed.

    wasmtime's fuel is one unit per executed instruction except ``nop drop block loop end else``
    (and ``return``/``unreachable``), plus one per function return.
    """
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
    store = wasmtime.Store(engine)
    budget = 10**15
    store.set_fuel(budget)
    with tempfile.TemporaryDirectory() as tmp:
        wasi = wasmtime.WasiConfig()
        wasi.argv = args
        wasi.stdout_file = str(Path(tmp) / "stdout")
        store.set_wasi(wasi)
        inst = linker.instantiate(store, wasmtime.Module.from_file(engine, str(path)))
        code = 0
        try:
            inst.exports(store)["_start"](store)
        except wasmtime.ExitTrap as exc:
            code = exc.code
        out = (Path(tmp) / "stdout").read_bytes()
    return code, out, budget - store.get_fuel()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wasmig.examples.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("limit", nargs="?", default="10000", help="find the primes below this (default 10000)")
    ap.add_argument("--no-reference", action="store_true", help="do not cross-check with wasmtime")
    opts = ap.parse_args(argv)

    print(f"compiling {DEMO_C.name} to wasm32-wasi with zig (cached; a first build on a machine also builds "
          "wasi-libc, ~30 s) ...", flush=True)
    t0 = time.perf_counter()
    try:
        wasm = compile_c(DEMO_C)
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    module = wasmig.Module.from_file(wasm)
    t_load = time.perf_counter() - t0
    print(f"  {wasm} ({wasm.stat().st_size:,} bytes, {len(module.ir.funcs)} functions): "
          f"compile/cache {t_compile:.2f} s, decode+validate {t_load:.2f} s")

    args = ["demo", str(opts.limit)]
    wasi = MinimalWasi(args, {}, echo_stdout=sys.stdout.buffer, echo_stderr=sys.stderr.buffer)
    print(f"running `{' '.join(args)}` on wasmig's interpreter:\n", flush=True)
    inst = wasmig.Instance(module, imports=wasi.imports_for(module), engine="interp")
    wasi.bind(inst)
    t0 = time.perf_counter()
    code, out, _err = wasi.run_instance(inst)
    wall = time.perf_counter() - t0

    machine: Any = getattr(inst, "machine", None)
    steps = getattr(machine, "steps", None)
    calls = sum(wasi.calls.values())
    summary = f"\nresult: exit code {code}, {wall:.2f} s wall"
    if steps is not None:
        summary += f", {steps:,} steps (function entries + loop iterations)"
    summary += f", {calls} WASI calls"
    print(summary)

    if not opts.no_reference:
        ref = wasmtime_reference(wasm, args)
        if ref is None:
            print("(install the 'wasmtime' package to cross-check the output and count instructions)")
        else:
            ref_code, ref_out, fuel = ref
            same = ref_code == code and ref_out == out
            print(f"wasmtime: {'identical output and exit code' if same else 'DIFFERENT RESULT'}; "
                  f"~{fuel:,} wasm instructions (wasmtime fuel) = {fuel / wall / 1e6:.2f} M instr/s on wasmig")
            if not same:
                return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
