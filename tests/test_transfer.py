"""Transfers (wasmig/instrument/transfer.py, docs/instrument.md): a frame rewound into its rewind
copy goes back to its function's normal body at the next header of an *entry loop*, so a restored
program runs in the same code as one never stopped; which loops are entry loops; and that the
interpreter's state, step count and trap reports are unchanged through a transfer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import wasmig
from tests.wat import wat_module
from wasmig import files
from wasmig.binary.blocks import match_blocks
from wasmig.engines.interp.capture import capture
from wasmig.instrument import entry_arm, transfer
from wasmig.instrument.linking import HELPERS, REWIND_MODULE_NAME
from wasmig.instrument.transfer import plan_entries
from wasmig.session.command import instantiate_with_wasi
from wasmig.snapshot.state import Snapshot, from_plain, to_plain
from wasmig.wasi.preview1 import Wasi
from wasmig.wasi.snapshot import restore_wasi

pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime import runtime  # noqa: E402
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402

#: $run: a segment, a value buried beneath a block, a loop with a parameter nested in an `if` and
#: a block (the path the normal body skips along), a call in the loop; it traps (unreachable) in
#: iteration $n, or returns when $n is 0 after 3000 iterations
TRAPPING_WAT = """
(module
  (memory (export "memory") 1)
  (func $bump (param i32) (result i32) (i32.add (local.get 0) (i32.const 3)))
  (func $run (param $n i32) (result i32) (local $i i32) (local $acc i32)
    (i32.store (i32.const 64) (i32.const 5))
    (i32.add (i32.const 1000)
      (block (result i32)
        (if (result i32) (i32.load (i32.const 64))
          (then
            (i32.const 7)
            (loop $l (param i32) (result i32)
              (local.set $acc (call $bump (i32.add (local.get $acc) (local.get $i))))
              (if (i32.and (i32.ne (local.get $n) (i32.const 0)) (i32.eq (local.get $i) (local.get $n)))
                (then unreachable))
              (i32.add (i32.const 1))
              (local.tee $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $l (i32.lt_u (i32.const 3000)))))
          (else (i32.const 0))))))
  (func (export "_start") (i32.store (i32.const 0) (call $run (i32.load (i32.const 128)))))
  (data (i32.const 128) "\\d0\\07"))
"""


@pytest.fixture
def entries_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Entry loops in every function, however small (by default only functions of
    ``MIN_BODY`` instructions have them, and loops of ``MIN_ENCLOSING`` enclose them), with an
    instrumented-module cache of the test's own: the small modules here exercise transfers."""
    monkeypatch.setattr(transfer, "MIN_BODY", 0)
    monkeypatch.setattr(transfer, "MIN_ENCLOSING", 0)
    monkeypatch.setattr(files, "wasmtime_cache_dir", lambda: tmp_path)


#: a restart loop around a dispatch loop (a `br_table` over blocks, a call in one case), a value
#: buried beneath the block around the dispatch loop, an `if` on the way to it; memory[0] = result
DISPATCH_WAT = """
(module
  (memory (export "memory") 1)
  (func $step (param i32) (result i32) (i32.add (local.get 0) (i32.const 7)))
  (func $run (param $n i32) (result i32) (local $pc i32) (local $acc i32) (local $k i32)
    (loop $restart
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (local.set $acc (i32.add (local.get $acc)
        (block (result i32)
          (if (result i32) (local.get $n)
            (then
              (i32.const 100)
              (block $out (param i32) (result i32)
                (loop $next (param i32) (result i32)
                  (local.set $pc (i32.add (local.get $pc) (i32.const 1)))
                  (br_if $out (i32.gt_u (local.get $pc) (i32.mul (local.get $k) (i32.const 700))))
                  (block $c2 (param i32) (result i32)
                    (block $c1 (param i32) (result i32)
                      (block $c0 (param i32) (result i32)
                        (br_table $c0 $c1 $c2 (i32.rem_u (local.get $pc) (i32.const 3))))
                      (i32.add (i32.const 1)) (br $next))
                    (call $step) (br $next))
                  (i32.xor (local.get $pc)) (br $next))))
            (else (i32.const 5))))))
      (br_if $restart (i32.lt_u (local.get $k) (i32.const 4))))
    (local.get $acc))
  (func (export "_start") (i32.store (i32.const 0) (call $run (i32.const 1)))))
"""


#: CPython's eval loop nest: the inner loop, most of the outer one, branches to the outer header
EVAL_WAT = """
(module (memory (export "memory") 1)
  (func $eval (param $n i32) (local $i i32) (local $x i32)
  (loop $frame
    (local.set $x (i32.add (local.get $x) (i32.const 1)))
    (loop $dispatch
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $frame (i32.eqz (i32.rem_u (local.get $i) (i32.const 7))))
      (local.set $x (i32.mul (local.get $x) (i32.const 3)))
      (br_if $dispatch (i32.lt_u (local.get $i) (local.get $n)))))
  (i32.store (i32.const 0) (local.get $x)))
  (func (export "_start") (call $eval (i32.const 500))))
"""


def _wasi() -> Wasi:
    return Wasi(["t"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())


def _interp_snapshot(module: wasmig.Module, k: int) -> Snapshot:
    wasi = _wasi()
    try:
        inst = instantiate_with_wasi(module, wasi)
        inst.stop_at(step=k)
        with pytest.raises(wasmig.Suspended):
            inst.invoke("_start")
        return from_plain(to_plain(capture(inst)))
    finally:
        wasi.close()


def _plan_of(wat: str, name: str) -> tuple[list[int], set[int], set[int]]:
    """(every loop of function ``name``, its entry loops, its targets), as instruction indices."""
    module = wat_module(wat)
    ir = module.ir
    k = next(k for k in range(len(ir.funcs)) if ir.func_name(ir.num_imported_funcs() + k) == name)
    body = ir.funcs[k].body
    end_of, _ = match_blocks(body)
    plan = plan_entries(body, end_of, [False] * len(body))
    return [i for i, ins in enumerate(body) if ins.op == 0x03], set(plan.ordinal), set(plan.targets)


def test_a_loop_nest_is_entered_at_every_level_and_its_innermost_loop_is_the_target(entries_everywhere: None) -> None:
    """A loop nest whose inner loop is most of the outer loop's body (matmul's shape)."""
    loops, entries, targets = _plan_of("""
(module (func $nest (param $n i32) (local $i i32) (local $j i32) (local $x i32)
  (loop $a (local.set $j (i32.const 0))
    (loop $b (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1664525)) (i32.const 1013904223)))
      (local.set $j (i32.add (local.get $j) (i32.const 1))) (br_if $b (i32.lt_u (local.get $j) (local.get $n))))
    (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $a (i32.lt_u (local.get $i) (local.get $n))))))
""", "nest")
    assert entries == set(loops) and targets == {loops[1]}


def test_a_dispatch_loop_is_a_target_and_its_deep_case_loops_stay_inside_it(entries_everywhere: None) -> None:
    """A `switch` of nested blocks in a loop, some cases holding a small loop: reaching those would
    put a test per dispatch on the block path, so the dispatch loop is the target; the restart
    loop around it (the dispatch loop is most of it) encloses it."""
    cases = 12
    opening = "".join("(block " for _ in range(cases))
    table = " ".join(str(c) for c in range(cases))
    arms = "".join(f""") (local.set $acc (i32.add (local.get $acc) (i32.const {c})))
      (loop $c{c} (local.set $t (i32.sub (local.get $t) (i32.const 1))) (br_if $c{c} (local.get $t)))
      (br $next)""" for c in range(cases))
    wat = f"""
(module (func $interp (param $pc i32) (result i32) (local $acc i32) (local $t i32)
  (loop $restart
    (local.set $t (i32.const 3))
    (block $out
      (loop $next
        (local.set $pc (i32.add (local.get $pc) (i32.const 1)))
        (br_if $out (i32.gt_u (local.get $pc) (i32.const 1000)))
        {opening}(br_table {table} (i32.rem_u (local.get $pc) (i32.const {cases}))){arms}))
    (br_if $restart (i32.eqz (local.get $acc))))
  (local.get $acc)))
"""
    loops, entries, targets = _plan_of(wat, "interp")
    restart, dispatch, *case_loops = loops
    assert entries == {restart, dispatch} and targets == {dispatch}
    assert len(case_loops) == cases


def test_a_loop_nest_that_restarts_from_inside_has_no_entry(entries_everywhere: None) -> None:
    """CPython's eval loop nest: the inner loop, most of the outer one, branches straight to the
    outer loop's header. Enclosing the inner loop costs the never-stopped run a guard per outer
    iteration (1.42x), and with the outer loop as the only target a restored CPython ran slower
    than with no transfers (1.057x / 1.121x against 0.965x / 0.953x): such a function has none."""
    loops, entries, targets = _plan_of(EVAL_WAT, "eval")
    assert len(loops) == 2 and entries == targets == set()


def test_a_function_without_loops_has_no_entry(entries_everywhere: None) -> None:
    wat = "(module (func $f (param i32) (result i32) (i32.add (local.get 0) (i32.const 1))))"
    loops, entries, targets = _plan_of(wat, "f")
    assert loops == [] and entries == set() and targets == set()


def test_a_small_function_has_no_entry_and_a_small_loop_encloses_none() -> None:
    """By default: a function under MIN_BODY instructions has no entry loop (its copy keeps its
    loops), and in a big one an outer loop under MIN_ENCLOSING instructions is a target."""
    small = "(module (func $f (local i32) (loop (br_if 0 (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))))"
    assert _plan_of(small, "f")[1] == set()
    filler = "(drop (i32.const 1)) " * transfer.MIN_BODY
    nest = f"""(module (func $g (param $n i32) (local $i i32) (local $j i32) {filler}
      (loop $a (local.set $j (i32.const 0))
        (loop $b (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br_if $b (i32.lt_u (local.get $j) (local.get $n))))
        (br_if $a (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))))"""
    loops, entries, targets = _plan_of(nest, "g")
    assert entries == targets == {loops[0]}


def test_the_cross_engine_checks_hold_with_transfers_in_every_function(entries_everywhere: None) -> None:
    """tests/test_cross_engine.py's checks on the folded hand-written module (buried values, loop
    parameters, multi-value, call_indirect, recursion), with entry loops in its small functions:
    every stable point's snapshot rewinds (through transfers) to the uninterrupted result, a
    second stop after a rewind equals the interpreter's, and a rewound unrolled loop goes on in
    the normal loop."""
    from tests import test_cross_engine as cross

    cross.test_every_stable_point_of_folded_code_round_trips()
    for later in (1, 5, 40):
        cross.test_a_second_stop_after_a_rewind_equals_the_interpreters(later)
    cross.test_a_rewound_loop_runs_on_in_the_normal_loop()


@pytest.fixture
def arms_everywhere(monkeypatch: pytest.MonkeyPatch, entries_everywhere: None) -> None:
    """Every function with entry loops gets an entry arm (``entry_arm.MIN_TARGET`` = 0) instead of
    an entry function: the small modules here exercise the arms."""
    monkeypatch.setattr(entry_arm, "MIN_TARGET", 0)


def test_the_cross_engine_checks_hold_with_entry_arms_in_every_function(arms_everywhere: None) -> None:
    """The same checks with a transfer landing in the function's entry arm (buried values beneath
    the constructs on the path, loop parameters, an ``if`` on the path)."""
    test_the_cross_engine_checks_hold_with_transfers_in_every_function(None)


def test_an_entry_arm_keeps_only_the_chain_to_the_biggest_target(entries_everywhere: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A small loop before the restart loop (QuickJS's ``JS_CallInternal`` has five) is no entry
    loop of a function with an entry arm; the restart loop and the dispatch loop are its chain,
    when the dispatch loop has at least MIN_TARGET instructions."""
    small = ("(local.set $k (i32.const 4)) "
             "(loop $pre (br_if $pre (local.tee $k (i32.sub (local.get $k) (i32.const 1)))))")
    body = wat_module(DISPATCH_WAT.replace("(loop $restart", small + " (loop $restart", 1)).ir.funcs[1].body
    end_of, _ = match_blocks(body)
    live = [False] * len(body)
    plan = plan_entries(body, end_of, live)
    pre, restart, dispatch = (i for i, ins in enumerate(body) if ins.op == 0x03)
    assert set(plan.ordinal) == {pre, restart, dispatch}
    monkeypatch.setattr(entry_arm, "MIN_TARGET", end_of[dispatch] - dispatch + 1)
    assert entry_arm.chain_of(plan, body, end_of, live) == (plan, None)
    monkeypatch.setattr(entry_arm, "MIN_TARGET", end_of[dispatch] - dispatch)
    kept, chain = entry_arm.chain_of(plan, body, end_of, live)
    assert chain == [restart, dispatch] and kept.ordinal == {restart: 0, dispatch: 1}
    assert kept.targets == {dispatch}


def test_a_loop_nest_that_restarts_from_inside_gets_an_entry_arm(entries_everywhere: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython's eval loop nest has no entry loops (a guard per outer iteration in the normal body
    cost too much), but with its target big enough it has an entry arm, whose branches to the
    outer header go to the outer loop in normal form."""
    monkeypatch.setattr(entry_arm, "MIN_TARGET", 1)
    module = wat_module(EVAL_WAT)
    body = module.ir.funcs[0].body
    end_of, _ = match_blocks(body)
    live = [False] * len(body)
    plan = plan_entries(body, end_of, live)
    frame, dispatch = (i for i, ins in enumerate(body) if ins.op == 0x03)
    assert not plan
    kept, chain = entry_arm.chain_of(plan, body, end_of, live)
    assert chain == [frame, dispatch] and kept.targets == {dispatch}


def test_the_cross_engine_checks_hold_for_a_restored_eval_loop_nest(arms_everywhere: None) -> None:
    """The eval loop nest restored at every stable point of a run into its entry arm runs on to the
    uninterrupted result, a branch to the outer header included."""
    for k in (3, 10, 47, 300):
        _restore_stop_again_and_finish(wat_module(EVAL_WAT), k, 20)


def test_an_entry_arm_keeps_the_sites_in_body_order(arms_everywhere: None) -> None:
    """The sites of a function with an entry arm are numbered in body order (the normal arm is
    emitted first, the arm after it reuses its sites): the copy's skip tests take a construct's
    sites as a range of ids. With the arm first, its dispatch loop's sites came first, and a
    QuickJS restored mid-round took the wrong arm of its exception path (test_real_programs)."""
    from wasmig.instrument.unwind import instrument

    module = wat_module(DISPATCH_WAT)
    sites = instrument(module, count_steps=True).sitemap.sites
    run = module.ir.num_imported_funcs() + 1
    pcs = [s.pc for s in sorted(sites, key=lambda s: s.id) if s.func == run]
    assert len(pcs) > 3 and pcs == sorted(pcs)


@pytest.mark.parametrize("k", [2, 41, 702, 1403])
def test_a_dispatch_loop_restored_in_its_entry_arm_runs_to_the_interpreters_result(
        k: int, arms_everywhere: None) -> None:
    """A bytecode loop inside a restart loop, with a value buried beneath the restart loop's
    block, restored at step k on wasmtime (the copy transfers into the entry arm), stopped again
    1000 steps on with the interpreter's frames and count, and run to the end: the interpreter's
    result."""
    _restore_stop_again_and_finish(wat_module(DISPATCH_WAT), k, 1000)


def test_the_run_module_is_the_same_with_and_without_entry_functions(entries_everywhere: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A function's entry function lives in the rewind module: its normal body has no transfer
    code (which cost QuickJS 1.15-1.18x plain against 1.06-1.09x), so the run module's code is
    the very code of a pass without transfers."""
    from wasmig.binary.decoder import decode_module
    from wasmig.binary.features import INSTRUMENTED
    from wasmig.instrument.unwind import instrument

    module = wat_module(TRAPPING_WAT)
    with_entries = instrument(module, count_steps=False)
    monkeypatch.setattr(transfer, "MIN_BODY", 10**9)
    without = instrument(module, count_steps=False)
    assert with_entries.rewind is not None and without.rewind is not None
    assert len(with_entries.rewind) > len(without.rewind)  # the entry function of $run
    def code(data: bytes) -> list[list[tuple[int, object]]]:
        """Every function's instructions, block types spelt out (the type section's order differs)."""
        ir = decode_module(data, features=INSTRUMENTED)
        return [[(i.op, ir.types[i.imm] if i.op in (0x02, 0x03, 0x04) and isinstance(i.imm, int) else i.imm)
                 for i in f.body] for f in ir.funcs]

    assert code(with_entries.data) == code(without.data)


@pytest.mark.parametrize("k", [40, 700, 3001])
def test_a_rewound_frame_traps_in_its_normal_body_as_the_interpreter_reports_it(
        k: int, monkeypatch: pytest.MonkeyPatch, entries_everywhere: None) -> None:
    """Restored mid-loop on wasmtime, the frame of $run leaves its rewind copy at the loop's next
    header: the trap a few hundred iterations on happens in $run's entry function (wasmtime's own
    frame names the one after every copy, not the copy), and is reported with the interpreter's
    reason and backtrace (the transfer keeps trap origins, and the entry function stands for
    $run)."""
    module = wat_module(TRAPPING_WAT)
    wasi = _wasi()
    interp = instantiate_with_wasi(module, wasi)
    with pytest.raises(wasmig.Trap) as expected:
        interp.invoke("_start")
    wasi.close()
    snap = _interp_snapshot(module, k)
    assert "run" in [module.ir.func_name(f.func) for f in snap.frames]
    innermost: list[list[tuple[int, str | None]]] = []
    convert = runtime.convert_trap

    def spy(trap: object, *args: object) -> wasmig.Trap:
        innermost.append([(f.func_index, f.module_name) for f in trap.frames])  # type: ignore[attr-defined]
        return convert(trap, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "convert_trap", spy)
    assert snap.wasi is not None
    wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi, count_steps=True)
        runner.load(snap)
        runner.arm(None)
        with pytest.raises(wasmig.Trap) as got:
            runner.resume(snap.frames, snap.point)
    finally:
        wasi.close()
    assert (got.value.reason, got.value.backtrace) == (expected.value.reason, expected.value.backtrace)
    n = len(module.ir.funcs)  # $run's entry function: the only one, after the pass's functions and the copies
    assert innermost and innermost[-1][0] == (module.ir.num_imported_funcs() + 2 * n + HELPERS, REWIND_MODULE_NAME)


@pytest.mark.parametrize("k", [2, 41, 702, 2999])
def test_a_restored_frame_checkpoints_again_in_its_normal_body_with_the_interpreters_count(
        k: int, entries_everywhere: None) -> None:
    """Restored at step k and stopped again 1500 steps on (after the transfer, in the normal body):
    frames, point and step count equal the interpreter's at k + 1500, and the program finishes
    with the uninterrupted result."""
    module = wat_module(TRAPPING_WAT.replace('"\\d0\\07"', '"\\00"'))
    assert module.ir.datas[0].init == b"\0"
    _restore_stop_again_and_finish(module, k, 1500)


def _restore_stop_again_and_finish(module: wasmig.Module, k: int, later: int) -> None:
    """Restore the interpreter's snapshot at step k on wasmtime, stop again ``later`` steps on:
    frames, point and count equal the interpreter's there; run on to the end (``_start`` returns,
    the module calls no proc_exit): memory[0] holds the uninterrupted result."""
    want = _interp_snapshot(module, k + later)
    snap = _interp_snapshot(module, k)
    assert snap.wasi is not None
    wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi, count_steps=True)
        runner.load(snap)
        runner.arm(k + later)
        runner.resume(snap.frames, snap.point)
        assert runner.unwound
        again = from_plain(to_plain(runner.capture()))
        runner.arm(None)
        runner.resume()
        assert not runner.unwound
        mem = runner.instance.exports["memory"]
        result = int.from_bytes(bytes(mem.read(runner.store, 0, 4)), "little")
    finally:
        wasi.close()
    assert (again.frames, again.point, again.steps) == (want.frames, want.point, want.steps)
    wasi = _wasi()
    inst = instantiate_with_wasi(module, wasi)
    inst.invoke("_start")
    wasi.close()
    assert result == int.from_bytes(bytes(inst.store.mems[0].data[:4]), "little")


def test_return_call_is_decoded_and_validated_only_with_the_tail_call_feature() -> None:
    """The binary layer knows ``return_call`` (what a transfer ends with) only when asked: without
    the feature it is an illegal opcode; with it, a callee returning other types is invalid."""
    from wasmig.binary.decoder import decode_module
    from wasmig.binary.encoder import encode_module
    from wasmig.binary.validator import validate_module
    from wasmig.errors import DecodeError, ValidationError

    wasmtime = pytest.importorskip("wasmtime")
    ok = wasmtime.wat2wasm('(module (func $a (param i32) (result i32) local.get 0)'
                           ' (func (export "b") (result i32) i32.const 7 return_call $a))')
    bad = wasmtime.wat2wasm('(module (func $c (result i64) i64.const 1) (func (result i32) return_call $c))')
    with pytest.raises(DecodeError, match="illegal opcode 0x12"):
        decode_module(ok)
    ir = decode_module(ok, features={"tail-call"})
    assert [ins.op for ins in ir.funcs[1].body] == [0x41, 0x12, 0x0B]
    validate_module(ir, features={"tail-call"})
    assert encode_module(ir) == ok
    with pytest.raises(ValidationError, match="return_call"):
        validate_module(ir)
    with pytest.raises(ValidationError, match="type mismatch: return_call"):
        validate_module(decode_module(bad, features={"tail-call"}), features={"tail-call"})


#: QuickJS's JS_CallInternal in small: a restart loop (nothing on the stack) whose body is blocks,
#: a segment and the dispatch loop (a call in one case), and whose tail after the dispatch loop
#: branches back to the restart loop's header (QuickJS: a caught exception); memory[0] = result
REENTERED_WAT = DISPATCH_WAT[:DISPATCH_WAT.index("(loop $restart") + len("(loop $restart")] + """
      (block $out
        (block $inner
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (local.set $pc (i32.div_u (local.get $pc) (i32.const 2)))
          (loop $next
            (local.set $pc (i32.add (local.get $pc) (i32.const 1)))
            (br_if $out (i32.gt_u (local.get $pc) (i32.mul (local.get $k) (i32.const 700))))
            (block $c2
              (block $c1
                (block $c0
                  (br_table $c0 $c1 $c2 (i32.rem_u (local.get $pc) (i32.const 3))))
                (local.set $acc (i32.add (local.get $acc) (i32.const 1))) (br $next))
              (local.set $acc (call $step (local.get $acc))) (br $next))
            (local.set $acc (i32.xor (local.get $acc) (local.get $pc))) (br $next))))
      (local.set $acc (i32.add (local.get $acc) (i32.const 100)))
      (br_if $restart (i32.lt_u (local.get $k) (i32.const 4))))
    (local.get $acc))
  (func (export "_start") (i32.store (i32.const 0) (call $run (i32.const 1)))))
"""


def _run_body_size(module: wasmig.Module) -> int:
    from wasmig.binary.decoder import decode_module
    from wasmig.binary.features import INSTRUMENTED
    from wasmig.instrument.unwind import instrument

    run = instrument(module, count_steps=True).data
    return decode_module(run, features=INSTRUMENTED).funcs[1].body_size


def test_a_restart_loop_restarted_only_after_its_dispatch_loop_is_held_once_in_the_arm(
        arms_everywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """QuickJS's shape: the arm holds the dispatch loop once, not the restart loop around it as
    well (a branch to the restart header transfers to it again); CPython's and a nest with values
    on the stack keep the two-copy arm."""
    real = entry_arm._reenterable
    once = _run_body_size(wat_module(REENTERED_WAT))
    monkeypatch.setattr(entry_arm, "_reenterable", lambda rw, chain, i: False)
    twice = _run_body_size(wat_module(REENTERED_WAT))
    assert once < twice
    monkeypatch.setattr(entry_arm, "_reenterable", real)
    seen: list[bool] = []
    monkeypatch.setattr(entry_arm, "_reenterable", lambda rw, chain, i: seen.append(real(rw, chain, i)) or False)
    for wat in (DISPATCH_WAT, EVAL_WAT):
        _run_body_size(wat_module(wat))
    assert seen == [False, False]


@pytest.mark.parametrize("k", [2, 5, 41, 702, 1403, 2200])
def test_a_dispatch_loop_restored_in_a_one_copy_arm_restarts_to_the_interpreters_result(
        k: int, arms_everywhere: None) -> None:
    """Restored at step k into the one-copy arm (the dispatch loop, or the restart loop's header),
    stopped again 1000 steps on -- across a restart, a transfer of the frame to itself -- with the
    interpreter's frames and count, and run to the end: the interpreter's result."""
    _restore_stop_again_and_finish(wat_module(REENTERED_WAT), k, 1000)
