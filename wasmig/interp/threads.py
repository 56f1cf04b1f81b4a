"""wasi-threads on the interpreter: several wasm threads, one at a time, handed over deterministically.

Each wasm thread is a module instance of its own (its own globals, tables and :class:`Machine`)
over the program's one shared memory, run by a Python thread of its own. Only the thread holding
the *turn* (the baton) executes wasm; it hands the turn on

- when its quantum ends: the machine stops at a stable point (``stop_at_step``) after a number of
  steps drawn from the scheduler's seeded generator, and the thread goes to the back of the run
  queue — so a run's interleaving is a function of the seed;
- when it waits (``memory.atomic.wait32/64`` on a cell holding the expected value): it joins that
  address's :class:`~wasmig.interp.atomics.WaitQueues` and sleeps until a ``notify`` moves it to
  the run queue (result 0) or its timeout elapses (result 2);
- around a host call that may block (reading stdin, ``poll_oneoff``'s sleep, accepting a
  connection: :data:`BLOCKING_CALLS`), which runs without the turn, so one thread blocked in
  the host never stops the others. (Such calls make the interleaving depend on the host's timing,
  as they must.)

Why threads of Python rather than one loop switching machines: a thread blocked in a host call
or a wait keeps its Python stack, so nothing in the interpreter or in WASI had to learn to
suspend mid-call, and the machines stay exactly as single-threaded code uses them.

**Pausing** (a checkpoint of every thread, docs/threads.md): :meth:`ThreadScheduler.request` (or
the program's step count reaching ``stop_at_total``) pauses the scheduler: the turn holder stops
at its next stable point and keeps the turn for later, nobody else gets one, and threads blocked
in a blocking host call are interrupted (``HostCallInterrupted``) and park at their call. Every
other thread is parked already: queued for a turn, in a wait queue, or back from the host and
waiting for a turn. :meth:`ThreadScheduler.go` returns True once every thread is parked;
:meth:`ThreadScheduler.unpause` lets them go on. A scheduler can also be built from a snapshot's
threads (:meth:`ThreadScheduler.adopt`), the waiters queued before any thread runs.

The program ends when any thread ends it: ``proc_exit`` (any thread), a trap (any thread), or
the main thread returning from its entry point. Threads still blocked in the host then are
abandoned (daemon threads). Every thread waiting without a timeout while no thread can run or
return from the host is a deadlock, reported as a trap rather than a hang.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wasmig.errors import HostCallInterrupted, Trap
from wasmig.interp.machine import NEVER, Machine, Suspended
from wasmig.interp.store import FuncInst, HostFunc, Memory

#: host calls that may block for an unbounded time: run without the turn
BLOCKING_CALLS = frozenset({"fd_read", "poll_oneoff", "sock_accept", "sock_recv", "sched_yield"})
#: at most this many live threads (thread-spawn fails with a negative result beyond)
MAX_THREADS = 128
#: stable points a thread runs before the turn passes on: drawn from [QUANTUM / 2, 3 QUANTUM / 2]
QUANTUM = 2000
#: wasi-threads' thread ids are positive and below 2^29
MAX_TID = (1 << 29) - 1
#: how often the controlling thread looks at requests and timeouts while nothing notifies it
_POLL_SECONDS = 0.05
_M64 = (1 << 64) - 1


class SplitMix64:
    """The scheduler's generator: splitmix64, whose whole state is one u64, so a snapshot records
    it exactly and a restore draws the same quanta (docs/snapshot-format.md, ``scheduler.rng``)."""

    __slots__ = ("state",)

    def __init__(self, state: int) -> None:
        self.state = state & _M64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)


@dataclass
class Wait:
    """A thread's ``memory.atomic.wait``: where, until when, its operands as the program gave them
    (a snapshot keeps them on the thread's stack), and its result once it left the queue."""

    memory: Memory
    memory_index: int
    addr: int
    deadline: float | None  # time.monotonic(); None: no timeout
    operands: tuple[int, int, int]  # address, expected value, timeout (internal values)
    result: int | None = None  # None while queued; 0 notified, 2 timed out


@dataclass(eq=False)
class WasmThread:
    """One wasm thread: its instance, entry point and arguments, and where it stands.

    ``state``: ``runnable`` (holds the turn or queues for one), ``waiting`` (in a wait queue),
    ``host`` (in a blocking host call, or parked at it after an interruption)."""

    tid: int
    instance: Any  # an InterpInstance: its machine, exports and store
    entry: FuncInst
    args: list[Any]
    start_arg: int | None = None  # None: the main thread
    state: str = "runnable"
    wait: Wait | None = None
    #: the value of the machine's steps at which its quantum ends (None: draw one on the next turn)
    quantum_end: int | None = None
    #: a blocking host call's results, held while the thread waits for its turn afterwards
    host_results: list[Any] | None = None
    #: parked at an interrupted host call (its machine suspended at the import_call point)
    interrupted: bool = False
    #: re-issue its host call at once when it (re)starts, without a turn (restored ``host`` threads)
    reissue: bool = False
    python_thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def machine(self) -> Machine:
        return self.instance.machine  # type: ignore[no-any-return]


class ProgramEnded(Exception):  # noqa: N818 - control flow: tells a thread to stop
    """Raised in a thread that wakes after another thread ended the program."""


class ThreadScheduler:
    """Runs a threaded program; see the module docstring. ``make_instance()`` instantiates the
    module anew (a thread's instance: an object with ``machine`` and ``exports``)."""

    def __init__(self, make_instance: Callable[[], Any], *, seed: int = 0, quantum: int = QUANTUM,
                 max_threads: int = MAX_THREADS) -> None:
        self.make_instance = make_instance
        self.seed = seed & _M64
        self.random = SplitMix64(seed)
        self.quantum = quantum
        self.max_threads = max_threads
        self.cond = threading.Condition()
        self.current: WasmThread | None = None
        self.run_queue: deque[WasmThread] = deque()
        self.threads: list[WasmThread] = []  # live threads, in tid order
        self.in_host = 0  # threads inside a blocking host call (they will come back)
        self.next_tid = 1
        self.retired_steps = 0  # stable points of the threads that finished
        self.outcome: tuple[str, Any] | None = None  # ("return", results) | ("raise", exception)
        self.main: WasmThread | None = None
        #: pausing: asked for (from any thread or a signal handler: a flag only), in force, and
        #: the turn holder that stopped for it (it gets the turn back first)
        self.stop_requested = False
        self.paused = False
        self.holder: WasmThread | None = None
        #: pause when the program's step count (every thread's stable points) reaches this
        self.stop_at_total = NEVER
        #: interrupts blocking host calls (the WASI layer's Waiter): set by the program's owner
        self.interrupt_host: Callable[[], None] = lambda: None
        self.resume_host: Callable[[], None] = lambda: None
        self.launched = False
        self._tls = threading.local()

    # --- the program ----------------------------------------------------------------------------
    def start_main(self, instance: Any, entry: FuncInst, args: list[Any]) -> None:
        """Make ``entry`` on ``instance`` the main thread (tid 0), holding the first turn."""
        main = self._add_thread(0, instance, entry, args, None)
        self.main = main
        self.current = main

    def adopt(self, tid: int, instance: Any, entry: FuncInst, args: list[Any], start_arg: int | None) -> WasmThread:
        """A thread restored from a snapshot (in tid order; tid 0 the main thread), not started:
        the caller puts it where the snapshot says (queues, turn, state) before :meth:`launch`."""
        thread = self._add_thread(tid, instance, entry, args, start_arg)
        if tid == 0:
            self.main = thread
        return thread

    def launch(self) -> None:
        """Start the Python thread of every thread (in tid order): after :meth:`start_main`, or
        after :meth:`adopt` put a snapshot's threads in place."""
        with self.cond:
            self.launched = True
            for thread in self.threads:
                self._start(thread)

    def go(self) -> bool:
        """Let the program run until it ends (False, or raises what ended it) or pauses with every
        thread parked (True). Called by the thread that owns the program (signals arrive there)."""
        with self.cond:
            while True:
                if self.outcome is not None:
                    kind, value = self.outcome
                    if kind == "raise":
                        raise value
                    return False
                if self.stop_requested and not self.paused:
                    self._pause()
                if self.paused and self._all_parked():
                    return True
                if not self.paused:
                    self._expire_waits()
                    self._check_deadlock()
                    if self.outcome is not None:
                        continue
                wait = self._next_deadline_in()
                self.cond.wait(_POLL_SECONDS if wait is None else min(wait, _POLL_SECONDS))

    def request(self) -> None:
        """Pause as soon as possible: safe from a signal handler and any thread (sets flags only;
        :meth:`go` does the rest)."""
        self.stop_requested = True
        holder = self.current
        if holder is not None:
            holder.machine.stop_at_step = 0

    def unpause(self) -> None:
        """Go on after a pause: the holder gets its turn back, interrupted host calls are re-issued."""
        with self.cond:
            self.resume_host()
            self.stop_requested = False
            self.paused = False
            holder, self.holder = self.holder, None
            for thread in self.threads:
                if thread.interrupted:
                    thread.interrupted = False
                    thread.reissue = True
                    self.in_host += 1  # counted from now: it goes back into the host at once
            if holder is not None and self.current is None:
                self.current = holder
            elif self.current is None:
                self._pass_baton()
            self.cond.notify_all()

    @property
    def parked(self) -> bool:
        """Whether no thread executes anything: not launched yet, or paused with every thread parked
        (what a capture needs)."""
        with self.cond:
            return self.outcome is None and (not self.launched or (self.paused and self._all_parked()))

    def total_steps(self) -> int:
        """The program's stable points: every thread's, finished ones included."""
        return self.retired_steps + sum(t.machine.steps for t in self.threads)

    def spawn(self, arg: int) -> int:
        """``wasi.thread-spawn``: a new thread running the instance's ``wasi_thread_start(tid, arg)``.
        Called by the thread holding the turn; returns the new tid, or a negative number (EAGAIN)
        when no thread can be made."""
        if len(self.threads) >= self.max_threads or self.next_tid > MAX_TID:
            return -6  # EAGAIN, negated: wasi-threads reports errors as negative results
        try:
            instance = self.make_instance()
        except Exception:
            return -6
        # a thread's steps are its own, from its entry point: not the start function its instance
        # ran (it ran inside this call, so the program's count moves one stable point at a time)
        instance.machine.steps = 0
        start = instance.exports.get("wasi_thread_start")
        if not isinstance(start, FuncInst):
            raise Trap("thread-spawn: the module exports no wasi_thread_start function")
        tid = self.next_tid
        self.next_tid += 1
        arg &= 0xFFFFFFFF
        with self.cond:
            thread = self._add_thread(tid, instance, start, [tid, arg], arg)
            self.run_queue.append(thread)
            self._start(thread)
        return tid

    def spawn_import(self) -> HostFunc:
        """``wasi.thread-spawn`` as the interpreter's host function."""
        return HostFunc(("i32",), ("i32",), lambda arg: self.spawn(arg) & 0xFFFFFFFF, raw=True,
                        name="wasi.thread-spawn")

    def blocking(self, call: Callable[..., Any], result_count: int) -> Callable[..., Any]:
        """``call`` (a raw host function with ``result_count`` results) made to run without the turn."""

        def released(*args: Any) -> Any:
            thread: WasmThread | None = getattr(self._tls, "thread", None)
            if thread is None:
                return call(*args)
            with self.cond:
                if thread.reissue:
                    thread.reissue = False  # counted in in_host by unpause/adopt already
                else:
                    self.in_host += 1
                thread.state = "host"
                if self.current is thread:
                    self._pass_baton()
            try:
                results = call(*args)
            except HostCallInterrupted:
                raise  # the machine stands at the call again; the thread parks (_suspended)
            except BaseException:
                with self.cond:
                    self._back_from_host(thread, None)
                raise
            with self.cond:  # the results as the machine will push them (HostFunc.call_internal's rule)
                self._back_from_host(thread, [] if result_count == 0 else list(results) if result_count > 1
                                     else [results[0] if isinstance(results, (tuple, list)) else results])
            return results

        return released

    # --- waits (called by interp/atomics.py) --------------------------------------------------------
    def wait(self, machine: Machine, memory: Memory, addr: int, timeout: int,
             operands: tuple[int, int, int]) -> int:
        """Block the calling thread on ``addr`` (the caller checked the value): 0 woken, 2 timed out.
        ``operands``: the wait's operands as popped (a snapshot taken meanwhile keeps them)."""
        thread: WasmThread = machine.wasm_thread  # type: ignore[attr-defined]
        with self.cond:
            deadline = None if timeout < 0 else time.monotonic() + timeout / 1e9
            thread.wait = Wait(memory, 0, addr, deadline, operands)
            thread.state = "waiting"
            memory.waiters.enqueue(addr, thread)
            self._pass_baton()
            self._await_turn(thread)
            return self._end_wait(thread)

    def woken(self, threads: list[Any]) -> None:
        """``notify`` dequeued these waiters: they run again, in order, with result 0."""
        with self.cond:
            for thread in threads:
                self._leave_queue(thread, 0)

    # --- inside ---------------------------------------------------------------------------------------
    def _add_thread(self, tid: int, instance: Any, entry: FuncInst, args: list[Any],
                    start_arg: int | None) -> WasmThread:
        thread = WasmThread(tid, instance, entry, args, start_arg)
        machine = thread.machine
        machine.scheduler = self  # type: ignore[attr-defined]
        machine.wasm_thread = thread  # type: ignore[attr-defined]
        self.threads.append(thread)
        return thread

    def _start(self, thread: WasmThread) -> None:
        py = threading.Thread(target=self._thread_main, args=(thread,), name=f"wasm-thread-{thread.tid}", daemon=True)
        thread.python_thread = py
        py.start()

    def _thread_main(self, thread: WasmThread) -> None:
        self._tls.thread = thread
        machine = thread.machine
        try:
            if thread.reissue:  # a restored thread that was in the host: back into it at once
                go: Callable[[], list[Any]] = machine.resume
            else:
                with self.cond:
                    self._await_turn(thread)
                    if thread.wait is not None:  # restored in (or just out of) a wait
                        machine.stack.append(self._end_wait(thread))
                    else:  # a restored holder may stand at the very end of its quantum
                        self._yield_if_quantum_over(thread)
                        self._arm(thread)
                go = machine.resume if machine.frames else (lambda: machine.invoke(thread.entry, thread.args))
            while True:
                try:
                    results = go()
                    break
                except Suspended:
                    go = self._suspended(thread)
            with self.cond:
                if thread is self.main:
                    self._end(("return", results))
                else:
                    self.threads.remove(thread)
                    self.retired_steps += machine.steps
                    if self.current is thread:
                        self._pass_baton()  # this thread is done; the others go on
                    self.cond.notify_all()
        except ProgramEnded:
            return
        except BaseException as exc:  # proc_exit (ProcExit), a trap, anything: it ends the program
            with self.cond:
                self._end(("raise", exc))

    def _suspended(self, thread: WasmThread) -> Callable[[], list[Any]]:
        """The thread's machine stopped at a stable point: a quantum's end, a pause, or (without
        the turn) an interrupted host call. Returns how it goes on once it may."""
        machine = thread.machine
        with self.cond:
            if thread is not self.current:  # interrupted in the host: park at the call
                self.in_host -= 1
                thread.interrupted = True
                self.cond.notify_all()
                while thread.interrupted:
                    if self.outcome is not None:
                        raise ProgramEnded
                    self.cond.wait()
                return machine.resume  # reissue is set: back into the host without a turn
            if self.stop_requested or self.paused or self.total_steps() >= self.stop_at_total:
                self._pause()
                self.holder = thread
                self.current = None
                self.cond.notify_all()
                self._await_turn(thread)
            self._yield_if_quantum_over(thread)
            self._arm(thread)
        return machine.resume

    def _yield_if_quantum_over(self, thread: WasmThread) -> None:
        """At a stable point with the turn: if the thread's quantum is over, to the back of the run
        queue until its next turn (checked after a pause too, so that a pause at the very step a
        quantum ends changes nothing). Holds ``cond``."""
        if thread.quantum_end is not None and thread.machine.steps >= thread.quantum_end:
            thread.quantum_end = None
            self.run_queue.append(thread)
            self._pass_baton()
            self._await_turn(thread)

    def _back_from_host(self, thread: WasmThread, results: list[Any] | None) -> None:
        """A blocking host call returned (``results``; None: it raised): queue for a turn. Holds ``cond``."""
        self.in_host -= 1
        thread.state = "runnable"
        thread.host_results = results
        self.run_queue.append(thread)
        if self.current is None:
            self._pass_baton()
        self.cond.notify_all()
        self._await_turn(thread)
        thread.host_results = None
        self._arm(thread)

    def _end_wait(self, thread: WasmThread) -> int:
        """The thread has the turn again after a wait: its result. Holds ``cond``."""
        assert thread.wait is not None
        result = thread.wait.result
        thread.wait = None
        thread.state = "runnable"
        self._arm(thread)
        return 2 if result is None else result

    def _leave_queue(self, thread: WasmThread, result: int) -> None:
        assert thread.wait is not None
        thread.wait.result = result
        thread.wait.deadline = None
        thread.state = "runnable"
        self.run_queue.append(thread)

    def _arm(self, thread: WasmThread) -> None:
        """The thread got the turn: where its machine stops next. Holds ``cond``."""
        machine = thread.machine
        if thread.quantum_end is None:
            thread.quantum_end = machine.steps + self._quantum()
        stop = thread.quantum_end
        if self.stop_at_total != NEVER:
            stop = min(stop, machine.steps + max(0, self.stop_at_total - self.total_steps()))
        machine.stop_at_step = 0 if self.stop_requested or self.paused else stop

    def _quantum(self) -> int:
        return self.quantum // 2 + self.random.next() % (self.quantum + 1)

    def _pause(self) -> None:
        """Stop handing out turns; interrupt blocking host calls. Holds ``cond``."""
        if self.paused:
            return
        self.paused = True
        if self.current is not None:
            self.current.machine.stop_at_step = 0
        self.interrupt_host()
        self.cond.notify_all()

    def _all_parked(self) -> bool:
        """Paused, and no thread executes anything: every one is where a snapshot can record it."""
        return self.current is None and self.in_host == 0

    def _end(self, outcome: tuple[str, Any]) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.current = None
        self.cond.notify_all()

    def _pass_baton(self) -> None:
        """Give the turn to the first runnable thread (or to nobody, when paused). Holds ``cond``."""
        self.current = self.run_queue.popleft() if self.run_queue and not self.paused else None
        self.cond.notify_all()

    def _await_turn(self, thread: WasmThread) -> None:
        """Sleep until ``thread`` holds the turn. Holds ``cond``."""
        while self.current is not thread:
            if self.outcome is not None:
                raise ProgramEnded
            if self.current is None and not self.paused and self.run_queue and self.run_queue[0] is thread:
                self.run_queue.popleft()
                self.current = thread
                break
            self.cond.wait()
        if self.outcome is not None:
            raise ProgramEnded

    def _next_deadline_in(self) -> float | None:
        deadlines = [t.wait.deadline for t in self.threads
                     if t.wait is not None and t.wait.result is None and t.wait.deadline is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire_waits(self) -> None:
        """Waits whose timeout elapsed run again with result 2 (the controlling thread, holding ``cond``)."""
        now = time.monotonic()
        for thread in self.threads:
            wait = thread.wait
            if wait is not None and wait.result is None and wait.deadline is not None and wait.deadline <= now:
                if wait.memory.waiters.remove(wait.addr, thread):
                    self._leave_queue(thread, 2)
        if self.current is None and self.run_queue:
            self._pass_baton()

    def _check_deadlock(self) -> None:
        if self.outcome is not None or self.current is not None or self.run_queue or self.in_host:
            return
        waiting = [t.wait for t in self.threads if t.wait is not None and t.wait.result is None]
        if any(w.deadline is not None for w in waiting):
            return
        if waiting:
            self._end(("raise", Trap("deadlock: every thread waits without a timeout and none can notify")))
