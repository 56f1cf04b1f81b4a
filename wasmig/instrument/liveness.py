"""Which locals are live where: a backward dataflow over one function body.

A local is *live* before instruction ``i`` when some path from ``i`` reads it (``local.get``)
before writing it (``local.set``/``local.tee``). A dead local's value can never be observed, so
a frame stopped at ``i`` behaves the same whatever that local holds. The instrumentation pass
uses this to record only live locals (dead ones are written as zero), which lets the compiled
code forget dead values instead of keeping every local alive up to the unwind path; snapshots
use the same rule, on every engine, so they stay equal (see docs/instrument.md).
"""

from __future__ import annotations

from typing import Any

from wasmig.binary.blocks import match_blocks
from wasmig.binary.ir import Instr


def live_locals_of(info: Any, body: list[Instr]) -> list[int]:
    """:func:`live_locals` of ``body``, cached on its validator ``FunctionInfo``."""
    if info.live is None:
        info.live = live_locals(body)
    return info.live


def dead_value(t: str) -> tuple[str, int | None]:
    """What a dead local of type ``t`` holds in a canonical frame: zero (null for references).
    Every engine applies this rule, so their snapshots stay equal."""
    return (t, None) if t in ("funcref", "externref") else (t, 0)


def live_locals(body: list[Instr]) -> list[int]:
    """For every instruction index ``i`` of ``body``, the bit set (bit ``j`` = local ``j``) of the
    locals live before ``body[i]``. ``body`` is a validated function body (ending in ``end``)."""
    n = len(body)
    # successors of every instruction; -1 = the function's exit
    succ: list[tuple[int, ...]] = [()] * n
    end_of, else_of = match_blocks(body)

    def label(depth: int, stack: list[int]) -> int:
        if depth >= len(stack):
            return -1  # the function's own label: leaves the function
        start = stack[len(stack) - 1 - depth]
        return start if body[start].op == 0x03 else end_of[start]

    stack: list[int] = []
    for i, ins in enumerate(body):
        op = ins.op
        if op in (0x02, 0x03):
            stack.append(i)
            succ[i] = (i + 1,)
        elif op == 0x04:
            stack.append(i)
            succ[i] = (i + 1, else_of[i] + 1 if i in else_of else end_of[i])
        elif op == 0x05:
            succ[i] = (end_of[stack[-1]],)
        elif op == 0x0B:
            if stack:
                stack.pop()
                succ[i] = (i + 1,)
            else:
                succ[i] = ()
        elif op == 0x0C:
            succ[i] = (label(ins.imm, stack),)
        elif op == 0x0D:
            succ[i] = (i + 1, label(ins.imm, stack))
        elif op == 0x0E:
            labels, default = ins.imm
            succ[i] = tuple({label(d, stack) for d in (*labels, default)})
        elif op in (0x00, 0x0F):
            succ[i] = ()
        else:
            succ[i] = (i + 1,)
    gen = [0] * n
    kill = [0] * n
    for i, ins in enumerate(body):
        if ins.op == 0x20:
            gen[i] = 1 << ins.imm
        elif ins.op in (0x21, 0x22):
            kill[i] = 1 << ins.imm
    live = [0] * n
    changed = True
    while changed:
        changed = False
        for i in range(n - 1, -1, -1):
            out = 0
            for s in succ[i]:
                if s >= 0:
                    out |= live[s]
            new = gen[i] | (out & ~kill[i])
            if new != live[i]:
                live[i] = new
                changed = True
    return live
