"""The interpreter and the embedding API, on small modules written in the text format
(converted with wabt's ``wat2wasm`` at test time; no built .wasm is committed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import wasmig
from wasmig.binary.encoder import encode_module
from wasmig.binary.ir import Export, Function, FuncType, Instr, Module

pytestmark = pytest.mark.skipif(shutil.which("wat2wasm") is None, reason="wat2wasm (Debian package wabt) missing")


def wat(text: str, tmp_path: Path) -> bytes:
    src = tmp_path / "m.wat"
    src.write_text(text)
    out = tmp_path / "m.wasm"
    subprocess.run(["wat2wasm", "--debug-names", str(src), "-o", str(out)], check=True, capture_output=True)
    return out.read_bytes()


RECURSE = """
(module
  (func $deep (export "deep") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $deep (i32.sub (local.get 0) (i32.const 1)))))))
  (func $forever (export "forever") (call $forever))
  (func $fib (export "fib") (param i64) (result i64)
    (if (result i64) (i64.lt_u (local.get 0) (i64.const 2)) (then (local.get 0))
      (else (i64.add (call $fib (i64.sub (local.get 0) (i64.const 1)))
                     (call $fib (i64.sub (local.get 0) (i64.const 2))))))))
"""


def test_recursion_100k_deep_is_not_python_recursion(tmp_path: Path) -> None:
    inst = wasmig.Instance(wasmig.Module.from_bytes(wat(RECURSE, tmp_path)))
    limit = sys.getrecursionlimit()
    assert inst.exports["deep"](100_000) == 100_000
    assert sys.getrecursionlimit() == limit
    assert inst.exports["fib"](15) == 610


def test_unbounded_recursion_is_an_exhaustion_trap(tmp_path: Path) -> None:
    inst = wasmig.Instance(wasmig.Module.from_bytes(wat(RECURSE, tmp_path)))
    with pytest.raises(wasmig.Exhaustion) as info:
        inst.exports["forever"]()
    assert isinstance(info.value, wasmig.Trap)
    assert "call stack exhausted" in str(info.value)
    # the instance is still usable afterwards: the failed call left no frames behind
    assert inst.exports["deep"](10) == 10
    assert inst.machine.frames == [] and inst.machine.stack == []


def test_trap_reason_and_backtrace_names_functions(tmp_path: Path) -> None:
    data = wat("""(module
      (func $inner (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
      (func $outer (export "outer") (param i32) (result i32) (call $inner (i32.const 7) (local.get 0))))""", tmp_path)
    inst = wasmig.Instance(wasmig.Module.from_bytes(data))
    assert inst.exports["outer"](-2) == -3
    with pytest.raises(wasmig.Trap) as info:
        inst.exports["outer"](0)
    assert info.value.reason == "integer divide by zero"
    assert info.value.backtrace[0].startswith("inner")
    assert info.value.backtrace[1].startswith("outer")


def test_raw_values_and_exact_nan_bits(tmp_path: Path) -> None:
    data = wat("""(module
      (func (export "id32") (param f32) (result f32) (local.get 0))
      (func (export "neg32") (param f32) (result f32) (f32.neg (local.get 0)))
      (func (export "bits") (param f32) (result i32) (i32.reinterpret_f32 (local.get 0)))
      (func (export "two") (result i32 i64) (i32.const -1) (i64.const -2)))""", tmp_path)
    inst = wasmig.Instance(wasmig.Module.from_bytes(data))
    snan = 0x7FA00001  # a signalling NaN with a payload: must survive untouched
    assert inst.invoke("id32", wasmig.Val("f32", snan), raw=True) == [("f32", snan)]
    assert inst.invoke("neg32", wasmig.Val("f32", snan), raw=True) == [("f32", snan | 0x80000000)]
    assert inst.invoke("bits", wasmig.Val("f32", snan), raw=True) == [("i32", snan)]
    assert inst.exports["two"]() == (-1, -2)
    assert inst.invoke("two", raw=True) == [("i32", 0xFFFFFFFF), ("i64", 0xFFFFFFFFFFFFFFFE)]
    assert inst.exports["id32"](0.1) == pytest.approx(0.1, rel=1e-7)  # rounded to single precision


def test_host_externs_and_cross_instance_linking(tmp_path: Path) -> None:
    seen: list[int] = []
    provider = wasmig.Instance(wasmig.Module.from_bytes(wat("""(module
      (memory (export "mem") 1 2)
      (global (export "counter") (mut i32) (i32.const 5))
      (table (export "tab") 2 funcref)
      (func $double (export "double") (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
      (elem (i32.const 0) $double))""", tmp_path)))
    imports = {
        "env": {
            "log": wasmig.HostFunc(["i32"], [], seen.append),
            "g": wasmig.Global("i64", 7),
            "mem": provider.exports["mem"],
            "counter": provider.exports["counter"],
            "tab": provider.exports["tab"],
            "double": provider.exports["double"],
        }
    }
    user = wasmig.Instance(wasmig.Module.from_bytes(wat("""(module
      (import "env" "log" (func $log (param i32)))
      (import "env" "g" (global $g i64))
      (import "env" "mem" (memory 1))
      (import "env" "counter" (global $c (mut i32)))
      (import "env" "tab" (table 2 funcref))
      (import "env" "double" (func $double (param i32) (result i32)))
      (type $t (func (param i32) (result i32)))
      (func (export "run") (result i64)
        (call $log (call $double (i32.const 21)))
        (i32.store (i32.const 8) (i32.const 0x01020304))
        (global.set $c (i32.add (global.get $c) (i32.const 1)))
        (call $log (call_indirect (type $t) (i32.const 4) (i32.const 0)))
        (global.get $g)))""", tmp_path)), imports)
    assert user.exports["run"]() == 7
    assert seen == [42, 8]
    assert provider.exports["mem"].read(8, 4) == b"\x04\x03\x02\x01"  # little-endian, shared memory
    assert provider.exports["counter"].value == 6
    assert provider.exports["mem"].size_pages == 1
    provider.exports["mem"].write(0, b"\xff")
    assert provider.exports["mem"].read(0, 1) == b"\xff"


def test_link_errors(tmp_path: Path) -> None:
    m = wasmig.Module.from_bytes(wat('(module (import "env" "f" (func (param i32))))', tmp_path))
    with pytest.raises(wasmig.LinkError, match="unknown import"):
        wasmig.Instance(m, {})
    with pytest.raises(wasmig.LinkError, match="incompatible import type"):
        wasmig.Instance(m, {"env": {"f": wasmig.HostFunc(["i64"], [], lambda x: None)}})
    with pytest.raises(wasmig.LinkError, match="incompatible import type"):
        wasmig.Instance(m, {"env": {"f": wasmig.Global("i32", 1)}})


def test_start_function_trap_is_a_trap(tmp_path: Path) -> None:
    m = wasmig.Module.from_bytes(wat("(module (func $s unreachable) (start $s))", tmp_path))
    with pytest.raises(wasmig.Trap, match="unreachable"):
        wasmig.Instance(m)


def test_decode_and_validation_errors() -> None:
    with pytest.raises(wasmig.DecodeError, match="magic"):
        wasmig.Module.from_bytes(b"not wasm")
    with pytest.raises(wasmig.DecodeError):
        wasmig.Module.from_bytes(b"\0asm\1\0\0\0\1\5\1\x60")  # truncated type section
    bad = Module(types=[FuncType((), ("i32",))], funcs=[Function(0, [], [Instr(0x0B)])])
    with pytest.raises(wasmig.ValidationError):
        wasmig.Module.from_bytes(encode_module(bad))
    assert issubclass(wasmig.DecodeError, wasmig.WasmError)
    assert issubclass(wasmig.ValidationError, wasmig.WasmError)


def test_simd_is_a_clear_unsupported_feature() -> None:
    # (func (result i32) v128.const ... ) starts with the 0xFD prefix at a known offset
    body = bytes([0x00, 0xFD, 0x0C]) + bytes(16) + bytes([0x1A, 0x41, 0x00, 0x0B])
    data = (b"\0asm\1\0\0\0" + b"\x01\x05\x01\x60\x00\x01\x7f" + b"\x03\x02\x01\x00"
            + b"\x0a" + bytes([len(body) + 2, 1, len(body)]) + body)
    with pytest.raises(wasmig.UnsupportedFeature) as info:
        wasmig.Module.from_bytes(data)
    assert "SIMD" in str(info.value) and "0xfd 0xc" in str(info.value)
    assert info.value.offset == data.index(b"\xfd\x0c")


def test_hand_built_module_runs() -> None:
    ir = Module(
        types=[FuncType(("i32", "i32"), ("i32",))],
        funcs=[Function(0, [], [Instr(0x20, 0), Instr(0x20, 1), Instr(0x6C), Instr(0x0B)])],
        exports=[Export("mul", "func", 0)],
    )
    inst = wasmig.Instance(wasmig.Module.from_bytes(encode_module(ir)))
    assert inst.exports["mul"](6, -7) == -42
    assert inst.exports["mul"](0x10000, 0x10000) == 0  # wraps at 32 bits


def test_unknown_engine_is_rejected(tmp_path: Path) -> None:
    m = wasmig.Module.from_bytes(wat("(module)", tmp_path))
    with pytest.raises(ValueError, match="unknown engine"):
        wasmig.Instance(m, engine="nope")
