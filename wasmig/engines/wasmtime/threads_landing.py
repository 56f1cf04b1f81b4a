"""Where a live migration of a wasi-threads program lands on wasmtime (issue 20; docs/threads.md):
the run (:class:`~wasmig.engines.wasmtime.threads_checkpoint.CheckpointableThreadedRun`, its
instrumented module compiled) is made when the module arrives, and every page is written straight
into its shared memory, so the downtime only makes each thread's instance, loads its state and
queues the waiters (:meth:`CheckpointableThreadedRun.load`, the memory kept in place)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig.engines.base import Landing, Program
from wasmig.engines.wasmtime.threads_checkpoint import CheckpointableThreadedRun, ThreadedCheckpointProgram
from wasmig.errors import SnapshotError
from wasmig.wasi.preview1 import Wasi

if TYPE_CHECKING:
    from wasmig.grants import Granted
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot

_PAGE = 65536


class ThreadedRunLanding(Landing):
    """The shared memory of a run made before the stop takes the pages; :meth:`prepare` restores
    every thread into that run (see the module docstring)."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.wasi = Wasi()  # re-initialised in place with the program's WASI state (its memory bound already)
        self.run = CheckpointableThreadedRun(module, self.wasi)
        self.max_pages = module.facts.mems[0][1] or 0  # a shared memory declares one

    def _room(self, m: int, pages: int) -> memoryview:
        """The shared memory, grown to ``pages`` if it is smaller; a page beyond its maximum (or of
        another memory) is refused before anything is allocated for it."""
        if m != 0 or pages > self.max_pages:
            raise SnapshotError(f"the state does not fit the module: a page of memory {m} at {pages - 1}, beyond the "
                                f"shared memory's {self.max_pages} pages")
        have = self.pages(0)
        if pages > have:
            try:
                self.run.memory.grow(pages - have)
            except Exception as e:  # noqa: BLE001 - wasmtime's error for an allocation failure
                raise SnapshotError(f"the shared memory cannot grow to {pages} pages: {e}") from None
        return self.run.view()

    def pages(self, m: int) -> int:
        return self.run.memory.data_len() // _PAGE if m == 0 else 0

    def write(self, m: int, i: int, data: bytes) -> None:
        self._room(m, i + 1)[i * _PAGE:(i + 1) * _PAGE] = data

    def read(self, m: int, i: int) -> bytes:
        return bytes(self._room(m, i + 1)[i * _PAGE:(i + 1) * _PAGE])

    def memory(self, i: int, _repr: Any, size_pages: int) -> None:
        """The pages are in place; a memory larger here than the program's cannot shrink."""
        self._room(i, size_pages)
        if self.pages(i) > size_pages:
            raise SnapshotError(f"memory {i} is larger here than the program's")
        return None

    def prepare(self, snap: Snapshot, granted: Granted, *, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None) -> Program:
        from wasmig.wasi.snapshot import restore_wasi

        if snap.threads is None or len(snap.memories) != 1:
            raise SnapshotError("the state of a wasi-threads program has no threads section, or memories of "
                                "its own")
        assert snap.wasi is not None
        restore_wasi(snap.wasi, granted=granted, into=self.wasi, stdout=stdout, stderr=stderr)
        self.run.load(snap, memory_in_place=True)
        return ThreadedCheckpointProgram(self.run)
