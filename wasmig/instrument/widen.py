"""Widening stack-passed i32 parameters to i64 (docs/widening.md; issue 15 item 5).

Why: on x86-64 Cranelift passes a wasm function's first four integer parameters in registers (after
the callee's and the caller's VM contexts) and the rest on the stack, where the caller stores an
i32 with a 32-bit store and the callee loads the slot with 64 bits (``gen_load_stack`` in
``cranelift/codegen/src/isa/x64/abi.rs``: "we always load a full 64 bits"). A load wider than the
store it reads is not forwarded from the store buffer: it waits for the store to retire, a stall on
every such call (``benchmarks/stack_args.py micro``: 6.7 ns a call against 2.5 ns with i64
parameters). The pass therefore gives each such parameter the type i64 in the run module:

- the widened function's normal body wraps the parameter at each ``local.get`` and extends it
  (``i64.extend_i32_u``) before each ``local.set``/``local.tee`` (the *wrap form*); its record
  slots keep the canonical i32 (records, the site map and snapshots do not change), and its rewind
  copy and entry function, which take no parameters, keep it an i32 local;
- each call of it extends the arguments (:func:`extend_args`, three shapes).

The upper 32 bits of a widened parameter are zero (every caller extends unsigned, every write
extends unsigned), and nothing reads them anyway: every read wraps them away.
"""

from __future__ import annotations

from itertools import accumulate
from operator import attrgetter
from typing import TYPE_CHECKING

from wasmig.binary.encoder import encode_each, encoded_instr
from wasmig.binary.ir import FuncType
from wasmig.instrument.emit import OriginalCode, origin_tag

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from wasmig.binary.ir import Instr
    from wasmig.binary.ir import Module as IRModule
    from wasmig.instrument.emit import Code
    from wasmig.instrument.unwind import _FunctionRewriter

#: the integer parameters that travel in registers: x86-64 SysV has six (rdi, rsi, rdx, rcx, r8,
#: r9), the two VM contexts take the first two (Cranelift's ``get_intreg_for_arg`` gives ``Tail``,
#: wasm's convention, the SysV registers; an older one gave ten: re-run ``stack_args.py micro``
#: after a wasmtime upgrade). aarch64 passes eight (six parameters), where widening positions 4-5
#: costs a free ``ireduce`` and a ``mov w, w`` a call. Fixed, not the host's: the pass's output
#: must not depend on the host (its cache key is the module and PASS_VERSION).
REGISTER_INTS = 4
#: which functions are widened, by size (instructions): those of fewer than MAX_BODY and those of
#: MIN_BIG or more. Every function widened costs QuickJS's run module 13.8 KB (2.006x plain code,
#: over issue 18's 2.0x bound): each cold arm with a widened parameter live reads it with a wrap
#: (``JS_CallInternal`` alone 6.4 KB). Session 10 widened those below 2,000 (1.996x): no gain on
#: QuickJS, a 4.5% loss on CPython. The gain is in the biggest (``JS_CallInternal``, entered for
#: every JS call), so session 11 widens only functions of 5,000 or more, with shadows
#: (:data:`SHADOW_BODY`): 1.996x, QuickJS's guest 3.4-3.8% faster than without (docs/widening.md).
MAX_BODY = 0
MIN_BIG = 5000
#: a widened function of this many instructions or more keeps a *shadow* i32 local per widened
#: parameter, equal to the parameter wrapped (set at entry and at each write of it), which its cold
#: arms' compact saves read instead of the parameter and a wrap: a byte less a read, and a big
#: function's cold arms read its parameters thousands of times (docs/widening.md section 2's
#: hybrid); its original reads stay wrapped, so the hot code is the wrap form's
SHADOW_BODY = 5000
#: ... but only a parameter written this many times or fewer: each write also sets the shadow (two
#: bytes, a tee four), and compilers reuse a dead parameter as a scratch local (QuickJS's
#: ``JS_CallInternal`` writes ``flags`` 1,314 times, ``argc`` and ``argv`` once)
SHADOW_WRITES = 8
_GET, _SET, _TEE = 0x20, 0x21, 0x22
_CALL, _RETURN_CALL, _REF_FUNC = 0x10, 0x12, 0xD2
WRAP, EXTEND_U = 0xA7, 0xAD
WRAP_CODE, EXTEND_CODE = bytes((WRAP,)), bytes((EXTEND_U,))
_OP = attrgetter("op")
_NAMING = frozenset((_REF_FUNC, _RETURN_CALL))


def wide_params(ft: FuncType) -> tuple[int, ...]:
    """The positions of ``ft``'s i32 parameters passed on the stack: integer position (i32 and
    i64 counted; floats travel in xmm registers and are loaded at their own width)
    :data:`REGISTER_INTS` or more. An i64 there is loaded at the width it was stored: no stall."""
    ints = [i for i, t in enumerate(ft.params) if t in ("i32", "i64")]
    return tuple(i for i in ints[REGISTER_INTS:] if ft.params[i] == "i32")


def spared(ir: IRModule) -> set[int]:
    """The functions whose type must stay: exported (the host calls them), the start function, any
    in an element segment or taken by ``ref.func`` (in a body, an element expression or a global's
    initializer: ``call_indirect`` reaches them with the original type), and any target of a
    ``return_call`` (copied inside runs by the pass, which extends the arguments of ``call`` only)."""
    out = {e.index for e in ir.exports if e.kind == "func"}
    if ir.start is not None:
        out.add(ir.start)
    exprs = [x for el in ir.elems for x in el.init] + [g.init for g in ir.globals]
    out.update(ins.imm for expr in exprs for ins in expr if ins.op == _REF_FUNC)
    for f in ir.funcs:
        if not _NAMING.isdisjoint(map(_OP, f.body)):  # in C: most bodies have neither
            out.update(ins.imm for ins in f.body if ins.op in (_REF_FUNC, _RETURN_CALL))
    return out


def widen_plan(ir: IRModule) -> dict[int, tuple[int, ...]]:
    """Function index -> its widened parameter positions, for the original module's defined
    functions of fewer than :data:`MAX_BODY` or :data:`MIN_BIG` or more instructions that are not
    :func:`spared` (imports keep their types, and the pass's own functions -- its savers take 9 and
    5 i32 parameters, all called from cold arms: widened, QuickJS's run module was 2.396x plain
    code -- are not in ``ir``)."""
    n = ir.num_imported_funcs()
    keep = spared(ir)
    plan = {}
    for k, f in enumerate(ir.funcs):
        wide = wide_params(ir.types[f.type_idx])
        if wide and not MAX_BODY <= len(f.body) < MIN_BIG and n + k not in keep:
            plan[n + k] = wide
    return plan


def shadowed(body: Sequence[Instr], wide: Sequence[int]) -> list[int]:
    """The parameters of ``wide`` that get a shadow local (:data:`SHADOW_BODY`,
    :data:`SHADOW_WRITES`), ascending."""
    if not wide or len(body) < SHADOW_BODY:  # every unwidened function: no scan of its body
        return []
    writes = dict.fromkeys(wide, 0)
    for ins in body:
        if ins.op in (_SET, _TEE) and ins.imm in writes:
            writes[ins.imm] += 1
    return [j for j in wide if writes[j] <= SHADOW_WRITES]


def widened_type(ft: FuncType, wide: Sequence[int]) -> FuncType:
    """``ft`` with its parameters at ``wide`` i64."""
    return FuncType(tuple("i64" if i in wide else t for i, t in enumerate(ft.params)), ft.results)


class WidenedCode(OriginalCode):
    """A widened function's original instructions as its normal body has them: ``local.get p``
    then ``i32.wrap_i64``, ``i64.extend_i32_u`` then ``local.set p`` (``local.tee p``, then a
    wrap) for each widened parameter p; indexed by original instruction, as :class:`OriginalCode`
    (a run copied is a slice). The added instructions are the pass's (origin tag 0). A parameter
    with a shadow q (``shadow[p]``, :data:`SHADOW_BODY`) is written through it: ``local.tee q``
    first (and a tee's value is then ``local.get q``, not a wrap)."""

    __slots__ = ()

    def __init__(self, body: Sequence[Instr], wide: Sequence[int], shadow: dict[int, int]) -> None:  # noqa: D107
        encoded = encode_each(body)
        tags = [origin_tag(ins.offset) for ins in body]
        for k, ins in enumerate(body):
            if ins.op in (_GET, _SET, _TEE) and ins.imm in wide:
                q = shadow.get(ins.imm)
                if ins.op == _GET:
                    encoded[k] += WRAP_CODE
                    tags[k] += b"\x00"
                elif q is not None:  # tee q, extend, set p (, get q)
                    tee = ins.op == _TEE
                    encoded[k] = (encoded_instr(_TEE, q) + EXTEND_CODE + encoded_instr(_SET, ins.imm)
                                  + (encoded_instr(_GET, q) if tee else b""))
                    tags[k] = b"\x00\x00" + tags[k] + (b"\x00" if tee else b"")
                else:
                    encoded[k] = EXTEND_CODE + encoded[k] + (WRAP_CODE if ins.op == _TEE else b"")
                    tags[k] = b"\x00" + tags[k] + (b"\x00" if ins.op == _TEE else b"")
        self.data = b"".join(encoded)
        self.pos = [0, *accumulate(map(len, encoded))]
        self.tags = b"".join(tags)
        self.tag_pos = [0, *accumulate(map(len, tags))]


def extend_args(rw: _FunctionRewriter, i: int, wide: tuple[int, ...], run_start: int,
                copy: Callable[[Code, int, int], None]) -> None:
    """Before call ``i`` of a widened callee (its widened positions ``wide``): the plain run
    ``body[run_start:i]`` (``run_start == i``: none, the arguments are on the stack already), its
    i32 arguments at ``wide`` extended to i64, in one of two shapes:

    1. in place (:func:`extension_points`): ``i64.extend_i32_u`` at the point of the run where each
       widened argument is the top of the stack for the last time (1 byte each; the last
       parameter: just before the call);
    2. otherwise the arguments above the lowest widened one go to temporaries (the widened ones
       extended) and come back.
    """
    body = rw.func.body
    params = rw.p.func_types[body[i].imm].params
    n, lo = len(params), wide[0]
    emit = rw.emit
    points = extension_points(rw.stack_before, i, n, wide, run_start)
    if points is not None:
        at = run_start
        for q in points:
            if q > at:
                copy(rw.out, at, q)
            emit(EXTEND_U)
            at = q
        if i > at:
            copy(rw.out, at, i)
        return
    if i > run_start:
        copy(rw.out, run_start, i)
    types = ["i64" if k in wide else params[k] for k in range(lo, n)]
    for k in range(n - 1, lo - 1, -1):
        if k in wide:
            emit(EXTEND_U)
        emit(_SET, rw.temp(types[k - lo], k - lo))
    for k in range(lo, n):
        emit(_GET, rw.temp(types[k - lo], k - lo))


def extension_points(stack_before: Sequence[Sequence[object]], i: int, n: int, wide: Sequence[int],
                     run_start: int) -> list[int] | None:
    """Where, in the straight-line run ``body[run_start:i]`` before call ``i`` (of ``n``
    parameters), each argument at ``wide`` can be extended in place: ascending points q (before
    instruction q; q = i: before the call), or None when one of them has none in the run.

    The argument at stack height h: the last point q <= i where the stack holds h + 1 values or
    fewer. It holds exactly h + 1 there, the argument on top, and the instructions from q on never
    reach down to it: each pushes at most one value (calls and constructs end a run), and the
    stack stays above h + 1 after each, so each pops only values above the argument."""
    base = len(stack_before[i]) - n
    out = []
    q = i
    for k in reversed(wide):
        top = base + k + 1
        while q >= run_start and len(stack_before[q]) > top:
            q -= 1
        if q < run_start:
            return None
        out.append(q)
        q -= 1  # a lower argument is on top at an earlier point
    return out[::-1]
