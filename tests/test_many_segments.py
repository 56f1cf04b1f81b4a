"""A module with more data segments than the control memory's drop flags have room for (issue 15).

The instrumented module's control memory keeps a byte per data and element segment from
``DROPS_BASE`` (1024) and the globals' bits from ``GLOBALS_BASE`` (16384). CPython 3.12's
all-in-one WASI build has 24,171 data segments (its standard library, packed in), so a restore
on wasmtime that wrote a flag byte for every segment wrote zeros over the globals it had just
put there: every mutable global came back 0 -- the C stack pointer among them, and the program
trapped with ``out of bounds memory access`` as soon as its innermost frame called a function
before returning (a live migration that "reported success, the source exited, and the program
then trapped"). Minimised: 16,000 one-byte active segments and a mutable counter; checkpointed
at a step on wasmtime and restored on wasmtime, the count must go on, not restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wasmtime")

SEGMENTS = 16_000  # > GLOBALS_BASE - DROPS_BASE = 15,360

WAT_HEAD = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 0) "tick 00\n")
"""

WAT_TAIL = r"""
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 8))
    (loop $next
      (global.set $count (i32.add (global.get $count) (i32.const 1)))
      (i32.store8 (i32.const 5) (i32.add (i32.const 48) (i32.div_u (global.get $count) (i32.const 10))))
      (i32.store8 (i32.const 6) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
      (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 128)))
      (br_if $next (i32.lt_u (global.get $count) (i32.const 40))))))
"""


def wasmig(*args: str) -> list[str]:
    return [sys.executable, "-m", "wasmig", *args]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("wat2wasm") is None:
        pytest.skip("wat2wasm missing")
    segments = "".join(f'  (data (i32.const {1024 + k % 4096}) "x")\n' for k in range(SEGMENTS))
    path = tmp_path_factory.mktemp("segments") / "counter.wasm"
    subprocess.run(["wat2wasm", "-", "-o", str(path)], input=(WAT_HEAD + segments + WAT_TAIL).encode(), check=True)
    return path


def test_a_restore_on_wasmtime_keeps_the_globals_of_a_module_with_many_segments(program: Path,
                                                                                 tmp_path: Path) -> None:
    whole = subprocess.run(wasmig("run", "--engine", "wasmtime", str(program)), capture_output=True, text=True,
                           check=True).stdout
    assert whole.splitlines() == [f"tick {i:02d}" for i in range(1, 41)]
    checkpoints = tmp_path / "ck"
    first = subprocess.run(wasmig("run", "--engine", "wasmtime", "--checkpoint-dir", str(checkpoints),
                                  "--checkpoint-at-step", "25", "--checkpoint-then", "exit", str(program)),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    snapshot = next((checkpoints / "snapshots").glob("*.snap"))
    rest = subprocess.run(wasmig("restore", "--engine", "wasmtime", str(snapshot)), capture_output=True, text=True,
                          timeout=300)
    assert rest.returncode == 0, rest.stderr
    assert first.stdout + rest.stdout == whole  # the counter went on from where it was
