"""Checkpointing on the wasmtime engine, through the instrumentation pass (docs/instrument.md).

:class:`Checkpointable` runs the *instrumented* module on wasmtime with wasmig's WASI and gives
it the interpreter's checkpoint vocabulary:

- run ``_start`` from the beginning, or *rewind* a canonical snapshot's frames into it (a restore,
  or going on after a checkpoint);
- stop deterministically at stable point N (``wasmig:stop_at``; only the deterministic variant of
  the pass, ``count_steps=True``, counts steps), or asynchronously: the guest runs
  in a worker thread (ctypes releases the GIL while wasm runs) and :meth:`request` — safe from a
  signal handler in the main thread — writes the control memory's poll byte, which the guest
  tests at its next function entry or loop header, and wakes a blocked WASI call, which returns
  at once with ``$state = unwinding`` so the guest unwinds from that import call;
- capture the canonical :class:`Snapshot` once the guest unwound (:func:`capture_wasmtime`), equal
  to the interpreter's at the same step (the fast variant's snapshots have ``steps = None``).

The instrumented module comes from :mod:`wasmig.engines.wasmtime.instrumented` (cached).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wasmtime

from wasmig.engines.under_way import UnderWay
from wasmig.engines.wasmtime.capture import capture_wasmtime, memory_export, static_tables
from wasmig.engines.wasmtime.instrumented import Instrumented, instrumented
from wasmig.engines.wasmtime.program_memory import poll_address
from wasmig.errors import SnapshotError
from wasmig.module import Module
from wasmig.wasi.preview1 import Wasi

if TYPE_CHECKING:
    # imported where a checkpoint, a rewind or an instrumentation needs them, not by a start: the
    # pass, the IR classes it is written with, the snapshot classes, the store (msgpack, zstandard)
    # would add 20 ms to every start (docs/instrument.md, "Start-up")
    from wasmig.snapshot.state import FrameState, Snapshot
    from wasmig.snapshot.store import PagedMemory

#: the guest thread's stack: room for wasmtime's max_wasm_stack and the host calls
WORKER_STACK = 64 << 20
_CHECKPOINT_CODE_IMPORTED = False
#: seconds the thread waiting for a guest stopped only on request sleeps between looks at it: a
#: fallback only, since the request and the guest's end wake it at once (Checkpointable._nudge)
REQUEST_WAIT = 0.25


def _import_checkpoint_code() -> None:
    """Import what a capture or a rewind runs (the pass's layout constants, which bring the IR
    classes, the records and snapshot classes: 15-20 ms), in the main thread once the guest is
    under way in its worker (:mod:`wasmig.engines.under_way`: 0.1 s of CPU or 1 s): a start does
    not wait for it (docs/design.md, "Start-up"), a program that ends sooner never pays it, and
    the first checkpoint of a longer one does not wait for it either (an earlier one does)."""
    global _CHECKPOINT_CODE_IMPORTED
    if not _CHECKPOINT_CODE_IMPORTED:
        _CHECKPOINT_CODE_IMPORTED = True
        import wasmig.engines.wasmtime.records  # noqa: F401
        import wasmig.instrument.unwind  # noqa: F401
        import wasmig.snapshot.state  # noqa: F401


class Checkpointable:
    """The instrumented module on wasmtime, able to stop, be captured and be rewound.

    ``count_steps``: run the deterministic variant, which counts stable points like the
    interpreter (needed by :meth:`arm` with a step, and for snapshots with a step number); the
    default fast variant only polls, at a fraction of the cost (docs/instrument.md)."""

    def __init__(self, module: Module, wasi: Wasi | None, *, count_steps: bool = False,
                 announce: str | None = None) -> None:
        from wasmig.engines.wasmtime.runtime import WasmtimeInstance

        # a cached entry of the module's facts gives its sha256 too, the instrumented module's key
        known = module.cached_facts()
        self.instrumented = instrumented(module, count_steps=count_steps, announce=announce)
        compiled = self.instrumented.compiled()
        instance = WasmtimeInstance(module, wasi, code=lambda: self.instrumented.data, compiled=compiled)
        self._bind(module, wasi, instance, self.instrumented.sites, known if known is not None else module.facts)

    @classmethod
    def attach(cls, module: Module, wasi: Wasi | None, instance: Any, made: Instrumented) -> Checkpointable:
        """The checkpoint vocabulary for an instance made elsewhere: one thread's instance of a
        wasi-threads run (:mod:`wasmig.engines.wasmtime.threads_checkpoint`), of the instrumented
        module ``made`` (its memory is the run's shared one; a rewind module is linked into the
        thread's own store when that thread first rewinds)."""
        self = cls.__new__(cls)
        self.instrumented = made
        self._bind(module, wasi, instance, made.sites, module.facts)
        return self

    def _bind(self, module: Module, wasi: Wasi | None, instance: Any, sitemap: Any, facts: Any) -> None:
        self.module = module
        self.wasi = wasi
        self.sitemap = sitemap
        #: what the checkpoint code reads of the module (learnt once by decoding it when not cached;
        #: after an instrumentation, from the IR the pass decoded)
        self.facts = facts
        self.instance = instance
        ex = self.instance.exports
        self.store = self.instance.store
        self._state = ex["wasmig:state"]
        self._steps = ex["wasmig:steps"]
        self._stop_at = ex["wasmig:stop_at"]
        self.ctl = ex["wasmig:ctl"]
        self.instance.interrupt_state = self._state
        # the control memory never moves (memory_may_move is off): a plain address, writable
        # from any thread
        poll_base = ctypes.addressof(ex["wasmig:poll"].data_ptr(self.store).contents)
        self._poll = ctypes.c_uint8.from_address(poll_address(ex, self.store, self.sitemap.poll))
        self.instance.interrupt_flag = self._poll
        # memory 0's size, which the module itself keeps up to date after every memory.grow, and
        # its address (it never moves): another thread reads the live memory through these two
        # without calling into wasmtime's store while the guest runs (a migration's pre-copy)
        self._pages = ctypes.c_uint32.from_address(poll_base + self.sitemap.memory_pages)  # little-endian hosts
        self._memory_base = 0
        if self.facts.mems and isinstance(self._memory(0), wasmtime.Memory):  # a shared memory is the run's
            self._memory_base = ctypes.addressof(self._memory(0).data_ptr(self.store).contents)
            self._publish_pages()
        self._tables: list[Any] | None = None
        self._slots: dict[tuple[int, int, int], int] = {}
        self._pending: tuple[list[FrameState], str] | None = None  # what resume() continues by default
        self._rewind_watch: tuple[ctypes.c_uint32, int] | None = None  # see rewind_ended()
        self._rewind_linked = self.instrumented.sites.rewind is None  # the run module holds the copies
        self._rewind_compiling: threading.Thread | None = None
        self._rewind_compiled: list[Any] = []  # the compiled rewind module, or what compiling it raised
        #: called once the guest is under way, after the checkpoint code's import (Program.when_under_way)
        self.on_under_way: Callable[[], None] | None = None
        self.under_way_by: float | None = None  # ... at the latest after that many seconds
        #: set by :meth:`ready_on_request`: what the first request makes ready before the guest stops
        self._on_request: tuple[Callable[[], None] | None] | None = None
        self._wanted = False  # a request waits for that (see _call)
        #: held by the thread in _call while it waits for such a request: released by the request or
        #: the guest's end (a plain lock: a signal handler in that very thread may release it)
        self._wake = threading.Lock()

    # --- the rewind module ----------------------------------------------------------------------
    def compile_rewind_ahead(self) -> None:
        """Start compiling the rewind module (docs/instrument.md, "Two modules") in a thread of its
        own, if it is not yet linked or being compiled: a checkpoint calls this as soon as the
        guest stopped, so that a program going on after it (or a restore) seldom waits for the
        compile (wasmtime releases the GIL while it compiles; on a cache hit it is a mapping)."""
        if self._rewind_linked or self._rewind_compiling is not None:
            return

        def work() -> None:
            try:
                self._rewind_compiled.append(self.instrumented.compiled_rewind())
            except BaseException as e:  # noqa: BLE001 - re-raised by _link_rewind in the caller's thread
                self._rewind_compiled.append(e)

        self._rewind_compiling = threading.Thread(target=work, name="wasmig-rewind-compile", daemon=True)
        self._rewind_compiling.start()

    def _link_rewind(self) -> None:
        """The rewind module, compiled (or waited for) and instantiated beside the run instance in
        its store, so its ``wasmig:rewind<f>`` exports can be called: only before the first rewind
        (a run that is never checkpointed and never restored never compiles the copies)."""
        if self._rewind_linked:
            return
        self.compile_rewind_ahead()
        assert self._rewind_compiling is not None
        self._rewind_compiling.join()
        outcome = self._rewind_compiled[0]
        if isinstance(outcome, BaseException):
            raise outcome
        self.instance.link(outcome, lambda: self.instrumented.rewind_data or b"")
        self._rewind_linked = True

    # --- control ---------------------------------------------------------------------------
    @property
    def count_steps(self) -> bool:
        """Whether this is the deterministic variant (its site map says so)."""
        return self.sitemap.counts_steps

    @property
    def steps(self) -> int | None:
        """Stable points executed (the canonical step count); None in the fast variant."""
        return self._steps.value(self.store) & _I64 if self.count_steps else None

    @property
    def unwound(self) -> bool:
        return self._state.value(self.store) == self.sitemap.state_unwinding

    def ready_on_request(self, prepare: Callable[[], None] | None) -> None:
        """Make nothing ready while the guest runs (no checkpoint code imported once it is under
        way): the first :meth:`request` has the thread that waits for the guest (:meth:`_call`)
        import the checkpoint code and call ``prepare``, the guest running on meanwhile, and only
        then asks it to stop. For a run whose checkpoints and migrations come only on request
        (``wasmig checkpoint PID``, ``wasmig migrate PID``): most such runs are never stopped, and
        paid 50-60 ms of CPU for that code beside every program that ran 0.1 s (docs/design.md,
        "Start-up"); the first stop comes that much later, its pause is as short."""
        self._on_request = (prepare,)
        self._wake.acquire(blocking=False)

    def request(self) -> None:
        """Stop at the next stable point, or now if blocked in a WASI call (any thread; after
        :meth:`ready_on_request`, the first request only once the stop's code is ready)."""
        if self._on_request is not None:  # the waiting thread makes it ready, then stops the guest
            self._wanted = True
            self._nudge()
            return
        self._poll.value = 1
        if self.wasi is not None:
            self.wasi.waiter.request()

    def arm(self, at_step: int | None) -> None:
        """Clear any pending request; stop at stable point ``at_step`` if it is still ahead (the
        deterministic variant only)."""
        self._poll.value = 0
        self._wanted = False
        if self.wasi is not None:
            self.wasi.waiter.clear()
        if not self.count_steps:
            if at_step is not None:
                raise SnapshotError("stopping at a step needs the step count: "
                                    "Checkpointable(..., count_steps=True)")
            return
        steps = self._steps.value(self.store) & _I64
        self._stop_at.set_value(self.store, at_step if at_step is not None and at_step > steps else self.sitemap.never)

    # --- running -----------------------------------------------------------------------------
    def start(self) -> None:
        """Run the program from the beginning (its start function, then ``_start``)."""
        from wasmig.errors import LinkError

        if "_start" not in self.instance.exports:
            raise LinkError("the module has no `_start` export: it is not a WASI command")
        if "wasmig:start" in self.instance.exports:
            self._call("wasmig:start")
            if self.unwound:
                raise SnapshotError("cannot checkpoint inside the module's start function")
        self._call("_start")

    def resume(self, frames: list[FrameState] | None = None, point: str | None = None) -> None:
        """Rewind ``frames`` (canonical, outermost first; default: those of the snapshot given to
        :meth:`load`, else of the last unwind) and run on from there until the program ends
        (``ProcExit``), unwinds again (:attr:`unwound`) or traps."""
        if frames is None:
            if self._pending is None and self.unwound:  # stopped, and not captured: its frames only
                self.frames()
            if self._pending is None:
                raise SnapshotError("nothing to resume: no snapshot loaded and no unwind taken")
            frames, point = self._pending
        self._pending = None
        assert point is not None
        if not frames:  # an idle snapshot: nothing was running
            return
        self._call(self.prepare_rewind(frames, point))
        if self._state.value(self.store) == _STATE_REWINDING:
            raise SnapshotError("internal error: the rewind did not reach the snapshot's innermost frame")

    def prepare_rewind(self, frames: list[FrameState], point: str) -> str:
        """Write the records that rewind ``frames`` into the control memory and set the state to
        rewinding: the export to call (the outermost frame's rewind copy, which pops its record
        and calls the next frame's copy)."""
        from wasmig.engines.wasmtime.records import records_from_frames
        from wasmig.instrument.unwind import READ_PTR, RECORDS_BASE, STATE_REWINDING, WRITE_PTR

        records = records_from_frames(frames, point, self.sitemap, self._indirect_slot)
        self._link_rewind()
        name = self._rewind_export(frames[0].func)
        need = RECORDS_BASE + len(records)
        have = self.ctl.data_len(self.store)
        if need > have:
            self.ctl.grow(self.store, (need - have + 65535) // 65536)
        self.ctl.write(self.store, records, RECORDS_BASE)
        self.ctl.write(self.store, struct.pack("<I", need), WRITE_PTR)
        self.ctl.write(self.store, struct.pack("<I", RECORDS_BASE), READ_PTR)
        self._state.set_value(self.store, STATE_REWINDING)
        base = ctypes.addressof(self.ctl.data_ptr(self.store).contents)  # never moves (memory_may_move is off)
        self._rewind_watch = (ctypes.c_uint32.from_address(base + WRITE_PTR), need)
        return name

    def rewind_ended(self) -> bool:
        """Whether the rewind :meth:`resume` started has reached the snapshot's innermost frame
        (``$state`` is back to running and the program goes on), read from any thread while the
        guest runs: the end of a rewind resets the records' write pointer, which :meth:`resume`
        set past the records, in the control memory (plain memory that never moves). False
        before :meth:`resume` wrote its records. A live migration's target answers only once this
        is true; it latches the answer (a later unwind moves the pointer again)."""
        watch = self._rewind_watch
        return watch is not None and watch[0].value != watch[1]

    # --- memory in place (a live migration's target) ------------------------------------------
    def _memory(self, i: int) -> Any:
        return memory_export(self.instance.exports, i)

    def memory_pages(self, i: int) -> int:
        return self._memory(i).size(self.store)

    def _publish_pages(self) -> None:
        """Tell :meth:`live_memory` the size after the host grew the memory itself."""
        self._pages.value = self._memory(0).size(self.store)

    def live_memory(self) -> tuple[int, int]:
        """(address, size in bytes) of memory 0, safe to call from any thread while the guest
        runs: both come from plain memory, not from wasmtime (whose store belongs to the thread
        running the guest)."""
        return self._memory_base, self._pages.value * 65536

    def memory_address(self, i: int, pages: int) -> int:
        """The address of memory ``i``, grown first to at least ``pages`` pages (the guest is
        not running; a memory never moves, see ``memory_may_move``)."""
        mem = self._memory(i)
        have = mem.size(self.store)
        if pages > have:
            try:
                mem.grow(self.store, pages - have)
            except Exception as e:  # noqa: BLE001 - wasmtime's error for a limit or an allocation failure
                raise SnapshotError(f"memory {i} cannot grow to {pages} pages: {e}") from None
            self._publish_pages()
        return ctypes.addressof(mem.data_ptr(self.store).contents)

    def _indirect_slot(self, func: int, pc: int, callee: int) -> int:
        """A slot of the table a ``call_indirect`` at (func, pc) uses that holds ``callee``
        (remembered: a deep recursion through one function pointer asks the same thing per frame)."""
        key = (func, pc, callee)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._find_indirect_slot(func, pc, callee)
        return slot

    def _find_indirect_slot(self, func: int, pc: int, callee: int) -> int:
        module, defined = self.module, func - self.facts.imported_funcs
        table = None
        if module.has_bytes and module.data is not None:  # that one instruction, not the function decoded
            table = self.facts.indirect_call_table(module.data, defined, pc)
        elif 0 <= defined < self.facts.defined_funcs:
            ins = next((x for x in module.ir.funcs[defined].body if x.offset == pc), None)
            table = ins.imm[1] if ins is not None and ins.op == 0x11 else None
        if table is None:
            raise SnapshotError(f"snapshot does not fit the module: no indirect call at {pc:#x} in function {func}")
        if self._tables is None:
            self._tables = static_tables(self.module)
        elements = self._tables[table].elements
        try:
            return elements.index(callee)
        except ValueError:
            raise SnapshotError(f"snapshot does not fit the module: function {callee} is not in table "
                                f"{table}") from None

    def _rewind_export(self, func: int) -> str:
        """The export of the rewind copy of ``func``, the outermost frame's function."""
        name = f"wasmig:rewind{func}"
        if name not in self.instance.exports:
            raise SnapshotError(f"cannot resume on wasmtime: the outermost frame's function {func} is not exported")
        return name

    def _call(self, name: str, *args: Any) -> None:
        """Call an export in a worker thread, so the main thread stays free for signals and timers
        (a guest spinning in compiled code would never let a handler run otherwise)."""
        outcome: list[BaseException] = []

        def work() -> None:
            try:
                self.instance.invoke(name, *args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller as itself
                outcome.append(e)
            finally:
                self._nudge()

        old_size = threading.stack_size(WORKER_STACK)  # room for wasmtime's max_wasm_stack and the host calls
        try:
            worker = threading.Thread(target=work, name="wasmig-guest", daemon=True)
            worker.start()
        finally:
            threading.stack_size(old_size)
        hook = self.on_under_way
        if self._on_request is None and (not _CHECKPOINT_CODE_IMPORTED or hook is not None):
            def running(timeout: float) -> bool:
                worker.join(timeout)
                return worker.is_alive()

            # a short program ends first: it never needs that code; else it is imported while the
            # guest runs, in this thread (the only one importing: see Program.when_under_way)
            if UnderWay(self.under_way_by if hook is not None else None).wait(running):
                _import_checkpoint_code()
                if hook is not None and worker.is_alive():  # stopped meanwhile: not while it waits
                    self.on_under_way = None
                    hook()
        while worker.is_alive():
            if self._on_request is None:
                worker.join(0.25)  # signal handlers run between the waits
            elif self._wanted:
                self._get_ready()
            else:  # until a request (or the guest's end) releases it: no polling
                self._wake.acquire(timeout=REQUEST_WAIT)
        if outcome:
            raise outcome[0]

    def _nudge(self) -> None:
        """Wake the thread in :meth:`_call` if it waits on :attr:`_wake` (any thread, a signal handler too)."""
        try:
            self._wake.release()
        except RuntimeError:  # not held: that thread does not wait, or was woken already
            pass

    def _get_ready(self) -> None:
        """The first request after :meth:`ready_on_request`: import the checkpoint code and call
        its ``prepare`` (in :meth:`_call`'s thread, the guest running), then stop the guest."""
        assert self._on_request is not None
        (prepare,) = self._on_request
        _import_checkpoint_code()
        if prepare is not None:
            prepare()
        self._on_request = None
        self._wanted = False
        self.request()

    # --- state -----------------------------------------------------------------------------------
    def frames(self) -> tuple[list[FrameState], str]:
        """The canonical frames and point, after the guest unwound."""
        from wasmig.engines.wasmtime.records import frames_from_records

        self.compile_rewind_ahead()  # compiled while the checkpoint is written: going on needs it
        ctl = bytes(self.ctl.read(self.store, 0, self.ctl.data_len(self.store)))
        self._pending = frames_from_records(ctl, self.sitemap)
        return self._pending

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        """The canonical snapshot, after the guest unwound (``memory_in_place``: see
        :func:`capture_wasmtime`; for a checkpoint written before :meth:`resume`)."""
        self.compile_rewind_ahead()  # compiled while the checkpoint is written: going on needs it
        snap = capture_wasmtime(self.instance, self.module, self.sitemap, with_memory=with_memory,
                                memory_in_place=memory_in_place)
        self._pending = (snap.frames, snap.point)
        return snap

    def load(self, snap: Snapshot, *, memory_in_place: bool = False, pages: list[PagedMemory] | None = None) -> None:
        """Put a snapshot's memory, globals, tables, dropped segments and step count into this
        (fresh) instance; the frames follow with :meth:`resume`. ``memory_in_place``: the
        memories already hold the snapshot's contents (a live migration's target wrote them
        page by page, see :meth:`memory_address`). ``pages``: the memories' pages, read on demand
        (:func:`wasmig.snapshot.store.load_snapshot_deferred`; the snapshot's memory bytes are
        then empty): only the pages the fresh instance does not already hold are read and written."""
        module, facts = self.module, self.facts
        store = self.store
        if module.sha256 != snap.module_sha256:
            raise SnapshotError(f"the snapshot is of another module (sha256 {snap.module_sha256[:16]}..., "
                                f"this module is {str(module.sha256)[:16]}...)")
        mems = facts.mems
        if len(snap.memories) != len(mems):
            raise SnapshotError("snapshot does not fit the module: memory, table or global counts differ")
        if pages is not None and (memory_in_place or len(pages) != len(snap.memories)):
            raise SnapshotError("internal error: the snapshot's pages do not match its memories")
        sources: list[Any] = [ms.data for ms in snap.memories] if pages is None else list(pages)
        self.pages_written = 0
        for i, src in enumerate(sources if not memory_in_place else ()):
            mem = self._memory(i)
            size = len(src) // _PAGE if isinstance(src, (bytes, bytearray)) else len(src)
            have = mem.size(store)
            limit = mems[i][1] if mems[i][1] is not None else 65536
            if size < have or size > limit:
                raise SnapshotError(f"snapshot does not fit the module: memory {i} has {size} pages")
            if size > have:
                mem.grow(store, size - have)
            if not size:
                continue
            address = ctypes.addressof(mem.data_ptr(store).contents)
            if isinstance(src, (bytes, bytearray)):
                _copy_pages(address, src, facts.page_set(i))
            else:
                self.pages_written += _write_pages(address, src, facts.page_set(i))
        if mems:
            self._publish_pages()
        if memory_in_place and snap.memories:
            for i, (_, most) in enumerate(mems):
                if most is not None and self.memory_pages(i) > most:
                    raise SnapshotError(f"snapshot does not fit the module: memory {i} is too large")
        self.load_parts(snap.tables, snap.globals, snap.dropped_data, snap.dropped_elems, snap.steps, snap.frames,
                        snap.point)

    def load_parts(self, tables: list[Any], globals_state: list[Any], dropped_data: list[bool],
                   dropped_elems: list[bool], steps: int | None, frames: list[FrameState], point: str) -> None:
        """Put an instance's own state (what a thread of a threaded snapshot has of its own:
        tables, globals, dropped segments, step count; its frames follow with :meth:`resume`)
        into this fresh instance, each checked against the module."""
        from wasmig.engines.wasmtime.records import MASKS
        from wasmig.instrument.unwind import DROPS_BASE, GLOBALS_BASE

        module, facts, store = self.module, self.facts, self.store
        globals_ = facts.globals
        if (len(globals_state), len(tables)) != (len(globals_), len(facts.tables)):
            raise SnapshotError("snapshot does not fit the module: table or global counts differ")
        if (len(dropped_data), len(dropped_elems)) != (len(facts.data_modes), len(facts.elem_modes)):
            raise SnapshotError("snapshot does not fit the module: segment counts differ")
        if tables != static_tables(module):
            raise SnapshotError("cannot restore on wasmtime: the snapshot's tables differ from the module's element "
                                "segments (a table changed at run time); restore it on the interpreter")
        self.instance.invoke("wasmig:dump")
        ctl_view = bytes(self.ctl.read(store, GLOBALS_BASE, GLOBALS_BASE + 8 * len(globals_)))
        for i, ((gtype, gmutable), gs) in enumerate(zip(globals_, globals_state, strict=True)):
            t, bits = gs.value
            if gs.type != gtype or gs.mutable != gmutable or t != gtype or t not in MASKS \
                    or not isinstance(bits, int) or not 0 <= bits <= MASKS[t]:
                raise SnapshotError(f"snapshot does not fit the module: global {i}")
            if gmutable:
                self.ctl.write(store, struct.pack("<Q", bits), GLOBALS_BASE + 8 * i)
            elif struct.unpack_from("<Q", ctl_view, 8 * i)[0] & MASKS[t] != bits:
                raise SnapshotError(f"snapshot does not fit the module: immutable global {i} has another value")
        # a flag byte per *passive* segment only (wasmig:load reads no others): a module with more
        # than GLOBALS_BASE - DROPS_BASE segments (CPython's WLR build has 24,171 data segments)
        # would otherwise have its flags written over the globals just put there
        n_data = len(facts.data_modes)
        flags = {DROPS_BASE + i: dropped for i, (mode, dropped) in
                 enumerate(zip(facts.data_modes, dropped_data, strict=True)) if mode == "p"}
        flags.update({DROPS_BASE + n_data + i: dropped for i, (mode, dropped) in
                      enumerate(zip(facts.elem_modes, dropped_elems, strict=True)) if mode == "p"})
        if flags and max(flags) >= GLOBALS_BASE:
            raise SnapshotError(f"cannot restore on wasmtime: the module has {n_data + len(facts.elem_modes)} data and "
                                f"element segments, more than the control memory has room for beside a passive one "
                                f"({GLOBALS_BASE - DROPS_BASE}); restore it on the interpreter")
        area = bytearray(max(flags) + 1 - DROPS_BASE) if flags else bytearray()
        for at, dropped in flags.items():
            area[at - DROPS_BASE] = dropped
        if area:
            self.ctl.write(store, bytes(area), DROPS_BASE)
        self.instance.invoke("wasmig:load")
        if area:
            self.ctl.write(store, bytes(len(area)), DROPS_BASE)  # the guest's own drops start from zero
        if self.count_steps:
            if steps is None:
                raise SnapshotError("the snapshot has no step count (it was taken without counting steps): "
                                    "it cannot continue a step count")
            self._steps.set_value(store, steps)
        self._pending = (frames, point)
        if frames:
            self.compile_rewind_ahead()  # compiled while the rest of the restore goes on


_PAGE = 65536
_STATE_REWINDING = 2  # wasmig.instrument.unwind.STATE_REWINDING (not imported by a start)
_ZERO_PAGE = bytes(_PAGE)
_I64 = 0xFFFF_FFFF_FFFF_FFFF


def _write_pages(address: int, pages: PagedMemory, dirty: set[int] | None) -> int:
    """Write a deferred snapshot memory over a fresh memory at ``address``, reading only the pages
    that differ from what it holds: a page zero in both is skipped, and so is a page whose hash
    in the snapshot is that of the fresh page (module data the program never changed: no read,
    no decompression, no copy). ``dirty``: the fresh memory's pages that may be non-zero (its data
    segments'; None: any). Returns the pages written."""
    from wasmig.hashing import blake3

    fresh = memoryview((ctypes.c_ubyte * (len(pages) * _PAGE)).from_address(address)).cast("B")
    written = 0
    copy: list[int] = []
    for j, entry in enumerate(pages.entries):
        held = dirty is None or j in dirty  # the fresh page may be non-zero
        lo = j * _PAGE
        if entry is None:
            if held:  # zeroed by the program
                ctypes.memset(address + lo, 0, _PAGE)
                written += 1
            continue
        digest = pages.digest(j)
        if held and digest is not None and blake3(fresh[lo : lo + _PAGE]).hexdigest() == digest:
            continue
        copy.append(j)
    pages.copy_into(address, copy)  # read, decompressed and verified into place, on all cores
    return written + len(copy)


def _copy_pages(address: int, data: bytes, dirty: set[int] | None) -> None:
    """Copy ``data`` over a fresh memory at ``address``, skipping pages that are zero in both (most
    of a C program's memory: its stack and unused heap). ``dirty``: the fresh memory's pages that
    may be non-zero (its data segments'; None: any)."""
    run_start = None
    n = len(data)
    for page in range(n // _PAGE + 1):
        lo = page * _PAGE
        copy = lo < n and (not data.startswith(_ZERO_PAGE, lo) or dirty is None or page in dirty)  # memcmp
        if copy and run_start is None:
            run_start = lo
        elif not copy and run_start is not None:
            ctypes.memmove(address + run_start, data[run_start:lo], lo - run_start)
            run_start = None
