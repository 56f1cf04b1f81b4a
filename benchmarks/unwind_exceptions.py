#!/usr/bin/env python3
"""Would unwinding by wasm exceptions beat the fast variant's post-call checks? (issue 15 item 5)

The fast variant tests the poll byte after every call that can unwind (docs/instrument.md). With
the exception-handling proposal (wasmtime 51, ``Config.wasm_exceptions``; no GC support needed) a
poll site's cold arm could write its record and ``throw $unwind``, and each call site be wrapped in
``try_table (catch $unwind $h)`` whose handler writes the frame's record and rethrows: no test after
a call. This script prices that idea before anyone builds it (session 8: it loses; the figures are
in docs/instrument.md, "Unwinding by wasm exceptions"). Two modes:

``micro``: hand-made modules, every variant timed in the same process, interleaved (each round runs
every variant once, the order rotating), CPU time of the calling thread; it prints each variant's
median of the per-round ratios to ``plain`` with quartiles. Kernels:

- ``dispatch-L``: a ``loop`` + ``br_table`` over 16 handlers reading opcodes from memory, 6 of them
  calling a small function that can unwind (it polls), L locals live across every call;
- ``fib``: recursive fib(32).

Variants: ``plain`` (no polls); ``check`` (today's shape: a header poll, and after each call the
poll byte tested, the cold arm storing the live locals); ``exc`` (a header poll, each call in a
``try_table`` whose handler stores the live locals and calls ``$throw``; fib without any poll, an
optimistic bound: a recursion needs one somewhere).

``quickjs OUT``: writes *unsafe* pricing modules of QuickJS's fast variant (they cannot unwind
correctly; they only show what the generated code costs) for ``guest_real.py --extra``, run with
``WASMIG_BENCH_EXCEPTIONS=1`` so that its engine accepts them: ``exc.wasm`` (every direct call's
post-call check removed and the call wrapped in a ``try_table`` whose handler is ``unreachable``)
and ``nocheck.wasm`` (the checks removed, nothing else: the most dropping them could gain).
``--only F,G`` limits the rewrite to the functions of those names (e.g. ``JS_CallInternal``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

#: handlers of the dispatch loop that call the small function
CALLERS = (1, 3, 5, 7, 9, 12)
POLL = "(i32.atomic.load8_u $poll (i32.const 0))"
#: the record header, as the pass's ``$record_header`` (called once per frame, after the frame's
#: slots are stored inline): moves the write pointer on past a 128-byte record and sets the poll
#: byte (every unwind does). Records start at byte 64 of ``$poll``.
HEADER = """(global $wp (mut i32) (i32.const 64))
(func $hdr (global.set $wp (i32.add (global.get $wp) (i32.const 128)))
  (i32.atomic.store8 $poll (i32.const 0) (i32.const 1)))"""


def _store(site: int, names: list[str], mode: str) -> str:
    """A cold arm's end: the site and the live locals stored inline at the write pointer, then a
    return with dummy results (through ``$unwind``, whose epilogue calls ``$hdr``) or a throw."""
    slots = "".join(f"(i32.store $poll offset={4 + 4 * i} (global.get $wp) (local.get {n}))"
                    for i, n in enumerate(names))
    leave = "(call $hdr) (call $throw) (unreachable)" if mode == "exc" else "(br $unwind)"
    return f"(i32.store $poll (global.get $wp) (i32.const {site})) {slots} {leave}"


def _leaf(mode: str, trip: bool) -> str:
    """The small callee: it polls (so its call sites need a check), then does a little arithmetic.
    With ``trip``, its ``$trip``-th call sets the poll byte itself (tests: an unwind from inside)."""
    value = ("(i32.xor (i32.add (i32.mul (local.get 0) (i32.const 31)) (local.get 1))"
             " (i32.shr_u (local.get 0) (i32.const 3)))")
    if mode == "plain":
        return f"(func $leaf (param i32 i32) (result i32) {value})"
    arm = "(global.set $trip (i32.sub (global.get $trip) (i32.const 1)))" \
          "(if (i32.eqz (global.get $trip)) (then (i32.atomic.store8 $poll (i32.const 0) (i32.const 1))))"
    poll = f"(if {POLL} (then {_store(0, ['0', '1'], mode)}))"
    if mode == "exc":
        return f"(func $leaf (param i32 i32) (result i32) {arm if trip else ''} {poll} {value})"
    return (f"(func $leaf (param i32 i32) (result i32) (block $done (result i32) (block $unwind "
            f"{arm if trip else ''} {poll} (br $done {value})) (call $hdr) (i32.const 0)))")


def _dispatch(mode: str, live: int) -> str:
    names = [f"$a{j}" for j in range(live)] + ["$i"]

    def handler(k: int) -> str:
        j = k % live
        if k not in CALLERS:
            other = f"(local.get $a{(j + 3) % live})"
            return f"(local.set $a{j} (i32.add (local.get $a{j}) (i32.xor {other} (i32.const {k * 37 + 1}))))"
        call = f"(call $leaf (local.get $a{j}) (local.get $a{(j + 1) % live}))"
        if mode == "plain":
            return f"(local.set $a{j} {call})"
        if mode == "check":
            arm = f"(then (drop) {_store(100 + k, names, mode)})"
            return f"{call} (if (param i32) (result i32) {POLL} {arm}) (local.set $a{j})"
        return (f"(block $c{k} (result i32) (block $h{k} (try_table (result i32) (catch $u $h{k}) {call}) (br $c{k}))"
                f" {_store(100 + k, names, mode)}) (local.set $a{j})")

    head = "" if mode == "plain" else f"(if {POLL} (then {_store(1, names, mode)}))"
    blocks = "".join(f"(block $b{k}" for k in reversed(range(16)))
    opcode = "(i32.load8_u (i32.and (local.get $i) (i32.const 4095)))"
    table = "(br_table " + " ".join(f"$b{k}" for k in range(16)) + f" {opcode})"
    arms = "".join(f") {handler(k)} (br $next)" for k in range(16))
    loop = (f"(loop $L {head} (block $next {blocks} {table} {arms})"
            "(br_if $L (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))")
    total = "(local.get $a0)" + "".join(f" (i32.add (local.get $a{j}))" for j in range(1, live))
    locals_ = " ".join(f"(local $a{j} i32)" for j in range(live))
    init = "".join(f"(local.set $a{j} (i32.const {j * 7 + 1}))" for j in range(live))
    if mode == "exc":
        return f"(func $dispatch (param $n i32) (result i32) (local $i i32) {locals_} {init} {loop} {total})"
    return (f"(func $dispatch (param $n i32) (result i32) (local $i i32) {locals_} "
            f"(block $done (result i32) (block $unwind {init} {loop} (br $done {total})) (call $hdr) (i32.const 0)))")


def _fib(mode: str) -> str:
    call = "(call $fib (i32.sub (local.get $n) (i32.const {d})))"
    if mode == "plain":
        return (f"(func $fib (param $n i32) (result i32) (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))"
                f" (then (local.get $n)) (else (i32.add {call.format(d=1)} {call.format(d=2)}))))")
    if mode == "check":
        return (f"(func $fib (param $n i32) (result i32) (local $t i32) (block $done (result i32) (block $unwind"
                f" (br $done (if (result i32) (i32.lt_u (local.get $n) (i32.const 2)) (then (local.get $n)) (else"
                f" {call.format(d=1)} (if (param i32) (result i32) {POLL} (then (drop) {_store(1, ['$n'], mode)}))"
                f" (local.set $t) {call.format(d=2)}"
                f" (if (param i32) (result i32) {POLL} (then (drop) {_store(2, ['$n', '$t'], mode)}))"
                f" (i32.add (local.get $t))))))"
                f" (call $hdr) (i32.const 0)))")
    def wrapped(d: int, site: int, names: list[str]) -> str:
        return (f"(block $c{d} (result i32) (block $h{d} (try_table (result i32) (catch $u $h{d}) {call.format(d=d)})"
                f" (br $c{d})) {_store(site, names, mode)})")
    return (f"(func $fib (param $n i32) (result i32) (local $t i32)"
            f" (if (result i32) (i32.lt_u (local.get $n) (i32.const 2)) (then (local.get $n))"
            f" (else {wrapped(1, 1, ['$n'])} (local.set $t) {wrapped(2, 2, ['$n', '$t'])}"
            f" (i32.add (local.get $t)))))")


def module_wat(mode: str, live: int = 10, *, trip: bool = False) -> str:
    """The whole module of one variant: exports ``dispatch`` and ``fib`` (dummy results after an
    unwind: 0 from ``check``, -1 from ``exc``), the memories ``mem`` and ``poll``, and ``trip``."""
    rng = random.Random(1)
    data = "".join(f"\\{rng.randrange(16):02x}" for _ in range(4096))  # the opcode stream
    catching = [f'(func (export "{f}") (param i32) (result i32) (block $h (try_table (catch $u $h)'
                f' (return (call ${f} (local.get 0))))) (i32.const -1))' for f in ("dispatch", "fib")]
    direct = [f'(func (export "{f}") (param i32) (result i32) (call ${f} (local.get 0)))' for f in ("dispatch", "fib")]
    return "\n".join([
        '(module (memory $mem (export "mem") 1) (memory $poll (export "poll") 1)',
        f'(data (memory $mem) (i32.const 0) "{data}")',
        '(global $trip (export "trip") (mut i32) (i32.const 0))',
        "(tag $u) (func $throw (throw $u))" if mode == "exc" else "",
        HEADER, _leaf(mode, trip), _dispatch(mode, live), _fib(mode),
        *(catching if mode == "exc" else direct), ")"])


def make_engine(exceptions: bool = True):
    """An engine with the instrumented modules' features, and exceptions when asked."""
    import wasmtime

    config = wasmtime.Config()
    config.wasm_multi_memory = True
    config.wasm_threads = True
    config.wasm_exceptions = exceptions
    return wasmtime.Engine(config)


def micro(rounds: int, lives: list[int]) -> None:
    import wasmtime

    engine = make_engine()
    kernels = [(f"dispatch-{live}", "dispatch", live, 20_000_000) for live in lives] + [("fib", "fib", 10, 32)]
    print(f"micro: {rounds} rounds, load average at the start {os.getloadavg()[0]:.1f}", flush=True)
    for label, export, live, arg in kernels:
        runs = {}
        for mode in ("plain", "check", "exc"):
            store = wasmtime.Store(engine)
            instance = wasmtime.Instance(store, wasmtime.Module(engine, wasmtime.wat2wasm(module_wat(mode, live))), [])
            runs[mode] = (store, instance.exports(store)[export])
        times: dict[str, list[float]] = {mode: [] for mode in runs}
        order = list(runs)
        for r in range(rounds):
            for mode in order[r % 3:] + order[:r % 3]:
                store, func = runs[mode]
                t0 = time.thread_time()
                func(store, arg)
                times[mode].append(time.thread_time() - t0)
        for mode in ("check", "exc"):
            ratios = sorted(a / b for a, b in zip(times[mode], times["plain"], strict=True))
            print(f"{label:12s} {mode:6s} {statistics.median(ratios):.3f}x plain "
                  f"(quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


#: a stand-in opcode for ``try_table`` (0x1F), which wasmig's binary layer does not know: its
#: immediate is the block type index; the catch list is always ``(catch tag 0, label 0)``
_TRY = -1


def _matching_end(body: list, start: int) -> tuple[int, bool]:
    """The index of the ``end`` closing the construct at ``start``, and whether it has an ``else``."""
    depth, has_else = 0, False
    for j in range(start, len(body)):
        op = body[j].op
        if op in (0x02, 0x03, 0x04, _TRY):
            depth += 1
        elif op == 0x05 and depth == 1:
            has_else = True
        elif op == 0x0B:
            depth -= 1
            if depth == 0:
                return j, has_else
    raise ValueError(f"no end for the construct at {start}")


def _rewrite(module, wrap: bool, only: frozenset[str]) -> int:
    """Remove the poll check after each direct call of the module's own code (``i32.const 0
    i32.atomic.load8_u(poll)  if ... end``, no ``else``); with ``wrap``, put the call in
    ``block(T) block([p*]->[]) try_table(T) (catch 0 0) call end br 1 end unreachable end``,
    T the callee's type (the level's other values stay beneath). Returns the number of calls."""
    from wasmig.binary.ir import FuncType, Instr
    from wasmig.binary.opcodes import memarg_memidx

    def type_index(ft: FuncType) -> int:
        if ft not in module.types:
            module.types.append(ft)
        return module.types.index(ft)

    nimp, ftypes = module.num_imported_funcs(), module.func_type_indices()
    names = module.names.functions if module.names else {}
    done = 0
    for k, f in enumerate(module.funcs):
        if only and names.get(nimp + k) not in only:
            continue
        body, out, i = f.body, [], 0
        while i < len(body):
            ins = body[i]
            if (ins.op == 0x10 and ins.imm >= nimp and i + 3 < len(body) and body[i + 1].op == 0x41
                    and body[i + 1].imm == 0 and body[i + 2].op == 0xFE12
                    and memarg_memidx(body[i + 2].imm) != 0 and body[i + 3].op == 0x04):
                end, has_else = _matching_end(body, i + 3)
                if not has_else:
                    done += 1
                    t = ftypes[ins.imm]
                    if wrap:
                        th = type_index(FuncType(module.types[t].params, ()))
                        out += [Instr(0x02, t), Instr(0x02, th), Instr(_TRY, t), ins, Instr(0x0B),
                                Instr(0x0C, 1), Instr(0x0B), Instr(0x00), Instr(0x0B)]
                    else:
                        out.append(ins)
                    i = end + 1
                    continue
            out.append(ins)
            i += 1
        f.body = out
    return done


def _encode_with_tag(module) -> bytes:
    """The module's bytes, ``try_table`` encoded and a tag section (id 13, one tag of type
    ``[] -> []``) after the memory section."""
    from wasmig.binary.decoder import sections
    from wasmig.binary.encoder import _blocktype, _encode_instr, encode_code_entry_raw, encode_module
    from wasmig.binary.ir import FuncType
    from wasmig.binary.leb128 import encode_u

    if FuncType((), ()) not in module.types:
        module.types.append(FuncType((), ()))
    empty = module.types.index(FuncType((), ()))
    code = []
    for f in module.funcs:
        body = bytearray()
        for ins in f.body:
            if ins.op == _TRY:
                body += b"\x1f" + _blocktype(ins.imm) + b"\x01\x00" + encode_u(0) + encode_u(0)
            else:
                _encode_instr(body, ins.op, ins.imm)
        code.append(encode_code_entry_raw(f.locals, bytes(body)))
    data = encode_module(module, code=code)
    at = max(end for sid, _start, end in sections(data) if sid == 5)
    payload = encode_u(1) + b"\x00" + encode_u(empty)
    return data[:at] + bytes([13]) + encode_u(len(payload)) + payload + data[at:]


def pricing_modules(program: Path, only: frozenset[str] = frozenset()) -> dict[str, bytes]:
    """``exc`` and ``nocheck`` (module docstring) of ``program``'s fast variant."""
    from wasmig import Module
    from wasmig.binary.decoder import decode_module
    from wasmig.binary.encoder import encode_module
    from wasmig.binary.features import INSTRUMENTED
    from wasmig.instrument.unwind import instrument

    fast = instrument(Module.from_file(program), count_steps=False).data
    out = {}
    for name, wrap in (("exc", True), ("nocheck", False)):
        module = decode_module(fast, features=INSTRUMENTED)
        count = _rewrite(module, wrap, only)
        print(f"{name}: {count} post-call checks rewritten", flush=True)
        out[name] = _encode_with_tag(module) if wrap else encode_module(module)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("micro", help="the hand-made kernels, interleaved")
    m.add_argument("--rounds", type=int, default=21)
    m.add_argument("--live", default="3,10,30", help="locals live across the dispatch loop's calls")
    q = sub.add_parser("quickjs", help="write QuickJS's unsafe pricing modules into OUT")
    q.add_argument("out", type=Path)
    q.add_argument("--only", default="", help="comma-separated function names to rewrite (default: all)")
    args = ap.parse_args(argv)
    if args.cmd == "micro":
        try:
            lives = [int(x) for x in args.live.split(",")]
        except ValueError:
            raise SystemExit(f"unwind_exceptions: --live wants numbers, got {args.live!r}") from None
        micro(args.rounds, lives)
        return 0
    from tests.real_programs import ProgramUnavailable, obtain

    try:
        program = obtain("quickjs")
    except ProgramUnavailable as e:
        raise SystemExit(f"unwind_exceptions: QuickJS is not available: {e}") from None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"unwind_exceptions: cannot make {args.out}: {e.strerror}") from None
    only = frozenset(filter(None, args.only.split(",")))
    for name, data in pricing_modules(program, only).items():
        (args.out / f"{name}.wasm").write_bytes(data)
        print(f"wrote {args.out / name}.wasm ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
