"""Encode the module IR back into a WebAssembly 2.0 binary (no SIMD).

Memory indices are encoded as the IR gives them, with no feature flag: a module with several
memories or memory-indexed instructions comes out in the multi-memory proposal's encoding (a
memarg for memory ``x != 0`` is ``align|0x40, x, offset``; the other memory indices are u32s,
which for memory 0 is the single byte 0x00 wasm 2.0 requires). See :mod:`wasmig.binary.opcodes`.

Used after instrumentation or any other IR rewrite, so the output must be exactly what the
decoder reads back into an equal IR: sections in canonical order, custom sections kept at the
place they were decoded from, locals kept in their original run-length grouping, and constants
kept bit-exact. Malformed IR (unknown opcode, bad value type, ...) raises ``ValueError``: it is a
bug in whoever built the IR, not a property of some input binary.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import TypeVar

from wasmig.binary import opcodes
from wasmig.binary.ir import (
    Data,
    Elem,
    Export,
    Expr,
    Function,
    FuncType,
    Global,
    GlobalType,
    Import,
    Instr,
    Limits,
    MemType,
    Module,
    NameSection,
    TableType,
    ValType,
)
from wasmig.binary.leb128 import encode_s, encode_u

T = TypeVar("T")

MAGIC = b"\0asm"
VERSION = b"\1\0\0\0"

VALTYPE_BYTES: dict[ValType, int] = {
    "i32": 0x7F,
    "i64": 0x7E,
    "f32": 0x7D,
    "f64": 0x7C,
    "funcref": 0x70,
    "externref": 0x6F,
}
EXTERN_KINDS: dict[str, int] = {"func": 0x00, "table": 0x01, "memory": 0x02, "global": 0x03}

#: canonical section order; datacount (12) precedes code (10), so ids are not the order
SECTION_ORDER = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 10, 11)
#: section id -> rank in the canonical order (0 = "before every section", used by customs)
_RANK = {sid: rank for rank, sid in enumerate(SECTION_ORDER, start=1)} | {0: 0}

_END = 0x0B
_REF_FUNC = 0xD2
_FUNCIDX_ELEM_FLAGS = {"passive": 1, "declarative": 3}
_EXPR_ELEM_FLAGS = {"passive": 5, "declarative": 7}


def encode_module(module: Module, code: list[bytes] | None = None) -> bytes:
    """The binary encoding of ``module``; decoding it gives back an equal IR.

    ``code``: the code section's entries already encoded (:func:`encode_code_entry`), one per
    ``module.funcs`` entry, whose bodies are then not looked at -- so a pass can encode each
    function as soon as it is built and drop its IR (the instrumentation pass on big modules).
    """
    if code is not None and len(code) != len(module.funcs):
        raise ValueError(f"{len(code)} code entries for {len(module.funcs)} functions")
    # A custom section that followed a (then empty) vector section keeps that section as an
    # empty anchor, so the decoder reads back the same ``after``: binaries such as the spec's
    # custom.wast have customs between empty sections, and dropping those would move them.
    anchors = {c.after for c in module.customs} & _VECTOR_SECTIONS
    sections = _standard_sections(module, anchors, code)
    # the module's parts, joined once at the end: a bytearray grown part by part and copied into
    # bytes held the big code section three times at the peak (CPython instrumented: 85 MB each)
    out: list[bytes] = [MAGIC + VERSION]

    # Each custom section goes after the latest emitted section not later (in canonical order)
    # than the one it followed originally. That is the section itself unless it cannot be
    # emitted empty (start, datacount absent from the IR), in which case the custom section
    # goes where that section would have been.
    emitted_ranks = [_RANK[sid] for sid, _ in sections]
    customs_after: dict[int, list[bytes]] = {}
    for custom in module.customs:
        rank = _RANK.get(custom.after)
        if rank is None:
            raise ValueError(f"custom section {custom.name!r}: unknown preceding section id {custom.after}")
        anchor = max((r for r in emitted_ranks if r <= rank), default=0)
        customs_after.setdefault(anchor, []).append(_section(0, _name(custom.name) + custom.data))

    out += customs_after.get(0, ())
    for (sid, payload), rank in zip(sections, emitted_ranks, strict=True):
        if sid == 10 and code is not None:  # the entries as they are: no copies of a big code section
            out += (bytes((10,)), encode_u(len(payload) + sum(len(entry) for entry in code)), payload)
            out += code
        else:
            out.append(_section(sid, payload))
        out += customs_after.get(rank, ())

    if module.names is not None and not any(c.name == "name" for c in module.customs):
        out.append(_section(0, _name("name") + _name_section(module.names)))
    return b"".join(out)


# --- sections ------------------------------------------------------------------------------------

#: sections whose payload is a vector, so they can be emitted empty (``count = 0``)
_VECTOR_SECTIONS = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11})


def _standard_sections(module: Module, keep_empty: set[int] | frozenset[int] = frozenset(),
                       code: list[bytes] | None = None) -> list[tuple[int, bytes]]:
    """``(id, payload)`` of every standard section to emit, in canonical order.

    Empty sections are omitted, except the vector sections in ``keep_empty``.
    """
    sections: list[tuple[int, bytes]] = []

    def add(sid: int, payload: bytes | None) -> None:
        if payload is not None:
            sections.append((sid, payload))

    def vec(sid: int, items: list[T], encode_item: Callable[[T], bytes]) -> None:
        if items or sid in keep_empty:
            sections.append((sid, _vec(items, encode_item)))

    vec(1, module.types, _functype)
    vec(2, module.imports, _import)
    vec(3, module.funcs, lambda f: encode_u(f.type_idx))
    vec(4, module.tables, _tabletype)
    vec(5, module.mems, _memtype)
    vec(6, module.globals, _global)
    vec(7, module.exports, _export)
    add(8, None if module.start is None else encode_u(module.start))
    vec(9, module.elems, _elem)
    add(12, None if module.data_count is None else encode_u(module.data_count))
    if code is None:
        vec(10, module.funcs, _code)
    elif code or 10 in keep_empty:
        sections.append((10, encode_u(len(code))))  # the entries follow: see encode_module
    vec(11, module.datas, _data)
    return sections


def _section(sid: int, payload: bytes) -> bytes:
    return bytes((sid,)) + encode_u(len(payload)) + payload


def _vec(items: Iterable[T], encode_item: Callable[[T], bytes]) -> bytes:
    parts = [encode_item(item) for item in items]
    return encode_u(len(parts)) + b"".join(parts)



def _name(s: str) -> bytes:
    raw = s.encode("utf-8")
    return encode_u(len(raw)) + raw


def _valtype(t: ValType) -> int:
    try:
        return VALTYPE_BYTES[t]
    except KeyError:
        raise ValueError(f"unknown value type {t!r}") from None


def _reftype(t: ValType) -> int:
    if t not in ("funcref", "externref"):
        raise ValueError(f"{t!r} is not a reference type")
    return VALTYPE_BYTES[t]


def _resulttype(types: Iterable[ValType]) -> bytes:
    vals = bytes(_valtype(t) for t in types)
    return encode_u(len(vals)) + vals


def _functype(ft: FuncType) -> bytes:
    return b"\x60" + _resulttype(ft.params) + _resulttype(ft.results)


def _limits(lim: Limits) -> bytes:
    if lim.max is None:
        return b"\x00" + encode_u(lim.min)
    return b"\x01" + encode_u(lim.min) + encode_u(lim.max)


def _tabletype(tt: TableType) -> bytes:
    return bytes((_reftype(tt.elem),)) + _limits(tt.limits)


def _memtype(mt: MemType) -> bytes:
    if mt.shared:  # the threads proposal: flag 2 (no maximum: invalid, but encodable) or 3
        lim = mt.limits
        if lim.max is None:
            return b"\x02" + encode_u(lim.min)
        return b"\x03" + encode_u(lim.min) + encode_u(lim.max)
    return _limits(mt.limits)


def _globaltype(gt: GlobalType) -> bytes:
    return bytes((_valtype(gt.type), 1 if gt.mutable else 0))


def _import(imp: Import) -> bytes:
    head = _name(imp.module) + _name(imp.name)
    desc = imp.desc
    if imp.kind == "func" and isinstance(desc, int):
        return head + b"\x00" + encode_u(desc)
    if imp.kind == "table" and isinstance(desc, TableType):
        return head + b"\x01" + _tabletype(desc)
    if imp.kind == "memory" and isinstance(desc, MemType):
        return head + b"\x02" + _memtype(desc)
    if imp.kind == "global" and isinstance(desc, GlobalType):
        return head + b"\x03" + _globaltype(desc)
    raise ValueError(f"import {imp.module}.{imp.name}: kind {imp.kind!r} does not match descriptor {desc!r}")


def _export(exp: Export) -> bytes:
    try:
        kind = EXTERN_KINDS[exp.kind]
    except KeyError:
        raise ValueError(f"export {exp.name!r}: unknown kind {exp.kind!r}") from None
    return _name(exp.name) + bytes((kind,)) + encode_u(exp.index)


def _global(g: Global) -> bytes:
    return _globaltype(g.type) + encode_expr(g.init)


def _active_offset(what: str, offset: Expr | None) -> bytes:
    if offset is None:
        raise ValueError(f"active {what} segment without an offset expression")
    return encode_expr(offset)


def _is_ref_func(expr: Expr) -> bool:
    return len(expr) == 2 and expr[0].op == _REF_FUNC and expr[1].op == _END


def _elem(e: Elem) -> bytes:
    """Pick the most compact of the 8 element-segment encodings that can express ``e``."""
    if e.mode not in ("active", "passive", "declarative"):
        raise ValueError(f"unknown element segment mode {e.mode!r}")
    if e.type == "funcref" and all(_is_ref_func(x) for x in e.init):
        funcs = _vec(e.init, lambda x: encode_u(x[0].imm))
        if e.mode != "active":
            return bytes((_FUNCIDX_ELEM_FLAGS[e.mode], 0x00)) + funcs
        if e.table == 0:
            return b"\x00" + _active_offset("element", e.offset) + funcs
        return b"\x02" + encode_u(e.table) + _active_offset("element", e.offset) + b"\x00" + funcs
    exprs = _vec(e.init, encode_expr)
    reftype = bytes((_reftype(e.type),))
    if e.mode != "active":
        return bytes((_EXPR_ELEM_FLAGS[e.mode],)) + reftype + exprs
    if e.table == 0 and e.type == "funcref":
        return b"\x04" + _active_offset("element", e.offset) + exprs
    return b"\x06" + encode_u(e.table) + _active_offset("element", e.offset) + reftype + exprs


def _data(d: Data) -> bytes:
    init = encode_u(len(d.init)) + bytes(d.init)
    if d.mode == "passive":
        return b"\x01" + init
    if d.mode != "active":
        raise ValueError(f"unknown data segment mode {d.mode!r}")
    if d.memory == 0:
        return b"\x00" + _active_offset("data", d.offset) + init
    return b"\x02" + encode_u(d.memory) + _active_offset("data", d.offset) + init


def encode_code_entry(f: Function) -> bytes:
    """One entry of the code section: size, locals, body."""
    return _code(f)


def encode_code_entry_raw(locals_decl: list[tuple[int, ValType]], body: bytes) -> bytes:
    """:func:`encode_code_entry` of a body already encoded (its instructions, final ``end``
    included): what a pass that emits encoded instructions has."""
    entry = _vec(locals_decl, lambda loc: encode_u(loc[0]) + bytes((_valtype(loc[1]),))) + body
    return encode_u(len(entry)) + entry


def _code(f: Function) -> bytes:
    body = bytearray(_vec(f.locals, lambda loc: encode_u(loc[0]) + bytes((_valtype(loc[1]),))))
    encode_instrs(body, f.body)
    return encode_u(len(body)) + body


def _name_section(names: NameSection) -> bytes:
    """Subsections 0 (module), 1 (functions) and 2 (locals), each only when it has content."""
    out = bytearray()

    def sub(sid: int, payload: bytes) -> None:
        out.append(sid)
        out.extend(encode_u(len(payload)))
        out.extend(payload)

    def namemap(m: dict[int, str]) -> bytes:
        return _vec(sorted(m.items()), lambda kv: encode_u(kv[0]) + _name(kv[1]))

    if names.module is not None:
        sub(0, _name(names.module))
    if names.functions:
        sub(1, namemap(names.functions))
    if names.locals:
        sub(2, _vec(sorted(names.locals.items()), lambda kv: encode_u(kv[0]) + namemap(kv[1])))
    return bytes(out)


# --- instructions --------------------------------------------------------------------------------


def encode_expr(expr: Expr) -> bytes:
    """A constant expression (its final ``end`` included in ``expr``)."""
    out = bytearray()
    encode_instrs(out, expr)
    return bytes(out)


def _blocktype(bt: object) -> bytes:
    if bt is None:
        return b"\x40"
    if isinstance(bt, str):
        return bytes((_valtype(bt),))
    if isinstance(bt, int) and bt >= 0:
        return encode_s(bt)  # a type index is an s33, so it is signed-LEB encoded
    raise ValueError(f"bad block type {bt!r}")


def _to_signed(value: int, bits: int) -> int:
    """The IR keeps integer constants as unsigned bit patterns; the binary wants signed LEB."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _memarg(out: bytearray, imm: tuple[int, ...]) -> None:
    """``(align, offset)`` (memory 0), or ``(align, offset, memidx)`` with the memidx flag in the alignment."""
    if len(imm) == 2:
        align, offset = imm
        mem = 0
    else:
        align, offset, mem = imm
    if mem == 0:
        out += encode_u(align)
    else:
        if not 0 <= align < opcodes.MEMARG_MEMIDX_FLAG:
            raise ValueError(f"alignment {align} cannot be combined with a memory index")
        out += encode_u(align | opcodes.MEMARG_MEMIDX_FLAG)
        out += encode_u(mem)
    out += encode_u(offset)


#: encodings of (opcode, immediate) pairs seen before: a module repeats a few thousand of them
#: (local.get 3, i32.const 0, a store to the control memory...) millions of times, and the
#: instrumentation pass emits ten instructions per original one. Bounded: cleared when full.
_ENCODED: dict[tuple[int, object], bytes] = {}
_ENCODED_MAX = 1 << 18


def encode_instrs(out: bytearray, instrs: Iterable[Instr]) -> None:
    """Append the encoding of ``instrs`` to ``out`` (a bytearray so bodies are built in place)."""
    encode_ops(out, ((ins.op, ins.imm) for ins in instrs))


def encode_ops(out: bytearray, ops: Iterable[Sequence]) -> None:
    """:func:`encode_instrs` for instructions as sequences whose first two items are the opcode
    and the immediate (what a pass that emits lists rather than :class:`Instr` objects has)."""
    cache = _ENCODED
    for item in ops:
        key = (item[0], item[1])
        try:
            out += cache[key]
            continue
        except KeyError:
            pass
        except TypeError:  # an unhashable immediate (a list): not cached
            _encode_instr(out, item[0], item[1])
            continue
        one = bytearray()
        _encode_instr(one, item[0], item[1])
        if len(cache) >= _ENCODED_MAX:
            cache.clear()
        cache[key] = bytes(one)
        out += one


#: the memo's lookup alone: the encoding of ``(op, imm)`` if memoised, else None -- a call in C,
#: for the instrumentation pass's million constructs per big module (``encoded_instr`` on a miss)
cached_instr = _ENCODED.get


def encoded_instr(op: int, imm: object) -> bytes:
    """The encoding of one instruction, memoised like :func:`encode_ops`'s."""
    key = (op, imm)
    try:
        return _ENCODED[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable immediate (a list): not cached
        one = bytearray()
        _encode_instr(one, op, imm)
        return bytes(one)
    one = bytearray()
    _encode_instr(one, op, imm)
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.clear()
    done = _ENCODED[key] = bytes(one)
    return done


def encode_each(instrs: Sequence[Instr]) -> list[bytes]:
    """The encoding of each instruction, memoised like :func:`encode_ops`'s. The lookups are a
    ``map`` (run in C: the instrumentation pass encodes every body of a module once); the
    instructions the memo does not hold yet are encoded after."""
    keys = list(map(_OP_IMM, instrs))
    try:
        out = list(map(_ENCODED.get, keys))
    except TypeError:  # an unhashable immediate (a list): one at a time
        return [encoded_instr(op, imm) for op, imm in keys]
    k = -1
    try:
        while True:  # the misses, found by list.index (in C)
            k = out.index(None, k + 1)
            out[k] = encoded_instr(*keys[k])
    except ValueError:
        return out


_OP_IMM = attrgetter("op", "imm")


def _encode_instr(out: bytearray, op: int, imm: object) -> None:
    """Append the encoding of one instruction."""
    imm_kinds = opcodes.IMM
    kind = imm_kinds.get(op)
    if kind is None:
        raise ValueError(f"unknown opcode {op:#x}")
    if op < 0x100:
        out.append(op)
    else:  # 0xFC- or 0xFE-prefixed: the table has prefix << 8 | sub
        out.append(op >> 8)
        out += encode_u(op & 0xFF)
    if kind == "none":
        return
    if kind == "zero":  # atomic.fence's reserved byte
        out.append(0)
        return
    try:
        if kind == "idx" or kind == "label" or kind == "mem":
            out += encode_u(imm)
        elif kind == "memarg":
            _memarg(out, imm)
        elif kind == "i32":
            out += encode_s(_to_signed(imm, 32))
        elif kind == "i64":
            out += encode_s(_to_signed(imm, 64))
        elif kind == "block":
            out += _blocktype(imm)
        elif kind == "f32":
            out += struct.pack("<I", imm)
        elif kind == "f64":
            out += struct.pack("<Q", imm)
        elif kind == "br_table":
            labels, default = imm
            out += encode_u(len(labels))
            for label in labels:
                out += encode_u(label)
            out += encode_u(default)
        elif kind in ("call_ind", "idx_mem", "mem_mem", "idx_idx"):
            a, b = imm
            out += encode_u(a)
            out += encode_u(b)
        elif kind == "reftype":
            out.append(_reftype(imm))
        elif kind == "select_t":
            out += _resulttype(imm)
        else:  # pragma: no cover - opcodes.IMM and this function are kept in step
            raise ValueError(f"unknown immediate kind {kind!r}")
    except (TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"{opcodes.name(op)}: bad immediate {imm!r}: {exc}") from exc
