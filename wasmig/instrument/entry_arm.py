"""The entry arm: a transfer into a huge dispatch loop lands in code of its own, inside the function.

A transfer (:mod:`wasmig.instrument.transfer`) usually enters a function's *entry function* in the
rewind module: the normal body walked with skip guards to the entry loop. That shape costs a frame
that goes on running there: the entry function calls the run module's functions through imports and
reaches memory and globals through imports, and Cranelift compiles the dispatch loop worse behind
the guards' merges (QuickJS's n-body after one checkpoint: 1.18x the never-stopped run; with the
guards in the normal body, as before, every run paid 1.15-1.18x plain instead of 1.06-1.09x).

So a function with a huge loop nest L0 ⊃ L1 ⊃ .. ⊃ Lk (each loop at least half of the one
around it) whose innermost loop, the target, has at least :data:`MIN_TARGET` instructions (a
bytecode interpreter's dispatch loop: QuickJS's ``JS_CallInternal``, CPython's
``_PyEval_EvalFrameDefault``) has that chain as its only entry loops, and no entry function. Its normal body is::

    global.get $state  i32.const 2  i32.eq
    if (result R*)    the entry arm: every local from the record, then the path to the loop
    else              the entry poll, if any; the normal body as it always is
    end

and the copy's transfer tail-calls the function itself. The arm holds no guards: on each level of
the chain it emits only the construct on the path and what follows it, never what precedes it (the
record holds every local, and the values beneath each construct are in their spill locals, where
the copy put them). A block or an ``if`` on the path becomes a block holding the arm on the path;
the target is pushed its parameters and emitted as the normal body has it. An enclosing loop L
becomes::

    block $end (result of L)
      block $again (result params of L)      ;; L's label: a branch to L's header lands here
        if $site == L's ordinal: L's parameters, br $again
        the path into L's body, the rest of L's body   br $end
      end
      L as the normal body has it             ;; its parameters on the stack
    end

so the frame goes on in normal code after the first iteration of every loop of the chain. Both arms
have no edge into each other, so the normal arm compiles as a body without transfers; the price is
code: the arm is up to twice the function (the enclosing loops' tails, then the loops).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wasmig.instrument.transfer import EntryPlan

if TYPE_CHECKING:
    from wasmig.binary.ir import Instr
    from wasmig.instrument.emit import Code
    from wasmig.instrument.unwind import _Ctl, _FunctionRewriter

#: the smallest target loop that gets an entry arm (JS_CallInternal's dispatch loop: 20,120)
MIN_TARGET = 5000


def chain_of(plan: EntryPlan, body: list[Instr], end_of: dict[int, int], unreachable: list[bool]
             ) -> tuple[EntryPlan, list[int] | None]:
    """The plan to use and, for a function with an entry arm, its chain outermost first: the
    function's biggest loop and, in turn, the biggest loop inside the last when it is at least
    half of it; an entry arm when the innermost, the target, has at least :data:`MIN_TARGET`
    instructions. Those loops are then the only entry loops (QuickJS's ``JS_CallInternal``: its
    five small loops before the restart loop run in the copy in normal form, as in a small
    function), whether or not their inner loops branch to their headers (CPython's eval loop nest,
    which has no entry loops otherwise: such a branch in the arm goes to the loop in normal form)."""
    if len(body) < MIN_TARGET:
        return plan, None
    chain: list[int] = []
    loops = _loops_in(body, end_of, unreachable, 0, len(body))
    while loops:
        biggest = max(loops, key=lambda i: end_of[i] - i)
        if chain and 2 * (end_of[biggest] - biggest) < end_of[chain[-1]] - chain[-1]:
            break
        chain.append(biggest)
        loops = _loops_in(body, end_of, unreachable, biggest + 1, end_of[biggest])
    if not chain or end_of[chain[-1]] - chain[-1] < MIN_TARGET:
        return plan, None
    return EntryPlan({loop: k for k, loop in enumerate(chain)}, frozenset((chain[-1],))), chain


def _loops_in(body: list[Instr], end_of: dict[int, int], unreachable: list[bool], start: int, end: int
              ) -> list[int]:
    """The live loops of body[start:end] with no loop around them there."""
    out = []
    i = start
    while i < end:
        if body[i].op == 0x03:
            if not unreachable[i]:
                out.append(i)
            i = end_of[i] + 1
        else:
            i += 1
    return out


def arms(rw: _FunctionRewriter, chain: list[int]) -> Code:
    """The normal body of a function with an entry arm, up to the arm: the ``if`` of the module
    docstring (returned; the arm's loads go after it, :func:`with_arm_loads`); the arm and the
    normal arm go on in new code (``rw.out``)."""
    results = list(rw.ftype.results)
    rw.emit(0x23, rw.p.globals_base)
    rw.emit(0x41, 2)  # STATE_REWINDING: a transfer
    rw.emit(0x46)
    rw.open(0x04, rw.p.block_type([], results), False)
    head = rw._start_code()
    body = rw.func.body
    # the normal arm first: it makes the sites in body order, which the copy's skip tests need
    # (a construct's sites are a range of ids); the entry arm's are the same sites
    if rw.p.entry_polled(rw.func_idx):
        rw.stable_point(rw.entry_site, [], 0)
    rw._emit_range(0, len(body) - 1, [])
    normal = rw._start_code()
    _path(rw, chain, 0, len(body) - 1, [])
    rw.emit(0x05)
    rw.out.extend(normal)
    rw.close()
    return head


def with_arm_loads(rw: _FunctionRewriter, head: Code, rest: Code, loads: Code) -> Code:
    """``head``, the end of the rewind (``$state = 0``), ``loads`` (every local and ``$site``
    from the record), ``rest``."""
    from wasmig.instrument.unwind import STATE_RUNNING

    rw._start_code()
    rw.out.extend(head)
    rw.emit(0x41, STATE_RUNNING)
    rw.emit(0x24, rw.p.globals_base)
    rw.out.extend(loads)
    rw.out.extend(rest)
    return rw._start_code()


def _path(rw: _FunctionRewriter, chain: list[int], start: int, end: int, ctl: list[_Ctl]) -> None:
    """body[start:end], one construct level holding the target: the construct on the path to it,
    then the rest of the level as the normal body has it."""
    body, end_of, target = rw.func.body, rw.end_of, chain[-1]
    i = start
    while not (body[i].op in (0x02, 0x03, 0x04) and i <= target <= end_of[i]):
        i = end_of[i] + 1 if body[i].op in (0x02, 0x03, 0x04) else i + 1
    _construct(rw, chain, i, ctl)
    rw._emit_range(end_of[i] + 1, end, ctl)


def _construct(rw: _FunctionRewriter, chain: list[int], i: int, ctl: list[_Ctl]) -> None:
    """Construct ``i`` on the path, entered (see the module docstring); the values beneath it come
    back from their spill locals after it."""
    from wasmig.instrument.unwind import _Ctl

    ins = rw.func.body[i]
    op = ins.op
    nparams, result_types, _ = rw.p.block_arity(ins.imm)
    results = list(result_types)
    stack = list(rw.stack_before[i])
    height = len(stack) - nparams - (1 if op == 0x04 else 0)
    base = ctl[-1].base if ctl else 0
    buried = [(base + k, t) for k, t in enumerate(rw.check_types(stack[base:height], "a value beneath a block"))]
    level = _Ctl("block", i, height, buried, tuple(results))
    if op == 0x03:
        params = rw.check_types(stack[height:], "a loop parameter")
        if i == chain[-1]:  # the target
            rw.push_from(params, height)
            rw._emit_range(i, rw.end_of[i] + 1, [*ctl, level])
        else:
            _enclosing(rw, chain, i, params, level, ctl)
    else:
        end = rw.end_of[i]
        else_at = rw.else_of.get(i)
        start, stop = i + 1, else_at if else_at is not None else end
        if else_at is not None and chain[-1] > else_at:  # the target is in the else arm
            start, stop = else_at + 1, end
        rw.open(0x02, rw.p.block_type([], results), True, ins.offset)
        _path(rw, chain, start, stop, [*ctl, _Ctl("block", i, height, [], tuple(results))])
        rw.close(rw.func.body[end].offset)
    rw._push_back_buried(level)


def _enclosing(rw: _FunctionRewriter, chain: list[int], i: int, params: list[str], level: _Ctl,
               ctl: list[_Ctl]) -> None:
    """Enclosing loop ``i`` of the chain: its body from the path on, a branch to its header then
    runs it as the normal body has it (the module docstring)."""
    from wasmig.instrument.unwind import _Ctl

    p = rw.p
    results = list(level.result_types)
    rw.open(0x02, p.block_type([], results), False)  # $end
    rw.open(0x02, p.block_type([], params), True)  # $again: the loop's label
    rw.emit(0x20, rw.site_local)
    rw.emit(0x41, rw.entries.ordinal[i])
    rw.emit(0x46)
    rw.open(0x04, None, False)  # the transfer is to this loop's header
    rw.push_from(params, level.base)
    rw.emit(0x0C, 1)  # br $again
    rw.close()
    _path(rw, chain, i + 1, rw.end_of[i], [*ctl, _Ctl("loop", i, level.base, [], tuple(results))])
    rw.emit(0x0C, 1)  # the body fell through: the loop's results, out of $end
    rw.close()
    rw._emit_range(i, rw.end_of[i] + 1, [*ctl, _Ctl("block", i, level.base, [], tuple(results))])
    rw.close()
