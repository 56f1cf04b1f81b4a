"""A wasi-threads program on the interpreter as a :class:`~wasmig.engines.base.Program`: run under
the session's checkpoint policy, every thread stopped, captured into a format-version-2 snapshot
and restored from one (docs/threads.md, "Snapshot of a multi-threaded program").

The scheduler (:mod:`wasmig.interp.threads`) does the stopping: a pause leaves every thread
parked at a point a snapshot can name. This module translates between those parked threads and
the canonical :class:`~wasmig.snapshot.threads_state.ThreadsState`, each thread's frames through
:mod:`wasmig.engines.interp.capture` like a single-threaded instance's.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig.engines.base import MemoryReader, Program
from wasmig.engines.interp.capture import capture_frames, capture_instance_parts, restore_instance_parts
from wasmig.engines.interp.engine import ByteImages
from wasmig.engines.interp.wasi_threads import threaded_linker
from wasmig.errors import LinkError, SnapshotError
from wasmig.interp.machine import NEVER
from wasmig.interp.store import FuncInst
from wasmig.interp.threads import BLOCKING_CALLS, QUANTUM, ThreadScheduler, Wait, WasmThread
from wasmig.snapshot.state import PAGE_SIZE, THREADS_FORMAT_VERSION, MemoryState, Snapshot
from wasmig.snapshot.threads_state import (
    SchedulerState,
    ThreadInstanceState,
    ThreadsState,
    ThreadState,
    WaitState,
)
from wasmig.wasi.preview1 import WASI_MODULE
from wasmig.wasi.threads_abi import THREAD_START

if TYPE_CHECKING:
    from wasmig.grants import Granted
    from wasmig.interp.store import Memory
    from wasmig.module import Module
    from wasmig.wasi.preview1 import Wasi


class ThreadedInterpProgram(Program):
    """A wasi-threads program (every thread) on the interpreter; see the module docstring."""

    def __init__(self, module: Module, wasi: Wasi, scheduler: ThreadScheduler, main: Any, memory: Memory) -> None:
        self.module = module
        self.wasi = wasi
        self.scheduler = scheduler
        self.main = main  # the main thread's InterpInstance
        self.memory = memory
        self._launched = False
        scheduler.interrupt_host = wasi.waiter.request
        scheduler.resume_host = wasi.waiter.clear

    @property
    def steps(self) -> int | None:
        """The program's stable points: every thread's (docs/threads.md, "A step, with threads")."""
        return self.scheduler.total_steps() if self.main.machine.steps_counted else None

    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        if at_instruction is not None:
            raise SnapshotError("cannot checkpoint a multi-threaded program at an instruction count (only at a "
                                "step, on request or on a timer)")
        if at_step is not None and self.steps is None:
            raise SnapshotError("cannot checkpoint at a step: this program's step count is unknown")
        sched = self.scheduler
        sched.stop_at_total = at_step if at_step is not None and at_step > sched.total_steps() else NEVER
        sched.stop_requested = False

    def request(self) -> None:
        self.scheduler.request()

    def start(self) -> bool:
        return self._go()

    def resume(self) -> bool:
        return self._go()

    def _go(self) -> bool:
        if self._launched:
            self.scheduler.unpause()
        else:
            self._launched = True
            self.scheduler.launch()
        return self.scheduler.go()

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        return capture_threads(self, with_memory=with_memory, memory_in_place=memory_in_place)

    def export_names(self) -> Collection[str]:
        return self.main.exports.keys()  # type: ignore[no-any-return]

    def guest_memories(self) -> list[MemoryReader]:
        data = self.memory.data
        return [(len(data), lambda i: bytes(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))]


def threaded_program(module: Module, wasi: Wasi, *, seed: int = 0, quantum: int = QUANTUM) -> ThreadedInterpProgram:
    """A wasi-threads command ready to :meth:`~ThreadedInterpProgram.start` (its ``_start`` the main
    thread); ``seed`` picks the interleaving."""
    scheduler = ThreadScheduler(lambda: make_instance(), seed=seed, quantum=quantum)
    make_instance, memory = threaded_linker(module, wasi, scheduler)
    main = make_instance()
    start = main.exports.get("_start")
    if not isinstance(start, FuncInst):
        raise LinkError("the module has no `_start` export: it is not a WASI command")
    scheduler.start_main(main, start, [])
    return ThreadedInterpProgram(module, wasi, scheduler, main, memory)


# --- capture -------------------------------------------------------------------------------------------
def _thread_point(thread: WasmThread) -> tuple[str, tuple[Any, ...] | list[Any]]:
    """Where a parked thread stands, and the values its snapshot's stack holds beyond its machine's."""
    machine = thread.machine
    if thread.wait is not None:
        return "wait", thread.wait.operands
    if thread.host_results is not None:
        return "after_call", thread.host_results
    if not machine.frames:
        return "idle", ()
    if machine.point is None:
        raise SnapshotError(f"internal error: thread {thread.tid} is not stopped at a point a snapshot can name")
    return machine.point, ()


def _thread_state(thread: WasmThread, now: float) -> ThreadState:
    instance = thread.instance
    point, pending = _thread_point(thread)
    own = None
    if thread.tid != 0:
        tables, globals_, dropped_data, dropped_elems = capture_instance_parts(instance)
        own = ThreadInstanceState(point, capture_frames(instance, point, pending), tables, globals_, dropped_data,
                                  dropped_elems)
    wait = None
    if thread.wait is not None:
        w = thread.wait
        left = None if w.deadline is None else max(0, round((w.deadline - now) * 1e9))
        wait = WaitState(w.memory_index, w.addr, left, w.result)
    state = ("host" if thread.interrupted or thread.reissue
             else "waiting" if thread.wait is not None and thread.wait.result is None else "runnable")
    machine = thread.machine
    return ThreadState(thread.tid, thread.start_arg, state, machine.steps if machine.steps_counted else None,
                       thread.quantum_end, wait, own)


def capture_threads(program: ThreadedInterpProgram, *, with_memory: bool = True,
                    memory_in_place: bool = False) -> Snapshot:
    """The canonical state of a paused threaded program (every thread parked): the main thread's in
    the top-level fields, the others, the wait queues and the scheduler in ``threads``."""
    sched = program.scheduler
    if not sched.parked:
        raise SnapshotError("cannot checkpoint: the program's threads are running (it is not paused)")
    main_instance = program.main
    if len(main_instance.store.mems) != 1:
        raise SnapshotError("cannot checkpoint a wasi-threads program with memories of its own per thread")
    now = time.monotonic()
    threads = sorted(sched.threads, key=lambda t: t.tid)
    main = threads[0]
    assert main.tid == 0 and main.instance is main_instance
    states = [_thread_state(t, now) for t in threads]
    point, pending = _thread_point(main)
    tables, globals_, dropped_data, dropped_elems = capture_instance_parts(main_instance)
    queues = sorted((addr, [t.tid for t in waiters]) for addr, waiters in program.memory.waiters.queues.items())
    holder = sched.holder or sched.current
    section = ThreadsState(
        sched.next_tid, states, [(0, addr, tids) for addr, tids in queues],
        SchedulerState(sched.seed, sched.random.state, sched.quantum, None if holder is None else holder.tid,
                       [t.tid for t in sched.run_queue]))
    data = program.memory.data
    memory = MemoryState(main_instance.module.ir.all_mems()[0].limits.min, program.memory.max_pages,
                         (data if memory_in_place else bytes(data)) if with_memory else b"")
    from wasmig.wasi.snapshot import capture_wasi

    return Snapshot(
        module_sha256=program.module.sha256 or "", steps=program.steps, point=point,
        frames=capture_frames(main_instance, point, pending), memories=[memory], tables=tables, globals=globals_,
        dropped_data=dropped_data, dropped_elems=dropped_elems, wasi=capture_wasi(program.wasi), instructions=None,
        engine="interp", created_ns=time.time_ns(), format_version=THREADS_FORMAT_VERSION, threads=section)


# --- restore -------------------------------------------------------------------------------------------
class ThreadedLanding(ByteImages):
    """A live migration of a threaded program: its one shared memory's pages land in a byte image
    while it still runs at the source; :meth:`prepare` re-creates every thread from the state."""

    def __init__(self, module: Module) -> None:
        super().__init__(module)
        self.max_pages = module.ir.all_mems()[0].limits.max or 0  # a shared memory declares one

    def _within(self, m: int, pages: int) -> None:
        """Refuse a page beyond the one shared memory's maximum before making room for it."""
        if m != 0 or pages > self.max_pages:
            raise SnapshotError(f"the state does not fit the module: a page of memory {m} at {pages - 1}, beyond the "
                                f"shared memory's {self.max_pages} pages")

    def write(self, m: int, i: int, data: bytes) -> None:
        self._within(m, i + 1)
        super().write(m, i, data)

    def memory(self, i: int, _repr: Any, size_pages: int) -> None:
        """The image, cut to ``size_pages``, becomes the shared memory itself in :meth:`prepare`
        (not copied: 20 MiB copied twice cost ~50 ms of the downtime)."""
        self._within(i, size_pages)
        super().memory(i, _repr, size_pages)

    def prepare(self, snap: Snapshot, granted: Granted, *, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None) -> Program:
        from wasmig.wasi.snapshot import restore_wasi

        if snap.threads is None or len(self.images) != 1:
            raise SnapshotError("the state of a wasi-threads program has no threads section, or memories of "
                                "its own")
        assert snap.wasi is not None
        return restore_threaded(self.module, snap, restore_wasi(snap.wasi, granted=granted, stdout=stdout,
                                                                     stderr=stderr),
                                memory_image=self.images[0])


def restore_threaded(module: Module, snap: Snapshot, wasi: Wasi, *,
                     memory_image: bytearray | None = None) -> ThreadedInterpProgram:
    """A threaded program in ``snap``'s state (its memories materialized), every thread re-created
    in tid order and every waiter queued in order before any runs; :meth:`resume` goes on.
    ``memory_image``: the shared memory's bytes, which the program then owns (a migration's
    landing), instead of a copy of ``snap``'s."""
    section = snap.threads
    assert section is not None
    if module.sha256 != snap.module_sha256:
        raise SnapshotError(f"the snapshot is of another module (sha256 {snap.module_sha256[:16]}..., "
                            f"this module is {str(module.sha256)[:16]}...)")
    sched_state = section.scheduler
    scheduler = ThreadScheduler(lambda: make_instance(),
                                seed=0 if sched_state is None else sched_state.seed,
                                quantum=QUANTUM if sched_state is None else sched_state.quantum)
    make_instance, memory = threaded_linker(module, wasi, scheduler)
    if len(snap.memories) != 1:
        raise SnapshotError(f"snapshot does not fit the module: {len(snap.memories)} memories, a wasi-threads "
                            "program has its one shared memory")
    data = snap.memories[0].data if memory_image is None else memory_image
    pages = len(data) // PAGE_SIZE
    if pages > (memory.max_pages or 0) or pages < len(memory.data) // PAGE_SIZE:
        raise SnapshotError(f"snapshot does not fit the module: its shared memory has {pages} pages")
    if memory_image is None:
        memory.data[:] = data
    else:  # before any instance: each reads the memory's bytes through ``memory.data``
        memory.data = memory_image
    by_tid: dict[int, WasmThread] = {}
    main_instance = None
    for ts in section.threads:
        thread = _restore_thread(module, snap, ts, make_instance, scheduler, memory)
        by_tid[ts.tid] = thread
        if ts.tid == 0:
            main_instance = thread.instance
    for _memory_index, addr, tids in section.wait_queues:
        for tid in tids:
            memory.waiters.enqueue(addr, by_tid[tid])
    if sched_state is not None:
        scheduler.random.state = sched_state.rng
        scheduler.current = None if sched_state.current is None else by_tid[sched_state.current]
        scheduler.run_queue.extend(by_tid[tid] for tid in sched_state.run_queue)
    else:  # threads that ran freely (another engine): the runnable ones queue in tid order
        scheduler.run_queue.extend(t for t in scheduler.threads if t.state == "runnable")
    scheduler.next_tid = section.next_tid
    if snap.steps is not None:
        scheduler.retired_steps = snap.steps - sum(t.machine.steps for t in scheduler.threads)
    return ThreadedInterpProgram(module, wasi, scheduler, main_instance, memory)


def _restore_thread(module: Module, snap: Snapshot, ts: ThreadState, make_instance: Any, scheduler: ThreadScheduler,
                    memory: Memory) -> WasmThread:
    """One thread's instance in its state, adopted by ``scheduler`` (not started)."""
    instance = make_instance(initialize=False)
    own = ts.own
    if own is None:  # the main thread: the snapshot's top-level fields
        point, frames = snap.point, snap.frames
        restore_instance_parts(instance, point, frames, snap.tables, snap.globals, snap.dropped_data,
                               snap.dropped_elems)
        entry, args = instance.exports.get("_start"), []
    else:
        point, frames = own.point, own.frames
        restore_instance_parts(instance, point, frames, own.tables, own.globals, own.dropped_data, own.dropped_elems)
        entry, args = instance.exports.get(THREAD_START), [ts.tid, ts.start_arg]
    if not isinstance(entry, FuncInst):
        raise SnapshotError(f"snapshot does not fit the module: thread {ts.tid}'s entry point is not exported")
    machine = instance.machine
    machine.steps = ts.steps or 0
    machine.steps_counted = snap.steps is not None
    machine.instructions = None
    machine.point = point if frames else None
    thread = scheduler.adopt(ts.tid, instance, entry, args, ts.start_arg)
    thread.state = ts.state
    thread.quantum_end = ts.quantum_end
    if ts.wait is not None:
        thread.wait = _restored_wait(ts, machine, memory)
    if ts.state == "host":
        _check_blocking_call(module, ts.tid, machine)
        thread.reissue = True
        scheduler.in_host += 1
    return thread


def _check_blocking_call(module: Module, tid: int, machine: Any) -> None:
    """A ``host`` thread re-issues its call without a turn: only a blocking WASI call may be one
    (any other would run the thread's wasm alongside the turn holder's)."""
    frame = machine.frames[-1]
    ins = frame.func.ir.body[frame.pc]
    imported = module.ir.imported("func")
    call = imported[ins.imm] if ins.op == 0x10 and ins.imm < len(imported) else None
    if call is None or call.module != WASI_MODULE or call.name not in BLOCKING_CALLS:
        raise SnapshotError(f"snapshot does not fit the module: thread {tid} is in the host at a call that "
                            "does not block")


def _restored_wait(ts: ThreadState, machine: Any, memory: Memory) -> Wait:
    """A thread at a ``wait`` point: its operands off the stack (the pc is past the wait), checked
    against the address the snapshot says it waits on."""
    w = ts.wait
    assert w is not None
    operands = tuple(machine.stack[-3:])
    del machine.stack[-3:]
    frame = machine.frames[-1]
    ins = frame.func.ir.body[frame.pc - 1]
    width = 4 if ins.op == 0xFE01 else 8
    if w.memory != 0 or operands[0] + ins.imm[1] != w.addr or w.addr % width or w.addr + width > len(memory.data):
        raise SnapshotError(f"snapshot does not fit the module: thread {ts.tid} waits on an address its wait "
                            "instruction does not name")
    deadline = None if w.timeout_ns is None or w.result is not None else time.monotonic() + w.timeout_ns / 1e9
    return Wait(memory, 0, w.addr, deadline, operands, w.result)  # type: ignore[arg-type]
