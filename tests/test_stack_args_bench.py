"""benchmarks/stack_args.py: its widening keeps what a module computes, and only where it may.

The script prices widening the i32 parameters Cranelift passes on the stack (docs/instrument.md,
"Session 9"); a widened module that computed something else, or a function changed that a table
or an export names (whose callers cannot be rewritten), would price the wrong code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

wasmtime = pytest.importorskip("wasmtime")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import stack_args as sa  # noqa: E402

from wasmig import Module  # noqa: E402
from wasmig.instrument import widen  # noqa: E402

#: $f: seven parameters, the fifth (i32, on the stack) read, set and teed, the sixth an f64 (not an
#: integer: the seventh is the next on the stack); $g the same type, but in a table; $h calls $f
#: with its arguments computed, `tail` calls it with a parameter of its own (a ``return_call``
#: would spare it: wasmig.instrument.widen, whose plan the script uses)
WAT = """(module
  (type $t (func (param i32 i64 i32 i64 i32 f64 i32) (result i64)))
  (table 1 funcref) (elem (i32.const 0) $g)
  (func $f (type $t)
    (local.set 4 (i32.add (local.get 4) (i32.const 7)))
    (i64.add (i64.add (local.get 1) (i64.extend_i32_u (local.tee 4 (i32.mul (local.get 4) (i32.const 3)))))
             (i64.add (i64.extend_i32_u (local.get 6)) (i64.trunc_f64_s (local.get 5)))))
  (func $g (type $t) (local.get 1))
  (func $h (export "h") (param $x i32) (result i64)
    (i64.add
      (call $f (local.get $x) (i64.const 100) (i32.const 2) (i64.const 3) (i32.add (local.get $x) (i32.const 1))
               (f64.const 4.5) (i32.const 1000))
      (call_indirect (type $t) (i32.const 0) (i64.const 5) (i32.const 0) (i64.const 0) (i32.const 0)
               (f64.const 0) (i32.const 0) (i32.const 0))))
  (func (export "tail") (param $x i32) (result i64)
    (call $f (i32.const 0) (i64.const 1) (i32.const 2) (i64.const 3) (local.get $x) (f64.const 0)
                    (i32.const 5))))
"""


@pytest.fixture(autouse=True)
def every_size_widened(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's size rule (tests/test_widen.py) off: these functions are small."""
    monkeypatch.setattr(widen, "MIN_BIG", 0)


def _run(data: bytes, export: str, arg: int) -> int:
    engine = wasmtime.Engine(wasmtime.Config())
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, data), [])
    return inst.exports(store)[export](store, arg)


def test_widening_computes_the_same_and_spares_named_functions() -> None:
    plain = wasmtime.wat2wasm(WAT)
    wide, functions, calls = sa.widen(plain)
    assert (functions, calls) == (1, 2)  # $f only: $g is in a table, $h exported with one register int
    for export, arg in (("h", 10), ("h", 0), ("tail", 4)):
        assert _run(wide, export, arg) == _run(plain, export, arg)
    ir = Module.from_bytes(wide, features=sa.FEATURES).ir
    f, g = ir.funcs[0], ir.funcs[1]
    assert ir.types[f.type_idx].params == ("i32", "i64", "i32", "i64", "i64", "f64", "i64")
    assert ir.types[g.type_idx].params == ("i32", "i64", "i32", "i64", "i32", "f64", "i32")


def test_pass_exports_are_spared_unless_asked() -> None:
    wat = WAT.replace("(func $f (type $t)", '(func $f (export "wasmig:x:f0") (type $t)')
    plain = wasmtime.wat2wasm(wat)
    assert sa.widen(plain)[1] == 0
    wide, functions, _ = sa.widen(plain, pass_exports_too=True)
    assert functions == 1 and _run(wide, "h", 3) == _run(plain, "h", 3)


def test_micro_modules_compute_the_same() -> None:
    results = set()
    for t in ("i32", "i64"):
        engine = wasmtime.Engine()
        store = wasmtime.Store(engine)
        inst = wasmtime.Instance(store, wasmtime.Module(engine, sa.micro_wat(t)), [])
        results.add(inst.exports(store)["run"](store, 1000) & 0xFFFFFFFF)
    assert len(results) == 1
