"""Minimised cases of what the differential harness for real programs (tests/test_real_programs.py) found broken in
restores on wasmtime: each test is one root cause, small enough to read, and fails without its fix.

The pattern is the cross-engine one: stop a module at a stable point (on the interpreter, the reference), restore
the snapshot into a *fresh* instance of the instrumented module on wasmtime, run it to the end and compare memory
and globals with an uninterrupted run.
"""

from __future__ import annotations

import io

import pytest

import wasmig
from tests.wat import wat_module
from wasmig.engines.interp.capture import capture
from wasmig.session.command import instantiate_with_wasi
from wasmig.snapshot.state import Snapshot, from_plain, to_plain
from wasmig.wasi.preview1 import Wasi
from wasmig.wasi.snapshot import restore_wasi

pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402


def _wasi() -> Wasi:
    return Wasi(["m"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())


def uninterrupted(module: wasmig.Module) -> tuple[bytes, list[int], int]:
    """(memory, mutable globals' bits, stable points) of a run of ``_start`` on the interpreter."""
    wasi = _wasi()
    inst = instantiate_with_wasi(module, wasi)
    try:
        inst.invoke("_start")
    finally:
        wasi.close()
    return (bytes(inst.store.mems[0].data), [g.internal for g in inst.store.globals if g.mutable],
            inst.machine.steps)


def stopped_at(module: wasmig.Module, k: int) -> Snapshot:
    """The interpreter's snapshot at stable point ``k``, through the on-disk form."""
    wasi = _wasi()
    inst = instantiate_with_wasi(module, wasi)
    inst.stop_at(step=k)
    try:
        with pytest.raises(wasmig.Suspended):
            inst.invoke("_start")
        return from_plain(to_plain(capture(inst)))
    finally:
        wasi.close()


def finished_on_wasmtime(module: wasmig.Module, snap: Snapshot) -> tuple[bytes, list[int]]:
    """Restore ``snap`` into a fresh instrumented instance on wasmtime (the fast variant, as ``wasmig restore``)
    and run it to the end: (memory, mutable globals' bits)."""
    assert snap.wasi is not None
    wasi = restore_wasi(snap.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi)
        runner.load(snap)
        runner.arm(None)
        runner.resume()
        ex = runner.instance.exports
        memory = bytes(ex["memory"].read(runner.store, 0, ex["memory"].data_len(runner.store)))
        globals_ = [ex[f"wasmig:g{i}"].value(runner.store) & 0xFFFFFFFF
                    for i, g in enumerate(module.ir.all_globals()) if g.mutable]
    finally:
        wasi.close()
    return memory, globals_


def test_many_data_segments_do_not_overwrite_the_globals_on_restore() -> None:
    """CPython for WASI has 24,171 active data segments. ``load()`` wrote one drop-flag byte per segment from
    ``DROPS_BASE`` (1024) in the control memory *after* the globals' bits at ``GLOBALS_BASE`` (16384), so from the
    15,361st segment on the flags (all zero: active segments have none) overwrote the globals: the restored
    ``__stack_pointer`` was 0, and CPython ran on with its stack at the bottom of memory until it trapped
    (``out of bounds memory access``) a minute later. Found: 11 of 12 CPython snapshots failed to restore."""
    segments = "\n".join(f'  (data (i32.const {1024 + i}) "\\{i % 200 + 1:02x}")' for i in range(16_000))
    module = wat_module(f"""
(module
  (memory (export "memory") 1)
  (global $sp (mut i32) (i32.const 60000))
  (global $acc (mut i32) (i32.const 7))
{segments}
  (func (export "_start") (local $i i32)
    (loop $l
      ;; push a frame below the "stack pointer", as compiled C does
      (global.set $sp (i32.sub (global.get $sp) (i32.const 16)))
      (i32.store (global.get $sp) (local.get $i))
      (global.set $acc (i32.add (i32.mul (global.get $acc) (i32.const 31))
                                (i32.load8_u offset=1024 (local.get $i))))
      (global.set $sp (i32.add (global.get $sp) (i32.const 16)))
      (global.set $sp (i32.sub (global.get $sp) (i32.const 4)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 300))))
    (i32.store (i32.const 0) (global.get $acc))))
""")
    memory, globals_, total = uninterrupted(module)
    for k in (2, total // 2, total - 1):
        got = finished_on_wasmtime(module, stopped_at(module, k))
        assert got[1] == globals_, f"restored at step {k}: globals {got[1]}, expected {globals_}"
        assert got[0] == memory, f"restored at step {k}: memory differs"


def _segments(n: int, base: int = 1024) -> str:
    return "\n".join(f'  (data (i32.const {base + i % 4096}) "\\{i % 200 + 1:02x}")' for i in range(n))


def test_dropping_an_active_segment_writes_no_flag_outside_the_flag_area() -> None:
    """A drop flag is written by the instrumented module at ``DROPS_BASE`` + segment index for every
    ``data.drop``; for an active segment (dropped already, a no-op, and without a flag in the snapshot) that byte
    lay beyond the flag area when the module had more than 15,360 segments -- in the globals, the frame records, or
    past the end of the control memory: this module, with 70,000 segments, trapped out of bounds instrumented but
    not plain. Found while fixing the restore of CPython's 24,171 segments (above)."""
    module = wat_module(f"""
(module
  (memory (export "memory") 1)
  (global $acc (mut i32) (i32.const 1))
{_segments(70_000)}
  (func (export "_start") (local $i i32)
    (data.drop 69999)
    (loop $l
      (global.set $acc (i32.add (global.get $acc) (i32.load8_u offset=1024 (local.get $i))))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 100))))
    (i32.store (i32.const 0) (global.get $acc))))
""")
    memory, globals_, total = uninterrupted(module)
    for k in (1, total // 2):
        assert finished_on_wasmtime(module, stopped_at(module, k)) == (memory, globals_), f"restored at step {k}"


def test_a_passive_segment_beyond_the_flag_area_is_refused() -> None:
    """The control memory has room for the drop flags of 15,360 segments: a module with a passive segment past
    that is refused by the pass with a one-line reason (its flag would overwrite the globals' bits on a restore),
    not instrumented into a program that restores wrongly."""
    from wasmig.instrument.unwind import InstrumentError, instrument

    module = wat_module(f"""
(module
  (memory (export "memory") 1)
{_segments(15_400)}
  (data "passive")
  (func (export "_start") (memory.init 15400 (i32.const 0) (i32.const 0) (i32.const 4)) (data.drop 15400)))
""")
    with pytest.raises(InstrumentError, match="drop flags"):
        instrument(module, count_steps=False)
