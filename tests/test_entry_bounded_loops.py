"""Loops bounded at their entry (wasmig/instrument/counted.py, ``EntryBound``): an innermost loop
without calls whose counter steps by a power of two toward a bound held in a local it does not
write (lz77's match loop, a qsort's element swap) runs, in the fast variant, unpolled when a test
at its entry finds the count small, and polled every iteration otherwise. Other loops keep their
polls."""

from __future__ import annotations

import ctypes

import pytest

from tests.test_unroll_shape import _instance as _unrolled_instance
from tests.wat import wat_module
from wasmig.binary.blocks import match_blocks
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.binary.ir import FuncType, Instr
from wasmig.instrument.counted import EntryBound, entry_bound, entry_guard
from wasmig.instrument.unwind import ENTRY_BOUND_MAX_BODY, POLL, UNROLL_MAX_BODY, UNROLL_MAX_FUNCTION, instrument

wasmtime = pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime.program_memory import poll_address  # noqa: E402


def _loop(body: str, tail: str, init: str = "(local.set $k (i32.const 0))", block_type: str = "") -> str:
    return f"""(module (memory (export "memory") 1)
      (func (export "f") (param $n i32) (result i32) (local $k i32) (local $s i32)
        {init}
        (loop $l {block_type}
          {body}
          {tail})
        (local.get $s)))"""


ADD = "(local.set $s (i32.add (local.get $s) (i32.load8_u (i32.and (local.get $k) (i32.const 255)))))"
UP_TO_N = "(br_if $l (i32.ne (local.get $n) (local.tee $k (i32.add (local.get $k) (i32.const 1)))))"


def _bound(wat: str) -> EntryBound | None:
    body = wat_module(wat).ir.funcs[0].body
    end_of, _ = match_blocks(body)
    start = next(i for i, ins in enumerate(body) if ins.op == 0x03)
    return entry_bound(body, start, end_of[start])


@pytest.mark.parametrize(("tail", "init", "step", "bound"), [
    # lz77's shape: the bound pushed first
    (UP_TO_N, "(local.set $k (i32.const 0))", 1, (0x20, 0)),
    ("(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const 4))) (local.get $n)))",
     "(local.set $k (i32.const 0))", 4, (0x20, 0)),
    # a count down to zero from wherever the counter is (a qsort's byte swap)
    ("(br_if $l (local.tee $k (i32.add (local.get $k) (i32.const -1))))", "(local.set $k (local.get $n))", -1,
     (0x41, 0)),
    ("(br_if $l (i32.ne (local.tee $k (i32.add (local.get $k) (i32.const -8))) (i32.const 64)))",
     "(local.set $k (local.get $n))", -8, (0x41, 64)),
])
def test_loops_whose_entry_values_fix_the_count(tail: str, init: str, step: int, bound: tuple[int, int]) -> None:
    eb = _bound(_loop(ADD, tail, init))
    assert eb is not None and (eb.k, eb.step, eb.bound) == (1, step, bound)


@pytest.mark.parametrize(("body", "tail"), [
    # the bound is written in the loop
    (ADD + "(local.set $n (i32.add (local.get $n) (i32.const 1)))", UP_TO_N),
    (ADD + "(drop (local.tee $n (i32.const 3)))", UP_TO_N),
    # the counter is written in the body too
    (ADD + "(local.set $k (i32.and (local.get $k) (i32.const 7)))", UP_TO_N),
    # another branch back to the loop
    (ADD + "(br_if $l (i32.and (local.get $s) (i32.const 1)))", UP_TO_N),
    # a step that is not a power of two
    (ADD, "(br_if $l (i32.ne (local.get $n) (local.tee $k (i32.add (local.get $k) (i32.const 3)))))"),
    # an ordered test against a local: not handled (a wrap past the bound would go on)
    (ADD, "(br_if $l (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const 1))) (local.get $n)))"),
    # the counter against itself
    (ADD, "(br_if $l (i32.ne (local.get $k) (local.tee $k (i32.add (local.get $k) (i32.const 1)))))"),
])
def test_loops_the_entry_does_not_bound(body: str, tail: str) -> None:
    assert _bound(_loop(body, tail)) is None


def _trips(k0: int, bound: int, step: int, cap: int) -> int:
    """Iterations of ``do k += step while k != bound`` from ``k0`` (i32), up to ``cap``."""
    k, t = k0, 0
    while t < cap:
        k, t = (k + step) & 0xFFFFFFFF, t + 1
        if k == bound & 0xFFFFFFFF:
            return t
    return cap


@pytest.mark.parametrize("step", [1, -1, 4, -4, 8, 256])
def test_the_entry_guard_admits_exactly_the_counts_up_to_its_limit(step: int) -> None:
    """The guard, run by wasmtime, against the count simulated: every residue, zero, both sides of
    the limit and the wrap-around."""
    limit = 10
    eb = EntryBound(0, step, (0x20, 1), limit)
    wat = wat_module("(module (func (export \"g\") (param i32 i32) (result i32) (i32.const 0)))")
    func = wat.ir.funcs[0]
    func.body = [Instr(op, imm) for op, imm in entry_guard(eb)] + [Instr(0x0B)]
    assert wat.ir.types[func.type_idx] == FuncType(("i32", "i32"), ("i32",))
    from wasmig.binary.encoder import encode_module

    store = wasmtime.Store()
    guard = wasmtime.Instance(store, wasmtime.Module(store.engine, encode_module(wat.ir)), []).exports(store)["g"]
    a = abs(step)
    for k0 in (0, 5, 0x7FFFFFF0, 0xFFFFFFF0):
        for d in [*range(-3 * a, (limit + 3) * a + 2), 1 << 31, (1 << 32) - a]:
            b = (k0 + (d if step > 0 else -d)) & 0xFFFFFFFF
            expected = _trips(k0, b, step, limit + 1) <= limit
            got = guard(store, k0 - (1 << 32) if k0 >= 1 << 31 else k0, b - (1 << 32) if b >= 1 << 31 else b)
            assert got == int(expected), (k0, b, step)


def _polls(data: bytes) -> int:
    return sum(1 for ins in decode_module(data, features=INSTRUMENTED).funcs[0].body if ins.op == 0xFE12)


def _instance(data: bytes) -> tuple[object, dict]:
    """An instance of ``data`` on the engine the fast variant runs on, its memory's first bytes set."""
    store, ex = _unrolled_instance(data)
    ex["memory"].write(store, bytes(range(1, 256)), 0)
    return store, ex


LZ77 = _loop(ADD, UP_TO_N)


def test_an_entry_bounded_loop_runs_unpolled_only_when_its_count_is_small() -> None:
    """Every count computes what the plain loop does; a request made before the call stops a
    large count at the loop's header (its rounds polled), while a small count runs unpolled to
    its end -- there the enclosing code's polls bound the wait."""
    module = wat_module(LZ77)
    fast = instrument(module, count_steps=False)
    assert _polls(fast.data) == 1, "one poll a round, skipped on the guard's verdict"
    plain_store, plain = _instance(module.data)
    store, ex = _instance(fast.data)
    for n in (1, 2, 3, 5, 8, 200, 5000, 70000):
        assert ex["f"](store, n) == plain["f"](plain_store, n), n
    ctypes.c_uint8.from_address(poll_address(ex, store, POLL)).value = 1  # the host's request
    ex["f"](store, 200)
    assert ex["wasmig:state"].value(store) == 0, "the small count ran unpolled"
    ex["f"](store, 70000)
    assert ex["wasmig:state"].value(store) == 1, "the large count stopped at the loop's header"


def test_the_deterministic_variant_and_unbounded_loops_keep_their_polls() -> None:
    assert _polls(instrument(wat_module(LZ77), count_steps=True).data) == 2  # the entry and the header
    written = wat_module(_loop(ADD + "(local.set $n (i32.add (local.get $n) (i32.const 1)))", UP_TO_N))
    fast = decode_module(instrument(written, count_steps=False).data, features=INSTRUMENTED).funcs[0].body
    assert sum(1 for ins in fast if ins.op == 0xFE12) == 1
    assert not any(ins.op == 0x78 for ins in fast), "no entry guard"


def test_a_br_out_after_the_test_is_recognised_and_a_big_function_keeps_its_poll() -> None:
    """A tail of ``br_if $loop  br $out`` (LLVM's, when the loop's exit is not its end) is
    recognised. In a function too big to unroll (qsort's, 5,656 instructions) such a loop keeps
    its poll: neither a second copy nor a poll skipped on the guard's verdict made qsort faster
    (1.08-1.09x plain each, code section 2.08x and 1.92x against 1.84x)."""
    padding = "(drop (i32.const 0))" * UNROLL_MAX_FUNCTION
    wat = f"""(module (memory (export "memory") 1)
      (func (export "f") (param $n i32) (result i32) (local $k i32) (local $s i32)
        {padding}
        (local.set $k (i32.const 0))
        (block $out
          (loop $l
            {ADD}
            {UP_TO_N}
            (br $out)))
        (local.get $s)))"""
    assert _bound(wat) is not None
    assert _bound(wat.replace(padding, "")) is not None
    small = decode_module(instrument(wat_module(wat.replace(padding, "")), count_steps=False).data,
                          features=INSTRUMENTED).funcs[0].body
    assert sum(1 for ins in small if ins.op == 0x49) == 1, "the entry guard"
    big = decode_module(instrument(wat_module(wat), count_steps=False).data, features=INSTRUMENTED).funcs[0].body
    assert sum(1 for ins in big if ins.op == 0xFE12) == 1
    assert sum(1 for ins in big if ins.op == 0x2D) == 1, "one copy of the body"
    assert not any(ins.op == 0x49 for ins in big), "no entry guard"


def test_only_a_small_body_gets_the_second_set_of_copies() -> None:
    """A bounded loop of more than ENTRY_BOUND_MAX_BODY instructions keeps its one set of copies
    polled a round (its entry guard and unpolled copies cost QuickJS's run module 2.06x -> 2.10x
    plain for the bigger bodies; lz77's match loop is 17 instructions)."""
    big_body = ADD * (ENTRY_BOUND_MAX_BODY // 12 + 1)
    wat = _loop(big_body, UP_TO_N)
    body = wat_module(wat).ir.funcs[0].body
    assert ENTRY_BOUND_MAX_BODY < len(body) - 4 <= UNROLL_MAX_BODY and _bound(wat) is not None
    fast = decode_module(instrument(wat_module(wat), count_steps=False).data, features=INSTRUMENTED).funcs[0].body
    assert not any(ins.op == 0x49 for ins in fast), "no entry guard"
    assert sum(1 for ins in fast if ins.op == 0xFE12) == 1
    small = decode_module(instrument(wat_module(LZ77), count_steps=False).data, features=INSTRUMENTED).funcs[0].body
    assert sum(1 for ins in small if ins.op == 0x49) == 1, "the small one has its entry guard"
