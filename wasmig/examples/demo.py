"""``python -m wasmig.examples.demo [LIMIT]``: compile a C program to wasm32-wasi and run it on
wasmig's pure-Python interpreter.

What it shows, end to end: ``demo.c`` (a prime sieve) is compiled with zig (``wasmig.toolchain``,
cached under ``.cache/wasm``), decoded and validated (``wasmig.Module``), instantiated on the
interpreter with wasmig's WASI preview1 (``wasmig.wasi.preview1.Wasi``, linked by
``wasmig.wasi.run.instantiate_with_wasi``) and run from ``_start``. The program's own output is
printed as it is produced, followed by a summary line.

If the ``wasmtime`` package is installed, the same module also runs there, as a cross-check of
the output and to count the executed wasm instructions with wasmtime's fuel meter -- wasmig's
interpreter deliberately does not count instructions (it counts only function entries and loop
iterations, its checkpoint clock), so this is how the demo can quote instructions per second.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import wasmig
from wasmig.toolchain import ToolchainError, compile_c
from wasmig.wasi.preview1 import ProcExit, Wasi
from wasmig.wasi.run import instantiate_with_wasi

DEMO_C = Path(__file__).resolve().with_name("demo.c")


class EchoedOutput(io.BytesIO):
    """The guest's stdout: passed on to ``target`` as it is written, and also kept (``getvalue()``)
    so that it can be compared with wasmtime's."""

    def __init__(self, target: BinaryIO) -> None:
        super().__init__()
        self.target = target

    def write(self, data: Any, /) -> int:
        self.target.write(data)
        self.target.flush()
        return super().write(data)


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
    # stdout is echoed live and kept for the wasmtime cross-check; stderr passes straight through to
    # this process's fd 2 (os.write), so Python's own buffered streams are flushed first.
    stdout = EchoedOutput(sys.stdout.buffer)
    wasi = Wasi(args, {}, stdout=stdout, stderr=None)
    print(f"running `{' '.join(args)}` on wasmig's interpreter:\n", flush=True)
    sys.stderr.flush()
    try:
        inst = instantiate_with_wasi(module, wasi, engine="interp")
        t0 = time.perf_counter()
        code = 0
        try:
            inst.invoke("_start")  # what run_command does; done here to keep the instance's counters
        except ProcExit as exc:
            code = exc.code
        wall = time.perf_counter() - t0
    finally:
        wasi.close()
    out = stdout.getvalue()

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
