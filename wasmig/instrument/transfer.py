"""Transfers: a rewound frame goes back to normal code at a loop header.

A rewind re-enters every frame that was live at a checkpoint through its function's *rewind copy*
(:mod:`wasmig.instrument.unwind`). Left there, a frame finishes its activation in the copy; a copy
that holds its loops in normal form runs them at nearly the normal body's speed, but not in a huge
function (QuickJS's ``JS_CallInternal``: its dispatch loop ran 1.10-1.19x slower in the copy, where
Cranelift spills far more). With transfers the copy holds no normal-form copy of the loops it can
leave at: when a resumed copy reaches the header of such a loop (an *entry loop*), it writes its
frame (every local and spill local, the loop's parameters in theirs) as one record at
``RECORDS_BASE`` of the control memory, the loop's *entry ordinal* as the record's site, and
``return_call``s the function's *entry function*: a function of its own, after every copy in the
rewind module (:meth:`_Pass.add_entry`; its owner is listed in the origins section, so a trap in it
is reported as in its function), which starts with every local from the record, ``$site`` = the
ordinal and ``$skip = 1``, and reaches the entry loop the way a rewind copy reaches a site: every
straight-line segment at a construct level on the path to an entry loop is guarded (``local.get
$skip i32.eqz if .. else drop, zeros end``), a construct holding an entry loop is skipped whole
when the ordinal lies outside it (an ``if`` taking the arm that holds it), and just before the
entry loop the parameters come back from their spill locals and ``$skip`` is cleared; then the loop
runs as it always does, its header poll included (the copy wrote the record *before* that header's
poll, so in the deterministic variant the step is counted once, there). Its sites are the normal
body's, so its records are the normal body's too.

Until session 6 this walk was the normal body's own: ``if ($state == 2)`` loads ``else`` entry
poll ``end`` at the start of every function with entry loops, the guards on its path. That cost
every run, stopped or not: QuickJS 1.15x plain against 1.05-1.07x without (the guest alone, CPU of
``_start``, interleaved), with the loads of only the live locals no better (1.17x). Now a normal
body is the same with transfers or without; the price is that a frame continues in the rewind
module, whose calls, memory and globals are the run instance's imports. For a huge dispatch loop,
where a restored interpreter frame spends the rest of its activation, that measured 1.22x the
never-stopped run, so such functions have an *entry arm* in the run module instead
(:mod:`wasmig.instrument.entry_arm`).

Which loops are entry loops (:func:`plan_entries`): none in a function with a big top-level loop
that is mostly an inner loop branching back to its header (CPython's eval nest: see
``_restarts_from_inside``); otherwise every loop at a function's top level and, in
turn, inside an entry loop, an inner loop that is at least half of its body and holds no branch
to the outer loop's header (the outer loop is then begun again only once the inner one is left:
a restart loop around a dispatch loop, not CPython's eval loop nest, whose inner loops branch
to the outer headers: with its two outer loops enclosing, a never-stopped CPython n-body took
4.03 s of CPU against 2.84 s for main, one interleaved round). The outer loop then
*encloses* entry loops: its header poll, the segments before its entry loops and the constructs
on the way to them are guarded, a test each per iteration of the outer loop -- one such iteration
runs a whole inner loop that is most of its code, so the tests are few beside it (a loop nest's
levels, a restart loop around a dispatch loop); a small loop inside a big body is not worth a test
per iteration of that body. An entry loop without entry loops inside is a
*target*: nothing inside it changes, and the loops inside it stay in the copy in normal form (they
run at most until the target's next header). So a bytecode interpreter's dispatch loop (a
``switch`` of hundreds of nested blocks, some cases holding loops) is a target with no test added
per dispatch, and the restart loop around it (QuickJS's: the dispatch loop is nine constructs
deep in it, and nearly all of it) encloses it. Functions without loops need nothing: their copy runs to the return.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from wasmig.binary.ir import Instr
    from wasmig.instrument.emit import Code
    from wasmig.instrument.unwind import _Ctl, _FunctionRewriter

#: functions smaller than this have no entry loops: the check at the entry of every call and the
#: guards on the way to the loops cost a small function too much (recursive fib with a loop: 1.68x
#: plain against 1.09x), and a small function's copy compiles as well as its normal body
MIN_BODY = 1000
#: an entry loop smaller than this encloses no entry loop: the guards it would get, a few tests per
#: iteration, cost a short-trip loop nest up to a third (n-body's: 1.33x plain against 1.09x)
MIN_ENCLOSING = 1000
#: the copy's labels with transfers: $done, $unwind, the function's label, $copy_unwind, $transfer
TRANSFER_LABEL = 4


@dataclass(frozen=True)
class EntryPlan:
    """The loops of one function where its normal body can be entered, in body order."""

    #: entry loop (instruction index) -> its ordinal, 0.. in body order
    ordinal: dict[int, int]
    #: entry loops with no entry loop inside (their bodies are emitted unchanged)
    targets: frozenset[int]

    def __bool__(self) -> bool:
        return bool(self.ordinal)

    def ordinals_in(self, start: int, end: int) -> tuple[int, int] | None:
        """The first and last ordinal of the entry loops at instructions ``start..end``."""
        positions = sorted(self.ordinal)
        lo, hi = bisect_left(positions, start), bisect_right(positions, end)
        if lo == hi:
            return None
        return lo, hi - 1


def plan_entries(body: list[Instr], end_of: dict[int, int], unreachable: list[bool],
                 at: Sequence[int] | None = None) -> EntryPlan:
    """Choose the entry loops of a function (see the module docstring); none in a function of
    fewer than :data:`MIN_BODY` instructions. ``at``: ascending indices of ``body`` holding every
    construct, ``end`` and branch (others may be among them), when the caller has them: only
    those are looked at (the big functions this plans hold most of a module's instructions)."""
    if len(body) < MIN_BODY:
        return EntryPlan({}, frozenset())
    parent: dict[int, int] = {}  # construct -> the construct it is directly inside (-1: the function)
    loop_parent: dict[int, int] = {}  # live loop -> the nearest loop around it (-1: none)
    continues: dict[int, list[int]] = {}  # loop -> the branches to its header
    open_: list[int] = []
    for i in range(len(body)) if at is None else at:
        ins = body[i]
        op = ins.op
        if op in (0x0C, 0x0D, 0x0E):
            depths = {ins.imm} if op != 0x0E else {*ins.imm[0], ins.imm[1]}
            for d in depths:
                if d < len(open_) and body[open_[-1 - d]].op == 0x03:
                    continues.setdefault(open_[-1 - d], []).append(i)
        elif op in (0x02, 0x03, 0x04):
            parent[i] = open_[-1] if open_ else -1
            if op == 0x03 and not unreachable[i]:
                outer = next((c for c in reversed(open_) if body[c].op == 0x03), -1)
                loop_parent[i] = outer
            open_.append(i)
        elif op == 0x0B and open_ and end_of.get(open_[-1]) == i:
            open_.pop()
    inner: dict[int, list[int]] = {}
    for loop, outer in loop_parent.items():
        inner.setdefault(outer, []).append(loop)
    ordinal: dict[int, int] = {}
    targets: set[int] = set()

    def _restarts_from_inside(loop: int) -> bool:
        """A big top-level loop most of which is an inner loop that branches back to its header
        (CPython's eval loop nest). Its frame would transfer only when the outer header comes
        round, which a long-lived eval frame rarely sees, and meanwhile run the copy, which
        measured slower with transfers than without: CPython n-body after 1 / 2 restores 1.057x /
        1.121x, against 0.965x / 0.953x with the copy as it was (docs/instrument.md). Such a
        function keeps the copy without transfers."""
        size = end_of[loop] - loop
        return size >= MIN_ENCLOSING and any(
            2 * (end_of[child] - child) >= size and any(child < b < end_of[child] for b in continues.get(loop, ()))
            for child in inner.get(loop, []))

    def choose(loop: int) -> None:
        ordinal[loop] = 0
        size = end_of[loop] - loop
        chosen = [child for child in inner.get(loop, [])
                  if size >= MIN_ENCLOSING and 2 * (end_of[child] - child) >= size
                  and not any(child < b < end_of[child] for b in continues.get(loop, ()))]
        for child in chosen:
            choose(child)
        if not chosen:
            targets.add(loop)

    for loop in inner.get(-1, []):
        if _restarts_from_inside(loop):
            return EntryPlan({}, frozenset())  # CPython's eval loop nest: see _restarts_from_inside
        choose(loop)
    for k, loop in enumerate(sorted(ordinal)):
        ordinal[loop] = k
    return EntryPlan(ordinal, frozenset(targets))


# --- the entry function ----------------------------------------------------------------------------
def entry_body(rw: _FunctionRewriter) -> Code:
    """The entry function's code inside its function label, but for its loads
    (:func:`with_entry_loads`, once every local is known): the normal body's walk to the entry
    loops (:func:`emit_body`). Emitted after the normal body, with the same sites, and before the
    copy, which must know every site."""
    from wasmig.instrument.unwind import _UNWIND_LABEL

    rw._start_code()
    rw.labels = [False, False, True]  # $done, $unwind, the function's label
    rw.unwind_label = _UNWIND_LABEL
    emit_body(rw, rw.entries)
    return rw._start_code()


def with_entry_loads(rw: _FunctionRewriter, rest: Code) -> Code:
    """The entry function's loads (:func:`record_loads`), then ``rest``. (The rewind is over:
    ``$state`` is 0 when the copy transfers.)"""
    loads = record_loads(rw)
    rw.out.extend(loads)
    rw.out.extend(rest)
    return rw._start_code()


def record_loads(rw: _FunctionRewriter) -> Code:
    """Every local and spill local from the transfer record at ``RECORDS_BASE`` (only the copy of
    this function writes one there before a transfer), ``$site`` = the entry ordinal and
    ``$skip`` set, as new code (``rw.out`` is new code after it)."""
    from wasmig.instrument.unwind import _LOAD, RECORDS_BASE

    rw._start_code()
    emit = rw.emit
    scratch = rw.scratch
    for j, t in enumerate(rw.local_types):
        if j in scratch:
            continue
        op, align = _LOAD[t]
        emit(0x41, 0)
        emit(op, rw.ctl_memarg(align, RECORDS_BASE + 8 + 8 * j))
        if j in rw.wrap_now:  # a widened parameter, in the normal body (wasmig.instrument.widen)
            if j in rw.shadow:
                emit(0x22, rw.shadow[j])  # local.tee: its shadow too
            emit(0xAD)  # i64.extend_i32_u
        emit(0x21, j)
    emit(0x41, 0)
    emit(0x28, rw.ctl_memarg(2, RECORDS_BASE))
    emit(0x21, rw.site_local)
    emit(0x41, 1)
    emit(0x21, rw.skip_local)
    return rw._start_code()


def emit_body(rw: _FunctionRewriter, plan: EntryPlan) -> None:
    """The normal body of a function with entry loops (its top level holds them all)."""
    _level(rw, plan, 0, len(rw.func.body) - 1, [])


def _level(rw: _FunctionRewriter, plan: EntryPlan, start: int, end: int, ctl: list[_Ctl]) -> None:
    """body[start:end], one construct level: guarded segments and the constructs that hold entry
    loops; a level without any is emitted as the normal body always has it."""
    if plan.ordinals_in(start, end) is None:
        rw._emit_range(start, end, ctl)
        return
    body, end_of, unreachable = rw.func.body, rw.end_of, rw.unreachable
    seg = -1  # start of the open segment
    i = start
    while i < end:
        op = body[i].op
        if unreachable[i] or op in (0x00, 0x0C, 0x0E, 0x0F):
            # an unconditional branch: the rest of this level is dead code, and no skipping
            # frame gets here (its entry loop would be dead too)
            _segment(rw, seg, i, ctl)
            rw._emit_range(i, end, ctl)
            return
        if op in (0x02, 0x03, 0x04):
            if plan.ordinals_in(i, end_of[i]) is not None:
                _segment(rw, seg, i, ctl)
                seg = -1
                _construct(rw, plan, i, ctl)
            elif seg < 0:
                seg = i
            i = end_of[i] + 1
            continue
        if seg < 0:
            seg = i
        i += 1
    _segment(rw, seg, end, ctl)


def _segment(rw: _FunctionRewriter, start: int, end: int, ctl: list[_Ctl]) -> None:
    """body[start:end] (whole constructs, no entry loop) run only when not skipping."""
    if start < 0 or start >= end:
        return
    base = ctl[-1].base if ctl else 0
    params = rw.known_types(rw.stack_before[start][base:])
    results = rw.known_types(rw.stack_before[end][base:])
    rw.emit(0x20, rw.skip_local)
    rw.emit(0x45)  # i32.eqz
    rw.open(0x04, rw.p.block_type(params, results), False)
    rw._emit_range(start, end, ctl)
    rw.emit(0x05)
    rw.drop(len(params))
    rw.zeros(results)
    rw.close()


def _construct(rw: _FunctionRewriter, plan: EntryPlan, i: int, ctl: list[_Ctl]) -> None:
    """A block/loop/if holding an entry loop: skipped whole (zeros for its results) when skipping
    to an entry loop outside it, else entered (an ``if`` taking the arm that holds the loop)."""
    from wasmig.instrument.unwind import _Ctl

    body = rw.func.body
    ins = body[i]
    op = ins.op
    nparams, result_types, _ = rw.p.block_arity(ins.imm)
    stack = list(rw.stack_before[i])
    entry_height = len(stack) - nparams - (1 if op == 0x04 else 0)
    base = ctl[-1].base if ctl else 0
    buried: list[tuple[int, str]] = []
    if entry_height > base:
        buried = rw._spill_buried(stack, base, entry_height, guarded=True)
    rng = plan.ordinals_in(i, rw.end_of[i])
    assert rng is not None
    rw.skip_guard(rng, rw.known_types(stack[entry_height:]), list(result_types))
    level = _Ctl("block", i, entry_height, [], tuple(result_types))
    if op == 0x03:
        _entry_loop(rw, plan, i, level, ctl)
    else:
        else_at = rw.else_of.get(i)
        end = rw.end_of[i]
        if op == 0x04:  # skipping: the condition is "the entry loop is in the then arm"
            rw.skipping_condition(plan.ordinals_in(i + 1, else_at if else_at is not None else end))
        rw.open(op, ins.imm, True)
        ctl.append(level)
        _level(rw, plan, i + 1, else_at if else_at is not None else end, ctl)
        if else_at is not None:
            rw.emit(0x05)
            _level(rw, plan, else_at + 1, end, ctl)
        ctl.pop()
        rw.close()
    rw.close()
    level.buried = buried
    rw._push_back_buried(level)


def _entry_loop(rw: _FunctionRewriter, plan: EntryPlan, i: int, level: _Ctl, ctl: list[_Ctl]) -> None:
    """An entry loop, entered: if it is the one skipped to, its parameters come back from their
    spill locals and skipping ends, just before the loop (whose header poll then runs: the step
    the copy did not count); a target loop is then emitted as the normal body has it, an
    enclosing one with its header poll and the segments before its entry loops guarded."""
    from wasmig.instrument.unwind import _Ctl

    body = rw.func.body
    ins = body[i]
    height = level.base
    params = rw.check_types(rw.stack_before[i][height:], "a loop parameter")
    rw.emit(0x20, rw.skip_local)
    rw.emit(0x20, rw.site_local)
    rw.emit(0x41, plan.ordinal[i])
    rw.emit(0x46)
    rw.emit(0x71)  # i32.and
    rw.open(0x04, rw.p.block_type(params, params), False)
    rw.drop(len(params))
    rw.push_from(params, height)
    rw.emit(0x41, 0)
    rw.emit(0x21, rw.skip_local)
    rw.close()
    if i in plan.targets:
        rw._emit_range(i, rw.end_of[i] + 1, [*ctl, level])  # level: its values are in spill locals
        return
    _, result_types, _ = rw.p.block_arity(ins.imm)
    rw.open(0x03, ins.imm, True)
    inside = _Ctl("loop", i, height, [], tuple(result_types))
    ctl.append(inside)
    site = rw.add_site((i, "loop"), "loop", ins.offset, rw.check_types(rw.stack_before[i], "a value at a loop"))
    if not rw._every_iteration_calls(i):
        rw.emit(0x20, rw.skip_local)
        rw.emit(0x45)
        rw.open(0x04, rw.p.block_type(params, params), False)
        rw.stable_point(site, params, height)
        rw.close()
    _level(rw, plan, i + 1, rw.end_of[i], ctl)
    ctl.pop()
    rw.close()


# --- the rewind copy -------------------------------------------------------------------------------
def transfer_branch(rw: _FunctionRewriter, plan: EntryPlan, i: int) -> None:
    """In the copy, at entry loop ``i``'s header (its parameters on the stack, not skipping): the
    parameters into their spill locals, ``$site`` = the loop's ordinal, to the copy's one
    transfer tail (:func:`transfer_tail`)."""
    nparams, _, _ = rw.p.block_arity(rw.func.body[i].imm)
    height = len(rw.stack_before[i]) - nparams
    params = rw.check_types(rw.stack_before[i][height:], "a loop parameter")
    rw.pop_into(params, height)
    rw.emit(0x41, plan.ordinal[i])
    rw.emit(0x21, rw.site_local)
    rw.emit(0x0C, len(rw.labels) - 1 - TRANSFER_LABEL)


def transfer_tail(rw: _FunctionRewriter, stored: set[int] | None = None) -> None:
    """After the copy's ``$transfer`` block: the frame as one record at ``RECORDS_BASE`` (the
    rewind is over, so the control memory's records are free) and a tail call of the function's
    entry function, which takes the record (:func:`with_entry_loads`) -- or, for a function with
    an entry arm (:mod:`wasmig.instrument.entry_arm`), ``$state = 2`` and a tail call of the
    function itself, with dummy arguments. ``stored``: only these locals (the arm's own transfer,
    :func:`wasmig.instrument.entry_arm._reentered`: those live at the loop's header; storing every
    local kept each live across the dispatch loop, whose exits reach the tail)."""
    from wasmig.instrument.unwind import RECORDS_BASE, STATE_REWINDING

    rw.emit(0x41, 0)
    rw.emit(0x20, rw.site_local)
    rw.emit(0x36, rw.ctl_memarg(2, RECORDS_BASE))
    scratch = rw.scratch
    for j in range(len(rw.local_types)):
        if j in scratch or (stored is not None and j not in stored):
            continue
        op, align = rw.slot_store_op(j)
        rw.emit(0x41, 0)
        rw.emit(0x20, j)
        rw.emit(op, rw.ctl_memarg(align, RECORDS_BASE + 8 + 8 * j))
    if rw.chain is not None:
        rw.emit(0x41, STATE_REWINDING)
        rw.emit(0x24, rw.p.globals_base)
        rw.zeros(rw.call_params())  # its type in the run module (wasmig.instrument.widen)
        rw.emit(0x12, rw.func_idx)  # return_call
    else:
        rw.emit(0x12, rw.entry_func)
