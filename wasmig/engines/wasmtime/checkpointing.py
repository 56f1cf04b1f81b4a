"""A WASI program on wasmtime that can be checkpointed: the instrumented module
(:class:`~wasmig.engines.wasmtime.checkpointable.Checkpointable`) as a
:class:`~wasmig.engines.base.Program`, and where a live migration's pages land on wasmtime
(straight in a fresh instance's memory). Imported by :mod:`wasmig.engines.wasmtime.engine` only
for a run that checkpoints: a plain run does not load the checkpoint code."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig.engines.base import Landing, MemoryReader, Program
from wasmig.engines.wasmtime.capture import static_tables
from wasmig.engines.wasmtime.checkpointable import Checkpointable
from wasmig.errors import SnapshotError
from wasmig.wasi.preview1 import Wasi

if TYPE_CHECKING:
    from wasmig.grants import Granted
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot

_PAGE = 65536


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

    def when_under_way(self, prepare: Callable[[], None], by: float | None = None) -> bool:
        # called by the thread that waits for the guest (Checkpointable._call)
        self.runner.on_under_way, self.runner.under_way_by = prepare, by
        return True

    def ready_on_request(self, prepare: Callable[[], None] | None) -> bool:
        self.runner.ready_on_request(prepare)
        return True

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        return self.runner.capture(with_memory=with_memory, memory_in_place=memory_in_place)

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

    def prepare(self, snap: Snapshot, granted: Granted, *, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None) -> Program:
        from wasmig.wasi.snapshot import restore_wasi

        assert snap.wasi is not None
        wasi = restore_wasi(snap.wasi, granted=granted, into=self.wasi, stdout=stdout, stderr=stderr)
        self.runner.load(snap, memory_in_place=True)
        return CheckpointableProgram(self.runner, wasi, rewinds=bool(snap.frames))
