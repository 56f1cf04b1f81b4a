"""The instruction set wasmig supports: WebAssembly 2.0 without SIMD (plus opt-in multi-memory).

Every opcode is an ``int``. Single-byte opcodes are their byte (``0x6A`` is ``i32.add``);
``0xFC``-prefixed opcodes are ``0xFC00 | subopcode`` (``0xFC0A`` is ``memory.copy``), so
one int identifies any instruction and the table below is the single source for the
decoder, encoder, validator and interpreter.

``IMM`` gives each opcode's immediate kind (how it is encoded and what the IR stores):

- ``none``      no immediate, ``Instr.imm`` is ``None``
- ``block``     block type: ``None`` (empty), a value type string, or a type index ``int``
- ``label``     label index ``int``
- ``br_table``  ``(tuple_of_labels, default_label)``
- ``idx``       one index ``int`` (function, local, global, table, data or element)
- ``call_ind``  ``(type_index, table_index)``
- ``select_t``  tuple of value types (the typed ``select``)
- ``memarg``    ``(align_log2, offset)`` for memory 0, ``(align_log2, offset, memidx)`` for any other
  memory (multi-memory proposal; see below)
- ``mem``       memory index ``int`` (always 0 in wasm 2.0)
- ``i32``/``i64`` the constant as an *unsigned* int (two's complement bit pattern)
- ``f32``/``f64`` the constant's raw IEEE bit pattern as an int (exact, NaN payloads kept)
- ``reftype``   a reference type string
- ``idx_mem``   ``(index, memory_index)`` (``memory.init``)
- ``mem_mem``   ``(dst_memory, src_memory)`` (``memory.copy``)
- ``idx_idx``   ``(a, b)``: ``table.init`` is ``(elem, table)``, ``table.copy`` is ``(dst, src)``

Memory indices (the multi-memory proposal, opt-in through ``features={"multi-memory"}`` in the
decoder and validator, see :mod:`wasmig.binary.features`):

- ``memarg``: the two-tuple ``(align, offset)`` means memory 0 -- every wasm 2.0 module and every
  existing test keeps that form -- and ``(align, offset, memidx)`` names memory ``memidx != 0``.
  The decoder always produces the two-tuple for memory 0 (even when the binary spelled the index
  out), so that form is canonical; the encoder and validator also accept ``(align, offset, 0)``
  as memory 0, but such IR does not compare equal to its decoded form. Use :func:`memarg` to
  build the canonical form and :func:`memarg_memidx` to read the index.
  Binary: ``align`` as a u32, then ``offset`` as a u32; for memidx != 0 the alignment field has
  bit 6 (0x40) set and the memory index follows it as a u32 before the offset
  (``align|0x40  memidx  offset``).
- ``mem`` (``memory.size``, ``memory.grow``, ``memory.fill``), ``idx_mem`` (``memory.init`` is
  ``(dataidx, memidx)``) and ``mem_mem`` (``memory.copy`` is ``(dst, src)``) always carry their
  memory indices as ints. Binary: each memory index is a u32 LEB; wasm 2.0 requires the single
  byte 0x00 there, and the decoder without the feature still rejects anything else as
  ``zero byte expected``.

``SIG`` gives the fixed operand signature ``(params, results)`` of every opcode whose typing
does not depend on its immediate or context; the validator handles the rest explicitly.
"""

from __future__ import annotations

I32, I64, F32, F64 = "i32", "i64", "f32", "f64"
FUNCREF, EXTERNREF = "funcref", "externref"

NAMES: dict[int, str] = {}
IMM: dict[int, str] = {}
SIG: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _op(code: int, name: str, imm: str = "none", sig: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> None:
    NAMES[code] = name
    IMM[code] = imm
    if sig is not None:
        SIG[code] = sig


# --- control -------------------------------------------------------------------------------
_op(0x00, "unreachable")
_op(0x01, "nop", sig=((), ()))
_op(0x02, "block", "block")
_op(0x03, "loop", "block")
_op(0x04, "if", "block")
_op(0x05, "else")
_op(0x0B, "end")
_op(0x0C, "br", "label")
_op(0x0D, "br_if", "label")
_op(0x0E, "br_table", "br_table")
_op(0x0F, "return")
_op(0x10, "call", "idx")
_op(0x11, "call_indirect", "call_ind")
_op(0x12, "return_call", "idx")  # the tail-call proposal, opt-in (features "tail-call")
# --- reference -----------------------------------------------------------------------------
_op(0xD0, "ref.null", "reftype")
_op(0xD1, "ref.is_null")
_op(0xD2, "ref.func", "idx")
# --- parametric ----------------------------------------------------------------------------
_op(0x1A, "drop")
_op(0x1B, "select")
_op(0x1C, "select", "select_t")
# --- variable ------------------------------------------------------------------------------
_op(0x20, "local.get", "idx")
_op(0x21, "local.set", "idx")
_op(0x22, "local.tee", "idx")
_op(0x23, "global.get", "idx")
_op(0x24, "global.set", "idx")
# --- table ---------------------------------------------------------------------------------
_op(0x25, "table.get", "idx")
_op(0x26, "table.set", "idx")
# --- memory --------------------------------------------------------------------------------
#: load/store opcode -> (value type, access width in bytes, signed-extend?) for loads
LOADS: dict[int, tuple[str, int, bool]] = {
    0x28: (I32, 4, False), 0x29: (I64, 8, False), 0x2A: (F32, 4, False), 0x2B: (F64, 8, False),
    0x2C: (I32, 1, True), 0x2D: (I32, 1, False), 0x2E: (I32, 2, True), 0x2F: (I32, 2, False),
    0x30: (I64, 1, True), 0x31: (I64, 1, False), 0x32: (I64, 2, True), 0x33: (I64, 2, False),
    0x34: (I64, 4, True), 0x35: (I64, 4, False),
}
STORES: dict[int, tuple[str, int]] = {
    0x36: (I32, 4), 0x37: (I64, 8), 0x38: (F32, 4), 0x39: (F64, 8),
    0x3A: (I32, 1), 0x3B: (I32, 2), 0x3C: (I64, 1), 0x3D: (I64, 2), 0x3E: (I64, 4),
}
_LOAD_NAMES = {
    0x28: "i32.load", 0x29: "i64.load", 0x2A: "f32.load", 0x2B: "f64.load",
    0x2C: "i32.load8_s", 0x2D: "i32.load8_u", 0x2E: "i32.load16_s", 0x2F: "i32.load16_u",
    0x30: "i64.load8_s", 0x31: "i64.load8_u", 0x32: "i64.load16_s", 0x33: "i64.load16_u",
    0x34: "i64.load32_s", 0x35: "i64.load32_u",
}
_STORE_NAMES = {
    0x36: "i32.store", 0x37: "i64.store", 0x38: "f32.store", 0x39: "f64.store",
    0x3A: "i32.store8", 0x3B: "i32.store16", 0x3C: "i64.store8", 0x3D: "i64.store16", 0x3E: "i64.store32",
}
for _c, (_t, _w, _s) in LOADS.items():
    _op(_c, _LOAD_NAMES[_c], "memarg", ((I32,), (_t,)))
for _c, (_t, _w) in STORES.items():
    _op(_c, _STORE_NAMES[_c], "memarg", ((I32, _t), ()))
#: the threads proposal's atomic loads (0xFE-prefixed; decoded and validated only with the
#: "atomic-loads" feature): opcode -> (value type, access width in bytes, name). Their alignment
#: must be exactly the width.
ATOMIC_LOADS: dict[int, tuple[str, int, str]] = {
    0xFE10: (I32, 4, "i32.atomic.load"), 0xFE11: (I64, 8, "i64.atomic.load"),
    0xFE12: (I32, 1, "i32.atomic.load8_u"), 0xFE13: (I32, 2, "i32.atomic.load16_u"),
    0xFE14: (I64, 1, "i64.atomic.load8_u"), 0xFE15: (I64, 2, "i64.atomic.load16_u"),
    0xFE16: (I64, 4, "i64.atomic.load32_u"),
}
for _c, (_t, _w, _n) in ATOMIC_LOADS.items():
    _op(_c, _n, "memarg", ((I32,), (_t,)))

#: the rest of the threads proposal (0xFE-prefixed; decoded and validated only with the "threads"
#: feature). Every access's alignment must be exactly its width. opcode -> (value type, width, name)
ATOMIC_STORES: dict[int, tuple[str, int, str]] = {
    0xFE17: (I32, 4, "i32.atomic.store"), 0xFE18: (I64, 8, "i64.atomic.store"),
    0xFE19: (I32, 1, "i32.atomic.store8"), 0xFE1A: (I32, 2, "i32.atomic.store16"),
    0xFE1B: (I64, 1, "i64.atomic.store8"), 0xFE1C: (I64, 2, "i64.atomic.store16"),
    0xFE1D: (I64, 4, "i64.atomic.store32"),
}
for _c, (_t, _w, _n) in ATOMIC_STORES.items():
    _op(_c, _n, "memarg", ((I32, _t), ()))
#: read-modify-write operators, in the proposal's order: each is a group of seven opcodes with the
#: shapes of ``_RMW_SHAPES`` (i32, i64, i32 8-bit, i32 16-bit, i64 8/16/32-bit)
RMW_OPERATORS = ("add", "sub", "and", "or", "xor", "xchg", "cmpxchg")
_RMW_SHAPES: tuple[tuple[str, int, str], ...] = (
    (I32, 4, "i32.atomic.rmw.{}"), (I64, 8, "i64.atomic.rmw.{}"),
    (I32, 1, "i32.atomic.rmw8.{}_u"), (I32, 2, "i32.atomic.rmw16.{}_u"),
    (I64, 1, "i64.atomic.rmw8.{}_u"), (I64, 2, "i64.atomic.rmw16.{}_u"), (I64, 4, "i64.atomic.rmw32.{}_u"),
)
#: opcode -> (operator, value type, width, name)
ATOMIC_RMW: dict[int, tuple[str, str, int, str]] = {}
for _g, _operator in enumerate(RMW_OPERATORS):
    for _k, (_t, _w, _pattern) in enumerate(_RMW_SHAPES):
        _c = 0xFE1E + 7 * _g + _k
        ATOMIC_RMW[_c] = (_operator, _t, _w, _pattern.format(_operator))
        _args = (I32, _t, _t) if _operator == "cmpxchg" else (I32, _t)
        _op(_c, ATOMIC_RMW[_c][3], "memarg", (_args, (_t,)))
#: wait/notify: opcode -> width of the awaited value (notify counts waiters on a 4-byte cell)
ATOMIC_WAIT_NOTIFY: dict[int, int] = {0xFE00: 4, 0xFE01: 4, 0xFE02: 8}
_op(0xFE00, "memory.atomic.notify", "memarg", ((I32, I32), (I32,)))
_op(0xFE01, "memory.atomic.wait32", "memarg", ((I32, I32, I64), (I32,)))
_op(0xFE02, "memory.atomic.wait64", "memarg", ((I32, I64, I64), (I32,)))
_op(0xFE03, "atomic.fence", "zero", ((), ()))
#: width in bytes of every atomic memory access (for the alignment rule and the interpreter)
ATOMIC_WIDTH: dict[int, int] = {
    **{c: w for c, (_t, w, _n) in ATOMIC_LOADS.items()},
    **{c: w for c, (_t, w, _n) in ATOMIC_STORES.items()},
    **{c: w for c, (_o, _t, w, _n) in ATOMIC_RMW.items()},
    **ATOMIC_WAIT_NOTIFY,
}
#: every 0xFE opcode of the threads proposal
THREADS_OPS = frozenset({*ATOMIC_WIDTH, 0xFE03})
_op(0x3F, "memory.size", "mem", ((), (I32,)))
_op(0x40, "memory.grow", "mem", ((I32,), (I32,)))
# --- constants -----------------------------------------------------------------------------
_op(0x41, "i32.const", "i32", ((), (I32,)))
_op(0x42, "i64.const", "i64", ((), (I64,)))
_op(0x43, "f32.const", "f32", ((), (F32,)))
_op(0x44, "f64.const", "f64", ((), (F64,)))


# --- numeric -------------------------------------------------------------------------------
def _numeric(start: int, names: str, sig: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    for i, name in enumerate(names.split()):
        _op(start + i, name, sig=sig)


_numeric(0x45, "i32.eqz", ((I32,), (I32,)))
_numeric(0x46, "i32.eq i32.ne i32.lt_s i32.lt_u i32.gt_s i32.gt_u i32.le_s i32.le_u i32.ge_s i32.ge_u",
         ((I32, I32), (I32,)))
_numeric(0x50, "i64.eqz", ((I64,), (I32,)))
_numeric(0x51, "i64.eq i64.ne i64.lt_s i64.lt_u i64.gt_s i64.gt_u i64.le_s i64.le_u i64.ge_s i64.ge_u",
         ((I64, I64), (I32,)))
_numeric(0x5B, "f32.eq f32.ne f32.lt f32.gt f32.le f32.ge", ((F32, F32), (I32,)))
_numeric(0x61, "f64.eq f64.ne f64.lt f64.gt f64.le f64.ge", ((F64, F64), (I32,)))
_numeric(0x67, "i32.clz i32.ctz i32.popcnt", ((I32,), (I32,)))
_numeric(0x6A, "i32.add i32.sub i32.mul i32.div_s i32.div_u i32.rem_s i32.rem_u i32.and i32.or i32.xor "
               "i32.shl i32.shr_s i32.shr_u i32.rotl i32.rotr", ((I32, I32), (I32,)))
_numeric(0x79, "i64.clz i64.ctz i64.popcnt", ((I64,), (I64,)))
_numeric(0x7C, "i64.add i64.sub i64.mul i64.div_s i64.div_u i64.rem_s i64.rem_u i64.and i64.or i64.xor "
               "i64.shl i64.shr_s i64.shr_u i64.rotl i64.rotr", ((I64, I64), (I64,)))
_numeric(0x8B, "f32.abs f32.neg f32.ceil f32.floor f32.trunc f32.nearest f32.sqrt", ((F32,), (F32,)))
_numeric(0x92, "f32.add f32.sub f32.mul f32.div f32.min f32.max f32.copysign", ((F32, F32), (F32,)))
_numeric(0x99, "f64.abs f64.neg f64.ceil f64.floor f64.trunc f64.nearest f64.sqrt", ((F64,), (F64,)))
_numeric(0xA0, "f64.add f64.sub f64.mul f64.div f64.min f64.max f64.copysign", ((F64, F64), (F64,)))

_CONVERSIONS: list[tuple[int, str, str, str]] = [
    (0xA7, "i32.wrap_i64", I64, I32),
    (0xA8, "i32.trunc_f32_s", F32, I32), (0xA9, "i32.trunc_f32_u", F32, I32),
    (0xAA, "i32.trunc_f64_s", F64, I32), (0xAB, "i32.trunc_f64_u", F64, I32),
    (0xAC, "i64.extend_i32_s", I32, I64), (0xAD, "i64.extend_i32_u", I32, I64),
    (0xAE, "i64.trunc_f32_s", F32, I64), (0xAF, "i64.trunc_f32_u", F32, I64),
    (0xB0, "i64.trunc_f64_s", F64, I64), (0xB1, "i64.trunc_f64_u", F64, I64),
    (0xB2, "f32.convert_i32_s", I32, F32), (0xB3, "f32.convert_i32_u", I32, F32),
    (0xB4, "f32.convert_i64_s", I64, F32), (0xB5, "f32.convert_i64_u", I64, F32),
    (0xB6, "f32.demote_f64", F64, F32),
    (0xB7, "f64.convert_i32_s", I32, F64), (0xB8, "f64.convert_i32_u", I32, F64),
    (0xB9, "f64.convert_i64_s", I64, F64), (0xBA, "f64.convert_i64_u", I64, F64),
    (0xBB, "f64.promote_f32", F32, F64),
    (0xBC, "i32.reinterpret_f32", F32, I32), (0xBD, "i64.reinterpret_f64", F64, I64),
    (0xBE, "f32.reinterpret_i32", I32, F32), (0xBF, "f64.reinterpret_i64", I64, F64),
    # sign-extension operators
    (0xC0, "i32.extend8_s", I32, I32), (0xC1, "i32.extend16_s", I32, I32),
    (0xC2, "i64.extend8_s", I64, I64), (0xC3, "i64.extend16_s", I64, I64), (0xC4, "i64.extend32_s", I64, I64),
    # non-trapping float-to-int (0xFC prefix)
    (0xFC00, "i32.trunc_sat_f32_s", F32, I32), (0xFC01, "i32.trunc_sat_f32_u", F32, I32),
    (0xFC02, "i32.trunc_sat_f64_s", F64, I32), (0xFC03, "i32.trunc_sat_f64_u", F64, I32),
    (0xFC04, "i64.trunc_sat_f32_s", F32, I64), (0xFC05, "i64.trunc_sat_f32_u", F32, I64),
    (0xFC06, "i64.trunc_sat_f64_s", F64, I64), (0xFC07, "i64.trunc_sat_f64_u", F64, I64),
]
for _c, _n, _from, _to in _CONVERSIONS:
    _op(_c, _n, sig=((_from,), (_to,)))

# --- bulk memory and table (0xFC prefix) ----------------------------------------------------
_op(0xFC08, "memory.init", "idx_mem", ((I32, I32, I32), ()))
_op(0xFC09, "data.drop", "idx", ((), ()))
_op(0xFC0A, "memory.copy", "mem_mem", ((I32, I32, I32), ()))
_op(0xFC0B, "memory.fill", "mem", ((I32, I32, I32), ()))
_op(0xFC0C, "table.init", "idx_idx", ((I32, I32, I32), ()))
_op(0xFC0D, "elem.drop", "idx", ((), ()))
_op(0xFC0E, "table.copy", "idx_idx", ((I32, I32, I32), ()))
_op(0xFC0F, "table.grow", "idx")
_op(0xFC10, "table.size", "idx", ((), (I32,)))
_op(0xFC11, "table.fill", "idx")

#: opcodes that may appear in a constant expression (globals, element and data offsets)
CONST_OPS = frozenset({0x41, 0x42, 0x43, 0x44, 0xD0, 0xD2, 0x23, 0x0B})

#: prefixes of proposals wasmig does not implement, for a clear UnsupportedFeature message
UNSUPPORTED_PREFIXES = {0xFD: "SIMD (v128)", 0xFE: "threads (atomics)", 0xFB: "GC"}


#: bit 6 of a memarg's alignment field: a memory index follows (multi-memory proposal)
MEMARG_MEMIDX_FLAG = 0x40


def memarg(align: int, offset: int, memidx: int = 0) -> tuple[int, int] | tuple[int, int, int]:
    """The canonical ``memarg`` immediate: ``(align, offset)`` for memory 0, else a three-tuple."""
    return (align, offset) if memidx == 0 else (align, offset, memidx)


def memarg_memidx(imm: tuple[int, ...]) -> int:
    """The memory index of a ``memarg`` immediate (0 for the two-tuple form)."""
    return imm[2] if len(imm) > 2 else 0


def name(op: int) -> str:
    """Human-readable mnemonic, for error messages and disassembly."""
    return NAMES.get(op, f"<opcode {op:#x}>")
