"""Byte-exact tests of the encoder on hand-built IR (no decoder involved).

Expected bytes were written from the binary-format spec and cross-checked against wabt's
``wat2wasm`` where wabt produces the same encoding choice.
"""

from __future__ import annotations

import pytest

from wasmig.binary.encoder import encode_expr, encode_module
from wasmig.binary.ir import (
    CustomSection,
    Data,
    Elem,
    Export,
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
from wasmig.binary.leb128 import encode_s, encode_u

HEADER = b"\0asm\1\0\0\0"
END = Instr(0x0B)


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def i32c(v: int) -> Instr:
    return Instr(0x41, v & 0xFFFFFFFF)


def ref_func(i: int) -> list[Instr]:
    return [Instr(0xD2, i), END]


def body(instrs: list[Instr], locals_: list[tuple[int, str]] | None = None) -> bytes:
    """Encode a one-function module and return that function's body bytes (locals + instructions).

    Checks the surrounding bytes on the way, so the final ``end`` (appended here) is dropped.
    """
    m = Module(types=[FuncType((), ())], funcs=[Function(0, locals_ or [], [*instrs, END])])
    out = encode_module(m)
    prefix = HEADER + h("0104 0160 0000") + h("0302 0100") + b"\x0a"
    assert out.startswith(prefix)
    rest = out[len(prefix) :]
    section_size, rest = _read_u(rest)
    assert section_size == len(rest)
    assert rest[0] == 1  # one code entry
    body_size, code = _read_u(rest[1:])
    assert body_size == len(code) and code.endswith(b"\x0b")
    return code[:-1]


def _read_u(data: bytes) -> tuple[int, bytes]:
    """A minimal unsigned LEB reader for checking sizes (the decoder is not under test here)."""
    result = shift = 0
    for i, byte in enumerate(data):
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, data[i + 1 :]
    raise AssertionError("truncated LEB128")


# --- LEB128 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (624485, "e58e26"),
        (2**32 - 1, "ffffffff0f"),
        (2**64 - 1, "ffffffffffffffffff01"),
    ],
)
def test_encode_u(n: int, expected: str) -> None:
    assert encode_u(n) == h(expected)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "00"),
        (1, "01"),
        (63, "3f"),
        (64, "c000"),
        (127, "ff00"),
        (128, "8001"),
        (-1, "7f"),
        (-64, "40"),
        (-65, "bf7f"),
        (-128, "807f"),
        (-123456, "c0bb78"),
        (2**31 - 1, "ffffffff07"),
        (-(2**31), "8080808078"),
        (2**63 - 1, "ffffffffffffffffff00"),
        (-(2**63), "8080808080808080807f"),
    ],
)
def test_encode_s(n: int, expected: str) -> None:
    assert encode_s(n) == h(expected)


def test_encode_u_rejects_negative() -> None:
    with pytest.raises(ValueError):
        encode_u(-1)


# --- whole modules -------------------------------------------------------------------------------


def test_empty_module() -> None:
    assert encode_module(Module()) == b"\0asm\1\0\0\0"


def test_full_module_matches_wat2wasm() -> None:
    """Types, all import kinds, a function, table, memory, global, exports and start (see docstring)."""
    m = Module(
        types=[FuncType(("i32", "i64"), ("i32",)), FuncType((), ())],
        imports=[
            Import("env", "f", "func", 1),
            Import("env", "t", "table", TableType("externref", Limits(1, 2))),
            Import("env", "g", "global", GlobalType("f64", True)),
        ],
        funcs=[Function(0, [(2, "i32"), (1, "f32")], [Instr(0x20, 0), i32c(-1), Instr(0x6A), END])],
        tables=[TableType("funcref", Limits(3))],
        mems=[MemType(Limits(1, 65536))],
        globals=[Global(GlobalType("i32"), [i32c(128), END])],
        exports=[Export("run", "func", 1), Export("mem", "memory", 0)],
        start=0,
    )
    # wat2wasm output for the equivalent text module
    expected = HEADER + h(
        "010a 0260 027f 7e01 7f60 0000"
        "021d 03 03656e76 0166 00 01 03656e76 0174 01 6f 01 01 02 03656e76 0167 03 7c 01"
        "0302 0100"
        "0404 01 70 00 03"
        "0506 01 01 01 808004"
        "0607 01 7f 00 41 8001 0b"
        "070d 02 0372756e 00 01 036d656d 02 00"
        "0801 00"
        "0a0d 01 0b 02 027f 017d 2000 417f 6a 0b"
    )
    assert encode_module(m) == expected


def test_imported_memory_and_memory_limits() -> None:
    m = Module(imports=[Import("a", "m", "memory", MemType(Limits(0)))], mems=[MemType(Limits(2**16, 2**16))])
    assert encode_module(m) == HEADER + h("0208 01 0161 016d 02 00 00") + h("0508 01 01 808004 808004")


def test_utf8_names_are_length_prefixed_in_bytes() -> None:
    name = "Ä€\U0001f600"  # 2 + 3 + 4 bytes
    m = Module(exports=[Export(name, "global", 0)])
    raw = name.encode()
    assert len(raw) == 9
    assert encode_module(m) == HEADER + h("070d 01 09") + raw + h("03 00")


def test_function_and_code_sections_for_bodies() -> None:
    m = Module(types=[FuncType((), ())], funcs=[Function(0, [], [END]), Function(0, [], [Instr(0x01), END])])
    assert encode_module(m) == HEADER + h("0104 0160 0000") + h("0303 02 00 00") + h("0a08 02 02 00 0b 03 00 01 0b")


def test_locals_are_not_merged() -> None:
    assert body([], [(1, "i32"), (2, "i32"), (0, "f64"), (1, "externref")]) == h("04 017f 027f 007c 016f")


def test_data_count_goes_before_code() -> None:
    m = Module(
        types=[FuncType((), ())],
        funcs=[Function(0, [], [Instr(0xFC09, 0), END])],
        datas=[Data("passive", b"hi")],
        data_count=1,
    )
    expected = HEADER + h("0104 0160 0000 0302 0100 0c01 01 0a07 01 05 00 fc09 00 0b 0b05 01 01 02 6869")
    assert encode_module(m) == expected


def test_data_count_zero_is_kept() -> None:
    assert encode_module(Module(data_count=0)) == HEADER + h("0c01 00")


def test_data_segments() -> None:
    m = Module(
        datas=[
            Data("active", b"\x01\x02", 0, [i32c(8), END]),
            Data("passive", b""),
            Data("active", b"x", 1, [Instr(0x23, 0), END]),
        ]
    )
    assert encode_module(m) == HEADER + h("0b11 03 00 4108 0b 02 0102 01 00 02 01 2300 0b 01 78")


def test_bad_module_raises_value_error() -> None:
    with pytest.raises(ValueError, match="value type"):
        encode_module(Module(types=[FuncType(("v128",), ())]))
    with pytest.raises(ValueError, match="opcode"):
        encode_module(Module(types=[FuncType((), ())], funcs=[Function(0, [], [Instr(0xFD0C), END])]))
    with pytest.raises(ValueError, match="offset"):
        encode_module(Module(datas=[Data("active", b"")]))
    with pytest.raises(ValueError, match="mode"):
        encode_module(Module(elems=[Elem("weird", "funcref", [])]))
    with pytest.raises(ValueError, match="descriptor"):
        encode_module(Module(imports=[Import("a", "b", "func", MemType(Limits(0)))]))
    with pytest.raises(ValueError, match="i32.const"):
        encode_expr([Instr(0x41, None)])


# --- element segments: all 8 flag forms --------------------------------------------------------


#: every element-segment form, with the expected segment bytes (also round-tripped in test_roundtrip)
ELEM_CASES: list[tuple[Elem, str]] = [
    # function-index forms: funcref and only ``ref.func x`` initializers
    (Elem("active", "funcref", [ref_func(1), ref_func(2)], 0, [i32c(0), END]), "00 4100 0b 02 01 02"),
    (Elem("passive", "funcref", [ref_func(3)]), "01 00 01 03"),
    (Elem("active", "funcref", [ref_func(1)], 2, [i32c(5), END]), "02 02 4105 0b 00 01 01"),
    (Elem("declarative", "funcref", [ref_func(0)]), "03 00 01 00"),
    (Elem("active", "funcref", [], 0, [i32c(0), END]), "00 4100 0b 00"),
    # expression forms
    (Elem("active", "funcref", [[Instr(0xD0, "funcref"), END]], 0, [i32c(1), END]), "04 4101 0b 01 d070 0b"),
    (Elem("passive", "funcref", [ref_func(1), [Instr(0xD0, "funcref"), END]]), "05 70 02 d201 0b d070 0b"),
    (Elem("active", "funcref", [[Instr(0x23, 0), END]], 1, [i32c(0), END]), "06 01 4100 0b 70 01 2300 0b"),
    (
        Elem("active", "externref", [[Instr(0xD0, "externref"), END]], 0, [i32c(0), END]),
        "06 00 4100 0b 6f 01 d06f 0b",
    ),
    (Elem("declarative", "funcref", [[Instr(0xD0, "funcref"), END]]), "07 70 01 d070 0b"),
    (Elem("passive", "externref", []), "05 6f 00"),
    # a ref.func followed by more than ``end`` is not the short form
    (Elem("passive", "funcref", [[Instr(0xD2, 1), Instr(0x01), END]]), "05 70 01 d201 01 0b"),
]


@pytest.mark.parametrize(("elem", "expected"), ELEM_CASES)
def test_elem_segment_forms(elem: Elem, expected: str) -> None:
    payload = b"\x01" + h(expected)
    assert encode_module(Module(elems=[elem])) == HEADER + b"\x09" + encode_u(len(payload)) + payload


# --- instructions --------------------------------------------------------------------------------


#: one case per immediate kind and edge value (also round-tripped through the decoder in test_roundtrip)
INSTR_CASES: list[tuple[Instr, str]] = [
    (Instr(0x00), "00"),
    (Instr(0x6A), "6a"),
    # integer constants are stored as unsigned bit patterns, encoded as signed LEB
    (Instr(0x41, 0), "41 00"),
    (Instr(0x41, 63), "41 3f"),
    (Instr(0x41, 64), "41 c000"),
    (Instr(0x41, 0xFFFFFFFF), "41 7f"),
    (Instr(0x41, 0x80000000), "41 8080808078"),
    (Instr(0x41, 0x7FFFFFFF), "41 ffffffff07"),
    (Instr(0x42, 2**64 - 1), "42 7f"),
    (Instr(0x42, 2**63), "42 8080808080808080807f"),
    (Instr(0x42, 2**63 - 1), "42 ffffffffffffffffff00"),
    # float constants are raw bit patterns, little-endian
    (Instr(0x43, 0x3F800000), "43 0000803f"),
    (Instr(0x43, 0x7FC00001), "43 0100c07f"),
    (Instr(0x43, 0x80000000), "43 00000080"),
    (Instr(0x44, 0x7FF8000000000001), "44 010000000000f87f"),
    (Instr(0x44, 0xBFF0000000000000), "44 000000000000f0bf"),
    # block types
    (Instr(0x02, None), "02 40"),
    (Instr(0x03, "i32"), "03 7f"),
    (Instr(0x04, "externref"), "04 6f"),
    (Instr(0x02, 1), "02 01"),
    (Instr(0x02, 64), "02 c000"),
    (Instr(0x02, 200), "02 c801"),
    # control
    (Instr(0x0C, 3), "0c 03"),
    (Instr(0x0D, 0), "0d 00"),
    (Instr(0x0E, ((0, 1, 200), 2)), "0e 03 00 01 c801 02"),
    (Instr(0x0E, ((), 0)), "0e 00 00"),
    (Instr(0x10, 300), "10 ac02"),
    (Instr(0x11, (3, 0)), "11 03 00"),
    (Instr(0x11, (1, 2)), "11 01 02"),
    # references and parametric
    (Instr(0xD0, "funcref"), "d0 70"),
    (Instr(0xD0, "externref"), "d0 6f"),
    (Instr(0xD1), "d1"),
    (Instr(0xD2, 7), "d2 07"),
    (Instr(0x1B), "1b"),
    (Instr(0x1C, ("i32",)), "1c 01 7f"),
    (Instr(0x1C, ("f64", "externref")), "1c 02 7c 6f"),
    # variables and tables
    (Instr(0x20, 128), "20 8001"),
    (Instr(0x24, 1), "24 01"),
    (Instr(0x25, 1), "25 01"),
    (Instr(0x26, 0), "26 00"),
    # memory
    (Instr(0x28, (2, 0)), "28 02 00"),
    (Instr(0x37, (3, 2**32 - 1)), "37 03 ffffffff0f"),
    (Instr(0x2D, (0, 128)), "2d 00 8001"),
    (Instr(0x3F, 0), "3f 00"),
    (Instr(0x40, 0), "40 00"),
    # 0xFC prefix: sub-opcode as unsigned LEB
    (Instr(0xFC00), "fc 00"),
    (Instr(0xFC07), "fc 07"),
    (Instr(0xFC08, (1, 0)), "fc 08 01 00"),
    (Instr(0xFC09, 2), "fc 09 02"),
    (Instr(0xFC0A, (0, 0)), "fc 0a 00 00"),
    (Instr(0xFC0B, 0), "fc 0b 00"),
    (Instr(0xFC0C, (1, 2)), "fc 0c 01 02"),
    (Instr(0xFC0D, 4), "fc 0d 04"),
    (Instr(0xFC0E, (2, 1)), "fc 0e 02 01"),
    (Instr(0xFC0F, 1), "fc 0f 01"),
    (Instr(0xFC10, 0), "fc 10 00"),
    (Instr(0xFC11, 3), "fc 11 03"),
]


@pytest.mark.parametrize(("instr", "expected"), INSTR_CASES)
def test_instruction_encoding(instr: Instr, expected: str) -> None:
    assert encode_expr([instr]) == h(expected)
    assert body([instr]) == b"\x00" + h(expected)


def test_nested_blocks_body() -> None:
    instrs = [
        Instr(0x02, None),
        Instr(0x04, "i32"),
        i32c(1),
        Instr(0x05),
        i32c(2),
        END,
        Instr(0x1A),
        END,
    ]
    assert body(instrs) == h("00 0240 047f 4101 05 4102 0b 1a 0b")


def test_integer_constant_accepts_negative_python_ints() -> None:
    """Hand-written IR may use -1 instead of the bit pattern; both mean the same constant."""
    assert encode_expr([Instr(0x41, -1)]) == encode_expr([Instr(0x41, 0xFFFFFFFF)]) == h("41 7f")
    assert encode_expr([Instr(0x42, -(2**63))]) == h("42 8080808080808080807f")


# --- custom sections and names -------------------------------------------------------------------

TYPE_SEC = h("0104 0160 0000")
FUNC_SEC = h("0302 0100")
CODE_SEC = h("0a04 01 02 00 0b")
DATA_SEC = h("0b04 01 01 01 00")


def custom(name: str, data: bytes, after: int) -> CustomSection:
    return CustomSection(name, data, after)


def custom_bytes(name: str, data: bytes) -> bytes:
    payload = encode_u(len(name.encode())) + name.encode() + data
    return b"\x00" + encode_u(len(payload)) + payload


def _module_with_customs(*customs: CustomSection) -> Module:
    return Module(
        types=[FuncType((), ())],
        funcs=[Function(0, [], [END])],
        datas=[Data("passive", b"\x00")],
        customs=list(customs),
    )


def test_custom_sections_keep_their_place() -> None:
    m = _module_with_customs(
        custom("a", b"1", 0), custom("b", b"2", 1), custom("c", b"3", 10), custom("d", b"4", 11), custom("e", b"", 0)
    )
    expected = (
        HEADER
        + custom_bytes("a", b"1")
        + custom_bytes("e", b"")
        + TYPE_SEC
        + custom_bytes("b", b"2")
        + FUNC_SEC
        + CODE_SEC
        + custom_bytes("c", b"3")
        + DATA_SEC
        + custom_bytes("d", b"4")
    )
    assert encode_module(m) == expected


def test_custom_after_empty_vector_section_keeps_it_as_anchor() -> None:
    """A custom section that followed an empty vector section gets that section back (empty),
    so decoding the output gives the same ``after`` (the spec's custom.wast has such modules)."""
    m = _module_with_customs(custom("x", b"", 7), custom("y", b"", 2), custom("w", b"", 7))
    expected = (
        HEADER
        + TYPE_SEC
        + h("0201 00")
        + custom_bytes("y", b"")
        + FUNC_SEC
        + h("0701 00")
        + custom_bytes("x", b"")
        + custom_bytes("w", b"")
        + CODE_SEC
        + DATA_SEC
    )
    assert encode_module(m) == expected
    assert encode_module(Module(customs=[custom("t", b"", 1)])) == HEADER + h("0101 00") + custom_bytes("t", b"")


def test_custom_after_absent_start_or_datacount_goes_to_its_canonical_place() -> None:
    # start and datacount cannot be emitted empty; datacount's canonical place is *before* code
    # (id 10) although its id is 12, so a custom after it lands before the code section
    m = _module_with_customs(custom("y", b"", 12), custom("z", b"", 8))
    expected = HEADER + TYPE_SEC + FUNC_SEC + custom_bytes("y", b"") + custom_bytes("z", b"") + CODE_SEC + DATA_SEC
    assert encode_module(m) == expected


def test_custom_after_absent_start_with_nothing_before_goes_first() -> None:
    m = Module(datas=[Data("passive", b"\x00")], customs=[custom("x", b"", 8)])
    assert encode_module(m) == HEADER + custom_bytes("x", b"") + DATA_SEC


def test_custom_after_start_and_datacount() -> None:
    m = _module_with_customs(custom("s", b"", 8), custom("d", b"", 12))
    m.start, m.data_count = 0, 1
    expected = (
        HEADER
        + TYPE_SEC
        + FUNC_SEC
        + h("0801 00")
        + custom_bytes("s", b"")
        + h("0c01 01")
        + custom_bytes("d", b"")
        + CODE_SEC
        + DATA_SEC
    )
    assert encode_module(m) == expected


def test_custom_with_unknown_after_raises() -> None:
    with pytest.raises(ValueError, match="unknown preceding section"):
        encode_module(Module(customs=[custom("x", b"", 13)]))


def test_name_section_is_encoded_at_the_end() -> None:
    names = NameSection(module="m", functions={1: "g", 0: "f"}, locals={0: {1: "b", 0: "a"}, 1: {}})
    m = Module(types=[FuncType((), ())], funcs=[Function(0, [], [END])], names=names, customs=[custom("z", b"", 0)])
    subs = h("00 02 01 6d") + h("01 07 02 00 0166 01 0167") + h("02 0b 02 00 02 00 0161 01 0162 01 00")
    expected = HEADER + custom_bytes("z", b"") + TYPE_SEC + FUNC_SEC + CODE_SEC + custom_bytes("name", subs)
    assert encode_module(m) == expected


def test_empty_name_section() -> None:
    assert encode_module(Module(names=NameSection())) == HEADER + custom_bytes("name", b"")


def test_raw_name_custom_wins_over_decoded_names() -> None:
    raw = b"\x00\x02\x01q"
    m = Module(names=NameSection(module="other"), customs=[custom("name", raw, 0)])
    assert encode_module(m) == HEADER + custom_bytes("name", raw)


def test_encode_does_not_mutate_input() -> None:
    m = _module_with_customs(custom("c", b"3", 10))
    m.names = NameSection(functions={0: "f"})
    before = repr(m)
    encode_module(m)
    encode_module(m)
    assert repr(m) == before
