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
    solved = _solve(body, blocks)
    ctrl, live_at = solved.ctrl, solved.live_at
    m = len(ctrl)
    # every instruction: a control instruction's own set, a run's from its end backwards
    live = [0] * n
    for k in range(m):
        live[ctrl[k]] = live_at[k]
    for k in range(-1, m - 1):
        start, end = (ctrl[k] + 1 if k >= 0 else 0), ctrl[k + 1]
        cur = live_at[k + 1]
        below = end  # live[below:end] are filled with cur
        for pos in reversed(solved.accesses(k)):
            if below - pos > 1:
                live[pos + 1:below] = [cur] * (below - pos - 1)
            ins = body[pos]
            cur = cur | 1 << ins.imm if ins.op == _GET else cur & ~(1 << ins.imm)
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
        self.body = body
        self.solved = _solve(body, blocks)
        self.ctrl, self.live_at = self.solved.ctrl, self.solved.live_at
        #: run k (-1: the lead) -> (its accesses' positions, the set live before each)
        self._filled: dict[int, tuple[list[int], list[int]]] = {}

    def __getitem__(self, pos: int) -> int:
        ctrl = self.ctrl
        k = bisect_right(ctrl, pos) - 1  # the control instruction at pos or the last before it
        if k >= 0 and ctrl[k] == pos:
            return self.live_at[k]
        filled = self._filled.get(k)
        if filled is None:
            body = self.body
            positions = self.solved.accesses(k)
            before = [0] * len(positions)
            cur = self.live_at[k + 1]
            for j in range(len(positions) - 1, -1, -1):
                ins = body[positions[j]]
                cur = cur | 1 << ins.imm if ins.op == _GET else cur & ~(1 << ins.imm)
                before[j] = cur
            filled = self._filled[k] = (positions, before)
        positions, before = filled
        j = bisect_left(positions, pos)  # the first access at pos or after it
        return before[j] if j < len(before) else self.live_at[k + 1]


class _Solved:
    """:func:`_solve`'s result: the control instructions' positions (ascending), the set live
    before each, and where the local accesses of each straight run are found."""

    __slots__ = ("ctrl", "live_at", "looked_at", "run_start")

    def __init__(self, ctrl: list[int], live_at: list[int], looked_at: list[int], run_start: list[int]) -> None:
        self.ctrl = ctrl
        self.live_at = live_at
        #: the positions of the control instructions and local accesses, ascending
        self.looked_at = looked_at
        #: control instruction k's index in looked_at (its run's accesses follow it)
        self.run_start = run_start

    def accesses(self, k: int) -> list[int]:
        """The positions of the local accesses in the run after control instruction ``k`` (-1:
        the run before the first), ascending."""
        run_start = self.run_start
        lo = run_start[k] + 1 if k >= 0 else 0
        hi = run_start[k + 1] if k + 1 < len(run_start) else len(self.looked_at)
        return self.looked_at[lo:hi]


def _solve(body: list[Instr], blocks: tuple[dict[int, int], dict[int, int]] | None) -> _Solved:
    """:func:`live_locals`'s fixpoint over the control instructions (:class:`_Solved`)."""
    end_of, else_of = blocks if blocks is not None else match_blocks(body)
    looked_at = [k for k, ins in enumerate(body) if ins.op in _LOOKED_AT]  # (faster than compress() + map)
    ctrl: list[int] = []  # positions of the control instructions, ascending
    run_start: list[int] = []  # the index in looked_at of each
    # each run after a control instruction as gen | (x & ~kill), composed as it is scanned:
    # a local read before the run writes it is generated, one written is killed (the run before
    # the first control instruction needs no summary)
    gen: list[int] = []
    kill: list[int] = []
    g = c = 0
    for a, k in enumerate(looked_at):
        ins = body[k]
        op = ins.op
        if op == _GET:
            bit = 1 << ins.imm
            if not c & bit:
                g |= bit
        elif op == _SET or op == _TEE:
            c |= 1 << ins.imm
        else:
            if ctrl:
                gen.append(g)
                kill.append(c)
            g = c = 0
            ctrl.append(k)
            run_start.append(a)
    if ctrl:
        gen.append(g)
        kill.append(c)
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
    return _Solved(ctrl, live_at, looked_at, run_start)
