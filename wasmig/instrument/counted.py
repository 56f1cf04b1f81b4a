"""Counted loops: innermost loops whose trip count the code itself bounds by constants, so that the
fast variant needs no poll in them (docs/instrument.md, "Normal execution").

A poll must come within a bounded time of a request. A loop without calls or inner loops that
runs at most ``T`` iterations of ``n`` instructions per entry is bounded by ``T * n``; the
enclosing code's own polls (its loop header, or the post-call poll of the call that entered the
function) then come within a bounded time too. LLVM's loops over arrays of a size known at compile
time (PolyBench's) have exactly that shape::

    i32.const C  local.set $k          ;; straight-line before the loop
    loop                               ;; no parameters, no results
      ...                              ;; no write of $k, no other branch back to the loop
      local.get $k  i32.const S  i32.add  local.tee $k  [i32.const E  cmp]  br_if 0
    end

(without ``cmp``: the loop goes on while ``$k != 0``). Such a loop then has no poll; a small
one keeps its unrolled copies, which make some kernels faster than plain.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasmig.binary.ir import Instr

#: a loop is left without a poll only if one entry runs at most this many of its instructions
#: (trips x body length): ~65,000 instructions take well under the 1 ms a stop may take
MAX_INSTRUCTIONS = 1 << 16

_I32_CONST, _LOCAL_GET, _LOCAL_SET, _LOCAL_TEE, _I32_ADD, _BR_IF = 0x41, 0x20, 0x21, 0x22, 0x6A, 0x0D
_NE, _BR = 0x47, 0x0C
_I32_SUB, _I32_ROTR, _I32_LT_U = 0x6B, 0x78, 0x49
#: the comparisons a counted loop's test may use: op -> (signed, goes on while k < E / k <= E /
#: k > E / k >= E)
_ORDERED = {0x48: (True, "lt"), 0x49: (False, "lt"), 0x4A: (True, "gt"), 0x4B: (False, "gt"),
            0x4C: (True, "le"), 0x4D: (False, "le"), 0x4E: (True, "ge"), 0x4F: (False, "ge")}
#: constructs and branches: a write of $k before the loop counts only on the straight-line path
#: to it (a block's start is on that path; anything else is not scanned past)
_STOP_SCAN = frozenset((0x00, 0x03, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F))


def counted_trips(body: list[Instr], start: int, end: int) -> int | None:
    """The most iterations loop ``body[start]`` (its ``end`` at ``body[end]``) runs per entry,
    when the shape above bounds it; else None. The caller checks that the loop holds no call and
    no loop."""
    if body[start].imm is not None or end - start < 6:
        return None
    tail = body[end - 1]
    if tail.op != _BR_IF or tail.imm != 0:
        return None
    test = body[end - 2]
    if test.op == _LOCAL_TEE:  # br_if on $k itself: goes on while $k != 0
        inc, cmp, bound = end - 5, _NE, 0
    elif test.op == _NE or test.op in _ORDERED:
        if body[end - 3].op != _I32_CONST or body[end - 4].op != _LOCAL_TEE:
            return None
        inc, cmp, bound = end - 7, test.op, body[end - 3].imm
    else:
        return None
    get, step, add, tee = body[inc : inc + 4]
    k = tee.imm
    if (get.op, step.op, add.op, tee.op) != (_LOCAL_GET, _I32_CONST, _I32_ADD, _LOCAL_TEE) or get.imm != k:
        return None
    if not _no_other_write_or_back_branch(body, start, inc, k):
        return None
    first = _constant_before(body, start, k)
    if first is None:
        return None
    trips = _trips(first, step.imm, cmp, bound)
    if trips is None or trips * (end - start) > MAX_INSTRUCTIONS:
        return None
    return trips


def _no_other_write_or_back_branch(body: list[Instr], start: int, tail: int, k: int) -> bool:
    """Whether ``body[start + 1 : tail]`` neither writes local ``k`` nor branches back to the loop
    (any branch whose target is the loop's label, at any nesting)."""
    depth = 0  # constructs open inside the loop's body
    for ins in body[start + 1 : tail]:
        op = ins.op
        if op in (0x02, 0x03, 0x04):
            depth += 1
        elif op == 0x0B:
            depth -= 1
        elif op in (_LOCAL_SET, _LOCAL_TEE) and ins.imm == k:
            return False
        elif op in (0x0C, _BR_IF) and ins.imm == depth:
            return False
        elif op == 0x0E and depth in (*ins.imm[0], ins.imm[1]):
            return False
    return True


def _constant_before(body: list[Instr], start: int, k: int) -> int | None:
    """The constant local ``k`` holds when the loop at ``start`` is entered: set by ``i32.const C
    local.set k`` on the straight-line path just before it, with no write of ``k`` in between."""
    p = start - 1
    while p > 0:
        ins = body[p]
        if ins.op in _STOP_SCAN:
            return None
        if ins.op in (_LOCAL_SET, _LOCAL_TEE) and ins.imm == k:
            before = body[p - 1]
            return before.imm if ins.op == _LOCAL_SET and before.op == _I32_CONST else None
        p -= 1
    return None


def _trips(first: int, step: int, cmp: int, bound: int) -> int | None:
    """The iterations of a loop whose counter starts at ``first``, adds ``step`` (i32, wrapping)
    at the end of each iteration and goes on while ``new counter <cmp> bound``; None when the
    counter would wrap around before the test fails (then the count is not worth bounding)."""
    mask = 0xFFFFFFFF
    step = _signed(step & mask)
    if step == 0:
        return None
    if cmp == _NE:  # the first t >= 1 with first + t * step == bound (mod 2**32)
        gap = (bound - first) & mask if step > 0 else (first - bound) & mask
        return gap // abs(step) if gap and gap % abs(step) == 0 else None
    signed, rel = _ORDERED[cmp]
    lo, hi = (-(1 << 31), (1 << 31) - 1) if signed else (0, mask)
    first, bound = (_signed(first & mask), _signed(bound & mask)) if signed else (first & mask, bound & mask)
    if rel in ("lt", "le"):  # counting up: goes on while below (or at) the bound
        if step < 0:
            return None
        limit = bound if rel == "lt" else bound + 1  # stops once first + t * step >= limit
        trips = max(1, -(-(limit - first) // step))
    else:  # counting down
        if step > 0:
            return None
        limit = bound if rel == "gt" else bound - 1  # stops once first + t * step <= limit
        trips = max(1, -(-(first - limit) // -step))
    last = first + trips * step  # the counter's extreme value: it must not wrap
    return trips if lo <= last <= hi else None


def _signed(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


@dataclass(frozen=True)
class EntryBound:
    """A loop whose trip count the values of two locals at its entry fix: its counter ``k`` steps
    by ``step`` (a power of two, either sign) at the end of each iteration, and it goes on while
    ``k != bound``, where ``bound`` is a constant (``(i32.const, C)``) or a local the loop does not
    write (``(local.get, j)``). LLVM's loops over a length held in a local have this shape
    (lz77's match loop, bounded by ``min(n - i, 258)``; a qsort's element swap over ``width``)::

        loop                                   ;; no parameters
          ...                                  ;; no write of $k or $j, no other branch back
          local.get $j  local.get $k  i32.const S  i32.add  local.tee $k  i32.ne  br_if 0
        end

    (or ``local.tee $k  local.get $j  i32.ne``, or ``local.tee $k  br_if 0``: goes on while
    ``$k != 0``; the ``br_if 0`` may be followed by a ``br`` out of the loop). Nothing bounds the
    count when the pass runs, but a test at the loop's entry can (:func:`entry_guard`): the fast
    variant then runs unpolled unrolled copies of the loop when the count is at most ``limit``,
    and polled ones otherwise (only where it unrolls the loop: in a function too big for that,
    qsort's, neither a second, unpolled copy nor a poll skipped on the test's verdict made it
    faster).
    """

    k: int
    step: int
    bound: tuple[int, int]
    limit: int  # the most iterations the unpolled copy may run per entry


def entry_bound(body: list[Instr], start: int, end: int) -> EntryBound | None:
    """The :class:`EntryBound` of loop ``body[start]`` (its ``end`` at ``body[end]``), or None.
    The caller checks that the loop holds no call and no loop."""
    if not (body[start].imm is None or isinstance(body[start].imm, str)) or end - start < 6:
        return None
    if body[end - 1].op == _BR and body[end - 1].imm > 0:  # `br_if 0  br $out`: leaves after the test
        end -= 1
    if body[end - 1].op != _BR_IF or body[end - 1].imm != 0:
        return None
    test = body[end - 2]
    if test.op == _LOCAL_TEE:  # br_if on $k itself
        inc, bound = end - 5, (_I32_CONST, 0)
    elif test.op == _NE and body[end - 3].op == _LOCAL_TEE:  # <bound>  local.get $k ... local.tee $k  i32.ne
        inc, bound = end - 6, (body[end - 7].op, body[end - 7].imm)
    elif test.op == _NE and body[end - 4].op == _LOCAL_TEE:  # local.get $k ... local.tee $k  <bound>  i32.ne
        inc, bound = end - 7, (body[end - 3].op, body[end - 3].imm)
    else:
        return None
    if inc <= start or bound[0] not in (_I32_CONST, _LOCAL_GET):
        return None
    get, step, add, tee = body[inc : inc + 4]
    k = tee.imm
    if (get.op, step.op, add.op, tee.op) != (_LOCAL_GET, _I32_CONST, _I32_ADD, _LOCAL_TEE) or get.imm != k:
        return None
    s = _signed(step.imm & 0xFFFFFFFF)
    if s == 0 or abs(s) & (abs(s) - 1) or abs(s) > _MAX_STEP:
        return None
    if bound == (_LOCAL_GET, k) or not _no_other_write_or_back_branch(body, start, inc, k):
        return None
    if bound[0] == _LOCAL_GET and _writes(body, start, end, bound[1]):
        return None
    return EntryBound(k, s, bound, MAX_INSTRUCTIONS // (end + 1 - start))


#: the largest counter step :func:`entry_guard` handles (its test rotates the step's bits away)
_MAX_STEP = 256


def _writes(body: list[Instr], start: int, end: int, j: int) -> bool:
    return any(ins.op in (_LOCAL_SET, _LOCAL_TEE) and ins.imm == j for ins in body[start + 1 : end])


def entry_guard(eb: EntryBound) -> list[tuple[int, object]]:
    """Instructions that push 1 when the loop of ``eb``, entered now, runs at most ``eb.limit``
    iterations, else 0.

    With ``d = bound - k`` (``k - bound`` counting down) modulo 2**32 and ``|step| = 2**p``, the
    loop runs ``d / 2**p`` iterations when ``d`` is a non-zero multiple of ``2**p``, and about
    2**(32 - p) (it wraps) otherwise. ``rotr(d - 2**p, p)`` is that count minus one in the first
    case and at least 2**(32 - p) - 1 in the others (``d = 0`` turns to all ones; a remainder's
    bits rotate to the top), so one unsigned compare with the limit tells them apart."""
    bound = [eb.bound]
    counter = [(_LOCAL_GET, eb.k)]
    size = abs(eb.step)
    p = size.bit_length() - 1
    code = (bound + counter if eb.step > 0 else counter + bound) + [(_I32_SUB, None)]
    code += [(_I32_CONST, size), (_I32_SUB, None)]
    if p:
        code += [(_I32_CONST, p), (_I32_ROTR, None)]
    return code + [(_I32_CONST, eb.limit), (_I32_LT_U, None)]
