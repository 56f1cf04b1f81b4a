"""The fast variant's unrolled loops (docs/instrument.md, "Normal execution"): a copy of a body that
ends with LLVM's ``br_if $loop`` leaves the loop through ``i32.eqz  br_if $exit``, so the exit edge
carries the loop's values from the copy itself (Cranelift otherwise computed a row reduction's
values only on the exit paths and the last copy's back edge, keeping every operand of the four
copies live and spilling them: pb_mvt, pb_gesummv, pb_covariance 1.2-1.3x plain). Other bodies
keep ``br_if $next_copy  br $exit``. Either way every trip count runs as the original."""

from __future__ import annotations

import pytest

from tests.wat import wat_module
from wasmig.binary.ir import Instr
from wasmig.instrument.unwind import UNROLL, copies_per_round, instrument

wasmtime = pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime.program_memory import program_exports  # noqa: E402

WAT = """
(module
  (memory (export "memory") 1)
  (func $tail (export "tail") (param $n i32) (result f64) (local $i i32) (local $s f64)
    ;; LLVM's shape: the body ends with the test and branch back
    (loop $l
      (local.set $s (f64.add (local.get $s)
        (f64.mul (f64.load (i32.shl (local.get $i) (i32.const 3))) (f64.convert_i32_s (local.get $i)))))
      (br_if $l (i32.lt_s (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (local.get $s))
  (func $middle (export "middle") (param $n i32) (result i32) (local $i i32) (local $s i32)
    ;; the branch back sits inside an `if`: the body ends with the `if`'s end
    (loop $l
      (local.set $s (i32.add (local.get $s) (i32.mul (local.get $i) (i32.const 7))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.lt_s (local.get $i) (local.get $n)) (then (br $l))))
    (local.get $s))
  (func (export "fill") (local $i i32)
    (loop $l
      (f64.store (i32.shl (local.get $i) (i32.const 3)) (f64.convert_i32_s (i32.sub (i32.const 50) (local.get $i))))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 64))))))
"""


def _eqz_br_if_pairs(body: list[Instr]) -> int:
    return sum(1 for a, b in zip(body, body[1:], strict=False) if a.op == 0x45 and b.op == 0x0D)


def _instance(data: bytes) -> tuple[object, object]:
    config = wasmtime.Config()
    config.wasm_multi_memory = True
    config.wasm_threads = True
    config.wasm_tail_call = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, data), [])
    # memory 0 as the host sees it (from the hidden page on: wasmig/instrument/hidden_page.py)
    exports = program_exports(dict(inst.exports(store)))
    if "fill" in exports:  # this file's module (test_entry_bounded_loops.py: others)
        exports["fill"](store)
    return store, exports


def test_a_copy_of_a_body_ending_in_its_branch_back_leaves_through_its_own_test() -> None:
    module = wat_module(WAT)
    fast = instrument(module, count_steps=False)
    tail, middle = fast.ir.funcs[0].body, fast.ir.funcs[1].body
    # $tail is a lone loop of 17 instructions: two copies a round (tests/test_unroll_rounds.py)
    assert _eqz_br_if_pairs(tail) == copies_per_round(17, True) - 1 == 1
    assert _eqz_br_if_pairs(middle) == 0
    # the deterministic variant does not unroll
    assert _eqz_br_if_pairs(instrument(module, count_steps=True).ir.funcs[0].body) == 0


def test_unrolled_loops_run_every_trip_count_as_the_original() -> None:
    module = wat_module(WAT)
    plain_store, plain = _instance(module.data)
    fast_store, fast = _instance(instrument(module, count_steps=False).data)
    for n in range(0, 3 * UNROLL + 2):
        for name in ("tail", "middle"):
            assert fast[name](fast_store, n) == plain[name](plain_store, n), (name, n)
