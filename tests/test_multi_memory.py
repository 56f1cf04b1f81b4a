"""The multi-memory proposal in the binary layer: opt-in decode, encode and validation.

What must hold:

* with ``features={"multi-memory"}`` a module with several memories and memory-indexed
  instructions decodes, validates, re-encodes byte-exactly in the proposal's encoding and
  decodes back to an equal IR;
* without the feature nothing changes: the spec testsuite's ``multiple memories`` and
  ``zero byte expected`` cases are still invalid/malformed, and every other spec module gets
  exactly the outcome (and message) it had;
* wabt and wasmtime agree with wasmig's encoding.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import wasmig
from tests.spec.convert import DEFAULT_CACHE_ROOT, convert_wast, find_testsuite, wast2json
from tests.test_encoder import body
from wasmig.binary import opcodes as ops
from wasmig.binary.decoder import decode_module
from wasmig.binary.encoder import encode_module
from wasmig.binary.features import SUPPORTED
from wasmig.binary.ir import (
    Data,
    Export,
    Function,
    FuncType,
    Import,
    Instr,
    Limits,
    MemType,
    Module,
)
from wasmig.binary.validator import validate_function, validate_module
from wasmig.errors import DecodeError, UnsupportedFeature, ValidationError, WasmError

MM = frozenset({"multi-memory"})
END = Instr(0x0B)
OP = {name: code for code, name in ops.NAMES.items() if code != 0x1C}


def ins(name: str, imm: object = None) -> Instr:
    return Instr(OP[name], imm)


def i32c(v: int) -> Instr:
    return ins("i32.const", v & 0xFFFFFFFF)


#: a constant of each value type, to feed stores
CONST = {
    "i32": ins("i32.const", 7),
    "i64": ins("i64.const", 7),
    "f32": ins("f32.const", 0x40E00000),
    "f64": ins("f64.const", 0x401C000000000000),
}


def _every_memory_instr(mem: int) -> list[Instr]:
    """Every load and store, then memory.size/grow/fill/copy/init and data.drop, all on ``mem``.

    The function has one i32 parameter (local 0, the address); the body leaves the stack empty.
    """
    out: list[Instr] = []
    for k, op in enumerate(sorted(ops.LOADS)):
        _t, width, _signed = ops.LOADS[op]
        align = width.bit_length() - 1  # natural alignment
        out += [ins("local.get", 0), Instr(op, ops.memarg(align, k * 3, mem)), ins("drop")]
    for k, op in enumerate(sorted(ops.STORES)):
        t, width = ops.STORES[op]
        out += [ins("local.get", 0), CONST[t], Instr(op, ops.memarg(0, 1000 + 8 * k, mem))]
    out += [
        ins("memory.size", mem), ins("drop"),
        i32c(1), ins("memory.grow", mem), ins("drop"),
        i32c(0), i32c(0xAB), i32c(16), ins("memory.fill", mem),
        i32c(0), i32c(8), i32c(4), ins("memory.copy", (mem, 0)),
        i32c(0), i32c(8), i32c(4), ins("memory.copy", (0, mem)),
        i32c(0), i32c(8), i32c(4), ins("memory.copy", (mem, mem)),
        i32c(0), i32c(0), i32c(2), ins("memory.init", (0, mem)),
        ins("data.drop", 0),
        END,
    ]
    return out


def multi_module(mem: int = 1, *, imported: bool = False) -> Module:
    """Two memories (the first imported when ``imported``), every memory instruction on ``mem``,
    an active data segment into memory 1, a passive one, and both memories exported."""
    imports = [Import("env", "mem", "memory", MemType(Limits(1)))] if imported else []
    mems = [MemType(Limits(1, 4))] if imported else [MemType(Limits(1)), MemType(Limits(1, 4))]
    return Module(
        types=[FuncType(("i32",), ())],
        imports=imports,
        funcs=[Function(0, [], _every_memory_instr(mem))],
        mems=mems,
        exports=[Export("m0", "memory", 0), Export("m1", "memory", 1), Export("f", "func", 0)],
        datas=[Data("passive", b"hi"), Data("active", b"\x01\x02", 1, [i32c(16), END])],
        data_count=2,
    )


# --------------------------------------------------------------------------------------------
# IR helpers and feature names
# --------------------------------------------------------------------------------------------


def test_memarg_helpers() -> None:
    assert ops.memarg(2, 8) == (2, 8)
    assert ops.memarg(2, 8, 0) == (2, 8)
    assert ops.memarg(2, 8, 3) == (2, 8, 3)
    assert ops.memarg_memidx((2, 8)) == 0
    assert ops.memarg_memidx((2, 8, 3)) == 3


def test_feature_names_are_checked() -> None:
    assert SUPPORTED == MM | {"atomic-loads", "threads", "tail-call"}
    data = encode_module(Module())
    for call in (lambda f: decode_module(data, features=f), lambda f: validate_module(Module(), features=f),
                 lambda f: wasmig.Module.from_bytes(data, features=f)):
        with pytest.raises(ValueError, match="unknown feature"):
            call({"multi-memory", "simd"})
        with pytest.raises(TypeError):
            call("multi-memory")  # a bare string would be a set of letters
        call(["multi-memory"])  # any iterable of names is fine


# --------------------------------------------------------------------------------------------
# Encoding: byte-exact
# --------------------------------------------------------------------------------------------


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


@pytest.mark.parametrize(
    ("instrs", "expected"),
    [
        # memarg: align|0x40, memidx, offset (what wat2wasm --enable-multi-memory writes)
        ([ins("local.get", 0), ins("i32.load", (2, 5, 1)), ins("drop")], "2000 28 42 01 05 1a"),
        ([ins("local.get", 0), ins("i64.load", (3, 0x80, 200)), ins("drop")], "2000 29 43 c801 8001 1a"),
        ([ins("local.get", 0), i32c(1), ins("i32.store8", (0, 0, 1))], "2000 4101 3a 40 01 00"),
        # memory 0 spelled out as a three-tuple is encoded exactly like the two-tuple
        ([ins("local.get", 0), ins("i32.load", (2, 5, 0)), ins("drop")], "2000 28 02 05 1a"),
        ([ins("local.get", 0), ins("i32.load", (2, 5)), ins("drop")], "2000 28 02 05 1a"),
        ([ins("memory.size", 1), ins("drop")], "3f 01 1a"),
        ([ins("memory.size", 130), ins("drop")], "3f 8201 1a"),
        ([i32c(1), ins("memory.grow", 1), ins("drop")], "4101 40 01 1a"),
        ([i32c(0), i32c(0), i32c(0), ins("memory.fill", 1)], "4100 4100 4100 fc0b 01"),
        ([i32c(0), i32c(0), i32c(0), ins("memory.copy", (1, 0))], "4100 4100 4100 fc0a 01 00"),
        ([i32c(0), i32c(0), i32c(0), ins("memory.copy", (0, 2))], "4100 4100 4100 fc0a 00 02"),
        ([i32c(0), i32c(0), i32c(0), ins("memory.init", (3, 1))], "4100 4100 4100 fc08 03 01"),
    ],
)
def test_encode_memory_indices(instrs: list[Instr], expected: str) -> None:
    assert body(instrs) == b"\x00" + h(expected)  # no locals, then the instructions


def test_encode_rejects_unrepresentable_memarg() -> None:
    # an alignment field with bit 6 already set cannot also carry the memory-index flag
    with pytest.raises(ValueError, match="i32.load"):
        body([ins("local.get", 0), ins("i32.load", (64, 0, 1)), ins("drop")])
    with pytest.raises(ValueError, match="i32.load"):
        body([ins("local.get", 0), ins("i32.load", (2, 0, 1, 5)), ins("drop")])
    with pytest.raises(ValueError, match="i32.load"):
        body([ins("local.get", 0), ins("i32.load", (2, 0, -1)), ins("drop")])


# --------------------------------------------------------------------------------------------
# Decoding and round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mem", "imported"), [(1, False), (1, True), (0, False)])
def test_round_trip(mem: int, imported: bool) -> None:
    m = multi_module(mem, imported=imported)
    data = encode_module(m)
    back = decode_module(data, features=MM)
    assert back == m
    assert encode_module(back) == data  # encoding is a fixed point
    validate_module(back, features=MM)
    module = wasmig.Module.from_bytes(data, features=MM)
    assert module.ir == m and module.features == MM


def test_round_trip_many_memories() -> None:
    """Memory indices that need a multi-byte LEB, in every memory-indexed immediate."""
    n = 130
    code = [
        ins("local.get", 0), ins("i32.load16_u", (1, 0x12345, n - 1)), ins("drop"),
        ins("local.get", 0), i32c(3), ins("i32.store", (2, 0, n - 2)),
        ins("memory.size", n - 1), ins("drop"),
        i32c(0), ins("memory.grow", 128), ins("drop"),
        i32c(0), i32c(0), i32c(0), ins("memory.fill", 129),
        i32c(0), i32c(0), i32c(0), ins("memory.copy", (127, 128)),
        i32c(0), i32c(0), i32c(0), ins("memory.init", (0, 129)),
        END,
    ]
    m = Module(types=[FuncType(("i32",), ())], funcs=[Function(0, [], code)],
               mems=[MemType(Limits(0)) for _ in range(n)], datas=[Data("passive", b"x")], data_count=1,
               exports=[Export("last", "memory", n - 1)])
    data = encode_module(m)
    assert decode_module(data, features=MM) == m
    validate_module(m, features=MM)
    with pytest.raises(ValidationError, match="unknown memory 130"):
        validate_module(Module(types=m.types, funcs=[Function(0, [], [ins("memory.size", n), ins("drop"), END])],
                               mems=m.mems), features=MM)


def _func_bytes(code: bytes, mems: int = 2) -> bytes:
    """A module with ``mems`` memories and one ``[i32] -> []`` function whose body is ``code``."""
    m = Module(types=[FuncType(("i32",), ())], funcs=[Function(0, [], [END])],
               mems=[MemType(Limits(1))] * mems)
    data = encode_module(m)
    tail = b"\x00" + b"\x0b"  # the code section's single body: no locals, end
    assert data.endswith(b"\x0a\x04\x01\x02" + tail)
    entry = b"\x00" + code + b"\x0b"
    return data[: -len(b"\x0a\x04\x01\x02" + tail)] + b"\x0a" + bytes((len(entry) + 2, 1, len(entry))) + entry


def test_decode_memarg_flag() -> None:
    # i32.load with the flag and memory 1
    m = decode_module(_func_bytes(h("2000 28 42 01 05 1a")), features=MM)
    assert m.funcs[0].body[1].imm == (2, 5, 1)
    # the flag with memory index 0 decodes to the canonical two-tuple
    m = decode_module(_func_bytes(h("2000 28 42 00 05 1a")), features=MM)
    assert m.funcs[0].body[1].imm == (2, 5)
    assert encode_module(m).endswith(h("2000 28 02 05 1a 0b"))
    # bits above the flag are not defined by the proposal
    with pytest.raises(DecodeError, match="malformed memop flags"):
        decode_module(_func_bytes(h("2000 28 8201 01 05 1a")), features=MM)


def test_decode_without_feature_is_wasm2() -> None:
    # the flag is just a (too large) alignment in wasm 2.0: decodes, then fails validation
    data = _func_bytes(h("2000 28 42 05 1a"), mems=1)
    m = decode_module(data)
    assert m.funcs[0].body[1].imm == (0x42, 5)
    with pytest.raises(ValidationError, match="alignment must not be larger than natural"):
        validate_module(m)
    # a memory index where wasm 2.0 wants the byte 0x00
    for code in ("3f 01 1a", "3f 8000 1a", "4100 40 01 1a", "4100 4100 4100 fc0b 01",
                 "4100 4100 4100 fc0a 01 00", "4100 4100 4100 fc0a 00 01", "4100 4100 4100 fc08 00 01"):
        data = _func_bytes(h(code))
        with pytest.raises(DecodeError, match="zero byte expected"):
            decode_module(data)
    # ... which the feature reads as a u32 LEB (0x80 0x00 is an over-long 0)
    assert decode_module(_func_bytes(h("3f 8000 1a")), features=MM).funcs[0].body[0].imm == 0
    assert decode_module(_func_bytes(h("3f 01 1a")), features=MM).funcs[0].body[0].imm == 1


def test_multi_memory_module_rejected_without_feature() -> None:
    data = encode_module(multi_module())
    with pytest.raises(WasmError):
        wasmig.Module.from_bytes(data)
    with pytest.raises(DecodeError):  # the memarg flag derails wasm 2.0 decoding (here: an illegal opcode)
        decode_module(data)
    # memory 0 instructions only, but two memories: decodes, but is invalid in wasm 2.0
    data0 = encode_module(multi_module(0))
    m = decode_module(data0)
    with pytest.raises(ValidationError, match="^multiple memories"):
        validate_module(m)
    with pytest.raises(ValidationError, match="^multiple memories"):
        wasmig.Module.from_bytes(data0)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_validate_stack_types_on_memory_1() -> None:
    m = multi_module()
    info = validate_module(m, features=MM)
    body_ = m.funcs[0].body
    for i, instr in enumerate(body_):
        if instr.op in ops.LOADS:
            assert info.functions[0].stack_before[i] == ("i32",)
            assert info.functions[0].stack_before[i + 1] == (ops.LOADS[instr.op][0],)
        elif instr.op in ops.STORES:
            assert info.functions[0].stack_before[i] == ("i32", ops.STORES[instr.op][0])
    assert validate_function(m, 0, features=MM) == info.functions[0]
    with pytest.raises(ValidationError, match="^multiple memories"):
        validate_function(m, 0)


def _with_code(code: list[Instr], mems: int = 2, **kw: object) -> Module:
    return Module(types=[FuncType(("i32",), ())], funcs=[Function(0, [], [*code, END])],
                  mems=[MemType(Limits(1))] * mems, **kw)  # type: ignore[arg-type]


#: code using memory ``x`` in each memory-indexed immediate (the other index, if any, is valid)
_USES_MEMORY = {
    "i32.load": lambda x: [ins("local.get", 0), ins("i32.load", (2, 0, x)), ins("drop")],
    "f64.load": lambda x: [ins("local.get", 0), ins("f64.load", (3, 0, x)), ins("drop")],
    "i64.store32": lambda x: [ins("local.get", 0), ins("i64.const", 0), ins("i64.store32", (2, 0, x))],
    "memory.size": lambda x: [ins("memory.size", x), ins("drop")],
    "memory.grow": lambda x: [i32c(1), ins("memory.grow", x), ins("drop")],
    "memory.fill": lambda x: [i32c(0), i32c(0), i32c(0), ins("memory.fill", x)],
    "memory.copy dst": lambda x: [i32c(0), i32c(0), i32c(0), ins("memory.copy", (x, 0))],
    "memory.copy src": lambda x: [i32c(0), i32c(0), i32c(0), ins("memory.copy", (1, x))],
    "memory.init": lambda x: [i32c(0), i32c(0), i32c(0), ins("memory.init", (0, x))],
}


@pytest.mark.parametrize("what", sorted(_USES_MEMORY))
def test_validate_unknown_memory(what: str) -> None:
    extra = {"datas": [Data("passive", b"")], "data_count": 1}
    m = _with_code(_USES_MEMORY[what](2), **extra)
    with pytest.raises(ValidationError, match="^unknown memory 2"):
        validate_module(m, features=MM)
    with pytest.raises(ValidationError, match="^unknown memory 2"):
        validate_function(m, 0, features=MM)
    # the same code on memory 1 is fine, and needs the feature
    ok = _with_code(_USES_MEMORY[what](1), **extra)
    validate_module(ok, features=MM)
    validate_function(ok, 0, features=MM)
    with pytest.raises(ValidationError):
        validate_module(ok)


def test_validate_module_level_memory_indices() -> None:
    base = multi_module()
    validate_module(base, features=MM)
    bad_data = multi_module()
    bad_data.datas[1].memory = 2
    with pytest.raises(ValidationError, match="^unknown memory 2 .*data segment 1"):
        validate_module(bad_data, features=MM)
    bad_export = multi_module()
    bad_export.exports[1].index = 2
    with pytest.raises(ValidationError, match="^unknown memory 2 .*export 'm1'"):
        validate_module(bad_export, features=MM)
    # imported + defined memories count together
    imported = multi_module(imported=True)
    validate_module(imported, features=MM)
    imported.exports[1].index = 2
    with pytest.raises(ValidationError, match="^unknown memory 2"):
        validate_module(imported, features=MM)
    # limits are checked on every memory
    too_big = multi_module()
    too_big.mems[1] = MemType(Limits(1, 65537))
    with pytest.raises(ValidationError, match="^memory size must be at most 65536 pages"):
        validate_module(too_big, features=MM)


def test_validate_alignment_on_memory_1() -> None:
    for op in (*ops.LOADS, *ops.STORES):
        width = ops.LOADS[op][1] if op in ops.LOADS else ops.STORES[op][1]
        natural = width.bit_length() - 1
        t = ops.LOADS[op][0] if op in ops.LOADS else ops.STORES[op][0]
        args = [ins("local.get", 0)] if op in ops.LOADS else [ins("local.get", 0), CONST[t]]
        tail = [ins("drop")] if op in ops.LOADS else []
        validate_module(_with_code([*args, Instr(op, (natural, 0, 1)), *tail]), features=MM)
        with pytest.raises(ValidationError, match="^alignment must not be larger than natural"):
            validate_module(_with_code([*args, Instr(op, (natural + 1, 0, 1)), *tail]), features=MM)


def test_validate_without_feature_unchanged() -> None:
    # one memory: a three-tuple memarg is not wasm 2.0 IR
    one = _with_code([ins("local.get", 0), ins("i32.load", (2, 0, 0)), ins("drop")], mems=1)
    with pytest.raises(ValidationError, match="^malformed memarg immediate"):
        validate_module(one)
    validate_module(one, features=MM)  # (align, offset, 0) is memory 0
    with pytest.raises(ValidationError, match="^unknown memory 1"):
        validate_module(_with_code([ins("memory.size", 1), ins("drop")], mems=1))
    with pytest.raises(ValidationError, match="^unknown memory 1"):
        validate_module(_with_code([ins("memory.size", 1), ins("drop")], mems=1), features=MM)
    # no memory at all
    with pytest.raises(ValidationError, match="^unknown memory 0"):
        validate_module(_with_code([ins("local.get", 0), ins("i32.load", (2, 0)), ins("drop")], mems=0))
    with pytest.raises(ValidationError, match="^unknown memory 0"):
        validate_module(_with_code([ins("local.get", 0), ins("i32.load", (2, 0, 0)), ins("drop")], mems=0),
                        features=MM)
    with pytest.raises(ValidationError, match="^multiple memories"):
        validate_module(Module(mems=[MemType(Limits(0))] * 2))
    with pytest.raises(ValidationError, match="^multiple memories"):
        validate_module(Module(imports=[Import("a", "b", "memory", MemType(Limits(0)))], mems=[MemType(Limits(0))]))


def test_interpreter_refuses_multi_memory() -> None:
    """The interpreter addresses memory 0 only: it must refuse, not silently mix memories up."""
    module = wasmig.Module.from_bytes(encode_module(multi_module()), features=MM)
    with pytest.raises(UnsupportedFeature, match="multi-memory"):
        wasmig.Instance(module)


# --------------------------------------------------------------------------------------------
# The spec testsuite: defaults unchanged, and the feature changes only what it must
# --------------------------------------------------------------------------------------------

#: (wast, expected text) of the spec cases the multi-memory proposal makes well-formed or valid
_MULTI_MEMORY_CASES = {("binary", "zero byte expected"), ("memory", "multiple memories"),
                       ("imports", "multiple memories")}


def _outcome(data: bytes, features: frozenset[str]) -> tuple[str, str]:
    try:
        m = decode_module(data, features=features)
    except DecodeError as e:
        return "malformed", str(e)
    try:
        validate_module(m, features=features)
    except ValidationError as e:
        return "invalid", str(e)
    return "valid", ""


@pytest.mark.slow
@pytest.mark.skipif(wast2json() is None, reason="wast2json (wabt) not installed")
@pytest.mark.skipif(not find_testsuite().is_dir(), reason="spec testsuite not found (set WASMIG_TESTSUITE)")
def test_spec_suite_outcomes() -> None:
    """Every binary module of the (non-SIMD) suite: the default outcome is what the script
    expects, and with the feature only the zero-byte and multiple-memories cases change."""
    changed: list[str] = []
    problems: list[str] = []
    seen = {"module": 0, "assert_malformed": 0, "assert_invalid": 0}
    for wast in sorted(find_testsuite().glob("*.wast")):
        if wast.name.startswith("simd_"):
            continue
        json_path = convert_wast(wast, DEFAULT_CACHE_ROOT)
        for cmd in json.loads(json_path.read_text(encoding="utf-8"))["commands"]:
            kind = cmd["type"]
            if kind not in seen or cmd.get("module_type", "binary") != "binary":
                continue
            seen[kind] += 1
            data = (json_path.parent / cmd["filename"]).read_bytes()
            default, featured = _outcome(data, frozenset()), _outcome(data, MM)
            where = f"{wast.stem}:{cmd['line']} {kind}"
            want = {"module": "valid", "assert_malformed": "malformed", "assert_invalid": "invalid"}[kind]
            if default[0] != want:
                problems.append(f"{where}: default outcome {default}, expected {want}")
            if featured != default:
                changed.append(f"{where} {cmd.get('text')!r}: {default[0]} -> {featured[0]}")
                if (wast.stem, cmd.get("text")) not in _MULTI_MEMORY_CASES:
                    problems.append(f"{where}: the feature changed {default} into {featured}")
                elif featured[0] == "malformed":
                    problems.append(f"{where}: still malformed with the feature: {featured}")
    assert not problems, "\n".join(problems)
    assert min(seen.values()) > 0
    # binary.wast: 10 zero-byte cases (memory.size/grow); memory.wast 2 and imports.wast 3 modules
    # with two memories
    assert len(changed) == 15, "\n".join(changed)


# --------------------------------------------------------------------------------------------
# Cross-checks with wabt and wasmtime
# --------------------------------------------------------------------------------------------

WAT = """
(module
  (memory $a 1)
  (memory $b 1 4)
  (data $d "hello")
  (data (memory $b) (i32.const 16) "\\01\\02\\03\\04")
  (export "a" (memory $a))
  (export "b" (memory $b))
  (func (export "store32") (param i32 i32) (i32.store $b offset=4 (local.get 0) (local.get 1)))
  (func (export "load32") (param i32) (result i32) (i32.load $b offset=4 (local.get 0)))
  (func (export "load8_s") (param i32) (result i32) (i32.load8_s $b (local.get 0)))
  (func (export "store64") (param i32 i64) (i64.store $b offset=8 align=4 (local.get 0) (local.get 1)))
  (func (export "load64") (param i32) (result i64) (i64.load $b offset=8 (local.get 0)))
  (func (export "storef32") (param i32 f32) (f32.store $b (local.get 0) (local.get 1)))
  (func (export "size") (result i32) (memory.size $b))
  (func (export "grow") (param i32) (result i32) (memory.grow $b (local.get 0)))
  (func (export "fill") (param i32 i32 i32) (memory.fill $b (local.get 0) (local.get 1) (local.get 2)))
  (func (export "copy_a_to_b") (param i32 i32 i32) (memory.copy $b $a (local.get 0) (local.get 1) (local.get 2)))
  (func (export "init") (param i32 i32 i32) (memory.init $b $d (local.get 0) (local.get 1) (local.get 2)))
  (func (export "store_a") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "load_a") (param i32) (result i32) (i32.load (local.get 0)))
)
"""


@pytest.fixture(scope="module")
def wabt_module(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, Path]:
    """``(wabt's bytes, wasmig's re-encoding, the re-encoded file)`` of :data:`WAT`."""
    if shutil.which("wat2wasm") is None or shutil.which("wasm-validate") is None:
        pytest.skip("wabt (wat2wasm, wasm-validate) not installed")
    tmp = tmp_path_factory.mktemp("multi-memory")
    (tmp / "m.wat").write_text(WAT)
    subprocess.run(["wat2wasm", "--enable-multi-memory", str(tmp / "m.wat"), "-o", str(tmp / "m.wasm")],
                   check=True, capture_output=True)
    original = (tmp / "m.wasm").read_bytes()
    reencoded = encode_module(decode_module(original, features=MM))
    (tmp / "re.wasm").write_bytes(reencoded)
    return original, reencoded, tmp / "re.wasm"


def test_wabt_cross_check(wabt_module: tuple[bytes, bytes, Path]) -> None:
    original, reencoded, path = wabt_module
    m = decode_module(original, features=MM)
    validate_module(m, features=MM)
    assert len(m.mems) == 2
    by_name = {e.name: e.index for e in m.exports if e.kind == "func"}
    assert m.funcs[by_name["load32"]].body[1].imm == (2, 4, 1)
    assert m.funcs[by_name["size"]].body[0].imm == 1
    assert reencoded == original  # wabt and wasmig pick the same (minimal) encodings
    ok = subprocess.run(["wasm-validate", "--enable-multi-memory", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    plain = subprocess.run(["wasm-validate", str(path)], capture_output=True, text=True)
    assert plain.returncode != 0  # and wabt agrees it is not wasm 2.0


def test_wasmtime_runs_reencoded_module(wabt_module: tuple[bytes, bytes, Path]) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    _original, reencoded, _path = wabt_module
    config = wasmtime.Config()
    config.wasm_multi_memory = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, reencoded), [])
    ex = inst.exports(store)
    a, b = ex["a"], ex["b"]

    def read(mem: object, at: int, n: int) -> bytes:
        return bytes(mem.read(store, at, at + n))  # type: ignore[attr-defined]

    # the active segment went to memory $b only
    assert read(b, 16, 4) == b"\x01\x02\x03\x04"
    assert read(a, 16, 4) == b"\0\0\0\0"
    ex["store32"](store, 100, 0x11223344)
    assert read(b, 104, 4) == struct.pack("<I", 0x11223344)
    assert read(a, 104, 4) == b"\0\0\0\0"
    assert ex["load32"](store, 100) == 0x11223344
    assert ex["load_a"](store, 104) == 0
    ex["store_a"](store, 104, 5)
    assert ex["load32"](store, 100) == 0x11223344 and ex["load_a"](store, 104) == 5
    assert ex["load8_s"](store, 19) == 4
    ex["store64"](store, 200, -2)
    assert ex["load64"](store, 200) == -2 and read(b, 208, 8) == b"\xfe" + b"\xff" * 7
    ex["storef32"](store, 300, 1.5)
    assert read(b, 300, 4) == struct.pack("<f", 1.5)
    assert ex["size"](store) == 1
    assert ex["grow"](store, 2) == 1 and ex["size"](store) == 3
    assert b.size(store) == 3 and a.size(store) == 1
    assert ex["grow"](store, 2) == -1  # max 4 pages
    ex["fill"](store, 400, 0xAB, 3)
    assert read(b, 400, 4) == b"\xab\xab\xab\0" and read(a, 400, 4) == b"\0\0\0\0"
    ex["copy_a_to_b"](store, 500, 104, 4)  # memory.copy $b $a: dst in b, src in a
    assert read(b, 500, 4) == struct.pack("<I", 5)
    ex["init"](store, 600, 1, 4)
    assert read(b, 600, 4) == b"ello" and read(a, 600, 4) == b"\0\0\0\0"
    with pytest.raises(wasmtime.Trap):
        ex["load32"](store, 3 * 65536 - 4)  # offset 4 pushes the access past memory $b


def test_wasmtime_runs_hand_built_module() -> None:
    """The hand-built IR with every load/store on memory 1 instantiates and runs on wasmtime."""
    wasmtime = pytest.importorskip("wasmtime")
    config = wasmtime.Config()
    config.wasm_multi_memory = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, encode_module(multi_module())), [])
    ex = inst.exports(store)
    ex["f"](store, 64)
    m0, m1 = ex["m0"], ex["m1"]
    assert m1.size(store) == 2 and m0.size(store) == 1  # memory.grow 1 on memory 1
    mem1 = bytes(m1.read(store, 0, 2048))
    assert mem1[:4] == b"hi\xab\xab"  # fill, then memory.init of "hi" at 0
    stores = mem1[64 + 1000 :]  # one store every 8 bytes, in opcode order
    assert stores[:8] == b"\x07\0\0\0\0\0\0\0"  # i32.store
    assert stores[8:16] == struct.pack("<q", 7)  # i64.store
    assert stores[16:20] == struct.pack("<f", 7.0)  # f32.store
    assert stores[24:32] == struct.pack("<d", 7.0)  # f64.store
    assert stores[32:40] == b"\x07" + bytes(7)  # i32.store8
    assert stores[64:72] == b"\x07\0\0\0" + bytes(4)  # i64.store32
    assert mem1[16:18] == b"\x01\x02"  # the active segment into memory 1
    assert bytes(m0.read(store, 0, 2048)).count(0) == 2048 - 4  # only memory.copy (1 -> 0) touched m0
