"""wasi-threads on the interpreter: several wasm threads, one at a time, handed over deterministically.

Each wasm thread is a module instance of its own (its own globals, tables and :class:`Machine`)
over the program's one shared memory, run by a Python thread of its own. Only the thread holding
the *baton* executes wasm; it hands the baton on

- when its quantum ends: the machine stops at a stable point (``stop_at_step``) after a number of
  steps drawn from the scheduler's seeded generator, and the thread goes to the back of the run
  queue — so a run's interleaving is a function of the seed;
- when it waits (``memory.atomic.wait32/64`` on a cell holding the expected value): it joins that
  address's :class:`~wasmig.interp.atomics.WaitQueues` and sleeps until a ``notify`` moves it to
  the run queue (result 0) or its timeout elapses (result 2);
- around a host call that may block (reading stdin, ``poll_oneoff``'s sleep, accepting a
  connection: :data:`BLOCKING_CALLS`), which runs without the baton, so one thread blocked in
  the host never stops the others. (Such calls make the interleaving depend on the host's timing,
  as they must.)

Why threads of Python rather than one loop switching machines: a thread blocked in a host call
or a wait keeps its Python stack, so nothing in the interpreter or in WASI had to learn to
suspend mid-call, and the machines stay exactly as single-threaded code uses them.

The program ends when any thread ends it: ``proc_exit`` (any thread), a trap (any thread), or
the main thread returning from its entry point. Threads still blocked in the host then are
abandoned (daemon threads). Every thread waiting without a timeout while no thread can run or
return from the host is a deadlock, reported as a trap rather than a hang.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wasmig.errors import Trap
from wasmig.interp.machine import Machine, Suspended
from wasmig.interp.store import FuncInst, HostFunc, Memory

#: host calls that may block for an unbounded time: run without the baton
BLOCKING_CALLS = frozenset({"fd_read", "poll_oneoff", "sock_accept", "sock_recv", "sched_yield"})
#: at most this many live threads (thread-spawn fails with a negative result beyond)
MAX_THREADS = 128
#: stable points a thread runs before the baton passes on: drawn from [QUANTUM / 2, 3 QUANTUM / 2]
QUANTUM = 2000
#: wasi-threads' thread ids are positive and below 2^29
MAX_TID = (1 << 29) - 1


@dataclass(eq=False)
class WasmThread:
    """One wasm thread: its instance, entry point and arguments, and where it stands."""

    tid: int
    machine: Machine
    entry: FuncInst
    args: list[Any]
    #: the result of the wait it is in (0 woken, 2 timed out), set by whoever ends the wait
    wake_result: int | None = None
    waiting_on: tuple[Memory, int] | None = None
    deadline: float | None = None
    python_thread: threading.Thread | None = field(default=None, repr=False)


class ProgramEnded(Exception):  # noqa: N818 - control flow: tells a thread to stop
    """Raised in a thread that wakes after another thread ended the program."""


class ThreadScheduler:
    """Runs a threaded program; see the module docstring. ``make_instance()`` instantiates the
    module anew (a thread's instance) and returns ``(machine, exports)``."""

    def __init__(self, make_instance: Callable[[], tuple[Machine, Mapping[str, Any]]], *, seed: int = 0,
                 quantum: int = QUANTUM, max_threads: int = MAX_THREADS) -> None:
        self.make_instance = make_instance
        self.random = random.Random(seed)
        self.quantum = quantum
        self.max_threads = max_threads
        self.cond = threading.Condition()
        self.current: WasmThread | None = None
        self.run_queue: deque[WasmThread] = deque()
        self.threads: list[WasmThread] = []
        self.in_host = 0  # threads inside a blocking host call (they will come back)
        self.next_tid = 1
        self.outcome: tuple[str, Any] | None = None  # ("return", results) | ("raise", exception)
        self.main: WasmThread | None = None

    # --- the program ----------------------------------------------------------------------------
    def run(self, machine: Machine, entry: FuncInst, args: list[Any]) -> list[Any]:
        """Run ``entry`` as the main thread on ``machine`` (an instance made by the caller) until the
        program ends; return the main thread's results or raise what ended the program."""
        main = self._add_thread(0, machine, entry, args)
        self.main = main
        with self.cond:
            self.current = main
            self._start(main)
            while self.outcome is None:
                self._check_deadlock()
                self.cond.wait(self._next_deadline_in())
                self._expire_waits()
        kind, value = self.outcome
        if kind == "raise":
            raise value
        return value

    def spawn(self, arg: int) -> int:
        """``wasi.thread-spawn``: a new thread running the instance's ``wasi_thread_start(tid, arg)``.
        Called by the thread holding the baton; returns the new tid, or a negative number (EAGAIN)
        when no thread can be made."""
        live = sum(1 for t in self.threads if t.python_thread is None or t.python_thread.is_alive())
        if live >= self.max_threads or self.next_tid > MAX_TID:
            return -6  # EAGAIN, negated: wasi-threads reports errors as negative results
        try:
            machine, exports = self.make_instance()
        except Exception:
            return -6
        start = exports.get("wasi_thread_start")
        if not isinstance(start, FuncInst):
            raise Trap("thread-spawn: the module exports no wasi_thread_start function")
        tid = self.next_tid
        self.next_tid += 1
        thread = self._add_thread(tid, machine, start, [tid, arg & 0xFFFFFFFF])
        with self.cond:
            self.run_queue.append(thread)
            self._start(thread)
        return tid

    def spawn_import(self) -> HostFunc:
        """``wasi.thread-spawn`` as the interpreter's host function."""
        return HostFunc(("i32",), ("i32",), lambda arg: self.spawn(arg) & 0xFFFFFFFF, raw=True,
                        name="wasi.thread-spawn")

    def blocking(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` (a host function) made to run without the baton."""

        def released(*args: Any) -> Any:
            thread = self._me()
            if thread is None:
                return call(*args)
            with self.cond:
                self.in_host += 1
                self._pass_baton()
            try:
                return call(*args)
            finally:
                with self.cond:
                    self.in_host -= 1
                    self.run_queue.append(thread)
                    if self.current is None:
                        self._pass_baton()
                    self._await_turn(thread)

        return released

    # --- waits (called by interp/atomics.py) --------------------------------------------------------
    def wait(self, machine: Machine, memory: Memory, addr: int, timeout: int) -> int:
        """Block the calling thread on ``addr`` (the caller checked the value): 0 woken, 2 timed out."""
        thread = machine.wasm_thread  # type: ignore[attr-defined]
        with self.cond:
            thread.wake_result = None
            thread.waiting_on = (memory, addr)
            thread.deadline = None if timeout < 0 else time.monotonic() + timeout / 1e9
            memory.waiters.enqueue(addr, thread)
            self._pass_baton()
            self._await_turn(thread)
            result = thread.wake_result
            thread.wake_result = None
            return 2 if result is None else result

    def woken(self, threads: list[Any]) -> None:
        """``notify`` dequeued these waiters: they run again, in order, with result 0."""
        with self.cond:
            for thread in threads:
                thread.wake_result = 0
                thread.waiting_on = None
                thread.deadline = None
                self.run_queue.append(thread)

    # --- inside ---------------------------------------------------------------------------------------
    def _add_thread(self, tid: int, machine: Machine, entry: FuncInst, args: list[Any]) -> WasmThread:
        thread = WasmThread(tid, machine, entry, args)
        machine.scheduler = self  # type: ignore[attr-defined]
        machine.wasm_thread = thread  # type: ignore[attr-defined]
        self.threads.append(thread)
        return thread

    def _start(self, thread: WasmThread) -> None:
        py = threading.Thread(target=self._thread_main, args=(thread,), name=f"wasm-thread-{thread.tid}", daemon=True)
        thread.python_thread = py
        py.start()

    def _me(self) -> WasmThread | None:
        current = self.current
        if current is not None and current.python_thread is threading.current_thread():
            return current
        return None

    def _thread_main(self, thread: WasmThread) -> None:
        machine = thread.machine
        try:
            with self.cond:
                self._await_turn(thread)
            machine.stop_at_step = machine.steps + self._quantum()
            try:
                results = machine.invoke(thread.entry, thread.args)
            except Suspended:
                while True:
                    with self.cond:
                        self.run_queue.append(thread)
                        self._pass_baton()
                        self._await_turn(thread)
                    machine.stop_at_step = machine.steps + self._quantum()
                    try:
                        results = machine.resume()
                        break
                    except Suspended:
                        continue
            with self.cond:
                if thread is self.main:
                    self._end(("return", results))
                else:
                    self._pass_baton()  # this thread is done; the others go on
                    self.cond.notify_all()
        except ProgramEnded:
            return
        except BaseException as exc:  # proc_exit (ProcExit), a trap, anything: it ends the program
            with self.cond:
                self._end(("raise", exc))

    def _quantum(self) -> int:
        return self.random.randint(self.quantum // 2, self.quantum + self.quantum // 2)

    def _end(self, outcome: tuple[str, Any]) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.current = None
        self.cond.notify_all()

    def _pass_baton(self) -> None:
        """Give the baton to the first runnable thread (or to nobody). Holds ``cond``."""
        self.current = self.run_queue.popleft() if self.run_queue else None
        self.cond.notify_all()

    def _await_turn(self, thread: WasmThread) -> None:
        """Sleep until ``thread`` holds the baton. Holds ``cond``."""
        while self.current is not thread:
            if self.outcome is not None:
                raise ProgramEnded
            if self.current is None and self.run_queue and self.run_queue[0] is thread:
                self.run_queue.popleft()
                self.current = thread
                break
            self.cond.wait()
        if self.outcome is not None:
            raise ProgramEnded

    def _next_deadline_in(self) -> float | None:
        deadlines = [t.deadline for t in self.threads if t.waiting_on is not None and t.deadline is not None]
        if not deadlines:
            return None if self.in_host or self.current is not None else 0.05
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire_waits(self) -> None:
        """Waits whose timeout elapsed run again with result 2 (the main loop, holding ``cond``)."""
        now = time.monotonic()
        for thread in self.threads:
            if thread.waiting_on is not None and thread.deadline is not None and thread.deadline <= now:
                memory, addr = thread.waiting_on
                if memory.waiters.remove(addr, thread):
                    thread.wake_result = 2
                    thread.waiting_on = None
                    thread.deadline = None
                    self.run_queue.append(thread)
        if self.current is None and self.run_queue:
            self._pass_baton()

    def _check_deadlock(self) -> None:
        if self.outcome is not None or self.current is not None or self.run_queue or self.in_host:
            return
        if any(t.waiting_on is not None and t.deadline is not None for t in self.threads):
            return
        if any(t.waiting_on is not None for t in self.threads):
            self._end(("raise", Trap("deadlock: every thread waits without a timeout and none can notify")))
