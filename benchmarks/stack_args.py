#!/usr/bin/env python3
"""What do i32 arguments passed on the stack cost under Cranelift? (issue 15 item 5, session 9)

On x86-64 a wasm function's first four integer parameters travel in registers (after the two VM
contexts); the rest go on the stack, where the caller stores an i32 with a 32-bit store and the
callee reads the slot with a 64-bit load. A load wider than the store it reads cannot be forwarded
from the store buffer and waits for the store to retire: a stall on every such call. 16% of
QuickJS's guest samples sit right after such loads (docs/instrument.md, "Session 9"). This script
prices the fix before anyone builds it. Two modes:

``micro``: a function of six i32 parameters (two on the stack) called ``--calls`` times in a loop,
against the same function on i64 parameters; interleaved rounds in one process, CPU time of the
calling thread; prints the median nanoseconds a call of each.

``widen IN OUT``: writes IN with every i32 parameter at integer position 4 or more widened to i64,
in the functions the pass itself widens (``wasmig.instrument.widen.widen_plan``: not those a table,
``ref.func``, an export, the start or a ``return_call`` names, nor the biggest): its body wraps the parameter
at each ``local.get`` and extends it at each ``local.set``/``local.tee``; each direct call
(``call``, ``return_call``) extends the argument, through fresh locals when later arguments sit
above it. The result computes what IN computes. ``--ignore-pass-exports`` also widens functions
exported only to the pass's rewind module (``wasmig:`` names): for timing a run module alone with
``guest_real.py --extra``, since its rewind module would no longer link.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wasmig.binary.encoder import encode_module  # noqa: E402
from wasmig.binary.ir import Function, FuncType, Instr  # noqa: E402
from wasmig.binary.ir import Module as IRModule  # noqa: E402
from wasmig.instrument.widen import widen_plan  # noqa: E402

#: decoding an instrumented module needs these proposals
FEATURES = frozenset({"multi-memory", "threads", "tail-call"})
_GET, _SET, _TEE, _CALL, _RETURN_CALL = 0x20, 0x21, 0x22, 0x10, 0x12
_WRAP, _EXTEND_U = 0xA7, 0xAD


def micro_wat(t: str) -> str:
    """A module whose ``run(n)`` calls a six-parameter function of type ``t`` n times."""
    params = " ".join([f"(param {t})"] * 6)
    return f"""(module
  (func $f {params} (result {t})
    local.get 0 local.get 5 {t}.add local.get 4 {t}.add)
  (func (export "run") (param $n i32) (result {t})
    (local $acc {t})
    (loop $l
      (local.set $acc ({t}.add (local.get $acc)
        (call $f (local.get $acc) ({t}.const 1) ({t}.const 2) ({t}.const 3) (local.get $acc) ({t}.const 5))))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    local.get $acc))"""


def micro(calls: int, rounds: int) -> dict[str, float]:
    """Median nanoseconds a call, per parameter type."""
    import wasmtime

    engine = wasmtime.Engine()
    runs = {}
    for t in ("i32", "i64"):
        store = wasmtime.Store(engine)
        inst = wasmtime.Instance(store, wasmtime.Module(engine, micro_wat(t)), [])
        runs[t] = (store, inst.exports(store)["run"])
    times: dict[str, list[float]] = {t: [] for t in runs}
    for r in range(rounds):
        for t in sorted(runs, reverse=r % 2 == 1):
            store, run = runs[t]
            t0 = time.thread_time()
            run(store, calls)
            times[t].append(time.thread_time() - t0)
    return {t: statistics.median(xs) / calls * 1e9 for t, xs in times.items()}


def plan_of(ir: IRModule, pass_exports_too: bool = False) -> dict[int, tuple[int, ...]]:
    """The pass's widening plan (:func:`wasmig.instrument.widen.widen_plan`) of ``ir``; with
    ``pass_exports_too``, functions exported only under ``wasmig:`` names are not spared."""
    if pass_exports_too:
        ir = dataclasses.replace(ir, exports=[e for e in ir.exports if not e.name.startswith("wasmig:")])
    return widen_plan(ir)


def _rewrite(ir: IRModule, f: Function, wide: tuple[int, ...], plan: dict[int, tuple[int, ...]]) -> int:
    """Rewrites ``f``'s body in place for ``plan``; returns the number of calls extended."""
    n = ir.num_imported_funcs()
    first_new = len(ir.types[f.type_idx].params) + sum(count for count, _ in f.locals)
    extra: list[str] = []
    body: list[Instr] = []
    calls = 0
    for ins in f.body:
        if wide and ins.op in (_GET, _SET, _TEE) and ins.imm in wide:
            body += {_GET: [ins, Instr(_WRAP)], _SET: [Instr(_EXTEND_U), ins],
                     _TEE: [Instr(_EXTEND_U), ins, Instr(_WRAP)]}[ins.op]
            continue
        if ins.op in (_CALL, _RETURN_CALL) and ins.imm in plan:
            calls += 1
            params = ir.types[ir.funcs[ins.imm - n].type_idx].params
            callee_wide = plan[ins.imm]
            lo = min(callee_wide)
            temps = []
            for i in range(lo, len(params)):
                extra.append("i64" if i in callee_wide else params[i])
                temps.append(first_new + len(extra) - 1)
            for i in range(len(params) - 1, lo - 1, -1):  # pop the arguments from lo on, extending
                body += [Instr(_EXTEND_U)] if i in callee_wide else []
                body.append(Instr(_SET, temps[i - lo]))
            body += [Instr(_GET, tmp) for tmp in temps]
        body.append(ins)
    if wide or calls:
        f.body = body
        f.locals = [*f.locals, *((1, t) for t in extra)]
        f.canonical = False
    return calls


def widen(data: bytes, pass_exports_too: bool = False) -> tuple[bytes, int, int]:
    """``data`` with its stack-passed i32 parameters widened (module doc); (bytes, functions, calls)."""
    from wasmig import Module

    ir = Module.from_bytes(data, validate=False, features=FEATURES).ir
    n = ir.num_imported_funcs()
    plan = plan_of(ir, pass_exports_too)
    calls = sum(_rewrite(ir, f, plan.get(n + k, ()), plan) for k, f in enumerate(ir.funcs))
    types: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
    for fi, wide in plan.items():
        f = ir.funcs[fi - n]
        ft = ir.types[f.type_idx]
        key = (tuple("i64" if i in wide else t for i, t in enumerate(ft.params)), ft.results)
        if key not in types:
            ir.types.append(FuncType(*key))
            types[key] = len(ir.types) - 1
        f.type_idx = types[key]
    return encode_module(ir), len(plan), calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("micro", help="i32 against i64 stack parameters, ns a call")
    m.add_argument("--calls", type=int, default=50_000_000)
    m.add_argument("--rounds", type=int, default=5)
    w = sub.add_parser("widen", help="write IN with its stack-passed i32 parameters widened")
    w.add_argument("input", type=Path)
    w.add_argument("output", type=Path)
    w.add_argument("--ignore-pass-exports", action="store_true",
                   help="also widen functions exported only to the rewind module (wasmig: names)")
    args = ap.parse_args(argv)
    if args.mode == "micro":
        for t, ns in micro(args.calls, args.rounds).items():
            print(f"{t} parameters: {ns:.2f} ns a call")
        return 0
    if not args.input.is_file():
        raise SystemExit(f"stack_args: no such file: {args.input}")
    from wasmig.errors import WasmError

    try:
        out, functions, calls = widen(args.input.read_bytes(), args.ignore_pass_exports)
    except WasmError as e:
        raise SystemExit(f"stack_args: {args.input}: {e}") from None
    args.output.write_bytes(out)
    print(f"{args.output}: {functions} functions widened, {calls} calls extended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
