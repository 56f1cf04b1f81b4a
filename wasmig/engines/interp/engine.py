"""wasmig's interpreter as an :class:`~wasmig.engines.base.Engine`: a WASI program on an
:class:`~wasmig.engines.interp.instance.InterpInstance`, stopped by the machine's own triggers
(it counts stable points and, on request, instructions), captured and restored by
:mod:`wasmig.engines.interp.capture`; a migration's pages land in byte images."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig import log
from wasmig.binary.image import initial_image
from wasmig.engines.base import Engine, Landing, MemoryReader, Program
from wasmig.engines.interp.capture import capture, restore
from wasmig.engines.interp.instance import InterpInstance, bind_wasi, instantiate_wasi, wasi_imports
from wasmig.errors import SnapshotError
from wasmig.interp.machine import NEVER, Suspended
from wasmig.snapshot.state import PAGE_SIZE
from wasmig.wasi.preview1 import Wasi

if TYPE_CHECKING:
    from wasmig.grants import Granted
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import PagedMemory


class InterpProgram(Program):
    """A WASI program on one interpreter instance (see :class:`~wasmig.engines.base.Program`)."""

    def __init__(self, instance: InterpInstance) -> None:
        assert instance.wasi is not None
        self.instance = instance
        self.module = instance.module
        self.wasi = instance.wasi
        self.machine = instance.machine
        self._stable_only = False
        self._instruction_done = False  # the instruction trigger fires once
        self._advancing = False  # between an instruction stop and the stable point it advances to

    @property
    def steps(self) -> int | None:
        return self.machine.steps if self.machine.steps_counted else None

    def request(self) -> None:
        self.machine.stop_at_step = 0
        self.wasi.waiter.request()

    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        m = self.machine
        self._stable_only = stable_only
        if at_step is not None and not m.steps_counted:
            raise SnapshotError("cannot checkpoint at a step: this program's step count is unknown (its snapshot "
                                "was taken by a run that did not count steps)")
        m.stop_at_step = at_step if at_step is not None and at_step > m.steps else NEVER
        if at_instruction is not None and not self._instruction_done:
            if m.instructions is None:
                raise SnapshotError("cannot checkpoint at an instruction count: this program's instruction count is "
                                    "unknown (its snapshot was taken by a run that did not count instructions)")
            m.counting = True
            m.stop_at_instruction = at_instruction
        else:
            m.counting = False
            m.stop_at_instruction = NEVER
        self.wasi.waiter.clear()

    def start(self) -> bool:
        return self._run(lambda: self.instance.invoke("_start"))

    def resume(self) -> bool:
        return self._run(self.machine.resume)

    def _run(self, go: Callable[[], Any]) -> bool:
        while True:
            try:
                go()
                return False
            except Suspended:
                if self.machine.point == "instruction" or self._advancing:
                    self._instruction_done = True
                if not self._advance_to_stable():
                    self._advancing = False
                    return True
                go = self.machine.resume

    def _advance_to_stable(self) -> bool:
        """With ``stable_only``, an instruction stop continues to the next stable point first."""
        m = self.machine
        if m.point == "instruction" and self._stable_only:
            m.counting = True  # keep counting: the snapshot still knows its exact instruction count
            m.stop_at_instruction = NEVER
            m.stop_at_step = m.steps + 1
            self._advancing = True
            return True
        return False

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        return capture(self.instance, with_memory=with_memory, memory_in_place=memory_in_place)

    def export_names(self) -> Collection[str]:
        return self.instance.exports.keys()

    def guest_memories(self) -> list[MemoryReader]:
        def reader(data: bytearray) -> Callable[[int], bytes]:
            return lambda i: bytes(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])  # a copy: the guest may grow it

        return [(len(m.data), reader(m.data)) for m in self.instance.store.mems]


class ByteImages(Landing):
    """Pages land in a byte image per memory, restored as a whole at the end. Memory 0's image
    starts as the module's initial memory (its constant-offset data segments), as a prepared
    instance's would. What the state goes into is the subclass's (:meth:`prepare`)."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.images: list[bytearray] = [initial_image(module)] if module.ir.all_mems() else []

    def pages(self, m: int) -> int:
        return len(self.images[m]) // PAGE_SIZE if m < len(self.images) else 0

    def _image(self, m: int, i: int) -> bytearray:
        while len(self.images) <= m:
            self.images.append(bytearray())
        image = self.images[m]
        if len(image) < (i + 1) * PAGE_SIZE:
            image.extend(bytes((i + 1) * PAGE_SIZE - len(image)))
        return image

    def write(self, m: int, i: int, data: bytes) -> None:
        self._image(m, i)[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = data

    def read(self, m: int, i: int) -> bytes:
        return bytes(self._image(m, i)[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])

    def memory(self, i: int, _repr: Any, size_pages: int) -> bytearray | None:
        image = self._image(i, size_pages - 1) if size_pages else bytearray()
        del image[size_pages * PAGE_SIZE:]
        return image


class ImageLanding(ByteImages):
    """A single-instance program's migration: its memories' byte images, and the instance they go into."""

    def __init__(self, module: Module) -> None:
        super().__init__(module)
        # the instance the state goes into, made now rather than in the downtime (0.17 s for
        # CPython); its WASI is re-initialised in place with the program's state at the end
        self.wasi = Wasi()
        self.instance = InterpInstance(module, wasi_imports(module, self.wasi), "interp", initialize=False)

    def prepare(self, snap: Snapshot, granted: Granted, *, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None) -> Program:
        from wasmig.wasi.snapshot import restore_wasi

        assert snap.wasi is not None
        wasi = restore_wasi(snap.wasi, granted=granted, into=self.wasi, stdout=stdout, stderr=stderr)
        # the frames are loaded (restore checked them against the module); the machine goes on
        # from the innermost frame's pc directly: there is no rewind to wait for
        return InterpProgram(bind_wasi(restore(self.module, snap, instance=self.instance), wasi))


class InterpEngine(Engine):
    name = "interp"
    needs_ir = True
    runs_threads = True
    captures_threads = True
    lands_threads = True

    def run_threaded_command(self, module: Module, wasi: Wasi, *, seed: int = 0) -> int:
        from wasmig.engines.interp.wasi_threads import run_threaded_command

        return run_threaded_command(module, wasi, seed=seed)

    def instance_class(self, imports: Mapping[str, Mapping[str, Any]] | Wasi | None) -> type[InterpInstance]:
        return InterpInstance

    def instantiate_wasi(self, module: Module, wasi: Wasi, **options: Any) -> InterpInstance:
        if options:
            raise TypeError(f"options {sorted(options)} are not the interpreter's")
        return instantiate_wasi(module, wasi)

    def program(self, module: Module, wasi: Wasi, *, checkpoints: bool, count_steps: bool = False,
                announce: str | None = None) -> Program:
        from wasmig.engines.interp.wasi_threads import is_threaded

        if is_threaded(module):  # every thread, stopped and captured together (docs/threads.md)
            from wasmig.engines.interp.threaded import threaded_program

            return threaded_program(module, wasi)
        return InterpProgram(instantiate_wasi(module, wasi))  # it always counts, and can always stop

    def restore(self, module: Module, snap: Snapshot, wasi: Wasi, *, pages: list[PagedMemory] | None = None,
                count_steps: bool = False, announce: str | None = None) -> Program:
        from wasmig.snapshot.limits import check_module_maximum
        from wasmig.snapshot.store import materialize

        started = time.perf_counter()
        # the whole memory is read into this process: within the module's own maximum first
        check_module_maximum([len(p) for p in pages] if pages is not None else
                             [len(m.data) // PAGE_SIZE for m in snap.memories], module.ir)
        materialize(snap, pages)
        if snap.threads is not None:
            from wasmig.engines.interp.threaded import restore_threaded

            program: Program = restore_threaded(module, snap, wasi)
        else:
            program = InterpProgram(restore(module, snap, wasi))
        log.info(__name__, "restore: state restored on the interpreter in %.3f s", time.perf_counter() - started)
        return program

    def restore_instance(self, module: Module, snap: Snapshot, imports: Mapping[str, Mapping[str, Any]] | None,
                         wasi: Wasi | None, *, count_steps: bool = False) -> InterpInstance:
        return restore(module, snap, wasi if wasi is not None else imports)

    def landing(self, module: Module) -> Landing:
        from wasmig.engines.interp.wasi_threads import is_threaded

        if is_threaded(module):  # every thread restored from the one shared memory's image
            from wasmig.engines.interp.threaded import ThreadedLanding

            return ThreadedLanding(module)
        return ImageLanding(module)


ENGINE = InterpEngine()
