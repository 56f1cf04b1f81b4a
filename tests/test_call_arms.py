"""One cold arm per polling call (docs/instrument.md, "Compact records"): in the fast variant a call
of the module's own code that can unwind has two sites, the call site (its callee unwound) and the
``after_call`` site (a request, the call done). Both unwind through one arm that saves the
``after_call`` site's values and records the site ``after - $state``; the call site's compact
order is a prefix of its ``after_call`` site's, so a record of either reads its values at the
same positions. Checked here: the shape, the order, and that records written by a shared arm at
both sites translate into the interpreter's state and finish on every engine."""

from __future__ import annotations

import struct

import pytest

from tests.wat import wat_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.instrument.sites import compact_slots
from wasmig.instrument.unwind import instrument

pytest.importorskip("wasmtime")
from tests.test_cross_engine import (  # noqa: E402
    ENGINES,
    _same_state,
    _stop_on_mark,
    after_call_states,
    finish,
    reference,
)

#: the program's arguments: test_cross_engine's reference() caches its runs by them
ARGS = ["call-arms"]
# $rec keeps an i32 and an f64 local live across its call, and an i64 beneath it on the stack: the
# call site saves (n, x, the i64) and its after_call site also the i64 result. $mark (sched_yield)
# is called at the bottom of the recursion, where the test requests a checkpoint.
WAT = """
(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $mark (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $rec (param $n i32) (param $x f64) (result i64)
    (if (result i64) (i32.eqz (local.get $n))
      (then (drop (call $mark)) (i64.const 1))
      (else
        (i64.add
          (i64.extend_i32_u (local.get $n))
          (i64.add (call $rec (i32.sub (local.get $n) (i32.const 1)) (f64.mul (local.get $x) (f64.const 1.5)))
                   (i64.trunc_f64_s (local.get $x)))))))
  (func (export "_start")
    (i64.store (i32.const 0) (call $rec (i32.const 6) (f64.const 3.25)))
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
"""


def test_a_polling_call_has_one_cold_arm_that_picks_its_site_by_state() -> None:
    """$rec's `if`s: its entry poll (it calls an import, whose check does not poll), the
    original `if`, the import call's `$state == 1` check, and for the recursive call one poll
    `if` around one arm, which computes its site as ``after - $state`` (no second arm behind a
    `$state == 1` test)."""
    module = wat_module(WAT)
    ins = instrument(module, count_steps=False)
    run = decode_module(ins.data, features=INSTRUMENTED)
    body = run.funcs[0].body  # $rec, the first defined function
    state = ins.sitemap.globals_base
    ifs = sum(1 for i in body if i.op == 0x04)
    assert ifs == 4, f"{ifs} ifs"
    triples = list(zip(body, body[1:], body[2:], strict=False))
    assert sum(1 for a, b, _ in triples if (a.op, a.imm, b.op) == (0x23, state, 0x6B)) == 1  # $state  i32.sub
    state_is_1 = [(a.op, a.imm, b.op, b.imm, c.op) for a, b, c in triples].count((0x23, state, 0x41, 1, 0x46))
    assert state_is_1 == 1, "only the import call's check tests $state == 1"


def test_a_call_sites_compact_order_is_a_prefix_of_its_after_call_sites() -> None:
    ins = instrument(wat_module(WAT), count_steps=False)
    sites = ins.sitemap.sites
    pairs = [(s, sites[s.id + 1]) for s in sites[:-1] if s.kind == "call" and sites[s.id + 1].kind == "after_call"]
    assert pairs
    for call, after in pairs:
        types = ins.sitemap.functions[call.func].local_types
        order, after_order = compact_slots(call, types), compact_slots(after, types)
        assert after_order[: len(order)] == order and len(after_order) > len(order)


def test_records_of_a_shared_arm_at_both_sites_are_the_interpreters_state() -> None:
    """A request at the bottom of the recursion: $rec(1) stops just after its call returned
    (the arm with $state 0: its after_call site, the result on its stack) and every outer $rec
    frame at its call site (the same arm with $state 1, a prefix of the values). The snapshot is
    a state of the interpreter, and it finishes on every engine as the uninterrupted run."""
    module = wat_module(WAT)
    code, expected, _ = reference(module, ARGS)

    def request(runner: object) -> None:
        runner.request()  # type: ignore[attr-defined]

    snap, printed = _stop_on_mark(module, request, "no stop")
    assert snap.point == "after_call"
    assert [len(f.stack) for f in snap.frames[1:]] == [1] * 5 + [2], "outer frames: the i64 beneath the call"
    innermost = snap.frames[-1]  # $rec(1): $n is dead after the call (zero), $x live
    assert innermost.locals[1] == ("f64", struct.unpack("<Q", struct.pack("<d", 3.25 * 1.5**5))[0])
    assert innermost.stack == [("i64", 1), ("i64", 1)], "$n extended, and $rec(0)'s result"
    same = [s for s in after_call_states(module, ARGS, 1, 100_000)
            if s.stdout == printed and _same_state(s.snapshot, snap)]
    assert len(same) == 1
    for engine in ENGINES:
        assert finish(engine, module, snap) == (code, expected), engine


def test_the_declared_locals_are_runs_of_one_type() -> None:
    """The run module declares its locals (the original ones, then the pass's) a run of one type
    at a time: one declaration per local the pass added took 14 KB of QuickJS's run module."""
    run = decode_module(instrument(wat_module(WAT), count_steps=False).data, features=INSTRUMENTED)
    for f in run.funcs:
        assert all(a[1] != b[1] for a, b in zip(f.locals, f.locals[1:], strict=False)), f.locals
    assert any(count > 1 for count, _ in run.funcs[0].locals)


#: WAT with 140 functions of 60 import calls each before $rec: $rec's sites have ids past 8,192
FAR_WAT = WAT.replace("  (func $rec", "".join(
    f"  (func $fill{k}{' (drop (call $mark))' * 60})\n" for k in range(140)) + "  (func $rec", 1)


def test_code_and_records_name_a_site_from_its_functions_first() -> None:
    """Sites are numbered within their function (id less the function's first site's, plus
    SITE_BIAS): each ``$site`` constant of $rec takes two LEB128 bytes although its ids are past
    8,192 (three bytes). A stop there (the recursion's shared arm at both its sites) is the
    interpreter's state, and it finishes on every engine as the uninterrupted run: the host
    reads and writes those numbers with the record's function."""
    module = wat_module(FAR_WAT)
    ins = instrument(module, count_steps=False)
    rec = module.ir.num_imported_funcs() + 140
    assert ins.sitemap.first_site(rec) > 8192
    run = decode_module(ins.data, features=INSTRUMENTED)
    body = run.funcs[rec - run.num_imported_funcs()].body
    site_local = ins.sitemap.functions[rec].num_locals
    consts = [(a, b) for a, b in zip(body, body[1:], strict=False)
              if a.op == 0x41 and (b.op, b.imm) == (0x21, site_local)]
    assert len(consts) >= 2 and all(b.offset - a.offset == 3 for a, b in consts), "i32.const and 2 LEB128 bytes"
    code, expected, _ = reference(module, ["call-arms-far"])

    def request(runner: object) -> None:
        runner.request()  # type: ignore[attr-defined]

    snap, printed = _stop_on_mark(module, request, "no stop")
    assert snap.point == "after_call" and {f.func for f in snap.frames[1:]} == {rec}
    same = [s for s in after_call_states(module, ["call-arms-far"], 1, 100_000)
            if s.stdout == printed and _same_state(s.snapshot, snap)]
    assert len(same) == 1
    for engine in ENGINES:
        assert finish(engine, module, snap) == (code, expected), engine


def _many_values_wat(runs: dict[str, int]) -> str:
    """$deep keeps ``runs[t]`` locals of each type t live across its recursive call (each set from
    $n, all summed after the call), so its arm saves runs of those lengths."""
    make = {"i32": "(i32.add (local.get $n) (i32.const {k}))",
            "i64": "(i64.extend_i32_u (i32.add (local.get $n) (i32.const {k})))",
            "f32": "(f32.convert_i32_u (i32.add (local.get $n) (i32.const {k})))",
            "f64": "(f64.convert_i32_u (i32.add (local.get $n) (i32.const {k})))"}
    widen = {"i32": "(i64.extend_i32_u {v})", "i64": "{v}", "f32": "(i64.trunc_f32_s {v})",
             "f64": "(i64.trunc_f64_s {v})"}
    names = [(t, f"${t}_{k}", 3 * k + 1) for t, count in runs.items() for k in range(count)]
    decls = " ".join(f"(local {name} {t})" for t, name, _ in names)
    sets = " ".join(f"(local.set {name} {make[t].format(k=k)})" for t, name, k in names)
    total = "(local.get $r)"
    for t, name, _ in names:
        total = f"(i64.add {total} {widen[t].format(v=f'(local.get {name})')})"
    return f"""
(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $mark (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $deep (param $n i32) (result i64) (local $r i64) {decls}
    {sets}
    (if (i32.eqz (local.get $n))
      (then (drop (call $mark)) (return (i64.const 1))))
    (local.set $r (call $deep (i32.sub (local.get $n) (i32.const 1))))
    {total})
  (func (export "_start")
    (i64.store (i32.const 0) (call $deep (i32.const 4)))
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
"""


def test_long_runs_of_one_type_are_saved_by_one_call_each_up_to_sixteen() -> None:
    """A saver takes 1 to 16 values of one type (linking.SAVE_COUNTS): $deep's arm saves its 13
    i32s, 9 f64s, 2 f32s and 19 i64s (16 + 3) in five calls (and the call's result in a sixth), and
    the records those savers
    write are the interpreter's state at each frame, finishing on every engine."""
    from wasmig.instrument.linking import HELPERS, SAVE_COUNTS, SAVE_TYPES

    runs = {"i32": 13, "f64": 9, "f32": 2, "i64": 19}
    module = wat_module(_many_values_wat(runs))
    ir = decode_module(instrument(module, count_steps=False).data, features=INSTRUMENTED)
    n_imported = ir.num_imported_funcs()
    first_saver = n_imported + len(module.ir.funcs) + HELPERS - len(SAVE_TYPES) * len(SAVE_COUNTS)
    savers = range(first_saver, first_saver + len(SAVE_TYPES) * len(SAVE_COUNTS))
    called = [ins.imm for ins in ir.funcs[0].body if ins.op == 0x10 and ins.imm in savers]

    def which(index: int) -> tuple[str, int]:
        t, k = divmod(index - first_saver, len(SAVE_COUNTS))
        return SAVE_TYPES[t], SAVE_COUNTS[k]

    assert sorted(which(i) for i in called) == [("f32", 2), ("f64", 9), ("i32", 13), ("i64", 1), ("i64", 3),
                                                 ("i64", 16)], "one call a run of up to 16"
    # ^ the 19 i64 locals are 16 + 3; after the call ($n dead, $r set from it) the call's i64
    # result is on the stack, saved after the locals (compact order: locals by type, then the stack)
    unused = ir.funcs[first_saver - n_imported + SAVE_COUNTS.index(5)]  # $save_i32_5: no arm calls it
    assert [ins.op for ins in unused.body] == [0x00, 0x0B], "a saver no arm calls is an empty slot"

    code, expected, _ = reference(module, ["many-values"])

    def request(runner: object) -> None:
        runner.request()  # type: ignore[attr-defined]

    snap, printed = _stop_on_mark(module, request, "no stop")
    assert len(snap.frames) == 5 and snap.point == "after_call"  # _start, $deep(4) .. $deep(1)
    for depth, frame in enumerate(snap.frames[1:-1]):  # $deep(4) .. $deep(2) at their call sites
        n = 4 - depth  # ($n itself is dead there: saved as 0)
        assert frame.locals[2:2 + runs["i32"]] == [("i32", n + 3 * k + 1) for k in range(runs["i32"])]
    same = [s for s in after_call_states(module, ["many-values"], 1, 100_000)
            if s.stdout == printed and _same_state(s.snapshot, snap)]
    assert len(same) == 1
    for engine in ENGINES:
        assert finish(engine, module, snap) == (code, expected), engine
