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
    runs it as the normal body has it (the module docstring) -- or, when nothing in the next loop
    of the chain branches to its header and no value is on the stack on the way, re-entered
    (:func:`_reentered`)."""
    from wasmig.instrument.unwind import _Ctl

    if _reenterable(rw, chain, i):
        _reentered(rw, chain, i, level, ctl)
        return
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


def _reenterable(rw: _FunctionRewriter, chain: list[int], i: int) -> bool:
    """Whether enclosing loop ``i`` can be left out of the arm (:func:`_reentered`): no branch to
    its header from inside the next loop of the chain (CPython's eval loops have them: they begin
    again while the interpreter runs, and would then transfer at every such branch), and an
    empty operand stack at every construct on the path from it to the target (so the guarded
    code before each leaves nothing for the path to take, and no value is buried)."""
    body, end_of = rw.func.body, rw.end_of
    inner = chain[chain.index(i) + 1]
    opens: list[int] = []  # the constructs open inside loop i
    on_path = [i]
    for k in range(i + 1, end_of[i]):
        op = body[k].op
        if op in (0x02, 0x03, 0x04):
            opens.append(k)
            if k <= chain[-1] <= end_of[k]:
                on_path.append(k)
        elif op == 0x0B:
            opens.pop()
        elif op in (0x0C, 0x0D, 0x0E) and inner < k < end_of[inner]:
            depths = [*body[k].imm[0], body[k].imm[1]] if op == 0x0E else [body[k].imm]
            if len(opens) in depths:  # the depth of loop i's label here
                return False
    return all(not rw.stack_before[k] for k in on_path)


def _reentered(rw: _FunctionRewriter, chain: list[int], i: int, level: _Ctl, ctl: list[_Ctl]) -> None:
    """Enclosing loop ``i`` (no parameters, nothing beneath it) held once, not twice: its body
    from the path on, where the code before the next loop of the chain runs only on a transfer
    to this loop's header (``$site`` is its ordinal: ``$skip`` cleared, its header poll, which
    the copy did not run, then every guarded segment); a branch to its header (QuickJS: a caught
    exception restarts the dispatch) ends in the copy's transfer tail -- every local to the
    record, ``$state = 2``, a tail call of the function itself -- whose arm enters this loop's
    header that way. The dispatch loop is then in the arm once, outside any loop of the arm,
    as in the two-copy shape (QuickJS's run module 2.17x -> 2.05x plain)."""
    from wasmig.instrument.transfer import transfer_tail
    from wasmig.instrument.unwind import _Ctl

    p = rw.p
    results = list(level.result_types)
    ordinal = rw.entries.ordinal[i]
    rw.open(0x02, p.block_type([], results), False)  # $end
    rw.open(0x02, None, True)  # $again: the loop's label
    rw.emit(0x20, rw.site_local)
    rw.emit(0x41, ordinal)
    rw.emit(0x46)
    rw.open(0x04, None, False)  # the transfer is to this loop's header
    rw.emit(0x41, 0)
    rw.emit(0x21, rw.skip_local)
    ins = rw.func.body[i]
    site = rw.add_site((i, "loop"), "loop", ins.offset, [])
    if not rw._every_iteration_calls(i) and not rw._counted(i):
        rw.stable_point(site, [], level.base)
    rw.close()
    _guarded_path(rw, chain, i + 1, rw.end_of[i], [*ctl, _Ctl("loop", i, level.base, [], tuple(results))])
    rw.emit(0x0C, 1)  # the body fell through: the loop's results, out of $end
    rw.close()
    rw.emit(0x41, ordinal)  # a branch to the loop's header: a transfer to it
    rw.emit(0x21, rw.site_local)
    bits = rw.live[i]  # dead at the header: reloaded with whatever the record holds, never read
    transfer_tail(rw, {j for j in range(rw.num_locals) if bits >> j & 1})
    rw.close()


def _guarded_path(rw: _FunctionRewriter, chain: list[int], start: int, end: int, ctl: list[_Ctl]) -> None:
    """:func:`_path`, with the code before the construct on the path run when ``$skip`` is clear
    (:func:`wasmig.instrument.transfer._segment`); the target then clears ``$skip``: its own
    header poll runs either way, in normal form."""
    from wasmig.instrument.transfer import _segment

    body, end_of, target = rw.func.body, rw.end_of, chain[-1]
    i = start
    while not (body[i].op in (0x02, 0x03, 0x04) and i <= target <= end_of[i]):
        i = end_of[i] + 1 if body[i].op in (0x02, 0x03, 0x04) else i + 1
    _segment(rw, start, i, ctl)
    if i == target:
        rw.emit(0x41, 0)
        rw.emit(0x21, rw.skip_local)
        _construct(rw, chain, i, ctl)
    elif body[i].op == 0x03:
        _construct(rw, chain, i, ctl)  # an inner enclosing loop: entered as its transfer has it
    else:
        from wasmig.instrument.unwind import _Ctl

        ins = body[i]
        results = list(rw.p.block_arity(ins.imm)[1])
        else_at = rw.else_of.get(i)
        lo, hi = i + 1, else_at if else_at is not None else end_of[i]
        if else_at is not None and target > else_at:
            lo, hi = else_at + 1, end_of[i]
        rw.open(0x02, rw.p.block_type([], results), True, ins.offset)
        _guarded_path(rw, chain, lo, hi, [*ctl, _Ctl("block", i, 0, [], tuple(results))])
        rw.close(body[end_of[i]].offset)
    rw._emit_range(end_of[i] + 1, end, ctl)
