"""Widening stack-passed i32 parameters (wasmig/instrument/widen.py, docs/widening.md): which
functions and parameters, the instrumented types, and that a module with widened functions
checkpoints, restores and traps on wasmtime exactly as the interpreter does -- in both variants,
with entry functions and entry arms, callers of every shape and values of 2**31 and more."""

from __future__ import annotations

import io
import itertools
import subprocess
from pathlib import Path

import pytest

import wasmig
from tests.wat import wat_module
from wasmig import files
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.engines.interp.capture import capture
from wasmig.instrument import entry_arm, transfer, widen
from wasmig.instrument.unwind import instrument
from wasmig.instrument.widen import REGISTER_INTS, widen_plan
from wasmig.session.command import instantiate_with_wasi
from wasmig.snapshot.state import Snapshot, from_plain, to_plain
from wasmig.wasi.preview1 import Wasi
from wasmig.wasi.snapshot import restore_wasi

pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402

#: $f (six i32 parameters: 4 and 5 on the stack) keeps both live across a call and a polled loop,
#: writes $h (set and tee) and divides by $e (a trap when $e is 0); $k (five: 4 on the stack, the
#: last) passes its own widened parameter on. $start calls them with every caller shape: the last
#: parameter alone ($k), constants, locals and computed arguments extended in place, an argument
#: pushed before the run of the call (a call's result above it: through temporaries), values of
#: 2**31 and more, and a call of $f in dead code. memory[0] = the result. $e is
#: memory[64]'s word on the last round (5, or 0: a trap).
WIDE_WAT = """
(module
  (memory (export "memory") 1)
  (global $sum (mut i32) (i32.const 0))
  (func $g (param i32) (result i32) (global.set $sum (i32.add (global.get $sum) (local.get 0)))
    (i32.add (local.get 0) (i32.const 1)))
  (func $f (param $a i32) (param $b i32) (param $c i32) (param $d i32) (param $e i32) (param $h i32)
    (result i32) (local $i i32)
    (local.set $a (call $g (local.get $a)))
    (loop $l
      (local.set $h (i32.add (local.get $h) (i32.div_u (local.get $a) (local.get $e))))
      (local.set $i (i32.add (local.get $i) (call $g (i32.const 1))))
      (br_if $l (i32.lt_u (local.get $i) (i32.and (local.get $b) (i32.const 15)))))
    (block
      (br 0)
      (drop (call $f (i32.const 1) (i32.const 2) (i32.const 3) (i32.const 4) (i32.const 5) (i32.const 6))))
    (i32.xor (i32.add (i32.shr_u (local.get $e) (i32.const 3)) (local.tee $h (i32.mul (local.get $h) (i32.const 3))))
             (i32.add (local.get $c) (local.get $d))))
  (func $k (param $a i32) (param $b i32) (param $c i32) (param $d i32) (param $x i32) (result i32)
    (local $j i32)
    (loop $m
      (local.set $x (i32.add (local.get $x) (call $f (local.get $a) (local.get $b) (local.get $c) (local.get $d)
                                                   (local.get $x) (i32.const 7))))
      (br_if $m (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const 3))))
    (local.get $x))
  (func $j (param $x i64) (param $u i32) (param $v i32) (param $w i32) (param $e i32) (param $h i32) (result i32)
    (local $y i64)
    (local.set $y (i64.extend_i32_u (i32.add (local.get $u) (i32.add (local.get $v) (local.get $w)))))
    (loop $l
      (local.set $x (i64.add (local.get $x) (i64.extend_i32_u (call $t (i32.wrap_i64 (local.get $y))))))
      (local.set $y (i64.add (local.get $y) (i64.extend_i32_u (call $t (local.get $h)))))
      (br_if $l (i32.lt_u (local.tee $h (i32.add (local.get $h) (call $t (local.get $e)))) (i32.const 40))))
    (i32.add (i32.wrap_i64 (local.get $x)) (i32.wrap_i64 (local.get $y))))
  (func $t (param i32) (result i32) (local $c i32)
    (local.set $c (local.get 0))
    (loop $l (br_if $l (local.tee $c (i32.shr_u (local.get $c) (i32.const 1)))))
    (i32.add (local.get 0) (i32.const 1)))
  (func (export "_start") (local $n i32) (local $acc i32)
    (loop $round
      (local.set $acc (i32.add (local.get $acc)
        (call $f (local.get $n) (i32.const 9) (local.get $acc) (i32.const 2) (i32.const 0x80000005) (local.get $n))))
      (local.set $acc (i32.add (local.get $acc)
        (call $f (i32.const 3) (local.get $n) (i32.const 1)
                 (local.get $acc) (i32.or (local.get $n) (i32.const 0xF0000001))
                 (i32.add (local.get $acc) (i32.const 1)))))
      (local.set $acc (i32.add (local.get $acc)
        (call $f (i32.const 1) (i32.const 2) (local.get $n) (i32.const 4) (local.get $acc) (call $g (local.get $n)))))
      (local.set $acc (i32.xor (local.get $acc)
        (call $k (local.get $n) (i32.const 4) (local.get $acc) (i32.const 6) (i32.add (local.get $n) (i32.const 1)))))
      (local.set $acc (i32.add (local.get $acc)
        (call $j (i64.const 3) (local.get $n) (i32.const 2) (local.get $acc) (i32.const 0x90000000) (local.get $n))))
      (br_if $round (i32.lt_u (local.tee $n (i32.add (local.get $n) (i32.const 1))) (i32.const 12))))
    (drop (call $f (i32.const 1) (i32.const 1) (i32.const 1) (i32.const 1) (i32.load (i32.const 64)) (i32.const 0)))
    (i32.store (i32.const 0) (i32.add (local.get $acc) (global.get $sum))))
  (data (i32.const 64) "\\05"))
"""
F, K, J = 1, 2, 3  # function indices of $f, $k and $j


@pytest.fixture(autouse=True)
def every_size_widened(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's size rule off (its own test sets it): WIDE_WAT's functions are small."""
    monkeypatch.setattr(widen, "MIN_BIG", 0)


@pytest.fixture
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(files, "wasmtime_cache_dir", lambda: tmp_path)


@pytest.fixture
def entries_everywhere(monkeypatch: pytest.MonkeyPatch, own_cache: None) -> None:
    """Entry loops in every function (test_transfer.py's fixture): entry functions and transfers."""
    monkeypatch.setattr(transfer, "MIN_BODY", 0)
    monkeypatch.setattr(transfer, "MIN_ENCLOSING", 0)


@pytest.fixture
def arms_everywhere(monkeypatch: pytest.MonkeyPatch, entries_everywhere: None) -> None:
    """An entry arm in every function with entry loops: the arm's loads and its transfer tail's
    ``return_call`` of the function itself."""
    monkeypatch.setattr(entry_arm, "MIN_TARGET", 0)


@pytest.fixture
def shadows_everywhere(monkeypatch: pytest.MonkeyPatch, own_cache: None) -> None:
    """Every widened parameter written at most twice has a shadow ($f's $e and $h, $j's $e and $h)."""
    monkeypatch.setattr(widen, "SHADOW_BODY", 0)
    monkeypatch.setattr(widen, "SHADOW_WRITES", 2)


def _plan(wat: str) -> dict[int, tuple[int, ...]]:
    """``wat``'s widening plan (assembled with tail calls: ``return_call`` targets are spared)."""
    data = subprocess.run(["wat2wasm", "--enable-tail-call", "-", "-o", "/dev/stdout"], input=wat.encode(),
                          capture_output=True, check=True).stdout
    return widen_plan(decode_module(data, features=INSTRUMENTED))


def test_i32_parameters_on_the_stack_are_widened_and_nothing_else() -> None:
    """Integer positions 4 and 5 of i32 widened; an i64 there not; floats not counted."""
    assert REGISTER_INTS == 4
    wat = """(module
      (func $six (param i32 i32 i32 i32 i32 i32))
      (func $four (param i32 i32 i32 i32))
      (func $wide64 (param i32 i32 i32 i32 i64 i32))
      (func $floats (param f32 i32 f64 i32 i32 i32 f32 i32))
      (func $few_ints (param f32 f64 i32 i32 i32 i32 f32)))"""
    assert _plan(wat) == {0: (4, 5), 2: (5,), 3: (7,)}


def test_functions_between_max_body_and_min_big_instructions_keep_their_types(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    """Only functions of fewer than MAX_BODY or of MIN_BIG or more instructions are widened (QuickJS's
    run module within 2.0x plain code: its biggest, ``JS_CallInternal``, is where the gain is)."""
    wat = "(module (func $f (param i32 i32 i32 i32 i32 i32) nop nop nop))"  # 4 instructions, with `end`
    monkeypatch.undo()  # the module's defaults
    assert (widen.MAX_BODY, widen.MIN_BIG) == (0, 5000) and _plan(wat) == {}
    monkeypatch.setattr(widen, "MIN_BIG", 4)
    assert _plan(wat) == {0: (4, 5)}
    monkeypatch.setattr(widen, "MIN_BIG", 5)
    assert _plan(wat) == {}
    monkeypatch.setattr(widen, "MAX_BODY", 5)
    assert _plan(wat) == {0: (4, 5)}


def test_functions_the_host_or_a_table_can_reach_are_spared() -> None:
    """Exported, start, in an element segment, ``ref.func`` in a body, in an element expression or
    in a global's initializer, and return_call targets keep their types; imports are not widened."""
    six = "(param i32 i32 i32 i32 i32 i32)"
    wat = f"""(module
      (import "m" "imp" (func $imp {six}))
      (table 2 funcref)
      (func $plain {six})
      (func $exported (export "e") {six})
      (func $start)
      (func $in_table {six})
      (func $ref_body {six})
      (func $ref_elem {six})
      (func $ref_global {six})
      (func $tail {six})
      (func $user (drop (ref.func $ref_body))
        (return_call $tail (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
      (global funcref (ref.func $ref_global))
      (elem (i32.const 0) $in_table)
      (elem declare funcref (ref.func $ref_elem) (ref.func $ref_body))
      (start $start))"""
    assert _plan(wat) == {1: (4, 5)}


def test_the_global_initializer_alone_spares_its_function() -> None:
    """``ref.func`` in a global's initializer only (stack_args.py's old ``_named`` missed it)."""
    six = "(param i32 i32 i32 i32 i32 i32)"
    assert _plan(f"(module (func $a {six}) (global funcref (ref.func $a)))") == {}
    assert _plan(f"(module (func $a {six}) (global funcref (ref.null func)))") == {0: (4, 5)}


def test_big_functions_shadow_the_parameters_they_seldom_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shadow for a parameter of a function of SHADOW_BODY instructions or more, written
    SHADOW_WRITES times or fewer (a set and a tee count)."""
    body = wat_module(WIDE_WAT).ir.funcs[F].body  # $e (4) never written, $h (5) set once, teed once
    monkeypatch.setattr(widen, "SHADOW_BODY", len(body) + 1)
    assert widen.shadowed(body, (4, 5)) == []
    monkeypatch.setattr(widen, "SHADOW_BODY", len(body))
    assert widen.shadowed(body, (4, 5)) == [4, 5]
    monkeypatch.setattr(widen, "SHADOW_WRITES", 1)
    assert widen.shadowed(body, (4, 5)) == [4]


def test_the_cold_arms_read_the_shadows(shadows_everywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With shadows $j's normal body reads $e and $h wrapped only where the original does and once
    at entry, to set the shadows: its call sites' cold arms (calls of $t, which polls) read those,
    where without shadows they read $e and $h wrapped."""
    def wraps(module: wasmig.Module) -> int:
        f = decode_module(instrument(module, count_steps=False).data, features=INSTRUMENTED).funcs[J]
        return sum(a.op == 0x20 and a.imm in (4, 5) and b.op == widen.WRAP for a, b in itertools.pairwise(f.body))

    module = wat_module(WIDE_WAT)
    original = sum(ins.op == 0x20 and ins.imm in (4, 5) for ins in module.ir.funcs[J].body)
    assert wraps(module) == original + 2
    monkeypatch.setattr(widen, "SHADOW_BODY", 10**9)
    assert wraps(wat_module(WIDE_WAT)) > original + 2


def test_the_pass_s_savers_are_not_widened() -> None:
    """The savers ($save_i32_k: k + 1 i32 parameters) keep theirs: widening them cost QuickJS's run
    module 2.396x plain code. Checked on every saver the arms call (the others' slots are empty)."""
    from wasmig.instrument.linking import HELPERS, SAVE_COUNTS, SAVE_TYPES

    original = wat_module(WIDE_WAT)
    ir = instrument(original, count_steps=False).ir
    n = len(original.ir.funcs)
    first_saver = ir.num_imported_funcs() + n + HELPERS - len(SAVE_TYPES) * len(SAVE_COUNTS)
    called = {ins.imm for f in ir.funcs[:n] for ins in f.body
              if ins.op == 0x10 and first_saver <= ins.imm < first_saver + len(SAVE_TYPES) * len(SAVE_COUNTS)}
    kinds = set()
    for index in called:
        t, k = divmod(index - first_saver, len(SAVE_COUNTS))
        kinds.add(SAVE_TYPES[t])
        params = ir.types[ir.funcs[index - ir.num_imported_funcs()].type_idx].params
        assert params == ("i32",) + (SAVE_TYPES[t],) * SAVE_COUNTS[k], (index, params)  # the position, the values
    assert "i32" in kinds, f"no i32 saver called: {sorted(kinds)}"


def test_the_run_module_types_the_widened_parameters_i64_and_its_rewind_module_imports_them_so() -> None:
    """$f and $k widened in the run module, the rewind module's imports of them too; the exported
    `_start` and the unwidened $g keep their types."""
    inst = instrument(wat_module(WIDE_WAT), count_steps=False)
    run = inst.ir
    types = [run.types[f.type_idx].params for f in run.funcs]
    assert types[F] == ("i32",) * 4 + ("i64", "i64")
    assert types[K] == ("i32",) * 4 + ("i64",)
    assert types[J] == ("i64",) + ("i32",) * 3 + ("i64", "i64")
    assert types[0] == ("i32",) and types[5] == ()
    assert inst.rewind is not None
    rewind = decode_module(inst.rewind, features=INSTRUMENTED)
    imported = [rewind.types[i.desc].params for i in rewind.imports if i.kind == "func"]
    assert imported[F] == types[F] and imported[K] == types[K] and imported[0] == ("i32",)


def _interp_snapshot(module: wasmig.Module, k: int) -> Snapshot | None:
    wasi = Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        inst = instantiate_with_wasi(module, wasi)
        inst.stop_at(step=k)
        try:
            inst.invoke("_start")
        except wasmig.Suspended:
            return from_plain(to_plain(capture(inst)))
        except wasmig.Trap:
            return None
        return None
    finally:
        wasi.close()


def _reference(module: wasmig.Module) -> int:
    wasi = Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    inst = instantiate_with_wasi(module, wasi)
    inst.invoke("_start")
    wasi.close()
    return int.from_bytes(bytes(inst.store.mems[0].data[:4]), "little")


def _restored(module: wasmig.Module, snap: Snapshot, count_steps: bool, again: int | None = None
              ) -> tuple[int, Snapshot | None]:
    """``snap`` restored on wasmtime and run to the end (or stopped at step ``again`` first, its
    snapshot taken, then run to the end): (memory[0], the second snapshot)."""
    runner, wasi = _loaded(module, snap, count_steps)
    second = None
    try:
        runner.arm(again)
        runner.resume(snap.frames, snap.point)
        if again is not None:
            assert runner.unwound
            second = from_plain(to_plain(runner.capture()))
            runner.arm(None)
            runner.resume()
        return _finished_with(runner), second
    finally:
        wasi.close()


def _loaded(module: wasmig.Module, snap: Snapshot, count_steps: bool) -> tuple[Checkpointable, Wasi]:
    """A wasmtime runner of ``module`` with ``snap`` loaded, and its WASI (to close)."""
    assert snap.wasi is not None
    wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    runner = Checkpointable(module, wasi, count_steps=count_steps)
    runner.load(snap)
    return runner, wasi


def _finished_with(runner: Checkpointable) -> int:
    """memory[0] of a run that ended (not unwound)."""
    assert not runner.unwound
    return int.from_bytes(bytes(runner.instance.exports["memory"].read(runner.store, 0, 4)), "little")


def _every_stable_point_round_trips(wat: str) -> None:
    """At every stable point of the interpreter's run: wasmtime's deterministic variant stops with
    the interpreter's snapshot; the interpreter's snapshot restored on wasmtime (both variants)
    finishes with the uninterrupted result, and stopped again 7 steps on (a record the host wrote,
    then one the restored normal body writes) equals the interpreter's there."""
    module = wat_module(wat)
    want = _reference(module)
    k = 0
    while True:
        k += 1
        snap = _interp_snapshot(module, k)
        if snap is None:
            break
        wasi = Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        try:
            program = wasmig.engines.get("wasmtime").program(module, wasi, checkpoints=True, count_steps=True)
            program.arm(at_step=k)
            assert program.start()
            ours = from_plain(to_plain(program.capture()))
        finally:
            wasi.close()
        assert (ours.frames, ours.point, ours.steps, ours.globals) == (snap.frames, snap.point, snap.steps,
                                                                       snap.globals), f"step {k}"
        for count_steps in (False, True):
            assert _restored(module, snap, count_steps)[0] == want, f"step {k}, count_steps={count_steps}"
        later = _interp_snapshot(module, k + 7)
        if later is not None:
            got, second = _restored(module, snap, True, k + 7)
            assert got == want and second is not None
            assert (second.frames, second.point, second.steps) == (later.frames, later.point, later.steps), k
    assert k > 100


def test_every_stable_point_of_widened_functions_round_trips(own_cache: None) -> None:
    _every_stable_point_round_trips(WIDE_WAT)


def test_every_stable_point_round_trips_with_entry_functions(entries_everywhere: None) -> None:
    _every_stable_point_round_trips(WIDE_WAT)


def test_every_stable_point_round_trips_with_entry_arms(arms_everywhere: None) -> None:
    _every_stable_point_round_trips(WIDE_WAT)


def test_every_stable_point_round_trips_with_shadows(shadows_everywhere: None) -> None:
    _every_stable_point_round_trips(WIDE_WAT)


def test_every_stable_point_round_trips_with_shadows_and_entry_arms(shadows_everywhere: None,
                                                                    arms_everywhere: None) -> None:
    _every_stable_point_round_trips(WIDE_WAT)


@pytest.mark.parametrize("count_steps", [False, True])
def test_the_fast_and_deterministic_runs_compute_the_interpreter_s_result(count_steps: bool,
                                                                           own_cache: None) -> None:
    module = wat_module(WIDE_WAT)
    wasi = Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi, count_steps=count_steps)
        runner.arm(None)
        runner.start()
        assert _finished_with(runner) == _reference(module)
    finally:
        wasi.close()


TRAP_WAT = WIDE_WAT.replace("(data (i32.const 64) \"\\05\")", "")
assert TRAP_WAT != WIDE_WAT


@pytest.mark.parametrize("k", [None, 3, 200])
def test_a_division_by_a_widened_parameter_traps_where_the_interpreter_reports_it(k: int | None,
                                                                                  own_cache: None) -> None:
    """$e is 0 on the last call of $f: ``i32.div_u`` by it traps with the interpreter's reason and
    backtrace, run fresh and restored at step k (the frame rewound into $f's normal body)."""
    module = wat_module(TRAP_WAT)
    wasi = Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    with pytest.raises(wasmig.Trap) as expected:
        instantiate_with_wasi(module, wasi).invoke("_start")
    wasi.close()
    if k is None:
        wasi = Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        program = wasmig.engines.get("wasmtime").program(module, wasi, checkpoints=True, count_steps=False)
        start = program.start
    else:
        snap = _interp_snapshot(module, k)
        assert snap is not None
        runner, wasi = _loaded(module, snap, True)
        runner.arm(None)
        start = lambda: runner.resume(snap.frames, snap.point)  # noqa: E731
    try:
        with pytest.raises(wasmig.Trap) as got:
            start()
    finally:
        wasi.close()
    assert "divide by zero" in expected.value.reason
    assert (got.value.reason, got.value.backtrace) == (expected.value.reason, expected.value.backtrace)
