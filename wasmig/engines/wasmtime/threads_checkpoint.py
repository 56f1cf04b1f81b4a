"""Checkpoints of a wasi-threads program on wasmtime: every thread stopped at a stable point,
captured into the format-version-2 snapshot the interpreter writes, and restored — from either
engine's snapshot (docs/threads.md, "Capture on wasmtime").

Each thread's instance is the *instrumented* module (the fast variant: no step count) of the
module whose waits and notifies were rerouted to the host first
(:func:`~wasmig.engines.wasmtime.host_waits.route_waits_to_host`), the rerouting table declared a
*host table* to the pass: a rerouted wait is a host call site that unwinds, with its operands,
when the host interrupts it, and that a rewind re-issues. A request (:meth:`request`, from any
thread, a signal handler included) sets every thread's poll byte, interrupts blocking WASI calls
and makes every host wait leave while keeping its place in its queue; each thread unwinds at its
next stable point and parks. Once every thread is parked (or not started yet), the program is
captured; going on, each thread rewinds its own frames and a re-issued wait carries on in its
place. A restore makes every thread's instance, puts each waiter back in its queue in the
recorded order, and only then starts the threads, each rewinding its frames.

On the canonical side a thread stopped in a rerouted wait is at a ``wait`` point (the wait's pc,
its three operands on the stack); the rerouting's two extra operands (the memarg offset and the
table slot) exist only in the instrumented module's records and are added back on restore.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from wasmig.engines.base import MemoryReader, Program
from wasmig.engines.wasmtime.capture import capture_instance_parts, static_tables
from wasmig.engines.wasmtime.checkpointable import Checkpointable
from wasmig.engines.wasmtime.host_waits import SLOTS, route_waits_to_host
from wasmig.engines.wasmtime.instrumented import instrumented
from wasmig.engines.wasmtime.threads import SIGNAL_WAIT, ThreadedRun
from wasmig.errors import SnapshotError
from wasmig.module import Module
from wasmig.wasi.threads_abi import THREAD_START

if TYPE_CHECKING:
    from pathlib import Path

    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.snapshot.state import FrameState, Snapshot
    from wasmig.snapshot.threads_state import ThreadsState, ThreadState
    from wasmig.wasi.preview1 import Wasi

_PAGE = 65536
#: what a checkpoint of a threaded program on wasmtime cannot do (the interpreter can)
NO_STEPS = ("a wasi-threads program on wasmtime stops on request or on a timer, not at a step or an instruction "
            "(its threads run freely): use --engine interp for --checkpoint-at-step")


@dataclasses.dataclass(eq=False)
class _Thread:
    """A wasm thread of the run: its tid, start argument (None: main), instance and state."""

    tid: int
    start_arg: int | None
    runner: Checkpointable
    #: running | idle (not started: its entry not called yet) | parked (unwound for a checkpoint)
    status: str = "running"
    #: frames to rewind when it starts (a restored thread), as the instrumented module records them
    pending: tuple[list[FrameState], str] | None = None
    #: a restored thread's own state as the snapshot had it (point, frames, globals, dropped
    #: segments, state), what a capture before it ran records
    restored: tuple[Any, ...] | None = None


class CheckpointableThreadedRun(ThreadedRun):
    """A :class:`~wasmig.engines.wasmtime.threads.ThreadedRun` whose threads stop, are captured
    and are restored (see the module docstring)."""

    def __init__(self, module: Module, wasi: Wasi, *, cache_dir: Path | None = None,
                 announce: str | None = None) -> None:
        if len(module.facts.mems) != 1:
            raise SnapshotError("cannot checkpoint a wasi-threads program with memories of its own per thread")
        routed = route_waits_to_host(module.ir)
        table = len(module.ir.all_tables())
        host_tables = frozenset({table}) if routed is not None else frozenset()
        source = Module(routed if routed is not None else module.ir, None, None,
                        features=module.features | {"threads"})
        self.instrumented = instrumented(source, cache_dir, announce=announce, host_tables=host_tables)
        self.sitemap = self.instrumented.sites
        self.threads: list[_Thread] = []
        self._by_instance: dict[WasmtimeInstance, _Thread] = {}
        self._pausing = False
        #: the restored threads that rewind frames when they start (see :meth:`rewound`)
        self._rewinders: list[Checkpointable] = []
        super().__init__(module, wasi, cache_dir=cache_dir, prepared=self.instrumented.data)
        self._launched = False

    # --- threads -----------------------------------------------------------------------------
    def _register(self, inst: WasmtimeInstance, tid: int, start_arg: int | None) -> _Thread:
        th = _Thread(tid, start_arg, Checkpointable.attach(self.module, self.wasi, inst, self.instrumented))
        with self._cond:
            self.threads.append(th)
            self._by_instance[inst] = th
        return th

    def _start_thread(self, inst: WasmtimeInstance, entry: str, args: tuple[int, ...], *, main_thread: bool) -> None:
        if inst not in self._by_instance:  # a new thread (a restored one was registered already)
            self._register(inst, 0 if main_thread else args[0], None if main_thread else args[1])
        super()._start_thread(inst, entry, args, main_thread=main_thread)

    def _run_thread(self, inst: WasmtimeInstance, entry: str, args: tuple[int, ...], main_thread: bool) -> None:
        th = self._by_instance[inst]
        runner = th.runner
        try:
            if not self._wait_turn(th, "idle"):
                return
            if th.pending is not None:
                frames, point = th.pending
                th.pending = th.restored = None
                inst.invoke(runner.prepare_rewind(frames, point))
            else:
                inst.invoke(entry, *args)
            while runner.unwound:  # stopped for a checkpoint: parked until it goes on
                frames, point = runner.frames()
                if not self._wait_turn(th, "parked"):
                    return
                inst.invoke(runner.prepare_rewind(frames, point))
        except BaseException as e:  # proc_exit (ProcExit), a trap, anything: it ends the program
            self._end(("raise", e))
            return
        with self._cond:
            self.threads.remove(th)
            self._cond.notify_all()
        if main_thread:
            self._end(("return", None))
        else:
            with self._cond:
                self._live -= 1
                self.waits.check_deadlock()

    def _wait_turn(self, th: _Thread, status: str) -> bool:
        """Park ``th`` as ``status`` while a checkpoint holds the threads; False if the program
        ended meanwhile (the thread then stops)."""
        with self._cond:
            th.status = status
            self._cond.notify_all()
            while self._pausing and self._outcome is None:
                self._cond.wait()
            th.status = "running"
            return self._outcome is None

    # --- stopping ------------------------------------------------------------------------------
    def request(self) -> None:
        """Stop every thread at its next stable point (any thread; a signal handler too)."""
        with self._cond:
            if self._pausing or self._outcome is not None:
                return
            self._pausing = True
            self.waits.pausing = True
            for th in self.threads:
                th.runner.request()  # its poll byte, and blocking WASI calls interrupted
            self.wasi.waiter.request()
            self.waits.wake_all()
            self._cond.notify_all()

    def _stopped(self) -> bool:
        return self._pausing and all(th.status in ("parked", "idle") for th in self.threads)

    def go(self) -> bool:
        """Start the threads (the first time) or let them go on after a stop; True once every
        thread is stopped for a checkpoint, False once the program ended (its exit code, a
        nonzero one raised as ``ProcExit``; a trap raised)."""

        with self._cond:
            if self._launched:
                self._pausing = False
                self.waits.pausing = False
                for th in self.threads:
                    th.runner.arm(None)  # its poll byte cleared
                self.wasi.waiter.clear()
                self._cond.notify_all()
        if not self._launched:
            self._launched = True
            self._launch()
        try:
            with self._cond:
                while self._outcome is None and not self._stopped():
                    # timed: a process-directed signal (a checkpoint request, the timer's) can land on
                    # a wasm thread, and Python runs its handler here, in the main thread, only once
                    # this wait returns; threads that compute never notify, and a request landing so
                    # (after SIGSTOP/SIGCONT, say) waited for the program's end
                    self._cond.wait(SIGNAL_WAIT)
                if self._outcome is None:
                    return True
        except BaseException as e:
            self._end(("raise", e))
            self._settle()
            raise
        self._settle()
        kind, value = self._outcome
        if kind == "raise":
            raise value
        return False

    def _launch(self) -> None:
        if self.threads:  # restored: every thread made already, in tid order
            main = self.threads[0].runner.instance
            for th in list(self.threads[1:]):
                self._start_thread(th.runner.instance, THREAD_START, (th.tid, th.start_arg or 0), main_thread=False)
            self._start_thread(main, "_start", (), main_thread=True)
            return
        main = self._instance()
        if "_start" not in main.exports:
            from wasmig.errors import LinkError

            raise LinkError("the module has no `_start` export: it is not a WASI command")
        self._start_thread(main, "_start", (), main_thread=True)

    def arm(self) -> None:
        """Forget a request not acted on yet."""
        with self._cond:
            if not self._pausing:
                for th in self.threads:
                    th.runner.arm(None)

    # --- capture -------------------------------------------------------------------------------
    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        """The canonical snapshot of the stopped program (format version 2, ``scheduler: null``)."""
        from wasmig.snapshot.state import THREADS_FORMAT_VERSION, MemoryState, Snapshot
        from wasmig.snapshot.threads_state import ThreadInstanceState, ThreadsState, ThreadState
        from wasmig.wasi.snapshot import capture_wasi

        with self._cond:
            if not self._stopped():
                raise SnapshotError("cannot checkpoint: the program's threads are running (it is not stopped)")
            threads = sorted(self.threads, key=lambda t: t.tid)
            queued = self.waits.queued()
        if not threads or threads[0].tid != 0:
            raise SnapshotError("cannot checkpoint: the main thread has ended")
        now = time.monotonic()
        tables = static_tables(self.module)
        states: list[ThreadState] = []
        top: tuple[Any, ...] = ()
        for th in threads:
            point, frames, globals_, dropped_data, dropped_elems, state, wait = self._thread_parts(th, now)
            own = None
            if th.tid == 0:
                top = (point, frames, globals_, dropped_data, dropped_elems)
            else:
                own = ThreadInstanceState(point, frames, tables, globals_, dropped_data, dropped_elems)
            states.append(ThreadState(th.tid, th.start_arg, state, None, None, wait, own))
        tid_of = {self.waiter_of[th.runner.instance]: th.tid for th in threads}
        wait_queues = [(0, ea, [tid_of[w] for w in waiters]) for ea, waiters in queued]
        section = ThreadsState(self._next_tid, states, wait_queues, None)
        limits = self.module.facts.mems[0]
        view = self.view() if with_memory else memoryview(b"")
        data: bytes | memoryview = view if memory_in_place else bytes(view)
        point, frames, globals_, dropped_data, dropped_elems = top
        return Snapshot(module_sha256=self.module.sha256 or "", steps=None, point=point, frames=frames,
                        memories=[MemoryState(limits[0], limits[1], data)], tables=tables, globals=globals_,
                        dropped_data=dropped_data, dropped_elems=dropped_elems, wasi=capture_wasi(self.wasi),
                        instructions=None, engine="wasmtime", created_ns=time.time_ns(),
                        format_version=THREADS_FORMAT_VERSION, threads=section)

    def _thread_parts(self, th: _Thread, now: float) -> tuple[Any, ...]:
        """(point, frames, globals, dropped data, dropped elems, state, wait) of a stopped thread."""
        from wasmig.snapshot.threads_state import WaitState

        waiter = self.waiter_of[th.runner.instance]
        if th.status == "idle" and th.restored is not None:  # restored, stopped again before it ran
            point, frames, globals_, dropped_data, dropped_elems, state = th.restored
            if point != "wait":
                return point, frames, globals_, dropped_data, dropped_elems, state, None
        elif th.status == "idle":
            globals_, dropped_data, dropped_elems = _instance_globals(th.runner)
            return "idle", [], globals_, dropped_data, dropped_elems, "runnable", None
        else:
            frames, point, globals_, dropped_data, dropped_elems = capture_instance_parts(
                th.runner.instance, self.module, self.sitemap)
            if point != "import_call":
                return point, frames, globals_, dropped_data, dropped_elems, "runnable", None
            if not waiter.parked:  # a blocking WASI call, interrupted: re-issued on restore
                return point, frames, globals_, dropped_data, dropped_elems, "host", None
            inner = frames[-1]
            if len(inner.stack) < 5 or inner.stack[-1][0] != "i32" or inner.stack[-2][0] != "i32":
                raise SnapshotError(f"internal error: thread {th.tid} waits at no rerouted wait")
            frames[-1] = dataclasses.replace(inner, stack=inner.stack[:-2])  # the rerouting's offset and slot
        queued = not waiter.woken and waiter.at in self.waits.queues.queues and \
            waiter in self.waits.queues.queues[waiter.at]
        left = None if waiter.deadline is None else max(0, round((waiter.deadline - now) * 1e9))
        if queued:
            return "wait", frames, globals_, dropped_data, dropped_elems, "waiting", WaitState(0, waiter.at, left, None)
        result = 0 if waiter.woken else 2
        return "wait", frames, globals_, dropped_data, dropped_elems, "runnable", WaitState(0, waiter.at, left, result)

    # --- restore -------------------------------------------------------------------------------
    def load(self, snap: Snapshot, *, memory_in_place: bool = False) -> None:
        """Put ``snap`` (format version 2, from either engine) into this fresh run: the shared
        memory, every thread's instance in tid order, the waiters in their queues in order.
        ``memory_in_place``: the shared memory holds the snapshot's bytes already (a migration's
        landing wrote its pages there), ``snap``'s memory has none."""
        section = snap.threads
        assert section is not None
        if self.module.sha256 != snap.module_sha256:
            raise SnapshotError(f"the snapshot is of another module (sha256 {snap.module_sha256[:16]}..., "
                                f"this module is {str(self.module.sha256)[:16]}...)")
        if len(snap.memories) != 1:
            raise SnapshotError(f"snapshot does not fit the module: {len(snap.memories)} memories, a wasi-threads "
                                "program has its one shared memory")
        if not memory_in_place:
            self._load_memory(snap.memories[0].data)
        by_tid: dict[int, _Thread] = {}
        for ts in section.threads:
            inst = self._instance(run_start=False)
            th = self._register(inst, ts.tid, ts.start_arg)
            own = ts.own
            parts = (snap.point, snap.frames, snap.tables, snap.globals, snap.dropped_data, snap.dropped_elems) \
                if own is None else (own.point, own.frames, own.tables, own.globals, own.dropped_data,
                                     own.dropped_elems)
            point, frames, tables, globals_, dropped_data, dropped_elems = parts
            th.runner.load_parts(tables, globals_, dropped_data, dropped_elems, None, frames, point)
            if frames:
                self._rewinders.append(th.runner)
                th.pending = self._raw_frames(ts, frames, point)
                th.restored = (point, frames, globals_, dropped_data, dropped_elems, ts.state)
            by_tid[ts.tid] = th
        for _memory, addr, tids in section.wait_queues:  # in queue order, before any thread runs
            for tid in tids:
                wait = by_tid[tid]
                w = _thread_state(section, tid).wait
                assert w is not None
                self.waits.restore(self.waiter_of[wait.runner.instance], addr, w.timeout_ns, None)
        for ts in section.threads:
            if ts.wait is not None and ts.wait.result is not None:
                self.waits.restore(self.waiter_of[by_tid[ts.tid].runner.instance], ts.wait.addr, None,
                                   ts.wait.result)
        self._next_tid = section.next_tid
        self._live = len(section.threads)

    def rewound(self) -> bool:
        """Whether the restored program got past its snapshot: a thread's rewind reached its
        innermost frame (any thread's; True for a program restored with nothing to rewind). A
        live migration's target answers only then, as for a single-threaded program."""
        return not self._rewinders or any(runner.rewind_ended() for runner in self._rewinders)

    def _load_memory(self, data: Any) -> None:
        pages = len(data) // _PAGE
        have = self.memory.data_len() // _PAGE  # (wasmtime-py 51's SharedMemory.size passes ctypes a wrong pointer)
        limits = self.module.facts.mems[0]
        if pages < have or (limits[1] is not None and pages > limits[1]):
            raise SnapshotError(f"snapshot does not fit the module: its shared memory has {pages} pages")
        if pages > have:
            try:
                self.memory.grow(pages - have)
            except Exception as e:  # noqa: BLE001 - wasmtime's error for a limit or an allocation failure
                raise SnapshotError(f"the shared memory cannot grow to {pages} pages: {e}") from None
        self.view()[:len(data)] = memoryview(data).cast("B")  # (the view is made again at the new length)

    def _raw_frames(self, ts: ThreadState, frames: list[FrameState], point: str) -> tuple[list[FrameState], str]:
        """A thread's canonical frames as the instrumented module's records have them: a ``wait``
        point is the rerouted wait's call, its memarg offset and table slot on the stack too; a
        thread in the host re-issues its call."""
        if point != "wait":
            return frames, point
        inner = frames[-1]
        ins = _instruction_at(self.module, inner.func, inner.pc)
        if ins is None or ins.op not in (0xFE01, 0xFE02):
            raise SnapshotError(f"snapshot does not fit the module: thread {ts.tid} waits at no wait instruction")
        extra = [("i32", ins.imm[1]), ("i32", SLOTS[ins.op][0])]
        if len(inner.stack) < 3:
            raise SnapshotError(f"snapshot does not fit the module: thread {ts.tid}'s wait has no operands")
        wait = ts.wait
        assert wait is not None
        if inner.stack[-3][1] + ins.imm[1] != wait.addr or wait.memory != 0:
            raise SnapshotError(f"snapshot does not fit the module: thread {ts.tid} waits on an address its wait "
                                "instruction does not name")
        return [*frames[:-1], dataclasses.replace(inner, stack=[*inner.stack, *extra])], "import_call"


def _thread_state(section: ThreadsState, tid: int) -> ThreadState:
    return next(t for t in section.threads if t.tid == tid)


def _instruction_at(module: Module, func: int, pc: int) -> Any:
    defined = func - module.ir.num_imported_funcs()
    if not 0 <= defined < len(module.ir.funcs):
        return None
    return next((ins for ins in module.ir.funcs[defined].body if ins.offset == pc), None)


def _instance_globals(runner: Checkpointable) -> tuple[list[Any], list[bool], list[bool]]:
    """The globals and dropped segments of an instance that has not run (an idle thread's)."""
    import struct

    from wasmig.engines.wasmtime.records import MASKS
    from wasmig.instrument.unwind import DROPS_BASE, GLOBALS_BASE
    from wasmig.snapshot.state import GlobalState

    runner.instance.invoke("wasmig:dump")
    ctl_mem, store = runner.ctl, runner.store
    ctl = bytes(ctl_mem.read(store, 0, ctl_mem.data_len(store)))
    facts = runner.facts
    globals_ = [GlobalState(t, m, (t, struct.unpack_from("<Q", ctl, GLOBALS_BASE + 8 * i)[0] & MASKS[t]))
                for i, (t, m) in enumerate(facts.globals)]
    n_data = len(facts.data_modes)
    return (globals_, [mode == "a" or ctl[DROPS_BASE + i] != 0 for i, mode in enumerate(facts.data_modes)],
            [mode != "p" or ctl[DROPS_BASE + n_data + i] != 0 for i, mode in enumerate(facts.elem_modes)])


class ThreadedCheckpointProgram(Program):
    """A wasi-threads program on wasmtime as a checkpointable :class:`~wasmig.engines.base.Program`:
    stops on request (a signal, a timer, ``wasmig checkpoint PID``), not at a step."""

    def __init__(self, run: CheckpointableThreadedRun) -> None:
        self.run = run
        self.module = run.module
        self.wasi = run.wasi

    @property
    def steps(self) -> int | None:
        return None

    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        if at_step is not None or at_instruction is not None:
            raise SnapshotError(NO_STEPS)
        self.run.arm()

    def request(self) -> None:
        self.run.request()

    def start(self) -> bool:
        return self.run.go()

    def resume(self) -> bool:
        return self.run.go()

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        return self.run.capture(with_memory=with_memory, memory_in_place=memory_in_place)

    def export_names(self) -> Collection[str]:
        return [export.name for export in self.module.interface.exports]

    def guest_memories(self) -> list[MemoryReader]:
        view = self.run.view()
        return [(len(view), lambda k: bytes(view[k * _PAGE:(k + 1) * _PAGE]))]

    def resumed(self) -> bool:
        return self.run.rewound()


def threaded_checkpoint_program(module: Module, wasi: Wasi, *,
                                announce: str | None = None) -> ThreadedCheckpointProgram:
    """A wasi-threads command on wasmtime that can be checkpointed, ready to start."""
    return ThreadedCheckpointProgram(CheckpointableThreadedRun(module, wasi, announce=announce))


def restore_threaded_wasmtime(module: Module, snap: Snapshot, wasi: Wasi, *,
                              announce: str | None = None) -> ThreadedCheckpointProgram:
    """A threaded snapshot (either engine's) restored on wasmtime; :meth:`~Program.resume` goes on."""
    run = CheckpointableThreadedRun(module, wasi, announce=announce)
    run.load(snap)
    return ThreadedCheckpointProgram(run)

