"""Operation ids of the interpreter's flat code, and the pure numeric operators.

A compiled instruction is a tuple whose first item is one of the ids below. Instructions that
need no compile-time rewriting keep their wasm opcode as id (``(0x20, local_index)`` is
``local.get``); hot integer operators are executed inline by the loop; the other pure numeric
operators are compiled to ``(BINOP, fn)`` / ``(UNOP, fn)`` with ``fn`` taken from the tables
here, so the loop dispatches them with one comparison and one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from wasmig.interp import numeric as n
from wasmig.interp.numeric import M32, M64, r32

# --- ids that are not wasm opcodes (or reuse one with a compiled meaning) --------------------
NOP = 0x01
LOOP = 0x03
IF = 0x04  # (IF, target_if_false)
BR_IF = 0x0D  # (BR_IF, target)
BR_TABLE = 0x0E  # (BR_TABLE, targets, default); each target (pc, arity, drop)
RETURN = 0x0F  # (RETURN, arity, drop)
CALL = 0x10  # (CALL, callee function object)
CALL_INDIRECT = 0x11  # (CALL_INDIRECT, FuncType, table index)
CONST = 0x41  # (CONST, internal value) for all four numeric types
JUMP = 0x100  # (JUMP, target)
BR_ADJ = 0x101  # (BR_ADJ, target, arity, drop)
BR_IF_ADJ = 0x102  # (BR_IF_ADJ, target, arity, drop)
BR_IF_RET = 0x103  # (BR_IF_RET, arity, drop)
LOAD = 0x104  # (LOAD, offset, unpack_from)
LOAD_S = 0x105  # (LOAD_S, offset, unpack_from, mask) sign-extending loads
LOAD8_U = 0x106  # (LOAD8_U, offset)
LOAD_F32 = 0x107  # (LOAD_F32, offset)
STORE = 0x108  # (STORE, offset, pack_into, mask)
STORE8 = 0x109  # (STORE8, offset)
STORE_F32 = 0x10A  # (STORE_F32, offset)
STORE_F64 = 0x10B  # (STORE_F64, offset)
BINOP = 0x10C  # (BINOP, fn(a, b))
UNOP = 0x10D  # (UNOP, fn(a))
ATOMIC = 0x10E  # (ATOMIC, handler(machine, memory, offset), offset): the threads proposal (interp/atomics.py)

#: wasm opcodes executed by the loop as they are, with the IR immediate
DIRECT = frozenset({
    0x00, 0x01, 0x1A, 0x1B, 0x1C, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x3F, 0x40,
    0xD0, 0xD1, 0xD2,
    0xFC08, 0xFC09, 0xFC0A, 0xFC0B, 0xFC0C, 0xFC0D, 0xFC0E, 0xFC0F, 0xFC10, 0xFC11,
    # hot integer operators, inlined in the loop
    0x45, 0x46, 0x47, 0x48, 0x49, 0x4B, 0x4D, 0x4F, 0x6A, 0x6B, 0x6C, 0x71, 0x72, 0x73, 0x74, 0x76,
    0x50, 0x7C, 0x7D, 0x7E, 0x83, 0x84, 0x86, 0x88, 0xA7, 0xAD,
})

_H32, _H64 = 0x80000000, 0x8000000000000000


def _s32(v: int) -> int:
    return v - 0x100000000 if v & _H32 else v


def _s64(v: int) -> int:
    return v - 0x10000000000000000 if v & _H64 else v


def _b(cond: bool) -> int:
    return 1 if cond else 0


BINARY: dict[int, Callable[[Any, Any], Any]] = {
    # i32 comparisons
    0x46: lambda a, b: _b(a == b), 0x47: lambda a, b: _b(a != b),
    0x48: lambda a, b: _b(_s32(a) < _s32(b)), 0x49: lambda a, b: _b(a < b),
    0x4A: lambda a, b: _b(_s32(a) > _s32(b)), 0x4B: lambda a, b: _b(a > b),
    0x4C: lambda a, b: _b(_s32(a) <= _s32(b)), 0x4D: lambda a, b: _b(a <= b),
    0x4E: lambda a, b: _b(_s32(a) >= _s32(b)), 0x4F: lambda a, b: _b(a >= b),
    # i64 comparisons
    0x51: lambda a, b: _b(a == b), 0x52: lambda a, b: _b(a != b),
    0x53: lambda a, b: _b(_s64(a) < _s64(b)), 0x54: lambda a, b: _b(a < b),
    0x55: lambda a, b: _b(_s64(a) > _s64(b)), 0x56: lambda a, b: _b(a > b),
    0x57: lambda a, b: _b(_s64(a) <= _s64(b)), 0x58: lambda a, b: _b(a <= b),
    0x59: lambda a, b: _b(_s64(a) >= _s64(b)), 0x5A: lambda a, b: _b(a >= b),
    # float comparisons (Python's float comparisons are IEEE: NaN compares unequal)
    0x5B: lambda a, b: _b(a == b), 0x5C: lambda a, b: _b(a != b), 0x5D: lambda a, b: _b(a < b),
    0x5E: lambda a, b: _b(a > b), 0x5F: lambda a, b: _b(a <= b), 0x60: lambda a, b: _b(a >= b),
    0x61: lambda a, b: _b(a == b), 0x62: lambda a, b: _b(a != b), 0x63: lambda a, b: _b(a < b),
    0x64: lambda a, b: _b(a > b), 0x65: lambda a, b: _b(a <= b), 0x66: lambda a, b: _b(a >= b),
    # i32 arithmetic
    0x6A: lambda a, b: (a + b) & M32, 0x6B: lambda a, b: (a - b) & M32, 0x6C: lambda a, b: (a * b) & M32,
    0x6D: lambda a, b: n.idiv_s(a, b, 32), 0x6E: n.idiv_u, 0x6F: lambda a, b: n.irem_s(a, b, 32), 0x70: n.irem_u,
    0x71: lambda a, b: a & b, 0x72: lambda a, b: a | b, 0x73: lambda a, b: a ^ b,
    0x74: lambda a, b: (a << (b & 31)) & M32, 0x75: lambda a, b: n.shr_s(a, b, 32),
    0x76: lambda a, b: a >> (b & 31),
    0x77: lambda a, b: n.rotl(a, b, 32), 0x78: lambda a, b: n.rotr(a, b, 32),
    # i64 arithmetic
    0x7C: lambda a, b: (a + b) & M64, 0x7D: lambda a, b: (a - b) & M64, 0x7E: lambda a, b: (a * b) & M64,
    0x7F: lambda a, b: n.idiv_s(a, b, 64), 0x80: n.idiv_u, 0x81: lambda a, b: n.irem_s(a, b, 64), 0x82: n.irem_u,
    0x83: lambda a, b: a & b, 0x84: lambda a, b: a | b, 0x85: lambda a, b: a ^ b,
    0x86: lambda a, b: (a << (b & 63)) & M64, 0x87: lambda a, b: n.shr_s(a, b, 64),
    0x88: lambda a, b: a >> (b & 63),
    0x89: lambda a, b: n.rotl(a, b, 64), 0x8A: lambda a, b: n.rotr(a, b, 64),
    # f32 arithmetic: computed in double, rounded once to single
    0x92: lambda a, b: r32(a + b), 0x93: lambda a, b: r32(a - b), 0x94: lambda a, b: r32(a * b),
    0x95: lambda a, b: r32(n.fdiv(a, b)), 0x96: n.fmin, 0x97: n.fmax, 0x98: math.copysign,
    # f64 arithmetic
    0xA0: lambda a, b: a + b, 0xA1: lambda a, b: a - b, 0xA2: lambda a, b: a * b,
    0xA3: n.fdiv, 0xA4: n.fmin, 0xA5: n.fmax, 0xA6: math.copysign,
}

UNARY: dict[int, Callable[[Any], Any]] = {
    0x45: lambda a: _b(a == 0), 0x50: lambda a: _b(a == 0),
    0x67: lambda a: n.clz(a, 32), 0x68: lambda a: n.ctz(a, 32), 0x69: lambda a: a.bit_count(),
    0x79: lambda a: n.clz(a, 64), 0x7A: lambda a: n.ctz(a, 64), 0x7B: lambda a: a.bit_count(),
    0x8B: abs, 0x8C: lambda a: -a, 0x8D: n.fceil, 0x8E: n.ffloor, 0x8F: n.ftrunc, 0x90: n.fnearest,
    0x91: lambda a: r32(n.fsqrt(a)),
    0x99: abs, 0x9A: lambda a: -a, 0x9B: n.fceil, 0x9C: n.ffloor, 0x9D: n.ftrunc, 0x9E: n.fnearest,
    0x9F: n.fsqrt,
    0xA7: lambda a: a & M32,
    0xA8: lambda a: n.trunc_to_int(a, True, 32), 0xA9: lambda a: n.trunc_to_int(a, False, 32),
    0xAA: lambda a: n.trunc_to_int(a, True, 32), 0xAB: lambda a: n.trunc_to_int(a, False, 32),
    0xAC: lambda a: _s32(a) & M64, 0xAD: lambda a: a,
    0xAE: lambda a: n.trunc_to_int(a, True, 64), 0xAF: lambda a: n.trunc_to_int(a, False, 64),
    0xB0: lambda a: n.trunc_to_int(a, True, 64), 0xB1: lambda a: n.trunc_to_int(a, False, 64),
    0xB2: lambda a: n.int_to_f32(_s32(a)), 0xB3: n.int_to_f32,
    0xB4: lambda a: n.int_to_f32(_s64(a)), 0xB5: n.int_to_f32,
    0xB6: n.demote,
    0xB7: lambda a: float(_s32(a)), 0xB8: float,
    0xB9: lambda a: float(_s64(a)), 0xBA: float,
    0xBB: n.promote,
    0xBC: n.f32_to_bits, 0xBD: n.f64_to_bits, 0xBE: n.f32_from_bits, 0xBF: n.f64_from_bits,
    0xC0: lambda a: n.extend_s(a, 8, M32), 0xC1: lambda a: n.extend_s(a, 16, M32),
    0xC2: lambda a: n.extend_s(a, 8, M64), 0xC3: lambda a: n.extend_s(a, 16, M64),
    0xC4: lambda a: n.extend_s(a, 32, M64),
    0xFC00: lambda a: n.trunc_sat(a, True, 32), 0xFC01: lambda a: n.trunc_sat(a, False, 32),
    0xFC02: lambda a: n.trunc_sat(a, True, 32), 0xFC03: lambda a: n.trunc_sat(a, False, 32),
    0xFC04: lambda a: n.trunc_sat(a, True, 64), 0xFC05: lambda a: n.trunc_sat(a, False, 64),
    0xFC06: lambda a: n.trunc_sat(a, True, 64), 0xFC07: lambda a: n.trunc_sat(a, False, 64),
}
