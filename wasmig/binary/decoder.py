"""Decode a WebAssembly binary into the typed IR of :mod:`wasmig.binary.ir`.

Everything the spec calls *malformed* raises :class:`DecodeError` with the byte offset;
opcodes of proposals wasmig does not implement (SIMD, threads, ...) raise
:class:`UnsupportedFeature` naming the opcode and where it sits. Typing rules are the
validator's job, not the decoder's: a module that decodes may still be invalid.

By default the decoder reads exactly the WebAssembly 2.0 binary format. ``features`` opts in
to proposals (:mod:`wasmig.binary.features`): with ``"multi-memory"`` a memarg whose alignment
field has bit 6 set carries a memory index, and the memory indices of ``memory.size``,
``memory.grow``, ``memory.fill``, ``memory.init`` and ``memory.copy`` are u32 LEBs instead of
the ``0x00`` byte wasm 2.0 requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from wasmig.binary import features as _features
from wasmig.binary import opcodes
from wasmig.binary.collector import collector_paused
from wasmig.binary.ir import (
    CustomSection,
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
)
from wasmig.binary.leb128 import decode_u
from wasmig.errors import DecodeError, UnsupportedFeature

MAGIC = b"\x00asm"
VERSION = b"\x01\x00\x00\x00"

VALTYPE_BYTES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x70: "funcref", 0x6F: "externref"}
REFTYPE_BYTES = {0x70: "funcref", 0x6F: "externref"}
EXTERN_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global"}

#: order in which non-custom sections must appear (data count sits between element and code)
SECTION_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 12: 10, 10: 11, 11: 12}

_MAX_LOCALS = 0xFFFFFFFF


#: how :meth:`Reader.instructions` decodes each single-byte opcode inline: not at all (0: the
#: general path), no immediate, one u32 (an index or label), one s32 (``i32.const``), a memarg
#: (memory 0: alignment, offset), ``end``, or a construct (``block``, ``loop``, ``if``)
_NO_IMM, _U32, _S32, _MEMARG, _END, _BLOCK = 1, 2, 3, 4, 5, 6
#: memory.init and data.drop: a module using them needs a data count section
_DATA_COUNT_OPS = frozenset((0xFC08, 0xFC09))
_FAST = [0] * 256
for _op, _kind in opcodes.IMM.items():
    if _op < 0x100 and _op not in (0x05, 0x12):  # else checks its if; return_call needs its feature
        _FAST[_op] = {"none": _NO_IMM, "idx": _U32, "label": _U32, "i32": _S32, "memarg": _MEMARG,
                      "block": _BLOCK}.get(_kind, 0)
_FAST[0x0B] = _END
del _op, _kind


class Reader:
    """A cursor over the module bytes with the LEB128 and vector primitives of the binary format."""

    __slots__ = ("data", "pos", "end", "multi_memory", "atomic_loads", "threads", "tail_call", "padded")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None, *, multi_memory: bool = False,
                 atomic_loads: bool = False, threads: bool = False, tail_call: bool = False) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        #: the multi-memory proposal: memory indices are u32s, memargs may carry one
        self.multi_memory = multi_memory
        #: the threads proposal's atomic loads (0xFE 0x10-0x16) are instructions
        self.atomic_loads = atomic_loads or threads
        #: the whole threads proposal: every 0xFE instruction and shared memories
        self.threads = threads
        #: the tail-call proposal's return_call (0x12) is an instruction
        self.tail_call = tail_call
        #: something read so far was not in the encoder's form: a LEB128 longer than it needs
        #: to be, or memory 0 named in a memarg (then ``Function.canonical`` is False)
        self.padded = False

    def fail(self, message: str, offset: int | None = None) -> DecodeError:
        return DecodeError(message, self.pos if offset is None else offset)

    def byte(self) -> int:
        if self.pos >= self.end:
            raise self.fail("unexpected end")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise self.fail("unexpected end of section or function" if self.end < len(self.data) else "unexpected end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(out)

    def uleb(self, bits: int) -> int:
        result = shift = 0
        data, end = self.data, self.end
        max_bytes = (bits + 6) // 7
        for i in range(max_bytes):
            if self.pos >= end:
                raise self.fail("unexpected end")
            b = data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if i == max_bytes - 1 and b >> (bits - 7 * i):
                    raise self.fail("integer too large")
                if b == 0 and i:  # a last byte with nothing in it
                    self.padded = True
                return result
            shift += 7
        raise self.fail("integer representation too long")

    def sleb(self, bits: int) -> int:
        result = shift = 0
        data, end = self.data, self.end
        max_bytes = (bits + 6) // 7
        for i in range(max_bytes):
            if self.pos >= end:
                raise self.fail("unexpected end")
            b = data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if i == max_bytes - 1:
                    # the unused high bits of the last byte must be a sign extension
                    used = bits - 7 * i  # meaningful bits in this byte
                    top = b & 0x7F
                    sign_bits = top >> (used - 1)
                    if sign_bits not in (0, (1 << (8 - used)) - 1):
                        raise self.fail("integer too large")
                if i and (b == 0 or b == 0x7F) and (b & 0x40) == (data[self.pos - 2] & 0x40):
                    self.padded = True  # a last byte that only repeats the sign of the one before
                if b & 0x40:
                    result -= 1 << shift
                return result
        raise self.fail("integer representation too long")

    def u32(self) -> int:
        return self.uleb(32)

    def name(self) -> str:
        n = self.u32()
        raw = self.bytes(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("malformed UTF-8 encoding", self.pos - n) from None

    def valtype(self) -> str:
        b = self.byte()
        t = VALTYPE_BYTES.get(b)
        if t is None:
            if b == 0x7B:
                raise UnsupportedFeature("SIMD value type v128 is not supported", self.pos - 1)
            raise self.fail(f"malformed value type {b:#x}", self.pos - 1)
        return t

    def reftype(self) -> str:
        b = self.byte()
        t = REFTYPE_BYTES.get(b)
        if t is None:
            raise self.fail(f"malformed reference type {b:#x}", self.pos - 1)
        return t

    def limits(self, what: str) -> Limits:
        flag = self.byte()
        if flag & 0x80:  # a flag byte with a continuation bit: an over-long encoding of a limits flag
            raise self.fail("integer representation too long: malformed limits flag", self.pos - 1)
        if flag == 0:
            return Limits(self.u32())
        if flag == 1:
            lo = self.u32()
            return Limits(lo, self.u32())
        if what == "memory" and flag in (2, 3):
            if not self.threads:
                raise UnsupportedFeature("shared memory (threads proposal) is not supported", self.pos - 1)
            lo = self.u32()
            return Limits(lo, self.u32() if flag == 3 else None)
        raise self.fail(f"integer too large: malformed {what} limits flag {flag:#x}", self.pos - 1)

    def mem_type(self) -> MemType:
        """A memory type; with the threads proposal, flags 2 and 3 make it shared (the validator
        requires a shared memory to have a maximum)."""
        flag = self.data[self.pos] if self.pos < self.end else 0
        return MemType(self.limits("memory"), shared=self.threads and flag in (2, 3))

    def zero_byte(self) -> int:
        b = self.byte()
        if b != 0:
            raise self.fail("zero byte expected", self.pos - 1)
        return 0

    def memidx(self) -> int:
        """A memory index in an instruction: a u32 with multi-memory, else the byte 0x00 of wasm 2.0."""
        return self.u32() if self.multi_memory else self.zero_byte()

    def indexed_memarg(self, align: int, start: int) -> tuple[int, int] | tuple[int, int, int]:
        """The rest of a multi-memory memarg whose alignment field ``align`` (read from ``start``) has
        bit 6 set: the memory index, then the offset. Memory 0 gives the canonical ``(align, offset)``."""
        if align >= 2 * opcodes.MEMARG_MEMIDX_FLAG:
            # the proposal leaves bits 7 and up undefined: 2.0 read them as (invalid) alignment
            raise self.fail(f"malformed memop flags {align:#x}", start)
        mem = self.u32()
        align -= opcodes.MEMARG_MEMIDX_FLAG
        offset = self.u32()
        if mem == 0:
            self.padded = True  # the encoder leaves memory 0 implicit
            return (align, offset)
        return (align, offset, mem)

    # --- instructions -------------------------------------------------------------------------
    def block_type(self) -> str | int | None:
        b = self.data[self.pos] if self.pos < self.end else None
        if b is None:
            raise self.fail("unexpected end")
        if b == 0x40:
            self.pos += 1
            return None
        if b in VALTYPE_BYTES:
            self.pos += 1
            return VALTYPE_BYTES[b]
        if b == 0x7B:
            raise UnsupportedFeature("SIMD value type v128 is not supported", self.pos)
        start = self.pos
        idx = self.sleb(33)
        if idx < 0:
            raise self.fail("malformed block type", start)
        return idx

    def instructions(self, base: int, *, const_expr: bool = False) -> list[Instr]:
        """Decode instructions up to and including the ``end`` that closes the sequence.

        ``base`` is subtracted from positions to give ``Instr.offset`` (the body start).
        """
        out: list[Instr] = []
        append = out.append
        imm_kinds = opcodes.IMM
        depth = 0
        open_kinds: list[int] = []
        data = self.data
        multi_memory = self.multi_memory
        fast = _FAST
        end = self.end
        pos = self.pos
        while True:
            # the common single-byte opcodes with no immediate or a short one, decoded inline (2.7
            # million instructions in CPython's module); anything else, or a long or truncated
            # immediate, takes the general path below from the opcode again
            start = pos
            if start >= end:
                self.pos = pos
                raise self.fail("unexpected end of section or function" if not const_expr else "unexpected end")
            op = data[start]
            code = fast[op]
            if code:
                if code == _NO_IMM:
                    pos = start + 1
                    append(Instr(op, None, start - base))
                    continue
                if code == _END:
                    pos = start + 1
                    append(Instr(op, None, start - base))
                    if depth == 0:
                        self.pos = pos
                        return out
                    depth -= 1
                    open_kinds.pop()
                    continue
                if start + 1 < end:
                    b = data[start + 1]
                    if code == _U32:
                        if b < 0x80:
                            pos = start + 2
                            append(Instr(op, b, start - base))
                            continue
                        if start + 2 < end and 0 < data[start + 2] < 0x80:  # not padded
                            pos = start + 3
                            append(Instr(op, (b & 0x7F) | data[start + 2] << 7, start - base))
                            continue
                    elif code == _S32:
                        if b < 0x80:
                            pos = start + 2
                            append(Instr(op, (b - 0x80 if b & 0x40 else b) & 0xFFFFFFFF, start - base))
                            continue
                        if start + 2 < end:
                            c = data[start + 2]
                            # two bytes, the second not just repeating the sign of the first
                            if c < 0x80 and not (c == 0 and not b & 0x40 or c == 0x7F and b & 0x40):
                                pos = start + 3
                                value = (b & 0x7F) | c << 7
                                append(Instr(op, (value - 0x4000 if c & 0x40 else value) & 0xFFFFFFFF, start - base))
                                continue
                    elif code == _BLOCK:  # block, loop, if: an empty or single-value block type
                        imm = None if b == 0x40 else VALTYPE_BYTES.get(b)
                        if imm is not None or b == 0x40:
                            pos = start + 2
                            append(Instr(op, imm, start - base))
                            depth += 1
                            open_kinds.append(op)
                            continue
                    elif b < 0x40 and start + 2 < end:  # a memarg: alignment, then a one- or two-byte offset
                        c = data[start + 2]
                        if c < 0x80:
                            pos = start + 3
                            append(Instr(op, (b, c), start - base))
                            continue
                        if start + 3 < end and 0 < data[start + 3] < 0x80:
                            pos = start + 4
                            append(Instr(op, (b, (c & 0x7F) | data[start + 3] << 7), start - base))
                            continue
            self.pos = start + 1
            if op == 0xFC:
                sub = self.u32()
                op = 0xFC00 | sub
                if sub > 0x11 or op not in imm_kinds:
                    raise self.fail(f"illegal opcode 0xfc {sub:#x}", start)
            elif op == 0xFE and self.atomic_loads:
                sub = self.u32()
                op = 0xFE00 | sub
                if op not in (opcodes.THREADS_OPS if self.threads else opcodes.ATOMIC_LOADS):
                    if self.threads:
                        raise self.fail(f"illegal opcode 0xfe {sub:#x}", start)
                    raise UnsupportedFeature(f"threads (atomics) instruction 0xfe {sub:#x} is not supported "
                                             "(only the atomic loads are)", start)
            elif op == 0x12 and not self.tail_call:
                raise self.fail(f"illegal opcode {op:#x}", start)
            kind = imm_kinds.get(op)
            if kind is None:
                feature = opcodes.UNSUPPORTED_PREFIXES.get(op)
                if feature is not None:
                    try:
                        opcode = f"{op:#x} {self.u32():#x}"
                    except DecodeError:
                        opcode = f"{op:#x}"
                    raise UnsupportedFeature(f"{feature} instruction {opcode} is not supported", start)
                raise self.fail(f"illegal opcode {op:#x}", start)
            if kind == "none":
                imm = None
            elif kind == "zero":  # atomic.fence: a reserved byte 0x00, nothing in the IR
                self.zero_byte()
                imm = None
            elif kind == "idx" or kind == "label":
                imm = self.u32()
            elif kind == "i32":
                imm = self.sleb(32) & 0xFFFFFFFF
            elif kind == "memarg":
                align = self.u32()
                if align < 0x40 or not multi_memory:  # 0x40: opcodes.MEMARG_MEMIDX_FLAG
                    imm = (align, self.u32())
                else:  # loads and stores are one-byte opcodes: the alignment field starts at start + 1
                    imm = self.indexed_memarg(align, start + 1)
            elif kind == "block":
                imm = self.block_type()
            elif kind == "i64":
                imm = self.sleb(64) & 0xFFFFFFFFFFFFFFFF
            elif kind == "f32":
                imm = int.from_bytes(self.bytes(4), "little")
            elif kind == "f64":
                imm = int.from_bytes(self.bytes(8), "little")
            elif kind == "br_table":
                n = self.u32()
                labels = tuple(self.u32() for _ in range(n))
                imm = (labels, self.u32())
            elif kind == "call_ind":
                ti = self.u32()
                imm = (ti, self.u32())
            elif kind == "mem":
                imm = self.memidx()
            elif kind == "reftype":
                imm = self.reftype()
            elif kind == "select_t":
                n = self.u32()
                imm = tuple(self.valtype() for _ in range(n))
            elif kind == "idx_mem":
                di = self.u32()
                imm = (di, self.memidx())
            elif kind == "mem_mem":
                d = self.memidx()
                imm = (d, self.memidx())
            elif kind == "idx_idx":
                a = self.u32()
                imm = (a, self.u32())
            else:  # pragma: no cover - table and decoder out of sync
                raise AssertionError(kind)
            append(Instr(op, imm, start - base))
            pos = self.pos
            if op == 0x0B:  # pragma: no cover - taken by the inline path above
                if depth == 0:
                    return out
                depth -= 1
                open_kinds.pop()
            elif op in (0x02, 0x03, 0x04):
                depth += 1
                open_kinds.append(op)
            elif op == 0x05:
                # `else` belongs to an `if` and may appear once in it: structure, hence malformed
                if not open_kinds or open_kinds[-1] != 0x04:
                    raise self.fail("else without matching if", start)
                open_kinds[-1] = 0x05

    def const_expr(self) -> Expr:
        return self.instructions(self.pos, const_expr=True)


def _decode_names(data: bytes) -> NameSection | None:
    """Decode the ``name`` section leniently: a broken name section is ignored, as the spec says."""
    names = NameSection()
    r = Reader(data)
    try:
        while r.pos < r.end:
            sub = r.byte()
            size = r.u32()
            sr = Reader(data, r.pos, r.pos + size)
            if sr.end > r.end:
                return None
            if sub == 0:
                names.module = sr.name()
            elif sub == 1:
                for _ in range(sr.u32()):
                    idx = sr.u32()
                    names.functions[idx] = sr.name()
            elif sub == 2:
                for _ in range(sr.u32()):
                    fidx = sr.u32()
                    local_map: dict[int, str] = {}
                    for _ in range(sr.u32()):
                        lidx = sr.u32()
                        local_map[lidx] = sr.name()
                    names.locals[fidx] = local_map
            r.pos += size
    except DecodeError:
        return None
    return names


def decode_module(data: bytes, *, features: Iterable[str] = frozenset()) -> Module:
    """Decode ``data`` (a complete ``.wasm`` binary) into a :class:`Module`.

    ``features`` names opt-in proposals (:mod:`wasmig.binary.features`); the default is exactly
    WebAssembly 2.0 (no SIMD).
    """
    with collector_paused():  # an Instr per instruction, in no cycle: see wasmig.binary.collector
        return _decode_module(data, _features.check(features))


def _decode_module(data: bytes, wanted: frozenset[str]) -> Module:
    """:func:`decode_module`, with the collector paused and the features checked."""
    multi_memory = _features.MULTI_MEMORY in wanted
    atomic_loads = _features.ATOMIC_LOADS in wanted
    threads = _features.THREADS in wanted
    tail_call = _features.TAIL_CALL in wanted
    data = bytes(data)
    if len(data) < 4:
        raise DecodeError("unexpected end: not a wasm module (shorter than its magic header)", len(data))
    if data[:4] != MAGIC:
        raise DecodeError("magic header not detected", 0)
    if len(data) < 8:
        raise DecodeError("unexpected end: truncated binary version", len(data))
    if data[4:8] != VERSION:
        raise DecodeError("unknown binary version", 4)
    r = Reader(data, 8, multi_memory=multi_memory, atomic_loads=atomic_loads, threads=threads, tail_call=tail_call)
    m = Module()
    func_type_indices: list[int] = []
    last_order = 0
    last_id = 0
    code_count: int | None = None
    uses_data_count = False
    saw_data = False
    while r.pos < len(data):
        sid_pos = r.pos
        sid = r.byte()
        size = r.u32()
        body_start = r.pos
        if body_start + size > len(data):
            raise DecodeError("length out of bounds: section size exceeds the module", sid_pos)
        s = Reader(data, body_start, body_start + size, multi_memory=multi_memory, atomic_loads=atomic_loads,
                   threads=threads, tail_call=tail_call)
        if sid == 0:
            name = s.name()
            payload = s.bytes(s.end - s.pos)
            m.customs.append(CustomSection(name, payload, last_id))
            if name == "name":
                m.names = _decode_names(payload)
            r.pos = s.end
            continue
        order = SECTION_ORDER.get(sid)
        if order is None:
            raise DecodeError(f"malformed section id {sid}", sid_pos)
        if order <= last_order:
            raise DecodeError("unexpected content after last section (sections out of order or duplicated)", sid_pos)
        last_order, last_id = order, sid
        if sid == 1:
            for _ in range(s.u32()):
                form_pos = s.pos
                if s.byte() != 0x60:
                    raise DecodeError("integer representation too long: malformed function type", form_pos)
                params = tuple(s.valtype() for _ in range(s.u32()))
                results = tuple(s.valtype() for _ in range(s.u32()))
                m.types.append(FuncType(params, results))
        elif sid == 2:
            for _ in range(s.u32()):
                mod, nm = s.name(), s.name()
                kpos = s.pos
                kind = EXTERN_KINDS.get(s.byte())
                if kind is None:
                    raise DecodeError("malformed import kind", kpos)
                desc: int | TableType | MemType | GlobalType
                if kind == "func":
                    desc = s.u32()
                elif kind == "table":
                    et = s.reftype()
                    desc = TableType(et, s.limits("table"))
                elif kind == "memory":
                    desc = s.mem_type()
                else:
                    desc = _global_type(s)
                m.imports.append(Import(mod, nm, kind, desc))
        elif sid == 3:
            func_type_indices = [s.u32() for _ in range(s.u32())]
        elif sid == 4:
            for _ in range(s.u32()):
                et = s.reftype()
                m.tables.append(TableType(et, s.limits("table")))
        elif sid == 5:
            for _ in range(s.u32()):
                m.mems.append(s.mem_type())
        elif sid == 6:
            for _ in range(s.u32()):
                gt = _global_type(s)
                m.globals.append(Global(gt, s.const_expr()))
        elif sid == 7:
            for _ in range(s.u32()):
                nm = s.name()
                kpos = s.pos
                kind = EXTERN_KINDS.get(s.byte())
                if kind is None:
                    raise DecodeError("malformed export kind", kpos)
                m.exports.append(Export(nm, kind, s.u32()))
        elif sid == 8:
            m.start = s.u32()
        elif sid == 9:
            for _ in range(s.u32()):
                m.elems.append(_elem(s))
        elif sid == 12:
            m.data_count = s.u32()
        elif sid == 10:
            code_count = s.u32()
            if code_count != len(func_type_indices):
                raise DecodeError("function and code section have inconsistent lengths", sid_pos)
            for type_idx in func_type_indices:
                fn, used = _code_entry(s, type_idx)
                uses_data_count |= used
                m.funcs.append(fn)
        elif sid == 11:
            saw_data = True
            count = s.u32()
            if m.data_count is not None and count != m.data_count:
                raise DecodeError("data count and data section have inconsistent lengths", sid_pos)
            for _ in range(count):
                m.datas.append(_data(s))
        if s.pos != s.end:
            raise DecodeError("section size mismatch", s.pos)
        r.pos = s.end
    if code_count is None and func_type_indices:
        raise DecodeError("function and code section have inconsistent lengths", len(data))
    if m.data_count is not None and not saw_data and m.data_count != 0:
        raise DecodeError("data count and data section have inconsistent lengths", len(data))
    # with no data section at all, a data index is the validator's "unknown data segment"
    if uses_data_count and m.data_count is None and saw_data:
        raise DecodeError("data count section required", len(data))
    return m


def _global_type(s: Reader) -> GlobalType:
    t = s.valtype()
    mpos = s.pos
    mut = s.byte()
    if mut not in (0, 1):
        raise DecodeError("malformed mutability", mpos)
    return GlobalType(t, bool(mut))


def _func_index_exprs(s: Reader) -> list[Expr]:
    return [[Instr(0xD2, s.u32()), Instr(0x0B)] for _ in range(s.u32())]


def _elem(s: Reader) -> Elem:
    fpos = s.pos
    flags = s.u32()
    if flags > 7:
        raise DecodeError(f"malformed elements segment kind {flags}", fpos)
    if flags == 0:
        offset = s.const_expr()
        return Elem("active", "funcref", _func_index_exprs(s), 0, offset)
    if flags in (1, 3):
        if s.byte() != 0x00:
            raise DecodeError("malformed element kind", s.pos - 1)
        return Elem("passive" if flags == 1 else "declarative", "funcref", _func_index_exprs(s))
    if flags == 2:
        table = s.u32()
        offset = s.const_expr()
        if s.byte() != 0x00:
            raise DecodeError("malformed element kind", s.pos - 1)
        return Elem("active", "funcref", _func_index_exprs(s), table, offset)
    if flags == 4:
        offset = s.const_expr()
        return Elem("active", "funcref", [s.const_expr() for _ in range(s.u32())], 0, offset)
    if flags in (5, 7):
        et = s.reftype()
        return Elem("passive" if flags == 5 else "declarative", et, [s.const_expr() for _ in range(s.u32())])
    # flags == 6
    table = s.u32()
    offset = s.const_expr()
    et = s.reftype()
    return Elem("active", et, [s.const_expr() for _ in range(s.u32())], table, offset)


def _data(s: Reader) -> Data:
    fpos = s.pos
    flags = s.u32()
    if flags == 0:
        offset = s.const_expr()
        return Data("active", s.bytes(s.u32()), 0, offset)
    if flags == 1:
        return Data("passive", s.bytes(s.u32()))
    if flags == 2:
        mem = s.u32()
        offset = s.const_expr()
        return Data("active", s.bytes(s.u32()), mem, offset)
    raise DecodeError(f"malformed data segment kind {flags}", fpos)


def _code_entry(s: Reader, type_idx: int) -> tuple[Function, bool]:
    size = s.u32()
    start = s.pos
    if start + size > s.end:
        raise DecodeError("unexpected end of section or function", start)
    body = Reader(s.data, start, start + size, multi_memory=s.multi_memory,
                  atomic_loads=s.atomic_loads, threads=s.threads, tail_call=s.tail_call)
    locals_decl: list[tuple[int, str]] = []
    total = 0
    for _ in range(body.u32()):
        count = body.u32()
        total += count
        if total > _MAX_LOCALS:
            raise DecodeError("too many locals", body.pos)
        locals_decl.append((count, body.valtype()))
    instrs = body.instructions(start)
    if body.pos != body.end:
        raise DecodeError("section size mismatch: END opcode expected before the end of the function body", body.pos)
    s.pos = body.end
    # (a set comprehension: on CPython 3.11 faster than map(attrgetter), 0.05 s against 0.08 s
    # over CPython's 2.7 million instructions)
    uses_data_count = not _DATA_COUNT_OPS.isdisjoint({ins.op for ins in instrs})
    func = Function(type_idx, locals_decl, instrs, start, size)
    func.canonical = not body.padded
    return func, uses_data_count


def sections(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(section id, payload start, payload end) of each section, walking the headers only (no
    decoding). Raises :class:`DecodeError` on a bad header or a section past the end."""
    if data[:4] != b"\0asm":
        raise DecodeError("not a wasm module")
    pos = 8
    n = len(data)
    while pos < n:
        try:
            size, start = decode_u(data, pos + 1)
        except ValueError:
            raise DecodeError("bad LEB128 in a section header", pos) from None
        if start + size > n:
            raise DecodeError("section extends past the end of the module", pos)
        yield data[pos], start, start + size
        pos = start + size


def read_custom_section(data: bytes, name: str) -> bytes | None:
    """The payload of the first custom section called ``name`` (found by :func:`sections`): how a
    cached instrumented module's site map is read back."""
    wanted = name.encode()
    for section_id, start, end in sections(data):
        if section_id == 0:
            try:
                length, p = decode_u(data, start)
            except ValueError:
                raise DecodeError("bad custom section name", start) from None
            if data[p : p + length] == wanted:
                return data[p + length : end]
    return None
