"""``memory.atomic.wait``/``notify`` of a wasi-threads program on wasmtime, kept by the host.

wasmtime's own waits are invisible from outside: nobody can wake a thread waiting without a
timeout when the program ends, a deadlock hangs, and a thread's place in an address's queue is
wasmtime's secret — which a checkpoint of the waiting threads (issue 20 step 3) must record. So
before a threaded program is compiled, every wait and notify is rerouted to the host
(:func:`route_waits_to_host`), and :class:`HostWaits` keeps the queues: the interpreter's
:class:`~wasmig.interp.atomics.WaitQueues`, so the same rules hold on both engines (first come,
first woken; a notify wakes in arrival order).

The rewrite adds no import, so no function or table index moves: each wait or notify becomes
``i32.const OFFSET; i32.const SLOT; call_indirect (type) TABLE`` through a new funcref table of
three slots (notify, wait32, wait64) that the module exports as :data:`TABLE_EXPORT`; the host
fills it with its functions in each new instance before running anything in it. The memarg's
offset travels as the extra last argument, the effective address is computed, checked for
alignment then bounds (the spec's order, the interpreter's messages) by the host. The start
function is left as it is: it runs during instantiation, before the table is filled, and what
linkers put there (``__wasm_init_memory``) only coordinates the instances initialising the
memory among themselves, with waits and notifies of its own.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from wasmig.binary.ir import Export, FuncType, Instr, Limits, TableType
from wasmig.binary.ir import Module as IRModule
from wasmig.binary.opcodes import ATOMIC_WAIT_NOTIFY
from wasmig.errors import HostCallInterrupted, Trap
from wasmig.interp.atomics import WaitQueues

#: the export naming the table of host functions the rewritten waits and notifies call
TABLE_EXPORT = "wasmig:atomics"
_NOTIFY, _WAIT32, _WAIT64 = 0xFE00, 0xFE01, 0xFE02
#: the table slot and the host function's type, per instruction (the memarg offset last)
SLOTS: dict[int, tuple[int, FuncType]] = {
    _NOTIFY: (0, FuncType(("i32", "i32", "i32"), ("i32",))),
    _WAIT32: (1, FuncType(("i32", "i32", "i64", "i32"), ("i32",))),
    _WAIT64: (2, FuncType(("i32", "i64", "i64", "i32"), ("i32",))),
}
_I32_CONST, _CALL_INDIRECT = 0x41, 0x11
_UNALIGNED = "unaligned atomic"
_OUT_OF_BOUNDS = "out of bounds memory access"
_DEADLOCK = "deadlock: every thread waits without a timeout and none can notify"


class ProgramEnded(Exception):  # noqa: N818 - control flow: tells a thread to stop
    """Raised in a thread's host call (a wait included) once another thread ended the program."""


def route_waits_to_host(ir: IRModule) -> IRModule | None:
    """``ir`` with every ``memory.atomic.wait32/64`` and ``notify`` outside the start function
    made a call through the exported host table (see the module docstring); None when it has none
    (then it runs as it is, and nothing is waited for)."""
    if not any(ins.op in ATOMIC_WAIT_NOTIFY for func in ir.funcs for ins in func.body):
        return None
    types = list(ir.types)
    type_of: dict[int, int] = {}
    for op, (_slot, ft) in SLOTS.items():
        type_of[op] = len(types)
        types.append(ft)
    table = len(ir.all_tables())
    start_defined = None if ir.start is None else ir.start - ir.num_imported_funcs()
    funcs = []
    for i, func in enumerate(ir.funcs):
        if i == start_defined or not any(ins.op in ATOMIC_WAIT_NOTIFY for ins in func.body):
            funcs.append(func)
            continue
        body: list[Instr] = []
        for ins in func.body:
            if ins.op not in ATOMIC_WAIT_NOTIFY:
                body.append(ins)
                continue
            offset = ins.imm[1]
            body += [Instr(_I32_CONST, offset, ins.offset), Instr(_I32_CONST, SLOTS[ins.op][0], ins.offset),
                     Instr(_CALL_INDIRECT, (type_of[ins.op], table), ins.offset)]
        funcs.append(dataclasses.replace(func, body=body))
    return dataclasses.replace(
        ir, types=types, funcs=funcs, tables=[*ir.tables, TableType("funcref", Limits(len(SLOTS), len(SLOTS)))],
        exports=[*ir.exports, Export(TABLE_EXPORT, "table", table)])


@dataclasses.dataclass(eq=False)
class Waiter:
    """One wasm thread as a waiter: its condition (on the run's lock), whether a notify took it,
    and, while its thread is stopped for a checkpoint (:attr:`parked`), where it waits."""

    wake: threading.Condition
    woken: bool = False
    forever: bool = False
    #: the effective address it waits on (None: not waiting)
    at: int | None = None
    #: when its timeout elapses (time.monotonic(); None: never)
    deadline: float | None = None
    #: its thread left the wait function for a checkpoint, keeping its place in the queue (or the
    #: result it was woken with): the wait re-issued by the rewind carries on from there
    parked: bool = False


class HostWaits:
    """The wait queues of a run's one shared memory and the deadlock rule (the interpreter's: when
    every live thread waits without a timeout and none is in a blocking host call, nobody can
    notify — the program ends with a trap instead of hanging).

    ``lock``: the run's (reentrant) lock, which guards the run's own counts too; ``memory()``:
    the shared memory's base address and length; ``threads()``: (live threads, threads in a
    blocking host call); ``end(exception)``: end the program; ``ended()``: whether it has ended.

    A checkpoint (:mod:`~wasmig.engines.wasmtime.threads_checkpoint`) sets :attr:`pausing` and
    wakes every waiter: a thread in a wait leaves it with :class:`HostCallInterrupted` (its
    instrumented instance unwinds from the rerouted wait's ``call_indirect``) but keeps its place
    in its queue; the rewind re-issues the wait, which then carries on in that place
    (:meth:`restore` puts a restored thread's waiter there before any thread runs)."""

    def __init__(self, lock: threading.RLock, memory: Callable[[], tuple[int, int]],
                 threads: Callable[[], tuple[int, int]], end: Callable[[BaseException], None],
                 ended: Callable[[], bool]) -> None:
        self.lock = lock
        self.queues = WaitQueues()
        self._memory = memory
        self._threads = threads
        self._end = end
        self._ended = ended
        self.forever = 0  # waiters without a timeout
        #: a checkpoint is stopping every thread: waits are left (their places kept)
        self.pausing = False

    def waiter(self) -> Waiter:
        """A thread's waiter (one per thread: a thread waits on one address at a time)."""
        return Waiter(threading.Condition(self.lock))

    def _address(self, addr: int, offset: int, width: int) -> int:
        ea = addr + offset
        if ea % width:
            raise Trap(_UNALIGNED)
        if ea + width > self._memory()[1]:
            raise Trap(_OUT_OF_BOUNDS)
        return ea

    def notify(self, addr: int, count: int, offset: int) -> int:
        """``memory.atomic.notify``: wake up to ``count`` waiters of the address, first come first; how many."""
        ea = self._address(addr, offset, 4)
        with self.lock:
            woken = self.queues.wake(ea, count)
            for waiter in woken:
                waiter.woken = True
                self._stop_counting(waiter)  # it will run: it no longer counts for a deadlock
                waiter.wake.notify()
            return len(woken)

    def wait(self, waiter: Waiter, addr: int, expected: int, timeout: int, offset: int, width: int) -> int:
        """``memory.atomic.wait32/64``: 1 if the cell does not hold ``expected``, else 0 once
        notified or 2 once ``timeout`` ns (signed; negative: forever) elapsed. The compare and the
        enqueue happen under the lock every notify takes, so no notify falls between them. A
        wait re-issued for a parked waiter (after a checkpoint or a restore) neither compares nor
        enqueues: it is in its place already, or was woken meanwhile."""
        ea = self._address(addr, offset, width)
        kind = ctypes.c_uint32 if width == 4 else ctypes.c_uint64
        if timeout >= 1 << 63:
            timeout -= 1 << 64
        with self.lock:
            if waiter.parked:
                if waiter.at != ea:
                    raise Trap(f"internal error: a restored wait re-issued at address {ea}, not {waiter.at}")
                waiter.parked = False
            else:
                if kind.from_address(self._memory()[0] + ea).value != expected:
                    return 1
                waiter.woken = False
                waiter.at = ea
                waiter.deadline = None if timeout < 0 else time.monotonic() + timeout / 1e9
                waiter.forever = waiter.deadline is None
                self.queues.enqueue(ea, waiter)
                self.forever += waiter.forever
            deadline = waiter.deadline
            self.check_deadlock()
            while not waiter.woken and not self._ended() and not self.pausing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                waiter.wake.wait(left)
            if waiter.woken:
                waiter.at = None
                return 0
            if self.pausing and not self._ended() and (deadline is None or time.monotonic() < deadline):
                waiter.parked = True  # its place and its count kept for the wait the rewind re-issues
                raise HostCallInterrupted("a checkpoint")
            self._stop_counting(waiter)
            self.queues.remove(ea, waiter)
            waiter.at = None
            if self._ended():
                raise ProgramEnded("the program has ended")
            return 2

    def restore(self, waiter: Waiter, ea: int, timeout_ns: int | None, result: int | None) -> None:
        """Put a restored thread's waiter where the snapshot says (call in queue order, before any
        thread runs): queued at ``ea`` with ``timeout_ns`` left, or (``result`` 0 or 2) out of the
        queue, the wait to return that result when its thread re-issues it."""
        with self.lock:
            waiter.at = ea
            waiter.parked = True
            if result is None:
                waiter.woken = False
                waiter.deadline = None if timeout_ns is None else time.monotonic() + timeout_ns / 1e9
                waiter.forever = waiter.deadline is None
                self.queues.enqueue(ea, waiter)
                self.forever += waiter.forever
            else:
                waiter.woken = result == 0
                waiter.deadline = time.monotonic() if result == 2 else None  # 2: elapsed already

    def queued(self) -> list[tuple[int, list[Waiter]]]:
        """Every address with waiters, in address order, its waiters in queue order (under the lock)."""
        return sorted((ea, list(waiters)) for ea, waiters in self.queues.queues.items() if waiters)

    def _stop_counting(self, waiter: Waiter) -> None:
        self.forever -= waiter.forever
        waiter.forever = False

    def check_deadlock(self) -> None:
        """End the program with a deadlock trap if every live thread waits forever and none is in
        the host (called under the lock when a thread starts waiting forever or a thread ends)."""
        live, in_host = self._threads()
        if live > 0 and in_host == 0 and self.forever >= live:
            self._end(Trap(_DEADLOCK))

    def wake_all(self) -> None:
        """The program ended, or a checkpoint stops every thread: every waiter returns (and its
        thread stops at its next host call or epoch check, or unwinds). Under the lock."""
        for queue in self.queues.queues.values():
            for waiter in queue:
                waiter.wake.notify()

    def host_functions(self, waiter: Waiter) -> dict[int, tuple[FuncType, Callable[..., Any]]]:
        """Per table slot, the host function's type and body (unsigned arguments, as wasmig's host
        calls take them), for the thread ``waiter`` is."""
        return {
            SLOTS[_NOTIFY][0]: (SLOTS[_NOTIFY][1], self.notify),
            SLOTS[_WAIT32][0]: (SLOTS[_WAIT32][1], lambda a, e, t, o: self.wait(waiter, a, e, t, o, 4)),
            SLOTS[_WAIT64][0]: (SLOTS[_WAIT64][1], lambda a, e, t, o: self.wait(waiter, a, e, t, o, 8)),
        }
