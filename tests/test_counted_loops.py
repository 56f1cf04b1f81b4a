"""Counted loops (wasmig/instrument/counted.py): an innermost loop without calls whose trip count
its constants bound has no poll in the fast variant (its unrolled copies stay); a stop then comes
at the enclosing loop's header. Everything else keeps its polls."""

from __future__ import annotations

import pytest

from tests.wat import wat_module
from wasmig.binary.blocks import match_blocks
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.instrument.counted import MAX_INSTRUCTIONS, counted_trips
from wasmig.instrument.unwind import UNROLL, instrument


def _loop(init: str, body: str, tail: str, before: str = "") -> str:
    return f"""(module (memory 1)
      (func (export "f") (param $n i32) (result i32) (local $k i32) (local $s i32)
        {init} {before}
        (loop $l
          {body}
          {tail})
        (local.get $s)))"""


def _trips(wat: str) -> int | None:
    body = wat_module(wat).ir.funcs[0].body
    end_of, _ = match_blocks(body)
    start = next(i for i, ins in enumerate(body) if ins.op == 0x03)
    return counted_trips(body, start, end_of[start])


ADD = "(local.set $s (i32.add (local.get $s) (local.get $k)))"


@pytest.mark.parametrize(("init", "tail", "trips"), [
    # LLVM's pb_mvt shape: from -3200 by 32 while the counter is not zero
    ("(local.set $k (i32.const -3200))", "(br_if $l (local.tee $k (i32.add (local.get $k) (i32.const 32))))", 100),
    ("(local.set $k (i32.const 0))",
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 400)))", 400),
    ("(local.set $k (i32.const 0))",
     "(br_if $l (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const 3))) (i32.const 10)))", 4),
    ("(local.set $k (i32.const -5))",
     "(br_if $l (i32.lt_s (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 5)))", 10),
    ("(local.set $k (i32.const 5))",
     "(br_if $l (i32.le_s (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 5)))", 1),
    ("(local.set $k (i32.const 100))",
     "(br_if $l (i32.gt_u (local.tee $k (i32.add (local.get $k) (i32.const -10))) (i32.const 0)))", 10),
    ("(local.set $k (i32.const 100))",
     "(br_if $l (i32.ge_s (local.tee $k (i32.add (local.get $k) (i32.const -10))) (i32.const 0)))", 11),
    ("(local.set $k (i32.const 400))",
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const -4))) (i32.const 0)))", 100),
])
def test_the_trip_count_of_a_counted_loop(init: str, tail: str, trips: int) -> None:
    assert _trips(_loop(init, ADD, tail)) == trips


@pytest.mark.parametrize(("init", "body", "tail", "before"), [
    # the bound is a parameter
    ("(local.set $k (i32.const 0))", ADD,
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (local.get $n)))", ""),
    # the counter starts at a parameter
    ("(local.set $k (local.get $n))", ADD,
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 9)))", ""),
    # the counter is written in the body too
    ("(local.set $k (i32.const 0))", ADD + "(local.set $k (i32.and (local.get $k) (i32.const 7)))",
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 9)))", ""),
    # another branch back to the loop
    ("(local.set $k (i32.const 0))", ADD + "(br_if $l (i32.and (local.get $s) (i32.const 1)))",
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 9)))", ""),
    # the constant is not on the straight-line path to the loop
    ("(local.set $k (i32.const 0))", ADD,
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 9)))",
     "(if (local.get $n) (then (local.set $k (local.get $n))))"),
    # never equal: 0, 2, 4, ... wraps around before reaching 9
    ("(local.set $k (i32.const 0))", ADD,
     "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 2))) (i32.const 9)))", ""),
    # counting down while below a bound: the counter wraps
    ("(local.set $k (i32.const 0))", ADD,
     "(br_if $l (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const -1))) (i32.const 9)))", ""),
    # too long to go unpolled
    ("(local.set $k (i32.const 0))", ADD,
     f"(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const {MAX_INSTRUCTIONS})))",
     ""),
])
def test_loops_the_shape_does_not_bound(init: str, body: str, tail: str, before: str) -> None:
    assert _trips(_loop(init, body, tail, before)) is None


NEST = """(module (memory 1)
  (func (export "f") (param $n i32) (result i32) (local $i i32) (local $k i32) (local $s i32)
    (loop $outer
      (local.set $k (i32.const -400))
      (loop $inner
        (local.set $s (i32.add (local.get $s) (i32.load offset=400 (local.get $k))))
        (br_if $inner (local.tee $k (i32.add (local.get $k) (i32.const 4)))))
      (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (local.get $s)))"""


def _polls(data: bytes) -> int:
    return sum(1 for ins in decode_module(data, features=INSTRUMENTED).funcs[0].body if ins.op == 0xFE12)


def test_a_counted_inner_loop_is_not_polled_in_the_fast_variant() -> None:
    """The fast variant polls only the outer loop's header; the inner loop keeps its unrolled
    copies (they run faster than plain on some kernels), one round after another with no poll.
    The deterministic variant still polls (counts) the entry and both headers; a loop bounded by
    a parameter keeps its poll."""
    module = wat_module(NEST)
    fast = decode_module(instrument(module, count_steps=False).data, features=INSTRUMENTED).funcs[0].body
    assert sum(1 for ins in fast if ins.op == 0xFE12) == 1
    assert sum(1 for ins in fast if ins.op == 0x28 and ins.imm[1] == 400) == UNROLL, "the inner loop's copies"
    assert _polls(instrument(module, count_steps=True).data) == 3  # the entry and both headers
    # from a parameter by 3 while not zero: neither counted nor bounded at its entry (test_entry_bounded_loops.py)
    plain_inner = wat_module(NEST.replace("(i32.const -400)", "(local.get $n)").replace("(i32.const 4)))))",
                                                                                     "(i32.const 3)))))"))
    assert _polls(instrument(plain_inner, count_steps=False).data) == 2
    assert not any(ins.op == 0x78 for ins in instrument(plain_inner, count_steps=False).ir.funcs[0].body)
