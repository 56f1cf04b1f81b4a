"""A module's types and imports, read without decoding the rest: what linking it to WASI needs.

A run on wasmtime without checkpoints hands the bytes to wasmtime, which validates and compiles
them itself (or loads the cached artifact), so ``wasmig run`` needs from Python only the import
list and each import's function type. The full decoder (:mod:`wasmig.binary.decoder`) builds the
IR of every instruction and costs tens of milliseconds for a small module before the program's
first instruction; this reader stops after the import section and needs no IR classes.

It is forgiving only in that it reads less: a module it cannot read is passed to the full
decoder, whose error (with its byte offset) is the one reported.
"""

from __future__ import annotations

from typing import NamedTuple

MAGIC = b"\0asm"
VERSION = b"\x01\0\0\0"
_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128", 0x70: "funcref", 0x6F: "externref"}
_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global"}


class FuncType(NamedTuple):
    params: tuple[str, ...]
    results: tuple[str, ...]


class Import(NamedTuple):
    module: str
    name: str
    kind: str
    desc: int | None  # the type index of a function import; None for the other kinds


class Interface(NamedTuple):
    """The attributes of :class:`wasmig.binary.ir.Module` that linking reads: ``types`` and ``imports``."""

    types: list[FuncType]
    imports: list[Import]


class _Malformed(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise _Malformed
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _Malformed

    def name(self) -> str:
        size = self.uleb()
        if self.pos + size > self.end:
            raise _Malformed
        raw = self.data[self.pos:self.pos + size]
        self.pos += size
        return raw.decode("utf-8")

    def valtype(self) -> str:
        t = _VALTYPES.get(self.byte())
        if t is None:
            raise _Malformed
        return t

    def limits(self) -> None:
        flags = self.uleb()
        self.uleb()
        if flags & 1:
            self.uleb()


def read_interface(data: bytes) -> Interface:
    """The types and imports of the module ``data``; one it cannot read raises the full decoder's
    :class:`~wasmig.errors.DecodeError` (or the validator's error, for an import of an unknown type)."""
    try:
        return _read(data)
    except (_Malformed, UnicodeDecodeError):
        from wasmig.binary.decoder import decode_module
        from wasmig.binary.validator import validate_module

        validate_module(decode_module(data))  # raises the precise error (an unknown type is invalid, not malformed)
        from wasmig.errors import DecodeError

        raise DecodeError("malformed type or import section") from None


def _read(data: bytes) -> Interface:
    if data[:4] != MAGIC or data[4:8] != VERSION:
        raise _Malformed
    types: list[FuncType] = []
    imports: list[Import] = []
    r = _Reader(data, 8, len(data))
    while r.pos < len(data):
        sid = r.byte()
        size = r.uleb()
        if r.pos + size > len(data):
            raise _Malformed
        s = _Reader(data, r.pos, r.pos + size)
        if sid == 1:
            for _ in range(s.uleb()):
                if s.byte() != 0x60:
                    raise _Malformed
                params = tuple(s.valtype() for _ in range(s.uleb()))
                types.append(FuncType(params, tuple(s.valtype() for _ in range(s.uleb()))))
        elif sid == 2:
            for _ in range(s.uleb()):
                module, name = s.name(), s.name()
                kind = _KINDS.get(s.byte())
                desc = None
                if kind == "func":
                    desc = s.uleb()
                    if desc >= len(types):
                        raise _Malformed
                elif kind == "table":
                    s.valtype()
                    s.limits()
                elif kind == "memory":
                    s.limits()
                elif kind == "global":
                    s.valtype()
                    s.byte()
                else:
                    raise _Malformed
                imports.append(Import(module, name, kind, desc))
        elif sid != 0:  # the import section comes before every other known section but custom ones
            break
        if sid != 0 and s.pos != s.end:
            raise _Malformed
        r.pos += size
    return Interface(types, imports)
