"""Compile straight-line segments of a function's flat code into Python functions: the fast path.

A *segment* starts at the pc where the loop arrives (a function's entry, a call's continuation, a
loop body, a branch target) and runs forward over plain instructions until the first *boundary*:
a stable point (``loop``), a call, a return, a ``br_table``, a rare instruction (``memory.grow``,
bulk memory, tables), an unconditional branch, or a length cap. Conditional branches (``br_if``,
``if``) become side exits. The segment is generated as Python source where the operand stack lives
in Python expressions and temporaries, so ``local.get 1; i32.const 8; i32.add; i32.load`` is one
line ``t0 = _ld_u32(mem, ((locs[1] + 8) & 0xFFFFFFFF))[0]`` instead of four trips round the
dispatch loop. A segment returns the pc at which the loop continues, having pushed the values
still on its symbolic stack onto the real one.

Why this keeps every property of the interpreter: a segment holds no stable point and no call,
so every state the machine can stop in (function entries, loop headers, calls, host calls) is
reached in the dispatch loop with the operand stack, the locals and the pc exactly as
instruction-by-instruction execution leaves them; step counts are untouched. Instruction-precise
stops (``--checkpoint-at-instruction``) run the counting loop, which never uses segments. A trap
inside a segment reports the exact instruction: every instruction that can trap (memory access,
division, truncation, ``unreachable``, helper calls) is its own source line, and the line maps
back to its pc through ``fn.pcs``.

Deferred expressions are pure by construction: loads and helper calls are evaluated in program
order into temporaries; an expression reading ``locs[i]`` (or a global) is evaluated into a
temporary before ``local.set i`` (or ``global.set``) changes it.
"""

from __future__ import annotations

import builtins
import math
import struct
from collections.abc import Callable
from typing import Any

from wasmig.errors import Trap
from wasmig.interp import ops
from wasmig.interp.numeric import f32_from_bits, f32_from_bytes, f32_into_bytes, f64_from_bits

#: instructions per segment at most (bounds the source compiled for one arrival point)
MAX_INSTRUCTIONS = 400
#: nesting of a deferred expression before it is evaluated into a temporary
MAX_DEPTH = 12

#: flat-code ops that end a segment without being part of it: the dispatch loop executes them
_BOUNDARY = frozenset({ops.LOOP, ops.CALL, ops.CALL_INDIRECT, ops.RETURN, ops.BR_IF_RET, ops.BR_TABLE})

_M32 = "0xFFFFFFFF"
_M64 = "0xFFFFFFFFFFFFFFFF"
_H32 = "0x80000000"
_H64 = "0x8000000000000000"

#: binary operators inlined as Python expressions producing a value
_BIN_VALUE: dict[int, str] = {
    0x6A: f"(({{a}} + {{b}}) & {_M32})", 0x6B: f"(({{a}} - {{b}}) & {_M32})", 0x6C: f"(({{a}} * {{b}}) & {_M32})",
    0x71: "({a} & {b})", 0x72: "({a} | {b})", 0x73: "({a} ^ {b})",
    0x74: f"(({{a}} << ({{b}} & 31)) & {_M32})", 0x76: "({a} >> ({b} & 31))",
    0x75: f"(((({{a}} ^ {_H32}) - {_H32}) >> ({{b}} & 31)) & {_M32})",
    0x7C: f"(({{a}} + {{b}}) & {_M64})", 0x7D: f"(({{a}} - {{b}}) & {_M64})", 0x7E: f"(({{a}} * {{b}}) & {_M64})",
    0x83: "({a} & {b})", 0x84: "({a} | {b})", 0x85: "({a} ^ {b})",
    0x86: f"(({{a}} << ({{b}} & 63)) & {_M64})", 0x88: "({a} >> ({b} & 63))",
    0x87: f"(((({{a}} ^ {_H64}) - {_H64}) >> ({{b}} & 63)) & {_M64})",
    0xA0: "({a} + {b})", 0xA1: "({a} - {b})", 0xA2: "({a} * {b})",
}

#: binary operators inlined as Python conditions (i32 results 0/1, materialised only when stored)
_BIN_COND: dict[int, str] = {
    0x46: "({a} == {b})", 0x47: "({a} != {b})",
    0x48: f"(({{a}} ^ {_H32}) < ({{b}} ^ {_H32}))", 0x49: "({a} < {b})",
    0x4A: f"(({{a}} ^ {_H32}) > ({{b}} ^ {_H32}))", 0x4B: "({a} > {b})",
    0x4C: f"(({{a}} ^ {_H32}) <= ({{b}} ^ {_H32}))", 0x4D: "({a} <= {b})",
    0x4E: f"(({{a}} ^ {_H32}) >= ({{b}} ^ {_H32}))", 0x4F: "({a} >= {b})",
    0x51: "({a} == {b})", 0x52: "({a} != {b})",
    0x53: f"(({{a}} ^ {_H64}) < ({{b}} ^ {_H64}))", 0x54: "({a} < {b})",
    0x55: f"(({{a}} ^ {_H64}) > ({{b}} ^ {_H64}))", 0x56: "({a} > {b})",
    0x57: f"(({{a}} ^ {_H64}) <= ({{b}} ^ {_H64}))", 0x58: "({a} <= {b})",
    0x59: f"(({{a}} ^ {_H64}) >= ({{b}} ^ {_H64}))", 0x5A: "({a} >= {b})",
    # IEEE comparisons: Python's float comparisons are the same (NaN compares unequal)
    0x5B: "({a} == {b})", 0x5C: "({a} != {b})", 0x5D: "({a} < {b})",
    0x5E: "({a} > {b})", 0x5F: "({a} <= {b})", 0x60: "({a} >= {b})",
    0x61: "({a} == {b})", 0x62: "({a} != {b})", 0x63: "({a} < {b})",
    0x64: "({a} > {b})", 0x65: "({a} <= {b})", 0x66: "({a} >= {b})",
}

#: unary operators inlined as Python expressions producing a value
_UN_VALUE: dict[int, str] = {
    0x67: "(32 - ({a}).bit_length())", 0x69: "({a}).bit_count()",
    0x79: "(64 - ({a}).bit_length())", 0x7B: "({a}).bit_count()",
    0x99: "abs({a})", 0x9A: "(-{a})", 0x8B: "abs({a})", 0x8C: "(-{a})",
    0xA7: f"({{a}} & {_M32})", 0xAC: f"(((({{a}} ^ {_H32}) - {_H32})) & {_M64})",
}

#: loads: IR opcode -> (source template of the value, given ``{a}`` the effective address)
_LOADS: dict[int, str] = {
    0x28: "_ld_u32(mem, {a})[0]", 0x29: "_ld_u64(mem, {a})[0]", 0x2A: "_ld_f32(mem, {a})",
    0x2B: "_ld_f64(mem, {a})[0]",
    0x2C: f"(_ld_s8(mem, {{a}})[0] & {_M32})", 0x2D: "mem[{a}]",
    0x2E: f"(_ld_s16(mem, {{a}})[0] & {_M32})", 0x2F: "_ld_u16(mem, {a})[0]",
    0x30: f"(_ld_s8(mem, {{a}})[0] & {_M64})", 0x31: "mem[{a}]",
    0x32: f"(_ld_s16(mem, {{a}})[0] & {_M64})", 0x33: "_ld_u16(mem, {a})[0]",
    0x34: f"(_ld_s32(mem, {{a}})[0] & {_M64})", 0x35: "_ld_u32(mem, {a})[0]",
}

#: stores: IR opcode -> statement template given ``{a}`` the effective address and ``{v}`` the value
_STORES: dict[int, str] = {
    0x36: "_st_u32(mem, {a}, {v})", 0x37: "_st_u64(mem, {a}, {v})", 0x38: "_st_f32(mem, {a}, {v})",
    0x39: "_st_f64(mem, {a}, {v})",
    0x3A: "mem[{a}] = {v} & 0xFF", 0x3B: "_st_u16(mem, {a}, {v} & 0xFFFF)",
    0x3C: "mem[{a}] = {v} & 0xFF", 0x3D: "_st_u16(mem, {a}, {v} & 0xFFFF)",
    0x3E: f"_st_u32(mem, {{a}}, {{v}} & {_M32})",
}

#: full-width accesses, whose value a later load of the same address and type can reuse
_KIND = {0x28: "i32", 0x29: "i64", 0x2A: "f32", 0x2B: "f64", 0x36: "i32", 0x37: "i64", 0x38: "f32", 0x39: "f64"}
#: bytes every load and store touches
_WIDTH = {0x28: 4, 0x29: 8, 0x2A: 4, 0x2B: 8, 0x2C: 1, 0x2D: 1, 0x2E: 2, 0x2F: 2, 0x30: 1, 0x31: 1, 0x32: 2,
          0x33: 2, 0x34: 4, 0x35: 4, 0x36: 4, 0x37: 8, 0x38: 4, 0x39: 8, 0x3A: 1, 0x3B: 2, 0x3C: 1, 0x3D: 2, 0x3E: 4}

#: names every segment's namespace provides
_BASE_NAMESPACE: dict[str, Any] = {
    "__builtins__": builtins,
    "Trap": Trap,
    "_ld_u32": struct.Struct("<I").unpack_from, "_ld_u64": struct.Struct("<Q").unpack_from,
    "_ld_f64": struct.Struct("<d").unpack_from, "_ld_f32": f32_from_bytes,
    "_ld_s8": struct.Struct("<b").unpack_from, "_ld_s16": struct.Struct("<h").unpack_from,
    "_ld_u16": struct.Struct("<H").unpack_from, "_ld_s32": struct.Struct("<i").unpack_from,
    "_st_u32": struct.Struct("<I").pack_into, "_st_u64": struct.Struct("<Q").pack_into,
    "_st_f64": struct.Struct("<d").pack_into, "_st_f32": f32_into_bytes,
    "_st_u16": struct.Struct("<H").pack_into,
}
for _op, _fn in ops.BINARY.items():
    _BASE_NAMESPACE[f"_bin{_op:x}"] = _fn
for _op, _fn in ops.UNARY.items():
    _BASE_NAMESPACE[f"_un{_op:x}"] = _fn

NO_DEPS: frozenset[int] = frozenset()

# a symbolic operand-stack entry: (source, is a Python condition, locals/globals it reads, nesting)
# globals are keyed ~index (negative) so one set holds both; nesting 0 means an immutable atom
Entry = tuple[str, bool, frozenset[int], int]


def namespace_of(inst: Any) -> dict[str, Any]:
    """The globals every segment of ``inst`` runs with: helpers, the memory, the machine (``_m``),
    its frames and step cell, then per-use names (``_g3`` a global object, ``_f7`` a function,
    ``_k...`` a float constant, ``_sf12`` a straight function) added as compiled."""
    ns = inst.segment_namespace
    if ns is None:
        ns = dict(_BASE_NAMESPACE)
        ns["mem"] = inst.mems[0].data if inst.mems else None
        machine = inst.machine
        ns["_m"] = machine
        ns["_frames"] = machine.frames
        ns["_stack"] = machine.stack  # a segment runs on another machine when another instance calls it
        ns["_cell"] = machine.step_cell
        ns["_straight_codes"] = {}  # code object of a straight function -> (function, line -> pc)
        inst.segment_namespace = ns
    return ns


class Generator:
    """Emits the source of one segment while tracking the symbolic operand stack."""

    #: how generated code reads and writes wasm local ``i`` (segments: the frame's list)
    local_template = "locs[{}]"

    def __init__(self, ns: dict[str, Any], inst: Any) -> None:
        self.ns = ns
        self.inst = inst
        self.lines: list[str] = []
        self.pcs: list[int] = []
        self.stack: list[Entry] = []
        self.ntemp = 0
        self.pc = 0
        self.indent = 1
        #: what this path already knows memory holds: (address base source, offset) ->
        #: (type, width, value entry, locals/globals the base or value read). Unoptimised code
        #: stores a value to its stack frame and loads it back at once; the load then costs nothing.
        self.known: dict[tuple[str, int], tuple[str, int, Entry, frozenset[int]]] = {}
        #: globals whose value this path set: index -> entry (the stack pointer, mostly)
        self.globals_known: dict[int, Entry] = {}

    # --- emission -------------------------------------------------------------------------
    def emit(self, line: str, extra: int = 0) -> None:
        self.lines.append("    " * (self.indent + extra) + line)
        self.pcs.append(self.pc)

    def local(self, i: int) -> str:
        return self.local_template.format(i)

    def temp(self) -> str:
        name = f"t{self.ntemp}"
        self.ntemp += 1
        return name

    # --- the symbolic stack ---------------------------------------------------------------
    def pop(self) -> Entry:
        if self.stack:
            return self.stack.pop()
        t = self.temp()
        self.emit(f"{t} = stack.pop()")
        return (t, False, NO_DEPS, 0)

    def push(self, src: str, cond: bool = False, deps: frozenset[int] = NO_DEPS, depth: int = 0) -> None:
        entry = (src, cond, deps, depth)
        if depth > MAX_DEPTH:
            entry = self.materialize(entry)
        self.stack.append(entry)

    @staticmethod
    def value(e: Entry) -> str:
        return f"(1 if {e[0]} else 0)" if e[1] else e[0]

    def materialize(self, e: Entry) -> Entry:
        """``e`` evaluated now into a temporary (atoms stay as they are)."""
        if e[3] == 0:
            return e
        t = self.temp()
        self.emit(f"{t} = {self.value(e)}")
        return (t, False, NO_DEPS, 0)

    def settle(self, key: int) -> None:
        """Evaluate every pending expression that reads local ``key`` (global ``~key``) before it
        changes, and forget what memory was known through it."""
        for i, e in enumerate(self.stack):
            if key in e[2]:
                self.stack[i] = self.materialize(e)
        if self.known:
            self.known = {k: r for k, r in self.known.items() if key not in r[3]}
        for g, e in list(self.globals_known.items()):
            if key in e[2]:
                del self.globals_known[g]

    def forget(self) -> None:
        """Memory and globals may have changed behind this path's back (a call, a join of paths)."""
        self.known = {}
        self.globals_known = {}

    def load(self, op: int, a: Entry, offset: int) -> None:
        base = self.value(a)
        kind = _KIND.get(op)
        if kind is not None:
            rec = self.known.get((base, offset))
            if rec is not None and rec[0] == kind:
                self.stack.append(rec[2])
                return
        self.call_temp(_LOADS[op].format(a=f"{base} + {offset}" if offset else base))
        if kind is not None:
            self.known[(base, offset)] = (kind, _WIDTH[op], self.stack[-1], a[2])

    def store(self, op: int, a: Entry, v: Entry, offset: int) -> None:
        base = self.value(a)
        kind = _KIND.get(op)
        if kind is not None and v[3] > 1:
            v = self.materialize(v)
        self.emit(_STORES[op].format(a=f"{base} + {offset}" if offset else base, v=self.value(v)))
        if self.known:
            width = _WIDTH[op]
            self.known = {(b, o): r for (b, o), r in self.known.items()
                          if b == base and (o + r[1] <= offset or offset + width <= o)}
        if kind is not None:
            self.known[(base, offset)] = (kind, _WIDTH[op], v, a[2] | v[2])

    def call_temp(self, src: str) -> None:
        """A helper call or a load: evaluated in program order, on its own line (its trap maps to this pc)."""
        t = self.temp()
        self.emit(f"{t} = {src}")
        self.stack.append((t, False, NO_DEPS, 0))

    def call(self, s: Any) -> None:
        """A call of straight function ``s`` (:class:`wasmig.interp.straight.Straight`) with its
        arguments from the stack; pending expressions that read globals are evaluated first, since
        the callee may change them."""
        for k, e in enumerate(self.stack):
            if any(d < 0 for d in e[2]):
                self.stack[k] = self.materialize(e)
        self.forget()
        args = [self.pop() for _ in range(s.nparams)][::-1]
        src = f"{s.name}({', '.join(self.value(a) for a in args)})"
        if s.nresults == 0:
            self.emit(src)
            return
        temps = [self.temp() for _ in range(s.nresults)]
        self.emit(f"{', '.join(temps)} = {src}")
        self.stack.extend((t, False, NO_DEPS, 0) for t in temps)

    def exit_lines(self, target: int, arity: int = 0, drop: int = 0, extra: int = 0) -> None:
        """Leave the segment for ``target``: push the symbolic stack (less ``drop`` values under the
        top ``arity``), without consuming it (a side exit leaves it for the fall-through path)."""
        entries = list(self.stack)
        real_drop = 0
        if drop:
            if arity + drop <= len(entries):
                entries = entries[: len(entries) - arity - drop] + entries[len(entries) - arity:]
            else:
                real_drop = drop  # the dropped values reach below the segment's own: adjust the list
        values = [self.value(e) for e in entries]
        if len(values) == 1:
            self.emit(f"stack.append({values[0]})", extra)
        elif values:
            self.emit(f"stack.extend(({', '.join(values)},))", extra)
        if real_drop:
            if arity:
                self.emit(f"del stack[len(stack) - {arity + real_drop}:len(stack) - {arity}]", extra)
            else:
                self.emit(f"del stack[len(stack) - {real_drop}:]", extra)
        self.emit(f"return {target}", extra)

    # --- names in the namespace -------------------------------------------------------------
    def name(self, key: str, value: Any) -> str:
        self.ns.setdefault(key, value)
        return key

    def float_const(self, x: float, bits: int, kind: str) -> str:
        if math.isfinite(x) and not (x == 0.0 and math.copysign(1.0, x) < 0):
            text = repr(x)
            return f"({text})" if x < 0 else text
        return self.name(f"_k{kind}_{bits:x}", x)


def translate(g: Generator, op: int, imm: Any) -> bool:
    """Generate one plain instruction; False if it is not one a segment can hold."""
    if op == 0x20:
        g.push(g.local(imm), False, frozenset((imm,)), 1)
    elif op == 0x21:
        e = g.pop()
        g.settle(imm)
        g.emit(f"{g.local(imm)} = {g.value(e)}")
    elif op == 0x22:
        e = g.pop()
        g.settle(imm)
        if e[3] == 0:
            g.emit(f"{g.local(imm)} = {e[0]}")
            g.stack.append(e)
        else:
            t = g.temp()
            g.emit(f"{g.local(imm)} = {t} = {g.value(e)}")
            g.stack.append((t, False, NO_DEPS, 0))
    elif op == 0x41 or op == 0x42:
        g.push(str(imm))
    elif op == 0x43:
        g.push(g.float_const(f32_from_bits(imm), imm, "f32"))
    elif op == 0x44:
        g.push(g.float_const(f64_from_bits(imm), imm, "f64"))
    elif op in _LOADS:
        g.load(op, g.pop(), imm[1])
    elif op in _STORES:
        v = g.pop()
        g.store(op, g.pop(), v, imm[1])
    elif op in _BIN_VALUE or op in _BIN_COND:
        b = g.pop()
        a = g.pop()
        cond = op in _BIN_COND
        template = _BIN_COND[op] if cond else _BIN_VALUE[op]
        g.push(template.format(a=g.value(a), b=g.value(b)), cond, a[2] | b[2], max(a[3], b[3]) + 1)
    elif op == 0x45 or op == 0x50:
        a = g.pop()
        src = f"(not {a[0]})" if a[1] else f"({a[0]} == 0)"
        g.push(src, True, a[2], a[3] + 1)
    elif op == 0xAD:
        pass  # i64.extend_i32_u: the same unsigned int
    elif op in _UN_VALUE:
        a = g.pop()
        g.push(_UN_VALUE[op].format(a=g.value(a)), False, a[2], a[3] + 1)
    elif op == 0x23:
        known = g.globals_known.get(imm)
        if known is not None:
            g.stack.append(known)
        else:
            g.push(f"{g.name(f'_g{imm}', g.inst.globals[imm])}.internal", False, frozenset((~imm,)), 1)
    elif op == 0x24:
        e = g.pop()
        g.settle(~imm)
        if e[3] > 1:
            e = g.materialize(e)
        g.emit(f"{g.name(f'_g{imm}', g.inst.globals[imm])}.internal = {g.value(e)}")
        g.globals_known[imm] = e
    elif op == 0x1A:
        g.pop()
    elif op == 0x1B or op == 0x1C:
        c = g.pop()
        b = g.pop()
        a = g.pop()
        g.push(f"({g.value(a)} if {c[0]} else {g.value(b)})", False, a[2] | b[2] | c[2],
               max(a[3], b[3], c[3]) + 1)
    elif op in ops.BINARY:
        b = g.pop()
        a = g.pop()
        g.call_temp(f"_bin{op:x}({g.value(a)}, {g.value(b)})")
    elif op in ops.UNARY:
        a = g.pop()
        g.call_temp(f"_un{op:x}({g.value(a)})")
    elif op == 0x3F:
        g.call_temp("len(mem) >> 16")
    elif op == 0xD0:
        g.push("None")
    elif op == 0xD1:
        a = g.pop()
        g.push(f"({a[0]} is None)", True, a[2], a[3] + 1)
    elif op == 0xD2:
        g.push(g.name(f"_f{imm}", g.inst.funcs[imm]))
    elif op == 0x01:
        pass
    else:
        return False
    return True


#: the IR opcodes :func:`translate` generates (what straight functions may hold besides control)
PLAIN_OPS = frozenset({
    0x01, 0x1A, 0x1B, 0x1C, 0x20, 0x21, 0x22, 0x23, 0x24, 0x3F, 0x41, 0x42, 0x43, 0x44, 0x45, 0x50, 0xAD,
    0xD0, 0xD1, 0xD2, *_LOADS, *_STORES, *_BIN_VALUE, *_BIN_COND, *_UN_VALUE, *ops.BINARY, *ops.UNARY,
})


def compile_segment(func: Any, start: int) -> Callable[[list, list], int] | None:
    """The segment of ``func`` (a compiled WasmFunction) that starts at ``start``, or None when the
    instruction there is a boundary (the dispatch loop executes it itself)."""
    from wasmig.interp.straight import straight_of  # straight.py builds on this module

    code = func.code
    if code[start][0] in _BOUNDARY:  # a call too: a straight call's fallback exits to it
        return None
    body = func.ir.body
    inst = func.instance
    ns = namespace_of(inst)
    g = Generator(ns, inst)
    pc = start
    budget = MAX_INSTRUCTIONS
    while True:
        g.pc = pc
        budget -= 1
        if budget < 0:
            g.exit_lines(pc)
            break
        ins = code[pc]
        fop = ins[0]
        if fop == ops.CALL and type(ins[1]).__name__ == "WasmFunction" and ins[1].instance is inst:
            s = straight_of(ins[1])
            if s is not None:
                # the callee runs as one Python call unless a stop could fall inside it, the machine's
                # limits leave it no room, or this is another machine (an importing instance's, whose
                # steps and frames these names do not see): then the loop makes the call (straight.py)
                for k, e in enumerate(g.stack):
                    if any(d < 0 for d in e[2]):
                        g.stack[k] = g.materialize(e)
                g.emit(f"if stack is not _stack or _cell[0] >= _m.stop_at_step - {s.steps} or len(_frames) > "
                       f"_m.max_frames - {s.depth} or _frames[-1].slots > _m.max_slots - {s.slots}:")
                g.exit_lines(pc, extra=1)
                g.call(s)
                pc += 1
                continue
        if fop in _BOUNDARY:
            if pc == start:
                return None
            g.exit_lines(pc)
            break
        ir = body[pc]
        if fop == ops.NOP and ir.op != 0x01 and ir.op not in (0x02, 0x0B):
            raise AssertionError(f"unexpected NOP for opcode {ir.op:#x}")  # pragma: no cover
        if fop == ops.IF:
            c = g.pop()
            g.emit(f"if not {c[0]}:")
            g.exit_lines(ins[1], extra=1)
        elif fop == ops.BR_IF:
            c = g.pop()
            g.emit(f"if {c[0]}:")
            g.exit_lines(ins[1], extra=1)
        elif fop == ops.BR_IF_ADJ:
            c = g.pop()
            g.emit(f"if {c[0]}:")
            g.exit_lines(ins[1], ins[2], ins[3], extra=1)
        elif fop == ops.JUMP or fop == ops.BR_ADJ:
            target = ins[1]
            if target <= pc:  # a backward branch goes to a loop header: a boundary
                g.exit_lines(target, *ins[2:])
                break
            if fop == ops.BR_ADJ:
                arity, drop = ins[2], ins[3]
                if arity + drop > len(g.stack):  # the dropped values are not all the segment's own
                    g.exit_lines(target, arity, drop)
                    break
                del g.stack[len(g.stack) - arity - drop: len(g.stack) - arity]
            pc = target  # a forward branch: the segment goes on there (the code after it is duplicated)
            continue
        elif ir.op == 0x00:
            g.emit('raise Trap("unreachable")')
            break
        elif fop == ops.NOP:
            pass
        elif not translate(g, ir.op, ir.imm):
            if pc == start:
                return None
            g.exit_lines(pc)
            break
        pc += 1
    src = "def _segment(stack, locs):\n" + "\n".join(g.lines) + "\n"
    namespace: dict[str, Any] = {}
    try:
        code = compile(src, f"<wasm func {func.index} +{start}>", "exec")
    except (SyntaxError, RecursionError, MemoryError):  # a limit of Python's compiler: stay instruction by instruction
        return None
    exec(code, ns, namespace)  # noqa: S102 - our own source
    fn = namespace["_segment"]
    fn.pcs = (start, start, *g.pcs)  # source line -> pc (line 1 is the def)
    return fn


def segment_fault(machine: Any, fn: Any, exc: BaseException, pc: int) -> tuple[int, Trap | None]:
    """Where segment ``fn`` failed with ``exc``: one past the failing instruction (the pc a
    backtrace reports) and the wasm trap to raise, its backtrace including the straight calls
    the segment was in (None: ``exc`` is not a trap, e.g. an internal error, and propagates)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not fn.__code__:
        tb = tb.tb_next
    if tb is None:
        return pc, None
    pcs = fn.pcs
    at = (pcs[tb.tb_lineno] if 0 <= tb.tb_lineno < len(pcs) else pc - 1) + 1
    if isinstance(exc, Trap):
        trap = exc
    elif isinstance(exc, (struct.error, IndexError)):  # the bounds checks of struct and bytearray
        trap = Trap("out of bounds memory access")
    else:
        return at, None
    if not trap.backtrace:
        inner = []
        codes = fn.__globals__.get("_straight_codes", {})
        tb = tb.tb_next
        while tb is not None and tb.tb_frame.f_code in codes:
            func, lines = codes[tb.tb_frame.f_code]
            inner.append(machine.describe(func, lines[tb.tb_lineno] + 1))
            tb = tb.tb_next
        trap.backtrace = inner[::-1] + machine.backtrace(at)
    return at, trap
