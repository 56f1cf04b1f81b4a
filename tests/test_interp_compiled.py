"""The interpreter's compiled fast path (``wasmig/interp/segments.py``, ``wasmig/interp/straight.py``)
against its instruction-by-instruction loop (``Machine.segments = False``), the reference.

Everything observable must be the same: results, output, step counts, the canonical snapshot at
every stable point (a straight call is only taken when no stop can fall inside it), trap reasons
and backtraces (straight frames included), and where the call stack runs out. The C programs are
compiled at ``-O0`` as well as ``-O2``: unoptimised code (as CPython for WASI is built) is made of
the small leaf functions the straight compilation is for.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import pytest

import wasmig
from tests.wat import wat_module
from wasmig import toolchain
from wasmig.engines.interp.capture import capture
from wasmig.interp.machine import Suspended
from wasmig.interp.straight import Straight
from wasmig.session.command import instantiate_with_wasi
from wasmig.wasi.preview1 import ProcExit, Wasi

PROGRAMS = Path(__file__).resolve().parent / "programs"
needs_zig = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV),
    reason="ziglang is not installed (pip install ziglang)",
)

#: modes of the machine: the reference loop, segments compiled at first arrival, the default
MODES = {"stepwise": (False, 1), "compiled-at-once": (True, 1), "default": (True, None)}


def configure(machine: Any, mode: str) -> None:
    segments, threshold = MODES[mode]
    machine.segments = segments
    if threshold is not None:
        machine.segment_threshold = threshold


def run_program(module: wasmig.Module, args: list[str], mode: str, stops: list[int] = ()) -> dict[str, Any]:
    """Run a WASI command in ``mode``, stopping (and capturing) at each step of ``stops``."""
    out = io.BytesIO()
    wasi = Wasi(args, {}, stdout=out, stderr=io.BytesIO())
    inst = instantiate_with_wasi(module, wasi, "interp")
    configure(inst.machine, mode)
    pending = sorted(stops)
    snaps = []
    inst.stop_at(step=pending.pop(0) if pending else None)
    first, code = True, 0
    while True:
        try:
            if first:
                first = False
                inst.invoke("_start")
            else:
                inst.resume()
            break
        except ProcExit as e:
            code = e.code
            break
        except Suspended:
            snaps.append(capture(inst))
            inst.stop_at(step=pending.pop(0) if pending else None)
    wasi.close()
    return {"code": code, "out": out.getvalue(), "steps": inst.machine.steps, "snaps": snaps,
            "straight": sum(isinstance(f, wasmig.interp.store.WasmFunction) and isinstance(f.straight, Straight)
                            for f in inst.store.funcs)}


def state(s: Any) -> tuple:
    return (s.steps, s.point, s.frames, s.memories, s.tables, s.globals, s.dropped_data, s.dropped_elems)


@needs_zig
@pytest.mark.parametrize("opt", ["-O0", "-O2"])
@pytest.mark.parametrize("program,args", [("checksum", ["checksum"]), ("floaty", ["floaty", "3"])])
def test_programs_same_output_steps_and_snapshots(program: str, args: list[str], opt: str) -> None:
    # -O0 without zig's default UBSan (checksum's hashing overflows on purpose) and stack protector
    # (its canary comes from random_get, which would make two runs' memories differ)
    flags = ["-fno-sanitize=undefined", "-fno-stack-protector"] if opt == "-O0" else []
    module = wasmig.Module.from_file(toolchain.compile_c(PROGRAMS / f"{program}.c", opt=opt, extra_flags=flags))
    ref = run_program(module, args, "stepwise")
    total = ref["steps"]
    assert ref["code"] == 0 and ref["out"]
    # stops spread over the run, plus a dense window (entries of straight callees fall in it)
    stops = sorted({*range(1, total, max(1, total // 25)), *range(total // 2, total // 2 + 40)})
    ref = run_program(module, args, "stepwise", stops)
    for mode in ("compiled-at-once", "default"):
        plain = run_program(module, args, mode)
        assert (plain["code"], plain["out"], plain["steps"]) == (ref["code"], ref["out"], ref["steps"]), mode
        stopped = run_program(module, args, mode, stops)
        assert (stopped["code"], stopped["out"], stopped["steps"]) == (ref["code"], ref["out"], ref["steps"]), mode
        assert len(stopped["snaps"]) == len(ref["snaps"]) == len(stops)
        for k, (a, b) in enumerate(zip(stopped["snaps"], ref["snaps"], strict=True)):
            assert state(a) == state(b), f"{mode}: snapshot at step {stops[k]} differs"
    if opt == "-O0":
        assert run_program(module, args, "compiled-at-once")["straight"] > 10, "no straight function was compiled"


STRUCTURED = """
(module
  (memory 1)
  (global $g (mut i32) (i32.const 100))
  ;; multi-level branches out of nested blocks, with values
  (func $nest (param i32) (result i32)
    (block $a (result i32)
      (block $b (result i32)
        (block $c (result i32)
          (drop (br_if $a (i32.const 11) (i32.eq (local.get 0) (i32.const 0))))
          (drop (br_if $b (i32.const 22) (i32.eq (local.get 0) (i32.const 1))))
          (drop (br_if $c (i32.const 33) (i32.eq (local.get 0) (i32.const 2))))
          (if (i32.eq (local.get 0) (i32.const 3)) (then (br $a (i32.const 44))))
          (i32.const 55))
        (i32.const 1000) (i32.add))
      (i32.const 2000) (i32.add)))
  ;; br_table with repeated labels (a set test), a default, and a value
  (func $table (param i32) (result i32)
    (block $x (result i32)
      (block $y (result i32)
        (block $z (result i32)
          (i32.const 7) (local.get 0)
          (br_table $z $y $z $x $y $z $z $y $x))
        (i32.const 100) (i32.add))
      (i32.const 1000) (i32.add)))
  ;; if/else with results, an if without else carrying a param through (multi-value), select
  (func $ifs (param i32 i32) (result i32 i32 i32)
    (local.get 0)
    (if (param i32) (result i32) (i32.gt_s (local.get 1) (i32.const 5))
      (then (i32.const 3) (i32.mul)))
    (if (result i32) (i32.and (local.get 1) (i32.const 1))
      (then (global.get $g)) (else (i32.sub (i32.const 0) (local.get 1))))
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (select (local.get 0) (local.get 1) (i32.lt_u (local.get 0) (local.get 1))))
  ;; return from inside nested constructs, dead code after branches, memory and i64/f64 work
  (func $mixed (param i32) (result i64)
    (local f64)
    (i32.store (i32.const 16) (local.get 0))
    (local.set 1 (f64.mul (f64.convert_i32_s (local.get 0)) (f64.const 1.5)))
    (block
      (if (i32.lt_s (local.get 0) (i32.const 0))
        (then (return (i64.const -1)) (drop (i32.const 9))))
      (br_if 0 (i32.eqz (local.get 0)))
      (return (i64.add (i64.trunc_f64_s (local.get 1)) (i64.load32_u (i32.const 16))))
      (unreachable))
    (i64.const 42))
  ;; a straight function calling straight functions, called in a loop so that segments compile
  (func $sum (export "sum") (param i32) (result i64)
    (local i32 i64)
    (loop $l
      (local.set 2 (i64.add (local.get 2) (i64.extend_i32_s (call $nest (i32.rem_u (local.get 1) (i32.const 5))))))
      (local.set 2 (i64.add (local.get 2) (i64.extend_i32_s (call $table (i32.rem_u (local.get 1) (i32.const 11))))))
      (local.set 2 (i64.add (local.get 2) (call $mixed (i32.sub (local.get 1) (i32.const 3)))))
      (local.set 2 (i64.add (local.get 2) (i64.extend_i32_u
        (i32.add (i32.add (call $ifs (local.get 1) (i32.rem_u (local.get 1) (i32.const 9))))))))
      (br_if $l (i32.lt_u (local.tee 1 (i32.add (local.get 1) (i32.const 1))) (local.get 0))))
    (local.get 2))
  (func (export "nest") (param i32) (result i32) (call $nest (local.get 0)))
  (func (export "table") (param i32) (result i32) (call $table (local.get 0)))
  (func (export "mixed") (param i32) (result i64) (call $mixed (local.get 0))))
"""


def test_structured_control_of_straight_functions() -> None:
    module = wat_module(STRUCTURED)
    results = {}
    for mode in ("stepwise", "compiled-at-once"):
        inst = wasmig.Instance(module)
        configure(inst.machine, mode)
        got = [inst.exports["sum"](n) for n in (1, 7, 40)]
        got += [inst.exports["nest"](k) for k in range(6)] + [inst.exports["table"](k) for k in range(12)]
        got += [inst.exports["mixed"](k) for k in (-5, 0, 3)]
        results[mode] = (got, inst.machine.steps, inst.store.globals[0].internal)
        if mode != "stepwise":
            compiled = {f.name for f in inst.store.funcs if isinstance(f.straight, Straight)}
            assert {"nest", "table", "ifs", "mixed"} <= compiled
    assert results["stepwise"] == results["compiled-at-once"]
    assert results["stepwise"][0][3:9] == [11, 2022, 3033, 44, 3055, 3055]


TRAPS = """
(module
  (memory 1)
  (func $leaf (param i32) (result i32) (i32.div_u (i32.const 10) (local.get 0)))
  (func $load (param i32) (result i32) (i32.load (local.get 0)))
  (func $mid (param i32 i32) (result i32)
    (if (result i32) (local.get 1) (then (call $load (local.get 0))) (else (call $leaf (local.get 0)))))
  (func $bad (unreachable))
  (func (export "loop") (param i32 i32 i32) (result i32)
    (local i32 i32)
    (loop $l
      (local.set 4 (i32.add (local.get 4) (call $mid (select (local.get 0) (i32.const 1)
                                                      (i32.eq (local.get 3) (local.get 2))) (local.get 1))))
      (br_if $l (i32.lt_u (local.tee 3 (i32.add (local.get 3) (i32.const 1))) (i32.const 30))))
    (if (i32.eqz (local.get 4)) (then (call $bad)))
    (local.get 4))
  ;; recursion with a straight chain at every level: where does the stack run out?
  (func $rec (export "rec") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (call $mid (i32.const 1) (i32.const 0)))
      (else (i32.add (call $mid (i32.const 1) (i32.const 0)) (call $rec (i32.sub (local.get 0) (i32.const 1))))))))
"""


@pytest.mark.parametrize("args", [(0, 0, 25), (70000, 1, 12), (0, 1, 99)])
def test_traps_and_backtraces_are_the_same(args: tuple[int, int, int]) -> None:
    module = wat_module(TRAPS)
    seen = []
    for mode in ("stepwise", "compiled-at-once", "default"):
        inst = wasmig.Instance(module)
        configure(inst.machine, mode)
        with pytest.raises(wasmig.Trap) as info:
            inst.exports["loop"](*args)
        seen.append((info.value.reason, info.value.backtrace, inst.machine.steps))
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][1][0].startswith(("leaf", "load", "bad"))


@pytest.mark.parametrize("limit", ["frames", "slots"])
def test_call_stack_runs_out_at_the_same_depth(limit: str) -> None:
    module = wat_module(TRAPS)
    seen = []
    for mode in ("stepwise", "compiled-at-once"):
        inst = wasmig.Instance(module, max_frames=200 if limit == "frames" else None)
        if limit == "slots":
            inst.machine.max_slots = 300
        configure(inst.machine, mode)
        assert inst.exports["rec"](20) == 21 * 10
        with pytest.raises(wasmig.Exhaustion) as info:
            inst.exports["rec"](1000)
        seen.append((info.value.backtrace, inst.machine.steps))
    assert seen[0] == seen[1]


def test_a_stop_never_falls_inside_a_straight_call() -> None:
    """Stopping at every step of a loop that calls straight functions gives the same snapshots:
    the guard routes the calls in which a stop falls through the dispatch loop."""
    module = wat_module(TRAPS)
    snaps = {}
    for mode in ("stepwise", "compiled-at-once"):
        inst = wasmig.Instance(module)
        configure(inst.machine, mode)
        got = []
        inst.stop_at(step=1)
        try:
            inst.exports["loop"](3, 0, 99)
        except Suspended:
            pass
        while True:
            got.append(state(capture(inst)))
            inst.stop_at(step=inst.machine.steps + 1)
            try:
                result = inst.resume()
                break
            except Suspended:
                continue
        snaps[mode] = (got, result)
    assert snaps["stepwise"] == snaps["compiled-at-once"]
    assert len(snaps["stepwise"][0]) > 60


def nested(name: str, depth: int) -> str:
    """A function of ``depth`` nested blocks, each the target of one arm of a ``br_table``."""
    opens = "".join(f"(block $b{k} " for k in range(depth))
    labels = " ".join(f"$b{k}" for k in reversed(range(depth)))
    inner = f"(br_table {labels} $b0 (local.get 0))"
    closes = "".join(f" (local.set 1 (i32.add (local.get 1) (i32.const {k + 1})))) " for k in reversed(range(depth)))
    return f"(func ${name} (param i32) (result i32) (local i32) {opens}{inner}{closes} (local.get 1))"


def test_constructs_nested_deeper_than_python_allows_run_as_segments() -> None:
    """Python compiles at most 20 nested loops: a straight function whose wrapped blocks nest deeper
    stays in segments (and still computes the same), a shallower one is compiled."""
    module = wat_module(f"""(module {nested("deep", 30)} {nested("shallow", 10)}
      (func (export "run") (param i32) (result i32) (local i32 i32)
        (loop $l
          (local.set 2 (i32.add (local.get 2) (i32.add (call $deep (local.get 1)) (call $shallow (local.get 1)))))
          (br_if $l (i32.lt_u (local.tee 1 (i32.add (local.get 1) (i32.const 1))) (local.get 0))))
        (local.get 2)))""")
    got = {}
    for mode in ("stepwise", "compiled-at-once"):
        inst = wasmig.Instance(module)
        configure(inst.machine, mode)
        got[mode] = (inst.exports["run"](40), inst.machine.steps)
        if mode != "stepwise":
            kinds = {f.name: isinstance(f.straight, Straight) for f in inst.store.funcs}
            assert kinds["shallow"] and not kinds["deep"]
    assert got["stepwise"] == got["compiled-at-once"]


def test_code_called_from_another_instance_counts_that_machine_s_steps() -> None:
    """Each instance has its own machine; an importing instance runs the exporter's code on its own
    machine, so the exporter's compiled segments must not count steps into (or check the frames of)
    the exporter's machine."""
    provider_src = f"""(module {nested("leaf", 3)}
      (func (export "work") (param i32) (result i32) (local i32 i32)
        (loop $l
          (local.set 2 (i32.add (local.get 2) (call $leaf (local.get 1))))
          (br_if $l (i32.lt_u (local.tee 1 (i32.add (local.get 1) (i32.const 1))) (local.get 0))))
        (local.get 2)))"""
    user_src = """(module (import "p" "work" (func $work (param i32) (result i32)))
      (func (export "run") (param i32) (result i32) (call $work (local.get 0))))"""
    got = {}
    for mode in ("stepwise", "compiled-at-once"):
        provider = wasmig.Instance(wat_module(provider_src))
        user = wasmig.Instance(wat_module(user_src), {"p": {"work": provider.exports["work"]}})
        configure(provider.machine, mode)
        configure(user.machine, mode)
        warm = provider.exports["work"](50)  # compiles the provider's segments on its own machine
        got[mode] = (warm, provider.machine.steps, user.exports["run"](50), user.machine.steps,
                     provider.machine.steps)
    assert got["stepwise"] == got["compiled-at-once"]
    assert got["stepwise"][1] == got["stepwise"][4]  # the user's run left the provider's count alone
