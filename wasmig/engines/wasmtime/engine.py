"""wasmtime as an :class:`~wasmig.engines.base.Engine`.

A program that may be checkpointed runs the *instrumented* module
(:class:`~wasmig.engines.wasmtime.checkpointable.Checkpointable`: in a worker thread, stopped by
the poll byte or its step count, captured from its frame records, rewound on resume); one that
never is runs the plain module at full speed (:class:`PlainProgram`). A migration's pages land
straight in a fresh instance's memory."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from wasmig import log
from wasmig.engines.base import Engine, Instance, Landing, MemoryReader, Program
from wasmig.engines.wasmtime.capture import static_tables
from wasmig.engines.wasmtime.checkpointable import Checkpointable
from wasmig.errors import SnapshotError
from wasmig.wasi.preview1 import Wasi

if TYPE_CHECKING:
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import PagedMemory

_PAGE = 65536
_NO_CHECKPOINTS = "this run cannot checkpoint: it was started without checkpoints (the plain module on wasmtime)"


class CheckpointableProgram(Program):
    """A WASI program on the instrumented module (see :class:`~wasmig.engines.base.Program`)."""

    def __init__(self, runner: Checkpointable, wasi: Wasi, *, rewinds: bool = False) -> None:
        self.runner = runner
        self.module = runner.module
        self.wasi = wasi
        self._rewinds = rewinds  # restored with frames: resumed only once the rewind reached them

    @property
    def steps(self) -> int | None:
        return self.runner.steps

    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        if at_instruction is not None:
            raise SnapshotError("a checkpoint at an instruction count is available on the interpreter only")
        self.runner.arm(at_step)

    def request(self) -> None:
        self.runner.request()

    def start(self) -> bool:
        self.runner.start()
        return self.runner.unwound

    def resume(self) -> bool:
        self.runner.resume()
        return self.runner.unwound

    def capture(self, *, with_memory: bool = True) -> Snapshot:
        return self.runner.capture(with_memory=with_memory)

    def export_names(self) -> Collection[str]:
        return self.runner.instance.exports.keys()

    def guest_memories(self) -> list[MemoryReader]:
        """A live view of the guest's memory (read while it runs: a migration's pre-copy rounds),
        made without calling into wasmtime (see :meth:`Checkpointable.live_memory`). The pass
        refuses modules with more than one memory."""
        if not self.runner.facts.mems:
            return []
        address, size = self.runner.live_memory()
        view = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B") if size else memoryview(b"")
        return [(size, lambda k: view[k * _PAGE:(k + 1) * _PAGE])]

    def warm_up(self) -> None:
        """The tables the module's element segments make (a scan of every instruction, remembered
        per module: 0.23 s for CPython's 26 MB, the first time), which a capture compares with."""
        static_tables(self.module)

    def resumed(self) -> bool:
        return not self._rewinds or self.runner.rewind_ended()


class PlainProgram(Program):
    """The plain module at full speed, on the calling thread: it never stops for a checkpoint.
    Python sees Ctrl-C only at the guest's next host call, so a guest computing without any
    would ignore it: the run gives SIGINT its default action (:attr:`interruptible`), which ends
    the process at once, as it ends ``wasmtime run``."""

    interruptible = False

    def __init__(self, instance: WasmtimeInstance, wasi: Wasi) -> None:
        self.instance = instance
        self.module = instance.module
        self.wasi = wasi

    @property
    def steps(self) -> int | None:
        return None

    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        if at_step is not None or at_instruction is not None:
            raise SnapshotError(_NO_CHECKPOINTS)

    def request(self) -> None:
        return None  # the run answers a request itself (it has no checkpoint directory)

    def start(self) -> bool:
        self.instance.invoke("_start")
        return False

    def resume(self) -> bool:
        raise SnapshotError(_NO_CHECKPOINTS)

    def capture(self, *, with_memory: bool = True) -> Snapshot:
        raise SnapshotError(_NO_CHECKPOINTS)

    def export_names(self) -> Collection[str]:
        return self.instance.exports.keys()

    def guest_memories(self) -> list[MemoryReader]:
        return []


class InstanceLanding(Landing):
    """The instance is made when the module arrives, and every page is written straight into its
    memory, so the restore after the stop only loads globals, WASI state and frames (the downtime
    of a large guest does not depend on its size)."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.wasi = Wasi()  # re-initialised in place with the program's WASI state at the end
        self.runner = Checkpointable(module, self.wasi)
        # the restore compares the snapshot's tables with these (a scan of every instruction,
        # remembered: 0.23 s for CPython): now, not in the downtime; and a module that changes its
        # tables, which cannot be restored here, is refused before anything is sent
        static_tables(module)
        self.addresses: dict[int, tuple[int, int]] = {}  # memory -> (address, pages)

    def pages(self, m: int) -> int:
        return self.runner.memory_pages(m)

    def _at(self, m: int, i: int) -> int:
        address, pages = self.addresses.get(m, (0, 0))
        if i >= pages:
            pages = self.runner.memory_pages(m)
            address = self.runner.memory_address(m, max(pages, i + 1))
            self.addresses[m] = (address, self.runner.memory_pages(m))
        return address + i * _PAGE

    def write(self, m: int, i: int, data: bytes) -> None:
        ctypes.memmove(self._at(m, i), data, _PAGE)

    def read(self, m: int, i: int) -> bytes:
        return ctypes.string_at(self._at(m, i), _PAGE)

    def memory(self, i: int, _repr: Any, size_pages: int) -> None:
        if self.runner.memory_pages(i) > size_pages:
            raise SnapshotError(f"memory {i} is larger here than the program's")
        self.runner.memory_address(i, size_pages)
        return None

    def prepare(self, snap: Snapshot, dirs: Mapping[str, str]) -> Program:
        from wasmig.wasi.snapshot import restore_wasi

        assert snap.wasi is not None
        wasi = restore_wasi(snap.wasi, dirs=dirs, into=self.wasi)
        self.runner.load(snap, memory_in_place=True)
        return CheckpointableProgram(self.runner, wasi, rewinds=bool(snap.frames))


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
        if not checkpoints:
            return PlainProgram(self.instantiate_wasi(module, wasi), wasi)
        # a module not instrumented before is announced on stderr, with progress (minutes for a big one)
        return CheckpointableProgram(Checkpointable(module, wasi, count_steps=count_steps, announce=announce), wasi)

    def restore(self, module: Module, snap: Snapshot, wasi: Wasi, *, pages: list[PagedMemory] | None = None,
                count_steps: bool = False, announce: str | None = None) -> Program:
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
        from wasmig.engines.wasmtime.wasi_instance import WasmtimeWasiInstance

        if wasi is None:
            raise SnapshotError("restoring on wasmtime is for WASI programs (the snapshot has no WASI state)")
        runner = Checkpointable(module, wasi, count_steps=count_steps)
        runner.load(snap)
        return WasmtimeWasiInstance.restored(runner)

    def landing(self, module: Module) -> InstanceLanding:
        return InstanceLanding(module)


ENGINE = WasmtimeEngine()
