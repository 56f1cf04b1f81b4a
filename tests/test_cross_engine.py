"""The cross-engine matrix, in process: checkpoint on engine A at step k, restore on engine B and
finish, for every pair of engines this host has (interp and wasmtime: all four pairs) — through
the :class:`~wasmig.engines.base.Engine` interface only, so a third engine joins the matrix by
being registered — and the canonical snapshots the engines take at the same k are equal.

The programs cover deep recursion through function pointers with floating point (``deeprec``,
10,000 frames: k values at its deepest point are included), hashing, qsort through a function
pointer, matrix arithmetic and fib (``checksum``), and hand-written folded code (values buried
beneath blocks, loops with parameters, multi-value, call_indirect, recursion) at *every* stable
point. The CLI-level matrix with files, stdin, sleep and accept is in test_checkpoint_e2e.py.
"""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import wasmig
from tests.wat import wat_module
from wasmig import engines
from wasmig.engines.interp.capture import capture
from wasmig.instrument.unwind import copies_per_round
from wasmig.session.command import instantiate_with_wasi
from wasmig.snapshot.state import Snapshot, SnapshotError, from_plain, to_plain
from wasmig.toolchain import compile_c
from wasmig.wasi.preview1 import ProcExit, Wasi
from wasmig.wasi.snapshot import restore_wasi

pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402

PROGRAMS = Path(__file__).parent / "programs"
#: every engine this host runs, the reference (the interpreter) first
ENGINES = tuple(engines.installed_engines())
PAIRS = [(a, b) for a in ENGINES for b in ENGINES]
#: compared between the engines' snapshots; only created_ns, engine, instructions and meta may differ
COMPARED = ("module_sha256", "steps", "point", "frames", "memories", "tables", "globals", "dropped_data",
            "dropped_elems")


@dataclass
class Stopped:
    snapshot: Snapshot
    stdout: bytes  # what the run printed before it stopped


def _wasi(args: list[str], out: io.BytesIO) -> Wasi:
    return Wasi(args, stdin=b"", stdout=out, stderr=io.BytesIO())


def stop(engine: str, module: wasmig.Module, args: list[str], k: int) -> Stopped | None:
    """Run on ``engine`` until stable point k; None when the program ends first."""
    out = io.BytesIO()
    wasi = _wasi(args, out)
    try:
        program = engines.get(engine).program(module, wasi, checkpoints=True, count_steps=True)
        program.arm(at_step=k)
        try:
            if not program.start():
                return None
        except ProcExit:
            return None
        snap = program.capture()
    finally:
        wasi.close()
    return Stopped(from_plain(to_plain(snap)), out.getvalue())  # through the on-disk form


def go_on(engine: str, module: wasmig.Module, snap: Snapshot, wasi: Wasi, *, at_step: int | None = None,
          count_steps: bool = False) -> bool:
    """Restore ``snap`` on ``engine`` and run it until it ends (False) or stops at ``at_step`` (True)."""
    program = engines.get(engine).restore(module, snap, wasi, count_steps=count_steps)
    program.arm(at_step=at_step)
    return program.resume()


def finish(engine: str, module: wasmig.Module, snap: Snapshot) -> tuple[int, bytes]:
    """Restore ``snap`` on ``engine`` (on wasmtime the fast variant: it rewinds the same records)
    and run it to the end: (exit code, what it printed)."""
    out = io.BytesIO()
    assert snap.wasi is not None
    wasi = restore_wasi(snap.wasi, stdin=b"", stdout=out, stderr=io.BytesIO())
    try:
        try:
            assert not go_on(engine, module, snap, wasi)
            code = 0
        except ProcExit as e:
            code = e.code
    finally:
        wasi.close()
    return code, out.getvalue()


_reference: dict[tuple[str, ...], tuple[int, bytes, int]] = {}


def reference(module: wasmig.Module, args: list[str]) -> tuple[int, bytes, int]:
    """(exit code, stdout, total stable points) of the uninterrupted run on the interpreter."""
    key = tuple(args)
    if key not in _reference:
        out = io.BytesIO()
        wasi = _wasi(args, out)
        inst = instantiate_with_wasi(module, wasi)
        try:
            inst.invoke("_start")
            code = 0
        except ProcExit as e:
            code = e.code
        finally:
            wasi.close()
        _reference[key] = (code, out.getvalue(), inst.machine.steps)
    return _reference[key]


def assert_same_snapshot(a: Snapshot, b: Snapshot, what: str) -> None:
    for name in COMPARED:
        assert getattr(a, name) == getattr(b, name), f"{what}: the engines' snapshots differ in {name}"
    assert a.wasi is not None and b.wasi is not None
    assert (a.wasi.args, a.wasi.env) == (b.wasi.args, b.wasi.env)
    assert [f.__dict__ for f in a.wasi.fds] == [f.__dict__ for f in b.wasi.fds], f"{what}: WASI fds differ"


def _cases() -> list[tuple[str, list[str], int]]:
    rng = random.Random(20261121)
    cases = [("deeprec", ["deeprec", "10000"], k) for k in (10_030, 10_040)]  # 10,000 frames deep
    cases += [("deeprec", ["deeprec", "10000"], rng.randint(1, 60_000)) for _ in range(2)]
    cases += [("checksum", ["checksum"], k) for k in (1, 2, 9000)]
    cases += [("checksum", ["checksum"], rng.randint(3, 40_000)) for _ in range(3)]
    return cases


@pytest.mark.parametrize(("name", "args", "k"), _cases(), ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_checkpoint_on_either_engine_finishes_on_either(name: str, args: list[str], k: int) -> None:
    module = wasmig.Module.from_file(compile_c(PROGRAMS / f"{name}.c"))
    code, expected, total = reference(module, args)
    stopped = {engine: stop(engine, module, args, k) for engine in ENGINES}
    if k > total:
        assert all(s is None for s in stopped.values()), stopped
        return
    a = stopped[ENGINES[0]]
    for engine, b in stopped.items():
        assert a is not None and b is not None, f"{name} at step {k} of {total}: {engine} did not stop"
        assert a.stdout == b.stdout
        assert_same_snapshot(a.snapshot, b.snapshot, f"{name} at step {k} on {engine}")
    if k in (10_030, 10_040) and name == "deeprec":
        assert len(a.snapshot.frames) > 10_000, "not as deep as intended"
    for engine_a, engine_b in PAIRS:
        got = finish(engine_b, module, stopped[engine_a].snapshot)  # type: ignore[union-attr]
        assert got == (code, expected[len(a.stdout):]), f"{name}: checkpoint at {k} on {engine_a}, " \
                                                        f"finish on {engine_b}"
        assert a.stdout + got[1] == expected


def test_chained_across_engines() -> None:
    """interp -> wasmtime -> interp -> wasmtime, a checkpoint at each hop, one program run."""
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    code, expected, total = reference(module, ["checksum"])
    out = io.BytesIO()
    first = stop("interp", module, ["checksum"], 5000)
    assert first is not None
    printed = first.stdout
    snap = first.snapshot
    for engine, k in (("wasmtime", 15_000), ("interp", 25_000), ("wasmtime", 33_000)):
        assert snap.wasi is not None
        wasi = restore_wasi(snap.wasi, stdin=b"", stdout=out, stderr=io.BytesIO())
        program = engines.get(engine).restore(module, snap, wasi, count_steps=True)
        program.arm(at_step=k)
        assert program.resume()
        snap = from_plain(to_plain(program.capture()))
        wasi.close()
        assert snap.steps == k
    got = finish("interp", module, snap)
    assert got[0] == code and printed + out.getvalue() + got[1] == expected


WAT = (Path(__file__).parent / "test_instrument.py").read_text().split('WAT = """', 1)[1].split('"""', 1)[0]


def test_every_stable_point_of_folded_code_round_trips() -> None:
    """The hand-written module (buried values, loop parameters, multi-value, call_indirect,
    recursion): at every one of its stable points, both engines take the same snapshot and
    each finishes from either engine's snapshot with the same memory and globals."""
    module = wat_module(WAT)
    ref_wasi = _wasi(["m"], io.BytesIO())
    ref = instantiate_with_wasi(module, ref_wasi)
    ref.invoke("_start")
    ref_wasi.close()
    want = (bytes(ref.store.mems[0].data), ref.store.globals[0].internal & 0xFFFFFFFF)
    k = 0
    while True:
        k += 1
        stopped = {engine: stop(engine, module, ["m"], k) for engine in ENGINES}
        if stopped["interp"] is None:
            assert stopped["wasmtime"] is None
            break
        assert stopped["wasmtime"] is not None
        assert_same_snapshot(stopped["interp"].snapshot, stopped["wasmtime"].snapshot, f"step {k}")
        snap = stopped["wasmtime"].snapshot
        wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        try:
            runner = Checkpointable(module, wasi)  # the fast variant rewinds every stable point too
            runner.load(stopped["interp"].snapshot)
            runner.arm(None)
            runner.resume(snap.frames, snap.point)
            ex = runner.instance.exports
            got = (bytes(ex["memory"].read(runner.store, 0, 65536)), ex["wasmig:g0"].value(runner.store) & 0xFFFFFFFF)
        finally:
            wasi.close()  # its waiter's pipe: hundreds of steps must not leak descriptors
        assert got == want, f"interp -> wasmtime at step {k}"
        inst = wasmig.restore(snap, module=module, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        try:
            inst.resume()
        finally:
            inst.wasi.close()
        assert (bytes(inst.store.mems[0].data), inst.store.globals[0].internal & 0xFFFFFFFF) == want, \
            f"wasmtime -> interp at step {k}"
    assert k > 250


@pytest.mark.parametrize("k", [1, 2, 777, 9000, 23_456])
def test_fast_variant_stops_soon_after_a_rewind(k: int) -> None:
    """The fast variant (no step count): a checkpoint requested before a restore's rewind is kept
    through it, so the guest stops at its first poll after the rewind: a stable point a few
    steps on (the fast variant polls fewer of them), its snapshot equal to the interpreter's at
    that step except for the step count it does not keep. Either engine finishes it."""
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    code, expected, _ = reference(module, ["checksum"])
    at_k = stop("interp", module, ["checksum"], k)
    assert at_k is not None and at_k.snapshot.wasi is not None
    out = io.BytesIO()
    wasi = restore_wasi(at_k.snapshot.wasi, stdin=b"", stdout=out, stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi)
        assert runner.steps is None
        with pytest.raises(SnapshotError, match="step count"):
            runner.arm(k + 5)
        runner.load(at_k.snapshot)
        runner.arm(None)
        runner.request()
        runner.resume()
        assert runner.unwound, "the request made before the rewind was lost"
        snap = from_plain(to_plain(runner.capture()))
    finally:
        wasi.close()
    assert snap.steps is None
    if snap.point == "after_call":  # just after a call returned: an instruction boundary
        later = next((s for s in after_call_states(module, ["checksum"], k, 20000) if _same_state(s.snapshot, snap)),
                     None)
        assert later is not None, f"the fast stop after step {k} is none of the interpreter's next states"
    else:  # a counted loop (wasmig/instrument/counted.py) runs up to ~1000 steps without a poll
        later = next((s for s in stable_states(module, ["checksum"], k + 1, 3000) if _same_but_steps(s.snapshot, snap)),
                     None)
        assert later is not None, f"the fast stop after step {k} is none of the interpreter's next 3000 stable points"
    assert at_k.stdout + out.getvalue() == later.stdout
    for engine in ENGINES:
        got = finish(engine, module, snap)
        assert got == (code, expected[len(later.stdout):]), f"finishing the fast snapshot on {engine}"


def test_a_snapshot_without_a_step_count_stays_without_one() -> None:
    """An uncounted snapshot cannot feed a step count: the deterministic variant refuses to load
    it, and the interpreter, which counts anyway, writes no step number into its next snapshot."""
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    stopped = stop("interp", module, ["checksum"], 4000)
    assert stopped is not None and stopped.snapshot.wasi is not None
    uncounted = stopped.snapshot
    uncounted.steps = None
    uncounted = from_plain(to_plain(uncounted))  # the on-disk form takes a null step count
    assert uncounted.steps is None
    wasi = restore_wasi(uncounted.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        with pytest.raises(SnapshotError, match="no step count"):
            Checkpointable(module, wasi, count_steps=True).load(uncounted)
    finally:
        wasi.close()
    inst = wasmig.restore(uncounted, module=module, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        inst.stop_at(step=100)  # 100 stable points after the restore: the machine counts internally
        with pytest.raises(wasmig.Suspended):
            inst.resume()
        assert capture(inst).steps is None
    finally:
        inst.wasi.close()


def _trap_of(run: Callable[[], object]) -> tuple[str, list[str]]:
    with pytest.raises(wasmig.Trap) as caught:
        run()
    return caught.value.reason, caught.value.backtrace


def test_a_trap_after_a_restore_is_reported_as_in_an_uninterrupted_run() -> None:
    """After a restore on wasmtime the rewound frames run in their functions' rewind copies
    (functions of their own): a trap there still names the original functions and offsets,
    exactly as the interpreter reports it, with no frame more or less."""
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "trap.c"))
    args = ["trap", "divzero"]
    inst = instantiate_with_wasi(module, _wasi(args, io.BytesIO()))
    expected = _trap_of(lambda: inst.invoke("_start"))
    total = inst.machine.steps
    assert expected[0] == "integer divide by zero" and len(expected[1]) >= 6
    for k in (total - 1, total - 3, total // 2):
        stopped = stop("interp", module, args, k)
        assert stopped is not None
        assert len(stopped.snapshot.frames) >= 2
        snap = stopped.snapshot
        for engine in ENGINES:
            assert _trap_of(lambda e=engine, s=snap: finish(e, module, s)) == expected, (k, engine)


# --- where the fast variant stops ------------------------------------------------------------------
#: Each phase calls $mark (WASI sched_yield, where the test requests a checkpoint) and then runs a
#: loop of one shape: a small loop without calls is unrolled (four copies of its body per poll),
#: a loop with a br_table back to it too, and the inner loop of a small loop nest (the outer one
#: polls every iteration); a loop that calls a recursive
#: function in every iteration has no poll of its own (the call polls when it returns); no function
#: polls at its entry.
FAST_WAT = """
(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $mark (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $acc (mut i32) (i32.const 0))
  (func $mix (param i32) (global.set $acc (i32.add (i32.mul (global.get $acc) (i32.const 31)) (local.get 0))))
  (func $sum (param $n i32) (result i32) (local $i i32) (local $s i32)   ;; unrolled; a value beneath it
    (drop (call $mark))
    (i32.add (i32.const 100)
      (block (result i32)
        (loop $l
          (local.set $s (i32.add (local.get $s) (i32.mul (local.get $i) (local.get $i))))
          (i32.store (i32.and (i32.mul (local.get $i) (i32.const 4)) (i32.const 1023)) (local.get $s))
          (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
        (local.get $s))))
  (func $fib (param $n i32) (result i32) (local $a i32) (local $b i32)   ;; parameters; br from an if
    (drop (call $mark))
    (i32.const 0) (i32.const 1)
    (loop $l (param i32 i32) (result i32 i32)
      (local.set $b) (local.set $a)
      (local.get $b) (i32.add (local.get $a) (local.get $b))
      (if (param i32 i32) (result i32 i32) (local.tee $n (i32.sub (local.get $n) (i32.const 1)))
        (then (br $l))))
    (drop))
  (func $countdown (param $n i32) (result i32) (local $s i32)   ;; br_table back to the loop
    (drop (call $mark))
    (block $out
      (loop $l
        (local.set $s (i32.add (local.get $s) (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br_table $out $l (i32.ne (local.get $n) (i32.const 0)))))
    (local.get $s))
  (func $nest (param $n i32) (result i32) (local $i i32) (local $j i32) (local $s i32)   ;; the inner loop unrolled
    (drop (call $mark))
    (loop $outer
      (local.set $j (i32.const 0))
      (loop $inner
        (local.set $s (i32.add (local.get $s) (i32.xor (local.get $i) (local.get $j))))
        (br_if $inner (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const 3))))
      (local.set $s (i32.mul (local.get $s) (i32.const 3)))
      (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (local.get $s))
  (func $once (result i32) (local $i i32)   ;; run once
    (drop (call $mark))
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 5))) (br_if $l (i32.const 0)))
    (local.get $i))
  (func $rec (param $n i32) (result i32)   ;; recursive: polls when its call returns ($mix does not)
    (if (result i32) (local.get $n)
      (then (i32.add (call $rec (i32.sub (local.get $n) (i32.const 1))) (i32.const 1)))
      (else (i32.const 0))))
  (func $calls (param $n i32) (result i32) (local $i i32)   ;; every iteration calls $rec: polls after it
    (drop (call $mark))
    (loop $l
      (call $mix (call $rec (local.get $i)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (local.get $i))
  (func $skips (param $n i32) (result i32) (local $i i32)   ;; a branch back skips the call: polls
    (drop (call $mark))
    (loop $l
      (br_if $l (i32.and (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 1)))
      (call $mix (local.get $i))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $i))
  (func (export "_start")
    (call $mix (call $sum (i32.const 10)))
    (call $mix (call $fib (i32.const 12)))
    (call $mix (call $countdown (i32.const 9)))
    (call $mix (call $nest (i32.const 5)))
    (call $mix (call $once))
    (call $mix (call $sum (i32.const 3)))   ;; fewer iterations than a round of copies
    (call $mix (call $calls (i32.const 4)))
    (call $mix (call $skips (i32.const 6)))
    (i32.store (i32.const 2048) (global.get $acc))
    (i32.store (i32.const 2052) (i32.const 2048))
    (i32.store (i32.const 2056) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 2052) (i32.const 1) (i32.const 2060)))))
"""

#: for a request made in the j-th $mark: (function, point, {local index: value}) of the stop: the
#: header poll of the loop that follows, on its first entry, or the first return of a call there
FAST_STOPS = [
    ("sum", "loop", {1: 0, 2: 0}),
    ("fib", "loop", {0: 12}),
    ("countdown", "loop", {0: 9, 1: 0}),
    ("nest", "loop", {1: 0}),  # the outer loop
    ("once", "loop", {0: 0}),
    ("sum", "loop", {0: 3, 1: 0}),
    ("calls", "after_call", {1: 0}),  # $rec(0) returned; $calls' loop does not poll
    ("skips", "loop", {1: 0}),
]


def test_where_the_fast_variant_stops_and_that_it_is_a_state_of_the_interpreter() -> None:
    """A request made before each loop: the fast variant stops at the loop's header (above),
    its snapshot equals the interpreter's at some stable point, and both engines finish it; the
    unrolled loops run every trip count (10 and 3, not multiples of four) as the original."""
    module = wat_module(FAST_WAT)
    code, expected, total = reference(module, ["fast"])
    assert len(expected) == 4
    states = [stop("interp", module, ["fast"], k) for k in range(1, total + 1)]
    for j, (name, point, locals_) in enumerate(FAST_STOPS, start=1):
        snap, printed = _fast_stop(module, j)
        innermost = snap.frames[-1]
        assert (module.ir.func_name(innermost.func), snap.point) == (name, point), f"request {j}"
        for index, value in locals_.items():
            assert innermost.locals[index] == ("i32", value), f"request {j}: local {index}"
        if point == "after_call":
            assert snap.frames[-1].stack == [("i32", 0)], f"request {j}: $rec's result"
            same = [s for s in after_call_states(module, ["fast"], 1, 100_000)
                    if s.stdout == printed and _same_state(s.snapshot, snap)]
        else:
            same = [k for k, s in enumerate(states, start=1) if s is not None and s.stdout == printed
                    and _same_but_steps(s.snapshot, snap)]
        assert len(same) == 1, f"request {j}: the stop is not a state of the interpreter ({same})"
        for engine in ENGINES:
            assert finish(engine, module, snap) == (code, expected), f"request {j}: finishing on {engine}"


def _fast_stop(module: wasmig.Module, j: int) -> tuple[Snapshot, bytes]:
    """Run the fast variant with a checkpoint requested in the j-th $mark: (its snapshot, what
    the run printed)."""
    marks = [0]

    def mark(runner: Checkpointable) -> None:
        marks[0] += 1
        if marks[0] == j:
            runner.request()

    return _stop_on_mark(module, mark, f"request {j}: no stop")


def _stop_on_mark(module: wasmig.Module, on_mark: Callable[[Checkpointable], None], no_stop: str
                  ) -> tuple[Snapshot, bytes]:
    """Run the fast variant, ``on_mark(runner)`` called in every $mark (WASI sched_yield), until
    it unwinds (else fail with ``no_stop``): (its snapshot, what the run printed)."""
    out = io.BytesIO()
    wasi = _wasi(["fast"], out)
    runner: Checkpointable | None = None

    def mark() -> None:
        assert runner is not None
        on_mark(runner)

    wasi.sched_yield = mark  # type: ignore[method-assign]
    try:
        runner = Checkpointable(module, wasi)
        runner.start()
        assert runner.unwound, no_stop
        return from_plain(to_plain(runner.capture())), out.getvalue()
    finally:
        wasi.close()


def _same_but_steps(a: Snapshot, b: Snapshot) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in COMPARED if name != "steps")


def _same_state(a: Snapshot, b: Snapshot) -> bool:
    """The same state of the program, whatever each engine calls its point."""
    return all(getattr(a, name) == getattr(b, name) for name in COMPARED if name not in ("steps", "point"))


def stable_states(module: wasmig.Module, args: list[str], from_step: int, count: int) -> Iterator[Stopped]:
    """The interpreter's states at stable points ``from_step`` .. ``from_step + count - 1``, one
    run stopping at each in turn (a run per step from the start would take minutes)."""
    out = io.BytesIO()
    wasi = _wasi(args, out)
    try:
        inst = instantiate_with_wasi(module, wasi)
        inst.stop_at(step=from_step)
        try:
            inst.invoke("_start")
            return
        except wasmig.Suspended:
            pass
        for step in range(from_step + 1, from_step + count + 1):
            yield Stopped(capture(inst), out.getvalue())
            inst.stop_at(step=step)
            try:
                inst.resume()
                return
            except wasmig.Suspended:
                pass
            except ProcExit:
                return
    finally:
        wasi.close()


def after_call_states(module: wasmig.Module, args: list[str], from_step: int, instructions: int
                      ) -> Iterator[Stopped]:
    """The interpreter's states just after a call returned (instruction points), for
    ``instructions`` instructions from stable point ``from_step`` on: where the fast variant
    can also stop (its ``after_call`` points)."""
    out = io.BytesIO()
    wasi = _wasi(args, out)
    try:
        inst = instantiate_with_wasi(module, wasi)
        inst.stop_at(step=from_step)
        inst.machine.counting = True  # count instructions from the start
        try:
            inst.invoke("_start")
            return
        except wasmig.Suspended:
            pass
        start = inst.machine.instructions
        assert start is not None
        for n in range(start + 1, start + instructions + 1):
            inst.stop_at(instruction=n)
            try:
                inst.resume()
                return
            except wasmig.Suspended:
                frame = inst.machine.frames[-1]
                if frame.pc > 0 and frame.func.ir.body[frame.pc - 1].op in (0x10, 0x11):
                    yield Stopped(capture(inst), out.getvalue())
            except ProcExit:
                return
    finally:
        wasi.close()


LONG_WAT = """
(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $mark (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $long (param $n i32) (result i32) (local $i i32) (local $x i32)
    (drop (call $mark))
    (loop $l
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1664525)) (i32.const 1013904223)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (local.get $x))
  (func (export "_start")
    (i32.store (i32.const 0) (call $long (i32.const 400000001)))
    (i32.store (i32.const 4) (i32.const 0))
    (i32.store (i32.const 8) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 4) (i32.const 1) (i32.const 12)))))
"""


#: copies a round of $long's loop: a lone loop of 13 instructions (tests/test_unroll_rounds.py)
LONG_ROUND = copies_per_round(13, True)


NESTED_WAT = LONG_WAT.replace("(call $long (i32.const 400000001))", "(call $nested (i32.const 50000001))").replace(
    "  (func (export \"_start\")", """  (func $nested (param $n i32) (result i32)
    (local $i i32) (local $j i32) (local $x i32)
    (drop (call $mark))
    (loop $outer
      (local.set $j (i32.const 0))
      (loop $inner
        (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1664525)) (local.get $j)))
        (br_if $inner (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const 7))))
      (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $n))))
    (local.get $x))
  (func (export \"_start\")""")


#: a call-free nest whose polls save $keep from the stash written at its entry (unwind._stash_plan):
#: $keep is live across the nest and unused in it
_KEEP = "(local.set $keep (i32.add (i32.mul (local.get $n) (i32.const 3)) (i32.const 7)))"
_START = '  (func (export "_start")'
STASH_WAT = NESTED_WAT.replace("$nested", "$stashed").replace(
    "(local $i i32) (local $j i32) (local $x i32)\n    (drop (call $mark))",
    f"(local $i i32) (local $j i32) (local $x i32) (local $keep i32)\n    {_KEEP}\n    (drop (call $mark))").replace(
    f"(local.get $x))\n{_START}", f"(i32.xor (local.get $x) (local.get $keep)))\n{_START}")


def _stop_mid_loop(wat: str) -> tuple[wasmig.Module, Snapshot, bytes]:
    """Run ``wat``'s _start on the fast variant, a request made by another thread 50 ms after
    $mark (a loop starts right after it): (the module, the snapshot, the uninterrupted output)."""
    module = wat_module(wat)
    out = io.BytesIO()
    wasi = _wasi(["fast"], out)  # the argv _stop_on_mark runs with
    try:
        Checkpointable(module, wasi).start()
    except ProcExit:
        pass
    finally:
        wasi.close()
    expected = out.getvalue()
    assert len(expected) == 4

    def mark(runner: Checkpointable) -> None:
        threading.Timer(0.05, runner.request).start()

    snap, _ = _stop_on_mark(module, mark, "the loop ended before the request")
    return module, snap, expected


def test_an_unrolled_loop_stops_between_rounds_of_copies() -> None:
    """A request from another thread while an unrolled loop runs: the stop is at the loop's
    header after a whole number of rounds of LONG_ROUND iterations (the only poll), and the snapshot
    finishes with the uninterrupted run's result (400,000,001 iterations: not a whole round)."""
    module, snap, expected = _stop_mid_loop(LONG_WAT)
    innermost = snap.frames[-1]
    assert (module.ir.func_name(innermost.func), snap.point) == ("long", "loop")
    done = innermost.locals[1][1]
    assert 0 < done < 400_000_001 and done % LONG_ROUND == 0, done
    assert finish("wasmtime", module, snap) == (0, expected)


def test_an_unrolled_loop_nest_stops_at_a_header_of_either_loop() -> None:
    """The same for a small loop nest, whose inner loop is unrolled (not the outer one, which
    holds a loop): a stop at the inner header comes after whole rounds of the inner loop (7
    iterations: after 0 or 4), one at the outer header after any iteration."""
    module, snap, expected = _stop_mid_loop(NESTED_WAT)
    innermost = snap.frames[-1]
    assert (module.ir.func_name(innermost.func), snap.point) == ("nested", "loop")
    outer_done, inner_done = innermost.locals[1][1], innermost.locals[2][1]
    body = module.ir.funcs[innermost.func - module.ir.num_imported_funcs()].body
    outer_pc, inner_pc = [ins.offset for ins in body if ins.op == 0x03]
    assert innermost.pc in (outer_pc, inner_pc)
    if innermost.pc == inner_pc:
        assert inner_done in (0, 4), inner_done
    assert 0 < outer_done < 50_000_001
    assert finish("wasmtime", module, snap) == (0, expected)


@pytest.mark.parametrize("engine", ["wasmtime", "interp"])
def test_a_stop_in_a_call_free_nest_saves_its_stashed_locals(engine: str) -> None:
    """The polls of a call-free loop nest save the locals the nest does not write from the stash
    written at its entry (sieve's repetition count): the record holds their values, the
    interpreter's frame too, and the restored run finishes with the uninterrupted run's output.
    On the interpreter the restored nest runs until a request, half a second later (the rest of
    its 50 million iterations took it over two minutes), and wasmtime finishes the interpreter's
    snapshot: the interpreter's frame must still hold the stashed values for the output to match."""
    module, snap, expected = _stop_mid_loop(STASH_WAT)
    innermost = snap.frames[-1]
    assert (module.ir.func_name(innermost.func), snap.point) == ("stashed", "loop")
    n, keep = innermost.locals[0][1], innermost.locals[4][1]
    assert (n, keep) == (50_000_001, (50_000_001 * 3 + 7) & 0xFFFFFFFF)
    assert 0 < innermost.locals[1][1] < 50_000_001  # $i: stopped mid-nest
    if engine == "interp":
        assert snap.wasi is not None
        wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        try:
            program = engines.get("interp").restore(module, snap, wasi)
            program.arm(at_step=None)
            timer = threading.Timer(0.5, program.request)
            timer.start()
            try:
                assert program.resume(), "the interpreter finished the nest before the request"
            finally:
                timer.cancel()
            snap = from_plain(to_plain(program.capture()))
        finally:
            wasi.close()
        moved = snap.frames[-1]
        assert (module.ir.func_name(moved.func), moved.locals[0][1], moved.locals[4][1]) == ("stashed", n, keep)
        assert innermost.locals[1][1] <= moved.locals[1][1] < 50_000_001
    assert finish("wasmtime", module, snap) == (0, expected)


def test_a_rewound_loop_runs_on_in_the_normal_loop() -> None:
    """After a rewind, a frame's loop runs as the normal body has it (issue 15: the frames live
    at a checkpoint used to finish in their rewind copy's slower code): stopped at the unrolled
    loop's header and rewound, the frame runs one iteration in the copy's first, skip-guarded
    iteration and then the normal, unrolled loop, whose only poll is every LONG_ROUND-th iteration --
    so a second request stops 1 (mod LONG_ROUND) iterations after the first stop. The copy's old loop
    polled every iteration."""
    module, snap, expected = _stop_mid_loop(LONG_WAT)
    first = snap.frames[-1].locals[1][1]
    assert snap.point == "loop" and first % LONG_ROUND == 0, first
    wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi)
        runner.load(snap)
        runner.arm(None)
        timer = threading.Timer(0.05, runner.request)
        timer.start()
        runner.resume(snap.frames, snap.point)
        timer.cancel()
        assert runner.unwound, "the loop ended before the second request"
        again = from_plain(to_plain(runner.capture()))
    finally:
        wasi.close()
    innermost = again.frames[-1]
    assert (module.ir.func_name(innermost.func), again.point) == ("long", "loop")
    second = innermost.locals[1][1]
    assert second > first and (second - first) % LONG_ROUND == 1, (first, second)
    assert finish("wasmtime", module, again) == (0, expected)


@pytest.mark.parametrize("later", [1, 5, 40])
def test_a_second_stop_after_a_rewind_equals_the_interpreters(later: int) -> None:
    """The hand-written module rewound on wasmtime at every 3rd stable point, then stopped again
    ``later`` stable points on (in the rewound frames' normal loops or their first, skip-guarded
    iterations): the snapshot equals the interpreter's at that step."""
    module = wat_module(WAT)
    k = 0
    while True:
        k += 3
        at_k = stop("interp", module, ["m"], k)
        if at_k is None:
            break
        want = stop("interp", module, ["m"], k + later)
        assert at_k.snapshot.wasi is not None
        wasi = restore_wasi(at_k.snapshot.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        try:
            runner = Checkpointable(module, wasi, count_steps=True)
            runner.load(at_k.snapshot)
            runner.arm(k + later)
            runner.resume(at_k.snapshot.frames, at_k.snapshot.point)
            got = from_plain(to_plain(runner.capture())) if runner.unwound else None
        finally:
            wasi.close()
        if want is None:
            assert got is None, f"step {k} + {later}: wasmtime stopped after the program's end"
            continue
        assert got is not None, f"step {k} + {later}: wasmtime did not stop"
        assert_same_snapshot(want.snapshot, got, f"step {k} + {later}")
    assert k > 250
