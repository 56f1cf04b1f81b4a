"""The threads proposal's instructions on the interpreter: atomic accesses, wait and notify.

The interpreter runs one instruction at a time and holds the GIL while it does, so every access
here is atomic by construction; what matters is the proposal's exact semantics:

- the effective address must be a multiple of the access width, else the trap
  ``unaligned atomic`` (checked before the bounds, as the reference interpreter does); then
  the usual ``out of bounds memory access``;
- read-modify-writes return the *old* value, zero-extended to the instruction's type; narrow
  ones wrap their operand to the access width;
- ``memory.atomic.wait32/64`` traps on a memory that is not shared; returns 1 ("not-equal") when
  the cell does not hold the expected value, else waits. The waiting itself belongs to a thread
  scheduler (:class:`WaitQueues`, one per shared memory, is where waiters queue, in order: the
  order a ``notify`` wakes them and the order a snapshot must record). With no scheduler (a
  single-threaded run) no other thread can notify: a finite timeout elapses (2, "timed-out")
  and an infinite one is a trap rather than a hang;
- ``memory.atomic.notify`` wakes up to ``count`` waiters of the address and returns how many; on
  an unshared memory there can be none (0).

Compiled code holds ``(ATOMIC, handler, offset)``; :func:`handler_for` picks the handler once
per instruction at compile time.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from wasmig.binary import opcodes
from wasmig.errors import Trap
from wasmig.interp.numeric import signed64

_OOB = "out of bounds memory access"
_UNALIGNED = "unaligned atomic"
_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}

#: handler(machine, memory, offset): pops its operands from ``machine.stack``, pushes its result
Handler = Callable[[Any, Any, int], None]


class WaitQueues:
    """The waiters of one shared memory, per address, in arrival order.

    A waiter is any hashable token (a thread id). The queues are part of a program's state: a
    ``notify(addr, 1)`` wakes the first waiter of ``addr``, so a restore must put them back in the
    same order before any thread runs."""

    __slots__ = ("queues",)

    def __init__(self) -> None:
        self.queues: dict[int, deque[Any]] = {}

    def enqueue(self, addr: int, waiter: Any) -> None:
        self.queues.setdefault(addr, deque()).append(waiter)

    def wake(self, addr: int, count: int) -> list[Any]:
        """Dequeue up to ``count`` waiters of ``addr`` (in order) and return them."""
        queue = self.queues.get(addr)
        if not queue:
            return []
        woken = [queue.popleft() for _ in range(min(count, len(queue)))]
        if not queue:
            del self.queues[addr]
        return woken

    def remove(self, addr: int, waiter: Any) -> bool:
        """Take ``waiter`` out of ``addr``'s queue (its wait timed out); False if it was woken already."""
        queue = self.queues.get(addr)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self.queues[addr]
        return True


def _address(machine: Any, memory: Any, offset: int, width: int) -> int:
    """Pop the base address; the effective address, checked for alignment, then bounds."""
    ea = machine.stack.pop() + offset
    if ea % width:
        raise Trap(_UNALIGNED)
    if ea + width > len(memory.data):
        raise Trap(_OOB)
    return ea


def _load(width: int) -> Handler:
    fmt = _FORMATS[width]

    def load(machine: Any, memory: Any, offset: int) -> None:
        ea = _address(machine, memory, offset, width)
        machine.stack.append(fmt.unpack_from(memory.data, ea)[0])

    return load


def _store(width: int) -> Handler:
    fmt, mask = _FORMATS[width], _MASKS[width]

    def store(machine: Any, memory: Any, offset: int) -> None:
        value = machine.stack.pop()
        ea = _address(machine, memory, offset, width)
        fmt.pack_into(memory.data, ea, value & mask)

    return store


_RMW_OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "add": lambda old, v: old + v, "sub": lambda old, v: old - v, "and": lambda old, v: old & v,
    "or": lambda old, v: old | v, "xor": lambda old, v: old ^ v, "xchg": lambda old, v: v,
}


def _rmw(operator: str, width: int) -> Handler:
    fmt, mask = _FORMATS[width], _MASKS[width]
    if operator == "cmpxchg":

        def cmpxchg(machine: Any, memory: Any, offset: int) -> None:
            stack = machine.stack
            replacement = stack.pop()
            expected = stack.pop()
            ea = _address(machine, memory, offset, width)
            old = fmt.unpack_from(memory.data, ea)[0]
            if old == expected & mask:  # the expected operand is wrapped to the width first
                fmt.pack_into(memory.data, ea, replacement & mask)
            stack.append(old)

        return cmpxchg
    operation = _RMW_OPERATIONS[operator]

    def rmw(machine: Any, memory: Any, offset: int) -> None:
        stack = machine.stack
        value = stack.pop()
        ea = _address(machine, memory, offset, width)
        old = fmt.unpack_from(memory.data, ea)[0]
        fmt.pack_into(memory.data, ea, operation(old, value) & mask)
        stack.append(old)

    return rmw


def _wait(width: int) -> Handler:
    fmt, mask = _FORMATS[width], _MASKS[width]

    def wait(machine: Any, memory: Any, offset: int) -> None:
        stack = machine.stack
        raw_timeout = stack.pop()
        raw_expected = stack.pop()
        base = stack[-1] if stack else 0
        timeout = signed64(raw_timeout)  # i64, negative: forever
        expected = raw_expected & mask
        ea = _address(machine, memory, offset, width)
        if not getattr(memory, "shared", False):
            raise Trap("expected shared memory")
        if fmt.unpack_from(memory.data, ea)[0] != expected:
            stack.append(1)  # "not-equal"
            return
        scheduler = getattr(machine, "scheduler", None)
        if scheduler is not None:
            # the operands go with the waiter: a snapshot taken while it waits keeps them on its stack
            stack.append(scheduler.wait(machine, memory, ea, timeout, (base, raw_expected, raw_timeout)))
            return
        # one thread: nobody can notify it
        if timeout < 0:
            raise Trap("deadlock: wait without a timeout and no other thread to notify")
        time.sleep(timeout / 1e9)
        stack.append(2)  # "timed-out"

    return wait


def _notify(machine: Any, memory: Any, offset: int) -> None:
    stack = machine.stack
    count = stack.pop()
    ea = _address(machine, memory, offset, 4)
    queues = getattr(memory, "waiters", None)
    if queues is None:
        stack.append(0)
        return
    scheduler = getattr(machine, "scheduler", None)
    woken = queues.wake(ea, count)
    if scheduler is not None:
        scheduler.woken(woken)
    stack.append(len(woken))


def _fence(machine: Any, memory: Any, offset: int) -> None:
    """Sequentially consistent: every access of this interpreter already is."""


def handler_for(op: int) -> Handler:
    """The handler of one 0xFE instruction."""
    if op in opcodes.ATOMIC_LOADS:
        return _load(opcodes.ATOMIC_LOADS[op][1])
    if op in opcodes.ATOMIC_STORES:
        return _store(opcodes.ATOMIC_STORES[op][1])
    if op in opcodes.ATOMIC_RMW:
        operator, _type, width, _name = opcodes.ATOMIC_RMW[op]
        return _rmw(operator, width)
    if op == 0xFE00:
        return _notify
    if op == 0xFE01 or op == 0xFE02:
        return _wait(opcodes.ATOMIC_WAIT_NOTIFY[op])
    if op == 0xFE03:
        return _fence
    raise AssertionError(f"no atomic handler for opcode {op:#x}")  # pragma: no cover - table out of sync
