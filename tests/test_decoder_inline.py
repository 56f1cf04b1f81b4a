"""The decoder's inline path for common single-byte opcodes (``Reader.instructions``): every
immediate length it handles inline or hands to the general path decodes to the same IR, a
truncated immediate is the same error, and decoding pauses the cyclic garbage collector."""

from __future__ import annotations

import gc

import pytest

from wasmig.binary.decoder import decode_module
from wasmig.binary.ir import Instr
from wasmig.binary.leb128 import encode_s, encode_u
from wasmig.errors import DecodeError

_I32 = b"\x7f"


def _module(code: bytes, params: int = 0) -> bytes:
    """A module of one function ``[i32]*params -> []`` with 300 i32 locals and body ``code``."""
    def section(sid: int, payload: bytes) -> bytes:
        return bytes((sid,)) + encode_u(len(payload)) + payload

    body = b"\x01" + encode_u(300) + _I32 + code
    return (b"\0asm\1\0\0\0" + section(1, b"\x01\x60" + encode_u(params) + _I32 * params + b"\x00")
            + section(3, b"\x01\x00") + section(5, b"\x01\x00\x01")
            + section(10, b"\x01" + encode_u(len(body)) + body))


def _decoded(code: bytes) -> list[tuple[int, object, int]]:
    return [(i.op, i.imm, i.offset) for i in decode_module(_module(code)).funcs[0].body]


@pytest.mark.parametrize("index", [0, 1, 127, 128, 200, 299, 16383])
def test_index_immediates_of_any_length(index: int) -> None:
    code = b"\x20" + encode_u(index) + b"\x1a\x0b"  # local.get, drop, end
    got = decode_module(_module(code)).funcs[0].body
    assert [(i.op, i.imm) for i in got] == [(0x20, index), (0x1A, None), (0x0B, None)]
    assert [i.offset for i in got] == [4, 5 + len(encode_u(index)), 6 + len(encode_u(index))]


def test_padded_index_encodings() -> None:
    """A u32 may be padded with 0x80 bytes: two bytes inline, three or more on the general path."""
    for raw, value in ((b"\x80\x00", 0), (b"\x85\x00", 5), (b"\xff\x7f", 16383), (b"\x80\x80\x00", 0),
                       (b"\x81\x80\x80\x00", 1)):
        assert _decoded(b"\x20" + raw + b"\x1a\x0b")[0][:2] == (0x20, value)


@pytest.mark.parametrize("value", [0, 1, 63, 64, -1, -64, -65, 100, -100, 8191, -8192, 8192, -8193, 0x7FFFFFFF,
                                   -0x80000000])
def test_i32_const_of_any_length(value: int) -> None:
    assert _decoded(b"\x41" + encode_s(value) + b"\x1a\x0b")[0][:2] == (0x41, value & 0xFFFFFFFF)


@pytest.mark.parametrize("align,offset", [(0, 0), (2, 127), (2, 128), (2, 16383), (2, 16384), (3, 1 << 20),
                                          (1, 0xFFFFFFFF)])
def test_memargs_of_any_length(align: int, offset: int) -> None:
    code = b"\x41\x00\x28" + encode_u(align) + encode_u(offset) + b"\x1a\x0b"  # i32.load
    assert _decoded(code)[1][:2] == (0x28, (align, offset))


def test_memarg_with_the_memory_index_flag_is_the_general_paths() -> None:
    """Bit 6 of the alignment (a multi-memory memory index) is read as an alignment without the
    feature, as before: the validator then rejects it."""
    assert _decoded(b"\x41\x00\x28\x42\x04\x1a\x0b")[1][:2] == (0x28, (0x42, 4))


@pytest.mark.parametrize("blocktype,imm", [(b"\x40", None), (b"\x7f", "i32"), (b"\x7c", "f64"), (b"\x00", 0)])
def test_block_types(blocktype: bytes, imm: object) -> None:
    got = _decoded(b"\x02" + blocktype + b"\x0b\x0b")
    assert got[0][:2] == (0x02, imm) and [op for op, _, _ in got] == [0x02, 0x0B, 0x0B]


def test_a_simd_block_type_is_refused_as_before() -> None:
    from wasmig.errors import UnsupportedFeature

    with pytest.raises(UnsupportedFeature, match="v128"):
        decode_module(_module(b"\x02\x7b\x0b\x0b"))


def test_nested_constructs_end_where_they_should() -> None:
    code = b"\x02\x40\x03\x40\x0c\x01\x0b\x0b\x01\x0b"  # block loop br 1 end end nop end
    assert [op for op, _, _ in _decoded(code)] == [0x02, 0x03, 0x0C, 0x0B, 0x0B, 0x01, 0x0B]
    assert _decoded(code)[2][1] == 1


@pytest.mark.parametrize("code", [b"\x20", b"\x20\x80", b"\x41", b"\x41\xc0", b"\x28", b"\x28\x02",
                                  b"\x28\x02\x80", b"\x0c"])
def test_a_truncated_immediate_is_an_unexpected_end(code: bytes) -> None:
    with pytest.raises(DecodeError, match="unexpected end"):
        decode_module(_module(code))


def test_a_missing_end_is_an_unexpected_end() -> None:
    with pytest.raises(DecodeError, match="unexpected end"):
        decode_module(_module(b"\x01\x01"))


def test_return_call_needs_its_feature_and_else_its_if() -> None:
    with pytest.raises(DecodeError, match="illegal opcode 0x12"):
        decode_module(_module(b"\x12\x00\x0b"))
    with pytest.raises(DecodeError, match="else without matching if"):
        decode_module(_module(b"\x05\x0b"))


def test_decoding_pauses_the_collector_and_restores_it() -> None:
    """No collection runs while a module is decoded (they walked every decoded instruction:
    5.0-5.5 s of CPU for CPython's module against 2.8-3.4 s without), the caller's setting is
    back after, also after a decoding error."""
    collections: list[str] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(phase)

    whole = _module(b"\x41\x00\x1a" * 5000 + b"\x0b")  # 10,001 instructions
    truncated = _module(b"\x41\x00\x1a" * 5000)
    old = gc.get_threshold()
    gc.callbacks.append(seen)
    gc.set_threshold(10)  # with the collector on, a collection every few allocations
    try:
        assert gc.isenabled()
        collections.clear()
        decoded = decode_module(whole)
        assert len(collections) <= 2, "the collector ran while decoding"  # at most entering and leaving
        assert gc.isenabled()
        with pytest.raises(DecodeError):
            decode_module(truncated)
        assert gc.isenabled()
        gc.disable()
        decode_module(whole)
        assert not gc.isenabled(), "a collector the caller had off was turned on"
    finally:
        gc.enable()
        gc.set_threshold(*old)
        gc.callbacks.remove(seen)
    assert decoded.funcs[0].body[-1] == Instr(0x0B)


@pytest.mark.parametrize("code,canonical", [
    (b"\x20\x05\x1a\x0b", True),
    (b"\x20\x85\x00\x1a\x0b", False),  # local.get 5, padded
    (b"\x20\xab\x02\x1a\x0b", True),  # local.get 299: two bytes, both needed
    (b"\x41\xc0\x00\x1a\x0b", True),  # i32.const 64: the second byte carries the sign
    (b"\x41\xbf\x7f\x1a\x0b", True),  # i32.const -65
    (b"\x41\x80\x00\x1a\x0b", False),  # i32.const 0, padded
    (b"\x41\xff\x7f\x1a\x0b", False),  # i32.const -1, padded
    (b"\x41\xc0\x7f\x1a\x0b", False),  # i32.const -64, padded
    (b"\x41\xbf\x00\x1a\x0b", False),  # i32.const 63, padded
    (b"\x41\x00\x28\x02\xff\x00\x1a\x0b", False),  # offset 127, padded to two bytes
    (b"\x41\x00\x28\x02\x80\x01\x1a\x0b", True),  # i32.load offset=128
    (b"\x41\x00\x28\x02\x80\x80\x00\x1a\x0b", False),  # offset 0, padded to three bytes
    (b"\x42\x80\x80\x80\x80\x80\x00\x1a\x0b", False),  # i64.const 0, padded
    (b"\xfc\x89\x00\x00\x0b", False),  # data.drop 0 with its sub-opcode padded
    (b"\x02\x40\x0b\x0b", True),
])
def test_a_body_is_canonical_when_the_encoder_would_make_its_bytes(code: bytes, canonical: bool) -> None:
    """``Function.canonical``: the instrumentation pass then copies the body's instructions from
    the module's bytes instead of encoding them again, so a padded LEB128 must clear it."""
    data = _with_data(code) if code.startswith(b"\xfc") else _module(code)  # data.drop: a segment and its count
    func = decode_module(data).funcs[0]
    assert func.canonical is canonical


def _with_data(code: bytes) -> bytes:
    """:func:`_module` with a data count section and one passive data segment."""
    plain = _module(code)
    head, code_section = plain[:plain.index(b"\x0a", 8 + 7)], plain[plain.index(b"\x0a", 8 + 7):]
    return head + b"\x0c\x01\x01" + code_section + b"\x0b\x03\x01\x01\x00"


def test_a_memarg_naming_memory_0_is_not_canonical() -> None:
    from wasmig.binary.features import MULTI_MEMORY

    data = _module(b"\x41\x00\x28\x42\x00\x04\x1a\x0b")  # i32.load (memory 0) offset=4, memory named
    func = decode_module(data, features={MULTI_MEMORY}).funcs[0]
    assert func.body[1].imm == (2, 4) and not func.canonical
