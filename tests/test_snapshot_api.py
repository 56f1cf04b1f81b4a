"""Checkpoint and restore through the Python API, in-process, on hand-written modules: the
canonical state round-trips through its plain (msgpack) form, restores into a fresh instance
and continues to the same result; snapshots that do not fit the module are refused."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import wasmig
from wasmig.snapshot.state import SnapshotError, from_plain, to_plain

pytestmark = pytest.mark.skipif(shutil.which("wat2wasm") is None, reason="wat2wasm (Debian package wabt) missing")

LOOPS = """
(module
  (memory (export "memory") 1)
  (global $acc (mut i64) (i64.const 0))
  (table 2 funcref)
  (elem (i32.const 0) $sq $cube)
  (type $t (func (param i64) (result i64)))
  (func $sq (param i64) (result i64) (i64.mul (local.get 0) (local.get 0)))
  (func $cube (param i64) (result i64) (i64.mul (local.get 0) (call $sq (local.get 0))))
  (func $work (param $n i32) (param $f32 f32) (result i64) (local $i i32)
    (loop $l
      (global.set $acc (i64.add (global.get $acc)
        (call_indirect (type $t) (i64.extend_i32_u (local.get $i)) (i32.and (local.get $i) (i32.const 1)))))
      (i64.store (i32.mul (local.get $i) (i32.const 8)) (global.get $acc))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (i64.add (global.get $acc) (i64.trunc_f32_s (local.get $f32))))
  (func (export "run") (param i32) (result i64)
    (i64.add (i64.const 1) (call $work (local.get 0) (f32.const 2.5))))
  (func (export "acc") (result i64) (global.get $acc)))
"""


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> wasmig.Module:
    d = tmp_path_factory.mktemp("wat")
    (d / "m.wat").write_text(LOOPS)
    subprocess.run(["wat2wasm", "--debug-names", str(d / "m.wat"), "-o", str(d / "m.wasm")], check=True)
    return wasmig.Module.from_file(d / "m.wasm")


def reference(module: wasmig.Module, n: int) -> int:
    return wasmig.Instance(module).exports["run"](n)


@pytest.mark.parametrize("step", [1, 2, 3, 10, 57, 200])
def test_stop_at_step_restore_and_finish(module: wasmig.Module, step: int) -> None:
    inst = wasmig.Instance(module)
    inst.stop_at(step=step)
    with pytest.raises(wasmig.Suspended):
        inst.invoke("run", 100)
    snap = from_plain(to_plain(inst.checkpoint()))  # through the serialisable form
    assert snap.steps == step and snap.stable
    restored = wasmig.restore(snap, module=module)
    assert restored.resume() == reference(module, 100)
    # the original continues too, to the same answer
    inst.stop_at()
    assert inst.resume() == reference(module, 100)


@pytest.mark.parametrize("instruction", [0, 1, 5, 33, 34, 35, 500, 1234])
def test_stop_at_instruction(module: wasmig.Module, instruction: int) -> None:
    inst = wasmig.Instance(module)
    inst.stop_at(instruction=instruction)
    with pytest.raises(wasmig.Suspended):
        inst.invoke("run", 100)
    snap = from_plain(to_plain(inst.checkpoint()))
    assert snap.instructions == instruction and snap.point == "instruction"
    assert wasmig.restore(snap, module=module).resume() == reference(module, 100)


def test_chained_checkpoints(module: wasmig.Module) -> None:
    inst = wasmig.Instance(module)
    inst.stop_at(step=20)
    with pytest.raises(wasmig.Suspended):
        inst.invoke("run", 100)
    second = wasmig.restore(from_plain(to_plain(inst.checkpoint())), module=module)
    second.stop_at(instruction=(second.machine.instructions or 0) + 100)
    second.machine.instructions = 0
    with pytest.raises(wasmig.Suspended):
        second.resume()
    third = wasmig.restore(from_plain(to_plain(second.checkpoint())), module=module)
    assert third.resume() == reference(module, 100)


def test_idle_snapshot_keeps_memory_globals_and_tables(module: wasmig.Module) -> None:
    inst = wasmig.Instance(module)
    inst.exports["run"](10)
    snap = inst.checkpoint()
    assert snap.point == "idle" and snap.frames == []
    restored = wasmig.restore(from_plain(to_plain(snap)), module=module)
    assert restored.exports["acc"]() == inst.exports["acc"]()
    assert restored.exports["memory"].read(0, 80) == inst.exports["memory"].read(0, 80)
    assert restored.exports["run"](10) == inst.exports["run"](10)


def test_refuses_snapshots_that_do_not_fit(module: wasmig.Module, tmp_path: Path) -> None:
    inst = wasmig.Instance(module)
    inst.stop_at(step=30)
    with pytest.raises(wasmig.Suspended):
        inst.invoke("run", 100)
    snap = inst.checkpoint()
    with pytest.raises(SnapshotError, match="another module"):
        wasmig.restore(replace(snap, module_sha256="0" * 64), module=module)
    bad_pc = replace(snap, frames=[*snap.frames[:-1], replace(snap.frames[-1], pc=snap.frames[-1].pc + 1)])
    with pytest.raises(SnapshotError, match="does not fit"):
        wasmig.restore(bad_pc, module=module)
    bad_local = replace(snap, frames=[*snap.frames[:-1], replace(snap.frames[-1], locals=[("f64", 0)] * 3)])
    with pytest.raises(SnapshotError, match="does not fit"):
        wasmig.restore(bad_local, module=module)
    assert len(snap.frames) > 1
    with pytest.raises(SnapshotError, match="does not fit"):  # the new innermost is at a call, not at the point
        wasmig.restore(replace(snap, frames=snap.frames[:-1]), module=module)
    with pytest.raises(SnapshotError):
        wasmig.restore(replace(snap, globals=[]), module=module)
    # a stable point at a loop or entry is no place just after a call
    with pytest.raises(SnapshotError, match="after_call point not just after a call"):
        wasmig.restore(replace(snap, point="after_call"), module=module)


def test_host_reentry_is_not_checkpointable(tmp_path: Path) -> None:
    (tmp_path / "m.wat").write_text("""(module
      (import "env" "cb" (func $cb))
      (func (export "inner") (loop $l (br_if $l (i32.const 0))))
      (func (export "outer") (call $cb)))""")
    subprocess.run(["wat2wasm", str(tmp_path / "m.wat"), "-o", str(tmp_path / "m.wasm")], check=True)
    m = wasmig.Module.from_file(tmp_path / "m.wasm")
    holder: dict[str, wasmig.Instance] = {}
    inst = wasmig.Instance(m, {"env": {"cb": wasmig.HostFunc([], [], lambda: holder["i"].exports["inner"]())}})
    holder["i"] = inst
    inst.stop_at(step=3)
    with pytest.raises(wasmig.Trap, match="host function is calling back"):
        inst.exports["outer"]()
