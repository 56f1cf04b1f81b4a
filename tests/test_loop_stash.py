"""The stash of a call-free loop nest (``_stash_plan`` in wasmig/instrument/unwind.py,
docs/instrument.md "Normal execution"): in the fast variant, the locals live at a nest's header
that nothing in the nest writes are stored once at its entry, and the cold arms of the polls inside
it copy them from there into the record instead of reading the locals. Otherwise such a local,
used only by those arms inside the nest, made Cranelift store and reload it every iteration of
sieve's outer loop. A stop inside a nest: tests/test_cross_engine.py
(``test_a_stop_in_a_call_free_nest_saves_its_stashed_locals``)."""

from __future__ import annotations

import pytest

from tests.wat import wat_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.instrument.unwind import STASH_BASE, STASH_SLOTS, instrument

NEST = """(module (memory 1) {callee}
  (func (export "f") (param $n i32) (result i32) (local $i i32) (local $j i32) (local $s i32) (local $keep i64)
    (local.set $keep (i64.extend_i32_u (local.get $n)))
    (loop $outer
      (local.set $j (i32.const 0))
      (loop $inner
        (local.set $s (i32.add (local.get $s) (i32.load8_u (local.get $j)))) {call}
        (br_if $inner (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $n))))
      (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (i32.add (local.get $s) (i32.wrap_i64 (local.get $keep)))))"""
KEEP = 4  # the local index of $keep


def _f(wat: str, *, count_steps: bool = False) -> list:
    ir = decode_module(instrument(wat_module(wat), count_steps=count_steps).data, features=INSTRUMENTED)
    return next(f for i, f in enumerate(ir.funcs) if ir.func_name(i + ir.num_imported_funcs()) == "f").body


def _stash_accesses(body: list) -> list[tuple[int, int]]:
    """(opcode, offset) of every access of the stash: a load or store in the control memory's
    stash region whose address is ``i32.const 0`` (a record's slot is addressed by a local)."""
    out = []
    for k, ins in enumerate(body):
        if not (0x28 <= ins.op <= 0x3E and isinstance(ins.imm, tuple) and len(ins.imm) == 3):
            continue
        if not STASH_BASE <= ins.imm[1] < STASH_BASE + 8 * STASH_SLOTS:
            continue
        if ins.op <= 0x35:  # a load: its address just before
            stash = body[k - 1].op == 0x41 and body[k - 1].imm == 0
        else:  # a store of a local (not an arm's copy of a load into a record slot)
            stash = body[k - 2].op == 0x41 and body[k - 2].imm == 0 and body[k - 1].op == 0x20
        if stash:
            out.append((ins.op, ins.imm[1]))
    return out


def test_a_call_free_nest_stashes_what_it_does_not_write() -> None:
    wat = NEST.format(callee="", call="")
    fast = _f(wat)
    accesses = _stash_accesses(fast)
    stores = [a for a in accesses if a[0] in (0x36, 0x37)]
    loads = [a for a in accesses if a[0] in (0x28, 0x29)]
    assert [op for op, _ in stores] == [0x37]  # $keep (i64), once, at the entry; the nest reads $n itself
    assert loads and {off for _, off in loads} <= {off for _, off in stores}
    # $keep is read by its stash store and after the nest only: no poll's arm reads the local
    plain_gets = sum(1 for ins in wat_module(wat).ir.funcs[0].body if ins.op == 0x20 and ins.imm == KEEP)
    assert sum(1 for ins in fast if ins.op == 0x20 and ins.imm == KEEP) == plain_gets + 1
    # $n, read in the nest, and the locals it writes ($i, $j, $s) are saved from the locals, as before
    assert sum(1 for ins in fast if ins.op == 0x20 and ins.imm == 0) > sum(
        1 for ins in wat_module(wat).ir.funcs[0].body if ins.op == 0x20 and ins.imm == 0)


def test_an_inner_nest_stashes_what_only_it_leaves_alone() -> None:
    """sieve's shape: the repetition loop reads its count at its latch; the nest inside it (a
    loop over the array holding a loop) neither reads nor writes it: it is stashed at that inner
    nest's entry, after whatever an enclosing nest stashed."""
    wat = """(module (memory 1)
      (func (export "f") (param $reps i32) (param $n i32) (result i32)
        (local $r i32) (local $i i32) (local $j i32) (local $s i32)
        (loop $rep
          (local.set $i (i32.const 0))
          (loop $outer
            (local.set $j (i32.const 0))
            (loop $inner
              (local.set $s (i32.add (local.get $s) (i32.load8_u (local.get $j))))
              (br_if $inner (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $n))))
            (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
          (br_if $rep (i32.lt_u (local.tee $r (i32.add (local.get $r) (i32.const 1))) (local.get $reps))))
        (local.get $s)))"""
    fast = _f(wat)
    stores = [off for op, off in _stash_accesses(fast) if op == 0x36]
    assert len(stores) == 2  # $reps and $r, at $outer's entry ($rep reads and writes them)
    # $reps is read by $rep's latch, the stash store and $rep's own poll (outside the nest); the
    # polls of $outer and $inner copy it from the stash
    assert sum(1 for ins in fast if ins.op == 0x20 and ins.imm == 0) == 3


@pytest.mark.parametrize("wat", [
    # a call in the nest: another frame may run between its entry and a poll
    NEST.format(callee='(func $g (param i32) (result i32) (local.get 0))',
                call="(local.set $s (call $g (local.get $s)))"),
    # a lone loop (no loop inside it): its entry may be hot, and nothing there to gain
    """(module (memory 1) (func (export "f") (param $n i32) (result i32) (local $j i32) (local $s i32)
      (loop $l
        (local.set $s (i32.add (local.get $s) (i32.load8_u (local.get $j))))
        (br_if $l (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $n))))
      (local.get $s)))""",
    # lz77's shape: more than STASH_MOST locals live across a nest and unused in it (lz77 ran
    # 1.15-1.20x plain with such nests stashed, 1.06-1.07x without)
    NEST.format(callee="", call="").replace("(local $keep i64)", "(local $keep i64) (local $x i32) (local $y i32)")
        .replace("(local.set $keep (i64.extend_i32_u (local.get $n)))",
                 "(local.set $keep (i64.extend_i32_u (local.get $n))) (local.set $x (local.get $n))"
                 " (local.set $y (local.get $n))")
        .replace("(i32.wrap_i64 (local.get $keep))",
                 "(i32.add (i32.wrap_i64 (local.get $keep)) (i32.add (local.get $x) (local.get $y)))"),
])
def test_no_stash_where_it_cannot_help_or_hold(wat: str) -> None:
    assert _stash_accesses(_f(wat)) == []


def test_the_deterministic_variant_has_no_stash() -> None:
    assert _stash_accesses(_f(NEST.format(callee="", call=""), count_steps=True)) == []


def test_the_nest_runs_as_the_original() -> None:
    wasmtime = pytest.importorskip("wasmtime")
    from tests.test_unroll_shape import _instance

    module = wat_module(NEST.format(callee="", call="").replace("(memory 1)", '(memory (export "memory") 1)'))
    plain_store, plain = _instance(module.data)
    fast_store, fast = _instance(instrument(module, count_steps=False).data)
    assert wasmtime is not None
    for n in (1, 2, 5, 17, 100):
        assert fast["f"](fast_store, n) == plain["f"](plain_store, n), n
