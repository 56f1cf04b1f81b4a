"""How many copies of an unrolled loop's body a round holds (``copies_per_round`` in
wasmig/instrument/unwind.py, docs/instrument.md "Normal execution"): a polled loop that no other
loop of its function encloses (a *lone* loop: most of QuickJS's unrolled code) gets the fewest
copies that make a round at least ``UNROLL_ROUND`` instructions, none beyond the first when its
body alone is that long; a loop in a nest, and copies without a poll (a counted loop's, an
entry-bounded loop's unpolled arm), keep ``UNROLL``. Every trip count still runs as the original."""

from __future__ import annotations

import pytest

from tests.test_unroll_shape import _instance
from tests.wat import wat_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.instrument.unwind import UNROLL, UNROLL_ROUND, copies_per_round, instrument

wasmtime = pytest.importorskip("wasmtime")

#: the marker each copy of the body holds once: a load at offset 400
LOAD = "(local.set $s (i32.add (local.get $s) (i32.load offset=400 (i32.and (local.get $k) (i32.const 1020)))))"
#: four instructions that lengthen the body
PAD = "(local.set $s (i32.add (local.get $s) (i32.const 1)))"
#: ``$k += 4`` while ``$k <u $n``: polled (an ordered test against a local is not entry-bounded)
LT_N = "(br_if $l (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const 4))) (local.get $n)))"
#: ``$k += 4`` until ``$k == $n``: bounded at its entry (an unpolled arm, a polled one)
NE_N = "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 4))) (local.get $n)))"
#: ``$k += 4`` up to 400: counted (no poll)
TO_400 = "(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 4))) (i32.const 400)))"
BODY = 14  # instructions of LOAD and a tail


def _lone(pads: int, tail: str = LT_N) -> str:
    return f"""(module (memory (export "memory") 1)
      (func (export "f") (param $n i32) (result i32) (local $k i32) (local $s i32)
        (local.set $k (i32.const 0))
        (loop $l {LOAD} {PAD * pads} {tail})
        (local.get $s)))"""


def _nested(pads: int) -> str:
    return f"""(module (memory (export "memory") 1)
      (func (export "f") (param $n i32) (result i32) (local $i i32) (local $k i32) (local $s i32)
        (loop $outer
          (local.set $k (i32.const 0))
          (loop $l {LOAD} {PAD * pads} {LT_N})
          (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 3))))
        (local.get $s)))"""


def _fast(wat: str) -> list:
    return decode_module(instrument(wat_module(wat), count_steps=False).data, features=INSTRUMENTED).funcs[0].body


def _copies(body: list) -> int:
    return sum(1 for ins in body if ins.op == 0x28 and ins.imm[1] == 400)


def test_copies_per_round() -> None:
    assert [copies_per_round(n, True) for n in (1, 8, 10, 11, 15, 16, 31, 32, 96)] == [4, 4, 4, 3, 3, 2, 2, 1, 1]
    assert all(copies_per_round(n, False) == UNROLL for n in (1, 16, 32, 96))
    assert all(copies_per_round(n, True) * n >= UNROLL_ROUND or copies_per_round(n, True) == UNROLL
               for n in range(1, 97))


@pytest.mark.parametrize("pads", [0, 1, 2, 5])
def test_a_lone_polled_loop_gets_the_copies_of_its_round(pads: int) -> None:
    body_length = BODY + 4 * pads
    want = copies_per_round(body_length, True)
    assert want < UNROLL  # 14 instructions or more: fewer copies than a loop in a nest
    fast = _fast(_lone(pads))
    assert _copies(fast) == want
    assert sum(1 for ins in fast if ins.op == 0xFE12) == 1  # one poll a round
    if want == 1:  # emitted as written: no block of the unrolling around it
        plain_blocks = sum(1 for ins in wat_module(_lone(pads)).ir.funcs[0].body if ins.op == 0x02)
        unrolled = _fast(_nested(pads))  # the same loop in a nest: $exit and a block per copy but the last
        assert sum(1 for ins in unrolled if ins.op == 0x02) > sum(1 for ins in fast if ins.op == 0x02)
        assert plain_blocks == 0


@pytest.mark.parametrize("pads", [0, 2, 4])
def test_a_loop_in_a_nest_keeps_every_copy(pads: int) -> None:
    assert _copies(_fast(_nested(pads))) == UNROLL


def test_copies_without_a_poll_stay() -> None:
    """A counted lone loop has no poll: its copies are there for speed, all UNROLL of them; an
    entry-bounded one keeps UNROLL in its unpolled arm and the round's copies in its polled arm."""
    counted = _fast(_lone(2, TO_400))
    assert _copies(counted) == UNROLL and not any(ins.op == 0xFE12 for ins in counted)
    bounded = _fast(_lone(1, NE_N))
    assert _copies(bounded) == UNROLL + copies_per_round(BODY + 4, True)


@pytest.mark.parametrize(("pads", "tail"), [(0, LT_N), (1, LT_N), (5, LT_N), (1, NE_N)])
def test_every_trip_count_runs_as_the_original(pads: int, tail: str) -> None:
    module = wat_module(_lone(pads, tail))
    plain_store, plain = _instance(module.data)
    fast_store, fast = _instance(instrument(module, count_steps=False).data)
    for n in range(4, 4 * (3 * UNROLL + 2), 4):
        assert fast["f"](fast_store, n) == plain["f"](plain_store, n), n
