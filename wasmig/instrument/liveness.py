"""Which locals are live where: a backward dataflow over one function body.

A local is *live* before instruction ``i`` when some path from ``i`` reads it (``local.get``)
before writing it (``local.set``/``local.tee``). A dead local's value can never be observed, so
a frame stopped at ``i`` behaves the same whatever that local holds. The instrumentation pass
uses this to record only live locals (dead ones are written as zero), which lets the compiled
code forget dead values instead of keeping every local alive up to the unwind path; snapshots
use the same rule, on every engine, so they stay equal (see docs/instrument.md).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import compress
from operator import attrgetter
from typing import Any

from wasmig.binary.blocks import match_blocks
from wasmig.binary.ir import Instr


def live_locals_of(info: Any, body: list[Instr],
                   blocks: tuple[dict[int, int], dict[int, int]] | None = None) -> list[int]:
    """:func:`live_locals` of ``body``, cached on its validator ``FunctionInfo``."""
    if info.live is None:
        info.live = live_locals(body, blocks)
    return info.live


def dead_value(t: str) -> tuple[str, int | None]:
    """What a dead local of type ``t`` holds in a canonical frame: zero (null for references).
    Every engine applies this rule, so their snapshots stay equal."""
    return (t, None) if t in ("funcref", "externref") else (t, 0)


#: instructions that end a straight-line run (their successors are not just the next one)
_CONTROL = frozenset((0x00, 0x02, 0x03, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F))
_GET, _SET, _TEE = 0x20, 0x21, 0x22
_LOOKED_AT = _CONTROL | {_GET, _SET, _TEE}
_OP = attrgetter("op")
# how a control instruction's live set follows from the others' (see live_locals)
_NEXT, _NEXT_OR_LIVE, _NEXT_OR_NEXT, _LIVE, _NONE, _TABLE = range(6)


def live_locals(body: list[Instr], blocks: tuple[dict[int, int], dict[int, int]] | None = None) -> list[int]:
    """For every instruction index ``i`` of ``body``, the bit set (bit ``j`` = local ``j``) of the
    locals live before ``body[i]``. ``body`` is a validated function body (ending in ``end``).

    The least fixpoint of ``live[i] = gen[i] | (live of i's successors) & ~kill[i]``, solved on
    the control instructions only: between two of them code runs straight, and only its
    ``local.get``/``set``/``tee`` change the set, so each such run is summarised once as
    ``gen | (x & ~kill)`` and the fixpoint iterates over a fraction of the body (a big module
    has millions of instructions); the per-instruction sets are filled in at the end.
    ``blocks``: :func:`match_blocks` of ``body``, when the caller has it."""
    n = len(body)
    ctrl, runs, lead, live_at = _solve(body, blocks)
    m = len(ctrl)
    # every instruction: a control instruction's own set, a run's from its end backwards
    live = [0] * n
    for k in range(m):
        live[ctrl[k]] = live_at[k]
    for k in range(-1, m - 1):
        start, end = (ctrl[k] + 1 if k >= 0 else 0), ctrl[k + 1]
        cur = live_at[k + 1]
        below = end  # live[below:end] are filled with cur
        for pos, bit, is_get in reversed(runs[k] if k >= 0 else lead):
            if below - pos > 1:
                live[pos + 1:below] = [cur] * (below - pos - 1)
            cur = cur | bit if is_get else cur & ~bit
            live[pos] = cur
            below = pos
        if below > start:
            live[start:below] = [cur] * (below - start)
    return live


class LiveAt:
    """``live_locals(body)[i]`` for the few ``i`` asked: the instrumentation pass asks at its
    sites only (a tenth of the instructions), so the per-instruction sets are not filled in; a
    straight run's sets are worked out when one of its instructions is first asked about."""

    def __init__(self, body: list[Instr], blocks: tuple[dict[int, int], dict[int, int]] | None = None) -> None:
        self.ctrl, self.runs, self.lead, self.live_at = _solve(body, blocks)
        #: run k (-1: the lead) -> (its accesses' positions, the set live before each)
        self._filled: dict[int, tuple[list[int], list[int]]] = {}

    def __getitem__(self, pos: int) -> int:
        ctrl = self.ctrl
        k = bisect_right(ctrl, pos) - 1  # the control instruction at pos or the last before it
        if k >= 0 and ctrl[k] == pos:
            return self.live_at[k]
        filled = self._filled.get(k)
        if filled is None:
            accesses = self.runs[k] if k >= 0 else self.lead
            before = [0] * len(accesses)
            cur = self.live_at[k + 1]
            for j in range(len(accesses) - 1, -1, -1):
                _pos, bit, is_get = accesses[j]
                cur = cur | bit if is_get else cur & ~bit
                before[j] = cur
            filled = self._filled[k] = ([a[0] for a in accesses], before)
        positions, before = filled
        j = bisect_left(positions, pos)  # the first access at pos or after it
        return before[j] if j < len(before) else self.live_at[k + 1]


def _solve(body: list[Instr], blocks: tuple[dict[int, int], dict[int, int]] | None
           ) -> tuple[list[int], list[list[tuple[int, int, bool]]], list[tuple[int, int, bool]], list[int]]:
    """:func:`live_locals`'s fixpoint: (the control instructions' positions, the local accesses
    of the run after each, those of the run before the first, the set live before each control
    instruction)."""
    n = len(body)
    end_of, else_of = blocks if blocks is not None else match_blocks(body)
    looked_at = list(compress(range(n), map(_LOOKED_AT.__contains__, map(_OP, body))))  # in C
    ctrl: list[int] = []  # positions of the control instructions, ascending
    #: per control instruction k: the local accesses of the run after it, ascending (the run
    #: before the first control instruction is runs[-1]'s: it is kept apart as `lead`)
    runs: list[list[tuple[int, int, bool]]] = []
    lead: list[tuple[int, int, bool]] = []
    current = lead
    for k in looked_at:
        ins = body[k]
        op = ins.op
        if op in _CONTROL:
            ctrl.append(k)
            current = []
            runs.append(current)
        else:
            current.append((k, 1 << ins.imm, op == _GET))
    index_of = {pos: k for k, pos in enumerate(ctrl)}
    m = len(ctrl)

    # the successors of each control instruction, as indices into ctrl: `next` = the run after
    # control k (its first instruction, k + 1 in the body); `live` = control instruction t itself
    kind = [_NONE] * m
    target: list[object] = [None] * m
    stack: list[int] = []
    loops = False  # without a loop every successor comes later: one backward pass is the fixpoint

    def label(depth: int) -> int:
        """The control index a branch to ``depth`` goes to (-1: out of the function)."""
        if depth >= len(stack):
            return -1
        start = stack[len(stack) - 1 - depth]
        return index_of[start if body[start].op == 0x03 else end_of[start]]

    for k, pos in enumerate(ctrl):
        ins = body[pos]
        op = ins.op
        if op in (0x02, 0x03):
            stack.append(pos)
            kind[k] = _NEXT
            loops = loops or op == 0x03
        elif op == 0x04:
            stack.append(pos)
            if pos in else_of:  # false: just after the else
                kind[k], target[k] = _NEXT_OR_NEXT, index_of[else_of[pos]]
            else:
                kind[k], target[k] = _NEXT_OR_LIVE, index_of[end_of[pos]]
        elif op == 0x05:
            kind[k], target[k] = _LIVE, index_of[end_of[stack[-1]]]
        elif op == 0x0B:
            if stack:
                stack.pop()
                kind[k] = _NEXT
        elif op == 0x0C:
            t = label(ins.imm)
            if t >= 0:
                kind[k], target[k] = _LIVE, t
        elif op == 0x0D:
            t = label(ins.imm)
            kind[k], target[k] = (_NEXT_OR_LIVE, t) if t >= 0 else (_NEXT, None)
        elif op == 0x0E:
            labels, default = ins.imm
            targets = tuple(t for t in {label(d) for d in (*labels, default)} if t >= 0)
            kind[k], target[k] = _TABLE, targets

    # each run as gen | (x & ~kill), composed backwards from its last access
    gen = [0] * m
    kill = [0] * m
    for k, accesses in enumerate(runs):
        g = c = 0
        for _pos, bit, is_get in reversed(accesses):
            if is_get:
                g |= bit
            else:
                g &= ~bit
                c |= bit
        gen[k], kill[k] = g, c

    live_at = [0] * m  # live before control instruction k
    after = [0] * m  # live before the run after it (its first instruction)
    changed = True
    while changed:
        changed = False
        for k in range(m - 1, -1, -1):
            if k + 1 < m:
                after[k] = gen[k] | (live_at[k + 1] & ~kill[k])
            how = kind[k]
            if how == _NEXT:
                new = after[k]
            elif how == _NEXT_OR_LIVE:
                new = after[k] | live_at[target[k]]  # type: ignore[index]
            elif how == _NEXT_OR_NEXT:
                new = after[k] | after[target[k]]  # type: ignore[index]
            elif how == _LIVE:
                new = live_at[target[k]]  # type: ignore[index]
            elif how == _TABLE:
                new = 0
                for t in target[k]:  # type: ignore[union-attr]
                    new |= live_at[t]
            else:
                new = 0
            if new != live_at[k]:
                live_at[k] = new
                changed = True
        if not loops:
            break
    return ctrl, runs, lead, live_at
