"""wasmtime as an :class:`~wasmig.engines.base.Engine`.

A program that may be checkpointed runs the *instrumented* module
(:mod:`wasmig.engines.wasmtime.checkpointing`: in a worker thread, stopped by the poll byte or its
step count, captured from its frame records, rewound on resume), imported only for such a run;
one that never is runs the plain module at full speed (:class:`PlainProgram`). A migration's
pages land straight in a fresh instance's memory."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from wasmig import log
from wasmig.engines.base import Engine, Instance, Landing, MemoryReader, Program
from wasmig.errors import SnapshotError
from wasmig.wasi.preview1 import Wasi
from wasmig.wasi.threads_abi import imports_thread_spawn

if TYPE_CHECKING:
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import PagedMemory

_NO_CHECKPOINTS = "this run cannot checkpoint: it was started with --plain (the plain module on wasmtime)"


class RunsToEnd(Program):
    """A program that runs to its end and never stops for a checkpoint: every checkpoint request
    is a one-line SnapshotError saying why (:attr:`refusal`). Subclasses say how it starts."""

    refusal = "this run cannot checkpoint"

    @property
    def steps(self) -> int | None:
        return None

    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        if at_step is not None or at_instruction is not None:
            raise SnapshotError(self.refusal)

    def request(self) -> None:
        return None  # the run answers a request itself (it has no checkpoint directory)

    def resume(self) -> bool:
        raise SnapshotError(self.refusal)

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        raise SnapshotError(self.refusal)

    def guest_memories(self) -> list[MemoryReader]:
        return []


class PlainProgram(RunsToEnd):
    """The plain module at full speed, on the calling thread: it never stops for a checkpoint.
    Python sees Ctrl-C only at the guest's next host call, so a guest computing without any
    would ignore it: the run gives SIGINT its default action (:attr:`interruptible`), which ends
    the process at once, as it ends ``wasmtime run``."""

    interruptible = False
    refusal = _NO_CHECKPOINTS

    def __init__(self, instance: WasmtimeInstance, wasi: Wasi) -> None:
        self.instance = instance
        self.module = instance.module
        self.wasi = wasi

    def start(self) -> bool:
        self.instance.invoke("_start")
        return False

    def export_names(self) -> Collection[str]:
        return self.instance.exports.keys()


class WasmtimeEngine(Engine):
    name = "wasmtime"
    needs_ir = False  # wasmtime validates and compiles the bytes; Python decodes only what linking needs

    def instance_class(self, imports: Mapping[str, Mapping[str, Any]] | Wasi | None) -> type[Instance]:
        if isinstance(imports, Wasi):
            from wasmig.engines.wasmtime.wasi_instance import WasmtimeWasiInstance

            return WasmtimeWasiInstance
        from wasmig.engines.wasmtime.api import WasmtimeApiInstance

        return WasmtimeApiInstance

    def instantiate_wasi(self, module: Module, wasi: Wasi, **options: Any) -> WasmtimeInstance:
        from wasmig.engines.wasmtime.runtime import WasmtimeInstance

        return WasmtimeInstance(module, wasi, **options)

    def program(self, module: Module, wasi: Wasi, *, checkpoints: bool, count_steps: bool = False,
                announce: str | None = None) -> Program:
        if imports_thread_spawn(module.interface.imports):  # a wasi-threads command: a thread per thread
            from wasmig.engines.wasmtime.threads import ThreadedProgram

            if not checkpoints:
                return ThreadedProgram(module, wasi)
            from wasmig.engines.wasmtime.threads_checkpoint import NO_STEPS, threaded_checkpoint_program

            if count_steps:
                raise SnapshotError(NO_STEPS)
            return threaded_checkpoint_program(module, wasi, announce=announce)
        if not checkpoints:
            return PlainProgram(self.instantiate_wasi(module, wasi), wasi)
        from wasmig.engines.wasmtime.checkpointable import Checkpointable  # see checkpointing.py's docstring
        from wasmig.engines.wasmtime.checkpointing import CheckpointableProgram

        # a module not instrumented before is announced on stderr, with progress (minutes for a big one)
        return CheckpointableProgram(Checkpointable(module, wasi, count_steps=count_steps, announce=announce), wasi)

    def restore(self, module: Module, snap: Snapshot, wasi: Wasi, *, pages: list[PagedMemory] | None = None,
                count_steps: bool = False, announce: str | None = None) -> Program:
        from wasmig.engines.wasmtime.checkpointable import Checkpointable
        from wasmig.engines.wasmtime.checkpointing import CheckpointableProgram

        if snap.threads is not None:  # every thread, either engine's snapshot (docs/threads.md)
            from wasmig.engines.wasmtime.threads_checkpoint import NO_STEPS, restore_threaded_wasmtime

            if count_steps:
                raise SnapshotError(NO_STEPS)
            from wasmig.snapshot.limits import check_module_maximum
            from wasmig.snapshot.store import materialize

            check_module_maximum([len(p) for p in pages] if pages is not None else
                                 [len(m.data) // 65536 for m in snap.memories], module.ir)
            materialize(snap, pages)  # the shared memory is written once, whole
            return restore_threaded_wasmtime(module, snap, wasi, announce=announce)
        started = time.perf_counter()
        runner = Checkpointable(module, wasi, count_steps=count_steps, announce=announce)
        runner.load(snap, pages=pages)
        log.info(__name__, "restore: instrumented module instantiated and state loaded on wasmtime in %.3f s",
                 time.perf_counter() - started)
        if pages is not None:
            log.info(__name__, "restore: %d of %d pages of memory read and written, the rest held already",
                     runner.pages_written, sum(map(len, pages)))
        return CheckpointableProgram(runner, wasi)

    def restore_instance(self, module: Module, snap: Snapshot, imports: Mapping[str, Mapping[str, Any]] | None,
                         wasi: Wasi | None, *, count_steps: bool = False) -> Instance:
        from wasmig.engines.wasmtime.checkpointable import Checkpointable
        from wasmig.engines.wasmtime.wasi_instance import WasmtimeWasiInstance

        if wasi is None:
            raise SnapshotError("restoring on wasmtime is for WASI programs (the snapshot has no WASI state)")
        runner = Checkpointable(module, wasi, count_steps=count_steps)
        runner.load(snap)
        return WasmtimeWasiInstance.restored(runner)

    def landing(self, module: Module) -> Landing:
        if imports_thread_spawn(module.interface.imports):  # every thread restored into a run made now
            from wasmig.engines.wasmtime.threads_landing import ThreadedRunLanding

            return ThreadedRunLanding(module)
        from wasmig.engines.wasmtime.checkpointing import InstanceLanding

        return InstanceLanding(module)

    runs_threads = True
    captures_threads = True
    lands_threads = True

    def run_threaded_command(self, module: Module, wasi: Wasi, *, seed: int = 0) -> int:
        """One OS thread per wasm thread, in parallel (:mod:`wasmig.engines.wasmtime.threads`):
        the interleaving is the hardware's, so ``seed`` plays no part."""
        from wasmig.engines.wasmtime.threads import run_threaded_command

        return run_threaded_command(module, wasi)


ENGINE = WasmtimeEngine()
