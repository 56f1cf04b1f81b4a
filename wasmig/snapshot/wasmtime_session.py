"""Checkpointing a run on the wasmtime engine (through the instrumentation pass).

Today: a deterministic checkpoint at stable point N, then exit — the unwind half of the pass.
The snapshot is the canonical one (equal to the interpreter's at the same step) and restores
on the interpreter. Continuing on wasmtime after a checkpoint, restoring onto wasmtime, and
signal/timer checkpoints need the rewind half and the asynchronous poll (docs/instrument.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from wasmig.binary.encoder import encode_module
from wasmig.instrument.unwind import instrument
from wasmig.module import Module
from wasmig.snapshot.capture_wasmtime import capture_wasmtime
from wasmig.snapshot.session import store_module
from wasmig.wasi.preview1 import Wasi
from wasmig.wasi.run import run_start

UNSUPPORTED = ("on the wasmtime engine only --checkpoint-dir DIR --checkpoint-at-step N --checkpoint-then exit is "
               "available yet (continuing, restoring, signal and timer checkpoints there need the rewind half of the "
               "instrumentation); use --engine interp for the rest")


def run_until_step(module: Module, wasi: Wasi, directory: Path, step: int,
                   module_path: str | None) -> tuple[int, Path | None]:
    """Run on wasmtime; at stable point ``step`` write a snapshot into ``directory`` and stop.

    Returns (exit code, snapshot path): the path is None when the program ended first."""
    from wasmig.engines.wasmtime import WasmtimeInstance
    from wasmig.snapshot.store import CheckpointDir

    instrumented = instrument(module)
    imod = Module.from_bytes(encode_module(instrumented.ir), features={"multi-memory"})
    instance = WasmtimeInstance(imod, wasi)
    instance.exports["wasmig:stop_at"].set_value(instance.store, step)
    code = run_start(instance)
    if instance.exports["wasmig:state"].value(instance.store) != 1:
        return code, None
    snap = capture_wasmtime(instance, module, instrumented.sitemap)
    module_file = store_module(directory, module)
    snap.meta.update({"module_file": module_file.name, "module_path": module_path, "host": os.uname().nodename,
                      "pid": os.getpid()})
    return 0, CheckpointDir(directory).write(snap)
