"""The interpreter's less frequent instructions, out of the dispatch loop (:mod:`wasmig.interp.machine`):
memory size and growth, references, tables, bulk memory and the threads proposal's atomics. Each
is one call from the loop; a trap here is located by the loop like any other."""

from __future__ import annotations

from typing import Any

from wasmig.errors import Trap
from wasmig.interp import ops
from wasmig.interp.numeric import M32
from wasmig.interp.store import PAGE_SIZE, ModuleInstance

_OOB = "out of bounds memory access"


def execute_rare(self: Any, op: int, ins: tuple, inst: ModuleInstance, mem: bytearray) -> bytearray:
    """Less frequent instructions, out of the hot loop (``self``: the :class:`~wasmig.interp.machine.Machine`).
    Returns the (possibly new) memory."""
    stack = self.stack
    pop = stack.pop
    if op == 0x3F:
        stack.append(len(mem) // PAGE_SIZE)
    elif op == 0x40:
        delta = pop()
        stack.append(inst.mems[0].grow(delta) & M32)
        return inst.mems[0].data
    elif op == 0xD0:
        stack.append(None)
    elif op == 0xD1:
        stack[-1] = 1 if stack[-1] is None else 0
    elif op == 0xD2:
        stack.append(inst.funcs[ins[1]])
    elif op == 0x25:
        i = pop()
        table = inst.tables[ins[1]].elements
        if i >= len(table):
            raise Trap("out of bounds table access")
        stack.append(table[i])
    elif op == 0x26:
        v = pop()
        i = pop()
        table = inst.tables[ins[1]].elements
        if i >= len(table):
            raise Trap("out of bounds table access")
        table[i] = v
    elif op == ops.ATOMIC:
        ins[1](self, inst.mems[0], ins[2])
    elif op == 0xFC08:  # memory.init
        n = pop()
        s = pop()
        d = pop()
        seg = inst.datas[ins[1][0]]
        if s + n > len(seg) or d + n > len(mem):
            raise Trap(_OOB)
        mem[d : d + n] = seg[s : s + n]
    elif op == 0xFC09:
        inst.datas[ins[1]] = b""
    elif op == 0xFC0A:  # memory.copy
        n = pop()
        s = pop()
        d = pop()
        if s + n > len(mem) or d + n > len(mem):
            raise Trap(_OOB)
        mem[d : d + n] = mem[s : s + n]
    elif op == 0xFC0B:  # memory.fill
        n = pop()
        val = pop()
        d = pop()
        if d + n > len(mem):
            raise Trap(_OOB)
        mem[d : d + n] = bytes((val & 0xFF,)) * n
    elif op == 0xFC0C:  # table.init
        n = pop()
        s = pop()
        d = pop()
        elem_idx, table_idx = ins[1]
        seg = inst.elems[elem_idx]
        table = inst.tables[table_idx].elements
        if s + n > len(seg) or d + n > len(table):
            raise Trap("out of bounds table access")
        table[d : d + n] = seg[s : s + n]
    elif op == 0xFC0D:
        inst.elems[ins[1]] = []
    elif op == 0xFC0E:  # table.copy
        n = pop()
        s = pop()
        d = pop()
        dst_idx, src_idx = ins[1]
        dst = inst.tables[dst_idx].elements
        src = inst.tables[src_idx].elements
        if s + n > len(src) or d + n > len(dst):
            raise Trap("out of bounds table access")
        dst[d : d + n] = src[s : s + n]
    elif op == 0xFC0F:  # table.grow
        n = pop()
        init = pop()
        stack.append(inst.tables[ins[1]].grow(n, init) & M32)
    elif op == 0xFC10:
        stack.append(len(inst.tables[ins[1]].elements))
    elif op == 0xFC11:  # table.fill
        n = pop()
        v = pop()
        i = pop()
        table = inst.tables[ins[1]].elements
        if i + n > len(table):
            raise Trap("out of bounds table access")
        table[i : i + n] = [v] * n
    else:  # pragma: no cover
        raise AssertionError(f"interpreter has no implementation for op {op:#x}")
    return mem
