"""WebAssembly 2.0 (no SIMD) validation, plus the per-instruction operand-stack types later passes need.

The instruction checker follows the spec appendix's *validation algorithm*: a stack of control
frames, an operand stack whose entries may be ``None`` (the algorithm's ``Unknown``) once code
becomes stack-polymorphic, and the ``unreachable`` flag per frame. It records, for every
instruction, the whole operand stack *before* it (all enclosing blocks concatenated), because the
instrumentation pass and the interpreter's branch compiler need exact label heights: at a
``block``/``loop``/``if`` at index ``i`` the label sits at ``len(stack_before[i])`` minus the block's
param count (minus one more for the ``if`` condition).

Module-level rules follow the spec's *Modules* validation section, with the wasm 2.0 restrictions
(one memory at most unless ``features`` has ``"multi-memory"``, constant expressions may only
``global.get`` imported immutable globals, ``ref.func`` in code only on *declared* functions,
``memory.init``/``data.drop`` need a data count section). With the multi-memory feature any number
of memories (imported and defined) is allowed, and every memory instruction, data segment and
memory export must name one that exists (``unknown memory N``); everything else, alignment
included, is checked as in wasm 2.0. Error messages start with the spec testsuite's wording
(``type mismatch``, ``unknown global 3``, ...) so a spec-test runner can compare prefixes; the
rest of the message says where.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from wasmig.binary import features as _features
from wasmig.binary import opcodes as ops
from wasmig.binary.ir import (
    REFTYPES,
    VALTYPES,
    Expr,
    Function,
    FuncType,
    GlobalType,
    Limits,
    MemType,
    Module,
    TableType,
)
from wasmig.errors import ValidationError

__all__ = ["FunctionInfo", "ModuleInfo", "validate_module", "validate_function"]

#: a memory may have at most 2**16 pages of 64 KiB (4 GiB) in wasm 2.0
MAX_PAGES = 65536
#: table sizes are u32
MAX_TABLE_SIZE = 2**32 - 1

# --- opcodes the checker handles by name (the table in opcodes.py is the single source) ------
UNREACHABLE, NOP, BLOCK, LOOP, IF, ELSE, END = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0B
BR, BR_IF, BR_TABLE, RETURN, CALL, CALL_INDIRECT = 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11
REF_NULL, REF_IS_NULL, REF_FUNC = 0xD0, 0xD1, 0xD2
DROP, SELECT, SELECT_T = 0x1A, 0x1B, 0x1C
LOCAL_GET, LOCAL_SET, LOCAL_TEE, GLOBAL_GET, GLOBAL_SET = 0x20, 0x21, 0x22, 0x23, 0x24
ATOMIC_FENCE = 0xFE03
TABLE_GET, TABLE_SET = 0x25, 0x26
MEMORY_SIZE, MEMORY_GROW = 0x3F, 0x40
I32_CONST, I64_CONST, F32_CONST, F64_CONST = 0x41, 0x42, 0x43, 0x44
MEMORY_INIT, DATA_DROP, MEMORY_COPY, MEMORY_FILL = 0xFC08, 0xFC09, 0xFC0A, 0xFC0B
TABLE_INIT, ELEM_DROP, TABLE_COPY, TABLE_GROW, TABLE_SIZE, TABLE_FILL = 0xFC0C, 0xFC0D, 0xFC0E, 0xFC0F, 0xFC10, 0xFC11

_I32 = "i32"
_NUMTYPES = frozenset({"i32", "i64", "f32", "f64"})

#: opcodes whose typing is exactly their fixed ``SIG`` (no immediate or context to check). Memory and
#: table instructions also have a ``SIG`` but need their index/alignment checked first.
_NEEDS_CONTEXT = (
    set(ops.LOADS) | set(ops.STORES) | set(ops.THREADS_OPS)
    | {MEMORY_SIZE, MEMORY_GROW, MEMORY_INIT, DATA_DROP, MEMORY_COPY, MEMORY_FILL}
    | {TABLE_INIT, ELEM_DROP, TABLE_COPY, TABLE_SIZE}
)
#: op -> (params, results, params == results); the flag lets the checker skip rebuilding the
#: stack snapshot for ``nop`` and same-type unary operators (``i32.clz``, ``f64.neg``, ...)
_PLAIN: dict[int, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    op: (p, r, p == r) for op, (p, r) in ops.SIG.items() if op not in _NEEDS_CONTEXT
}



#: ``stack_before`` costs O(instructions x stack depth); real compilers keep stacks shallow, so a
#: function that would record more entries than this is refused instead of exhausting memory
MAX_RECORDED_STACK_ENTRIES = 20_000_000

@dataclass
class FunctionInfo:
    """What validation learned about one defined function.

    ``stack_before[i]`` is the operand stack before ``body[i]``, bottom to top, for the whole
    function. In stack-polymorphic code (after ``unreachable``/``br``/``br_table``/``return`` in the
    same block) it holds only what is actually known and entries may be ``None`` ("any type").
    Consecutive instructions that leave the stack unchanged share one tuple object; otherwise each
    entry is a fresh tuple, so the cost is O(instructions x stack depth) -- linear for real code,
    whose stacks are shallow.

    ``unreachable[i]`` is true when ``body[i]`` can never execute: it sits in stack-polymorphic code,
    or inside a block that was itself entered from such code (there the recorded stack is typed
    but its height below the block is not meaningful). For an ``end``/``else`` the flag is about
    falling through into it; branches to the block's label are not counted.
    """

    stack_before: list[tuple[str | None, ...]]
    unreachable: list[bool]
    max_stack: int
    local_types: tuple[str, ...]
    #: locals live before each instruction (bit j = local j), computed on first use by
    #: :func:`wasmig.instrument.liveness.live_locals_of`
    live: list[int] | None = field(default=None, repr=False, compare=False)


@dataclass
class ModuleInfo:
    """Per-function results, one entry per ``module.funcs`` entry (defined functions only)."""

    functions: list[FunctionInfo]


class _Invalid(Exception):
    """Raised inside the function checker; the caller adds function/instruction context."""


class _Frame:
    """A control frame of the validation algorithm (plus ``dead`` for unreachable bookkeeping)."""

    __slots__ = ("op", "start", "end", "height", "unreachable", "dead")

    def __init__(self, op: int, start: tuple[str, ...], end: tuple[str, ...], height: int, dead: bool) -> None:
        self.op = op
        self.start = start
        self.end = end
        self.height = height
        self.unreachable = False
        #: entered from dead code: everything in it is dead even if not stack-polymorphic
        self.dead = dead

    def label_types(self) -> tuple[str, ...]:
        return self.start if self.op == LOOP else self.end


@dataclass
class _Context:
    """The spec's validation context C for function bodies."""

    types: list[FuncType]
    funcs: list[FuncType]  # type of every function in the function index space
    tables: list[TableType]
    mems: int
    globals: list[GlobalType]
    elems: list[str]  # reference type of every element segment
    data_count: int | None  # None: no data count section, memory.init/data.drop are invalid
    ndatas: int  # number of data segments, only for error messages
    refs: frozenset[int]  # C.refs: functions ref.func may name inside code
    multi_memory: bool = False  # memargs may name a memory (the multi-memory proposal)
    atomic_loads: bool = False  # the threads proposal's atomic loads
    threads: bool = False  # the whole threads proposal (every 0xFE instruction)


# --- small helpers -----------------------------------------------------------------------------


def _fmt(types: tuple[str | None, ...] | list[str | None]) -> str:
    return "[" + " ".join(t or "?" for t in types) + "]"


def _mismatch(expect: str | None, actual: str | None) -> _Invalid:
    return _Invalid(f"type mismatch: expected {expect or 'a value'}, found {actual}")


def _pop(vals: list[str | None], frame: _Frame, expect: str | None) -> str | None:
    """Pop one operand, ``expect`` None meaning any type; returns the actual type (None = unknown)."""
    if len(vals) == frame.height:
        if frame.unreachable:
            return None
        raise _Invalid(f"type mismatch: expected {expect or 'a value'} but the stack is empty")
    actual = vals.pop()
    if actual != expect and actual is not None and expect is not None:
        raise _mismatch(expect, actual)
    return actual


def _pop_vals(vals: list[str | None], frame: _Frame, types: tuple[str, ...]) -> list[str | None]:
    """Pop ``types`` (top of stack = last) and return what was actually there, bottom to top."""
    n = len(types)
    if n == 0:
        return []
    if len(vals) - n >= frame.height:  # all present: check in one go
        tail = vals[-n:]
        for e, a in zip(types, tail, strict=True):
            if a != e and a is not None:
                raise _Invalid(f"type mismatch: expected {_fmt(types)}, found {_fmt(tail)}")
        del vals[-n:]
        return tail
    out: list[str | None] = [None] * n
    for k in range(n - 1, -1, -1):
        out[k] = _pop(vals, frame, types[k])
    return out


def _block_type(ctx: _Context, bt: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resolve a block type immediate to ``(params, results)``."""
    if bt is None:
        return (), ()
    if isinstance(bt, str):
        if bt not in VALTYPES:
            raise _Invalid(f"invalid block type {bt!r}")
        return (), (bt,)
    if isinstance(bt, int) and not isinstance(bt, bool):
        if not 0 <= bt < len(ctx.types):
            raise _Invalid(f"unknown type {bt}")
        ft = ctx.types[bt]
        return ft.params, ft.results
    raise _Invalid(f"invalid block type {bt!r}")


def _index(imm: object, count: int, what: str) -> int:
    """Check an index immediate against its index space; ``what`` is the spec noun (``local``, ...)."""
    if not isinstance(imm, int) or isinstance(imm, bool) or not 0 <= imm < count:
        raise _Invalid(f"unknown {what} {imm}")
    return imm


def _pair(imm: object, what: str) -> tuple:
    """Unpack a two-part immediate; hand-built IR may get the shape wrong, which must not crash."""
    if not isinstance(imm, tuple | list) or len(imm) != 2:
        raise _Invalid(f"malformed {what} immediate {imm!r}")
    return imm[0], imm[1]


def _data_segment(ctx: _Context, idx: object) -> None:
    """``memory.init``/``data.drop``: the binary format only knows the segment count up front when
    a data count section is present, so without one these instructions are rejected."""
    if ctx.data_count is None:
        _index(idx, ctx.ndatas, "data segment")  # the more precise message when it is out of range anyway
        raise _Invalid(f"data count section required (for data segment {idx})")
    _index(idx, ctx.data_count, "data segment")


def _memory(ctx: _Context, idx: object) -> None:
    _index(idx, ctx.mems, "memory")


def _table(ctx: _Context, idx: object) -> TableType:
    return ctx.tables[_index(idx, len(ctx.tables), "table")]


def _label(ctrls: list[_Frame], n: object) -> _Frame:
    if not isinstance(n, int) or not 0 <= n < len(ctrls):
        raise _Invalid(f"unknown label {n}")
    return ctrls[-1 - n]


def _mem_access(ctx: _Context, op: int, imm: object) -> None:
    """A load/store: the memory must exist and the alignment must not exceed the access width."""
    if ctx.multi_memory and isinstance(imm, tuple | list) and len(imm) == 3:
        align, _offset, mem = imm
        _memory(ctx, mem)
    else:
        align, _offset = _pair(imm, "memarg")
        if ctx.mems == 0:
            raise _Invalid("unknown memory 0")
    if op in ops.ATOMIC_WIDTH:
        if not isinstance(align, int) or align < 0 or (1 << min(align, 64)) != ops.ATOMIC_WIDTH[op]:
            raise _Invalid("alignment must be equal to natural (an atomic access)")
        return
    width = ops.LOADS[op][1] if op in ops.LOADS else ops.STORES[op][1]
    if not isinstance(align, int) or align < 0 or (1 << min(align, 64)) > width:
        raise _Invalid("alignment must not be larger than natural")


# --- function bodies -------------------------------------------------------------------------


def _check_function(ctx: _Context, func: Function) -> FunctionInfo:
    """Run the validation algorithm over one body; raises ``_Invalid`` with ``.args[1]`` = index."""
    if not 0 <= func.type_idx < len(ctx.types):
        raise _Invalid(f"unknown type {func.type_idx}", -1)
    ftype = ctx.types[func.type_idx]
    for _count, t in func.locals:
        if t not in VALTYPES:
            raise _Invalid(f"invalid local type {t!r}", -1)
    local_types = ftype.params + tuple(func.local_types())
    nlocals = len(local_types)
    globals_ = ctx.globals
    funcs = ctx.funcs
    plain = _PLAIN

    vals: list[str | None] = []
    ctrls: list[_Frame] = [_Frame(BLOCK, (), ftype.results, 0, False)]
    stack_before: list[tuple[str | None, ...]] = []
    unreachable: list[bool] = []
    snap: tuple[str | None, ...] = ()
    dirty = False
    max_stack = 0
    recorded = 0
    i = -1
    try:
        for i, ins in enumerate(func.body):  # noqa: B007 -- i is read by the except clause
            if not ctrls:
                raise _Invalid("operators remaining after the end of the function")
            frame = ctrls[-1]
            if dirty:
                snap = tuple(vals)
                if len(snap) > max_stack:
                    max_stack = len(snap)
                recorded += len(snap)
                if recorded > MAX_RECORDED_STACK_ENTRIES:
                    raise _Invalid("implementation limit exceeded: operand stacks too deep for this function size "
                                   f"(more than {MAX_RECORDED_STACK_ENTRIES} recorded stack entries)")
                dirty = False
            stack_before.append(snap)
            unreachable.append(frame.unreachable or frame.dead)
            op = ins.op
            imm = ins.imm

            sig = plain.get(op)
            if sig is not None:  # numeric and other fixed-signature instructions: the hot path
                params, results, same = sig
                n = len(params)
                if same and n <= 1:
                    if n == 0:
                        continue  # nop
                    if len(vals) > frame.height and vals[-1] == params[0]:
                        continue  # unary t -> t with a known t: stack unchanged, snapshot reusable
                dirty = True
                if n:
                    if len(vals) - n >= frame.height:
                        for k in range(-n, 0):
                            a = vals[k]
                            if a != params[k] and a is not None:
                                raise _Invalid(f"type mismatch: expected {_fmt(params)}, found {_fmt(vals[-n:])}")
                        del vals[-n:]
                    else:
                        _pop_vals(vals, frame, params)
                vals.extend(results)
                continue

            dirty = True
            if op == LOCAL_GET:
                vals.append(local_types[_index(imm, nlocals, "local")])
            elif op == LOCAL_SET:
                _pop(vals, frame, local_types[_index(imm, nlocals, "local")])
            elif op == LOCAL_TEE:
                t = local_types[_index(imm, nlocals, "local")]
                if len(vals) > frame.height and vals[-1] == t:
                    dirty = False
                else:
                    _pop(vals, frame, t)
                    vals.append(t)
            elif op == GLOBAL_GET:
                vals.append(globals_[_index(imm, len(globals_), "global")].type)
            elif op == GLOBAL_SET:
                g = globals_[_index(imm, len(globals_), "global")]
                if not g.mutable:
                    raise _Invalid(f"global is immutable: global {imm}")
                _pop(vals, frame, g.type)
            elif op in ops.LOADS or op in ops.STORES or op in ops.THREADS_OPS:
                if op in ops.THREADS_OPS and not ctx.threads and not (op in ops.ATOMIC_LOADS and ctx.atomic_loads):
                    needs = "atomic-loads or threads" if op in ops.ATOMIC_LOADS else "threads"
                    raise _Invalid(f"illegal opcode {op:#x} ({ops.name(op)} needs the {needs} feature)")
                if op != ATOMIC_FENCE:
                    _mem_access(ctx, op, imm)
                params, results = ops.SIG[op]
                _pop_vals(vals, frame, params)
                vals.extend(results)
            elif op == BLOCK or op == LOOP or op == IF:
                params, results = _block_type(ctx, imm)
                if op == IF:
                    _pop(vals, frame, _I32)
                _pop_vals(vals, frame, params)
                ctrls.append(_Frame(op, params, results, len(vals), frame.unreachable or frame.dead))
                vals.extend(params)
            elif op == END:
                _pop_vals(vals, frame, frame.end)
                if len(vals) != frame.height:
                    raise _Invalid(
                        f"type mismatch: block leaves extra values {_fmt(vals[frame.height:])} "
                        f"beyond its results {_fmt(frame.end)}"
                    )
                if frame.op == IF and frame.start != frame.end:
                    raise _Invalid(
                        f"type mismatch: `if` without `else` must have equal params and results, "
                        f"got {_fmt(frame.start)} -> {_fmt(frame.end)}"
                    )
                ctrls.pop()
                vals.extend(frame.end)
            elif op == ELSE:
                if frame.op != IF:
                    raise _Invalid("else without matching if")
                _pop_vals(vals, frame, frame.end)
                if len(vals) != frame.height:
                    raise _Invalid(f"type mismatch: then branch leaves extra values {_fmt(vals[frame.height:])}")
                ctrls[-1] = _Frame(ELSE, frame.start, frame.end, frame.height, frame.dead)
                vals.extend(frame.start)
            elif op == BR:
                _pop_vals(vals, frame, _label(ctrls, imm).label_types())
                del vals[frame.height:]
                frame.unreachable = True
            elif op == BR_IF:
                types = _label(ctrls, imm).label_types()
                _pop(vals, frame, _I32)
                _pop_vals(vals, frame, types)
                vals.extend(types)
            elif op == BR_TABLE:
                labels, default = _pair(imm, "br_table")
                if not isinstance(labels, tuple | list):
                    raise _Invalid(f"malformed br_table immediate {imm!r}")
                _pop(vals, frame, _I32)
                default_types = _label(ctrls, default).label_types()
                arity = len(default_types)
                for n in labels:
                    types = _label(ctrls, n).label_types()
                    if len(types) != arity:
                        raise _Invalid(
                            f"type mismatch: br_table label {n} has arity {len(types)}, default label has {arity}"
                        )
                    vals.extend(_pop_vals(vals, frame, types))
                _pop_vals(vals, frame, default_types)
                del vals[frame.height:]
                frame.unreachable = True
            elif op == RETURN:
                _pop_vals(vals, frame, ctrls[0].end)
                del vals[frame.height:]
                frame.unreachable = True
            elif op == UNREACHABLE:
                del vals[frame.height:]
                frame.unreachable = True
            elif op == CALL:
                ft = funcs[_index(imm, len(funcs), "function")]
                _pop_vals(vals, frame, ft.params)
                vals.extend(ft.results)
            elif op == CALL_INDIRECT:
                type_idx, table_idx = _pair(imm, "call_indirect")
                if _table(ctx, table_idx).elem != "funcref":
                    raise _Invalid(f"type mismatch: call_indirect through table {table_idx} which is not funcref")
                ft = ctx.types[_index(type_idx, len(ctx.types), "type")]
                _pop(vals, frame, _I32)
                _pop_vals(vals, frame, ft.params)
                vals.extend(ft.results)
            elif op == DROP:
                _pop(vals, frame, None)
            elif op == SELECT:
                _pop(vals, frame, _I32)
                t1 = _pop(vals, frame, None)
                t2 = _pop(vals, frame, None)
                if (t1 is not None and t1 not in _NUMTYPES) or (t2 is not None and t2 not in _NUMTYPES):
                    raise _Invalid(f"type mismatch: select without a type needs numeric operands, found {t2}, {t1}")
                if t1 != t2 and t1 is not None and t2 is not None:
                    raise _Invalid(f"type mismatch: select operands differ: {t2} and {t1}")
                vals.append(t1 if t2 is None else t2)
            elif op == SELECT_T:
                if not isinstance(imm, tuple | list) or len(imm) != 1:
                    raise _Invalid("invalid result arity: typed select needs exactly one type")
                t = imm[0]
                if t not in VALTYPES:
                    raise _Invalid(f"invalid value type {t!r}")
                _pop(vals, frame, _I32)
                _pop(vals, frame, t)
                _pop(vals, frame, t)
                vals.append(t)
            elif op == REF_NULL:
                if imm not in REFTYPES:
                    raise _Invalid(f"invalid reference type {imm!r}")
                vals.append(imm)
            elif op == REF_IS_NULL:
                t = _pop(vals, frame, None)
                if t is not None and t not in REFTYPES:
                    raise _Invalid(f"type mismatch: ref.is_null needs a reference, found {t}")
                vals.append(_I32)
            elif op == REF_FUNC:
                _index(imm, len(funcs), "function")
                if imm not in ctx.refs:
                    raise _Invalid(f"undeclared function reference {imm}")
                vals.append("funcref")
            elif op == TABLE_GET:
                tt = _table(ctx, imm)
                _pop(vals, frame, _I32)
                vals.append(tt.elem)
            elif op == TABLE_SET:
                tt = _table(ctx, imm)
                _pop(vals, frame, tt.elem)
                _pop(vals, frame, _I32)
            elif op == TABLE_SIZE:
                _table(ctx, imm)
                vals.append(_I32)
            elif op == TABLE_GROW:
                tt = _table(ctx, imm)
                _pop(vals, frame, _I32)
                _pop(vals, frame, tt.elem)
                vals.append(_I32)
            elif op == TABLE_FILL:
                tt = _table(ctx, imm)
                _pop(vals, frame, _I32)
                _pop(vals, frame, tt.elem)
                _pop(vals, frame, _I32)
            elif op == TABLE_COPY:
                dst, src = _pair(imm, "table.copy")
                if _table(ctx, dst).elem != _table(ctx, src).elem:
                    raise _Invalid(f"type mismatch: table.copy between tables {dst} and {src} of different types")
                _pop_vals(vals, frame, (_I32, _I32, _I32))
            elif op == TABLE_INIT:
                elem_idx, table_idx = _pair(imm, "table.init")
                tt = _table(ctx, table_idx)
                et = ctx.elems[_index(elem_idx, len(ctx.elems), "elem segment")]
                if tt.elem != et:
                    raise _Invalid(f"type mismatch: table.init of a {et} segment into a {tt.elem} table")
                _pop_vals(vals, frame, (_I32, _I32, _I32))
            elif op == ELEM_DROP:
                _index(imm, len(ctx.elems), "elem segment")
                dirty = False
            elif op == MEMORY_SIZE:
                _memory(ctx, imm)
                vals.append(_I32)
            elif op == MEMORY_GROW:
                _memory(ctx, imm)
                _pop(vals, frame, _I32)
                vals.append(_I32)
            elif op == MEMORY_FILL:
                _memory(ctx, imm)
                _pop_vals(vals, frame, (_I32, _I32, _I32))
            elif op == MEMORY_COPY:
                dst, src = _pair(imm, "memory.copy")
                _memory(ctx, dst)
                _memory(ctx, src)
                _pop_vals(vals, frame, (_I32, _I32, _I32))
            elif op == MEMORY_INIT:
                data_idx, mem_idx = _pair(imm, "memory.init")
                _memory(ctx, mem_idx)
                _data_segment(ctx, data_idx)
                _pop_vals(vals, frame, (_I32, _I32, _I32))
            elif op == DATA_DROP:
                _data_segment(ctx, imm)
                dirty = False
            elif op in ops.NAMES:
                raise _Invalid("instruction not supported by the validator")
            else:
                raise _Invalid("illegal opcode")
    except _Invalid as e:
        raise _Invalid(e.args[0], i) from None
    if ctrls:
        raise _Invalid("function body must end with `end`", len(func.body) - 1 if func.body else -1)
    max_stack = max(max_stack, len(vals))
    return FunctionInfo(stack_before, unreachable, max_stack, local_types)


# --- module level ----------------------------------------------------------------------------


def _fail(message: str) -> ValidationError:
    return ValidationError(message)


def _check_memory_type(mt: MemType, what: str) -> None:
    _check_limits(mt.limits, MAX_PAGES, what, "memory size must be at most 65536 pages (4GiB)")
    if mt.shared and mt.limits.max is None:  # the threads proposal: a shared memory never moves
        raise _fail(f"shared memory must have maximum ({what})")


def _check_limits(limits: Limits, bound: int, what: str, too_big: str) -> None:
    if limits.min > bound or (limits.max is not None and limits.max > bound):
        raise _fail(f"{too_big} ({what})")
    if limits.max is not None and limits.min > limits.max:
        raise _fail(f"size minimum must not be greater than maximum ({what})")


def _check_table_type(tt: object, what: str) -> TableType:
    if not isinstance(tt, TableType) or tt.elem not in REFTYPES:
        raise _fail(f"malformed table type {tt!r} ({what})")
    _check_limits(tt.limits, MAX_TABLE_SIZE, what, "table size must be at most 2^32-1")
    return tt


def _const_expr(
    expr: Expr | None,
    expected: str,
    globals_: list[GlobalType],
    nfuncs: int,
    what: str,
) -> None:
    """Check a constant expression of type ``[expected]``.

    ``globals_`` is the restricted context: only imported globals are visible to constant
    expressions in wasm 2.0, and they must be immutable to count as constant.
    """
    if not expr or expr[-1].op != END:
        raise _fail(f"type mismatch: {what} is not a terminated expression")
    stack: list[str] = []
    for ins in expr[:-1]:
        op = ins.op
        if op == I32_CONST:
            stack.append("i32")
        elif op == I64_CONST:
            stack.append("i64")
        elif op == F32_CONST:
            stack.append("f32")
        elif op == F64_CONST:
            stack.append("f64")
        elif op == REF_NULL:
            if ins.imm not in REFTYPES:
                raise _fail(f"malformed reference type {ins.imm!r} in {what}")
            stack.append(ins.imm)
        elif op == REF_FUNC:
            if not isinstance(ins.imm, int) or not 0 <= ins.imm < nfuncs:
                raise _fail(f"unknown function {ins.imm} (in {what})")
            stack.append("funcref")
        elif op == GLOBAL_GET:
            if not isinstance(ins.imm, int) or not 0 <= ins.imm < len(globals_):
                raise _fail(f"unknown global {ins.imm} (in {what}; only imported globals are visible)")
            g = globals_[ins.imm]
            if g.mutable:
                raise _fail(f"constant expression required: global.get of mutable global {ins.imm} in {what}")
            stack.append(g.type)
        else:
            raise _fail(f"constant expression required: {ops.name(op)} in {what}")
    if stack != [expected]:
        raise _fail(f"type mismatch: {what} must produce [{expected}], produces {_fmt(stack)}")


def _declared_refs(module: Module) -> frozenset[int]:
    """The spec's C.refs: function indices occurring in the module outside function bodies and
    the start function (globals, element segments, exports); ``ref.func`` in code may only name these.
    """
    refs: set[int] = set()
    exprs: list[Expr | None] = [g.init for g in module.globals]
    for e in module.elems:
        exprs.extend(e.init)
        exprs.append(e.offset)
    exprs.extend(d.offset for d in module.datas)
    for expr in exprs:
        for ins in expr or ():
            if ins.op == REF_FUNC and isinstance(ins.imm, int):
                refs.add(ins.imm)
    refs.update(exp.index for exp in module.exports if exp.kind == "func")
    return frozenset(refs)


def validate_module(module: Module, *, features: Iterable[str] = frozenset()) -> ModuleInfo:
    """Validate ``module`` per the WebAssembly 2.0 spec (without SIMD) and return per-function stack info.

    ``features`` names opt-in proposals (:mod:`wasmig.binary.features`): ``"multi-memory"`` and
    ``"atomic-loads"`` change validation. Raises :class:`ValidationError` naming the first
    violation found.
    """
    check = validate_declarations(module, features=features)
    return ModuleInfo([check(k) for k in range(len(module.funcs))])


def validate_declarations(module: Module, *, features: Iterable[str] = frozenset()) -> Callable[[int], FunctionInfo]:
    """The module-level half of :func:`validate_module` (types, imports, globals, segments,
    exports...): returns ``check(k)``, which validates defined function ``k``'s body and gives its
    :class:`FunctionInfo`. A pass over a big module checks and uses one function at a time and
    drops its stack info before the next, instead of holding every function's."""
    wanted = _features.check(features)
    multi_memory = _features.MULTI_MEMORY in wanted
    types = module.types
    for k, ft in enumerate(types):
        for t in (*ft.params, *ft.results):
            if t not in VALTYPES:
                raise _fail(f"malformed value type {t!r} in type {k}")

    funcs: list[FuncType] = []
    tables: list[TableType] = []
    mems = 0
    globals_: list[GlobalType] = []
    for k, imp in enumerate(module.imports):
        what = f"import {k} {imp.module!r}.{imp.name!r}"
        if imp.kind == "func":
            if not isinstance(imp.desc, int) or not 0 <= imp.desc < len(types):
                raise _fail(f"unknown type {imp.desc} ({what})")
            funcs.append(types[imp.desc])
        elif imp.kind == "table":
            tables.append(_check_table_type(imp.desc, what))
        elif imp.kind == "memory":
            if not isinstance(imp.desc, MemType):
                raise _fail(f"malformed memory type {imp.desc!r} ({what})")
            _check_memory_type(imp.desc, what)
            mems += 1
        elif imp.kind == "global":
            if not isinstance(imp.desc, GlobalType) or imp.desc.type not in VALTYPES:
                raise _fail(f"malformed global type {imp.desc!r} ({what})")
            globals_.append(imp.desc)
        else:
            raise _fail(f"malformed import kind {imp.kind!r} ({what})")
    num_imported_funcs = len(funcs)
    imported_globals = list(globals_)

    for k, f in enumerate(module.funcs):
        if not 0 <= f.type_idx < len(types):
            raise _fail(f"unknown type {f.type_idx} (function {num_imported_funcs + k})")
        funcs.append(types[f.type_idx])
    for k, tt in enumerate(module.tables):
        tables.append(_check_table_type(tt, f"table {k}"))
    for k, mt in enumerate(module.mems):
        _check_memory_type(mt, f"memory {k}")
        mems += 1
    if mems > 1 and not multi_memory:
        raise _fail("multiple memories")
    nfuncs = len(funcs)

    for k, g in enumerate(module.globals):
        gi = len(imported_globals) + k
        if g.type.type not in VALTYPES:
            raise _fail(f"malformed global type {g.type!r} (global {gi})")
        _const_expr(g.init, g.type.type, imported_globals, nfuncs, f"initializer of global {gi}")
        globals_.append(g.type)

    elem_types: list[str] = []
    for k, e in enumerate(module.elems):
        if e.type not in REFTYPES:
            raise _fail(f"malformed reference type {e.type!r} (elem segment {k})")
        for j, init in enumerate(e.init):
            _const_expr(init, e.type, imported_globals, nfuncs, f"element {j} of elem segment {k}")
        if e.mode == "active":
            if not 0 <= e.table < len(tables):
                raise _fail(f"unknown table {e.table} (elem segment {k})")
            if tables[e.table].elem != e.type:
                raise _fail(f"type mismatch: elem segment {k} of {e.type} targets a {tables[e.table].elem} table")
            _const_expr(e.offset, "i32", imported_globals, nfuncs, f"offset of elem segment {k}")
        elif e.mode not in ("passive", "declarative"):
            raise _fail(f"malformed elem segment mode {e.mode!r} (elem segment {k})")
        elem_types.append(e.type)

    for k, d in enumerate(module.datas):
        if d.mode == "active":
            if not 0 <= d.memory < mems:
                raise _fail(f"unknown memory {d.memory} (data segment {k})")
            _const_expr(d.offset, "i32", imported_globals, nfuncs, f"offset of data segment {k}")
        elif d.mode != "passive":
            raise _fail(f"malformed data segment mode {d.mode!r} (data segment {k})")
    if module.data_count is not None and module.data_count != len(module.datas):
        raise _fail(
            f"data count and data section have inconsistent lengths "
            f"(data count {module.data_count}, {len(module.datas)} segments)"
        )

    if module.start is not None:
        if not 0 <= module.start < nfuncs:
            raise _fail(f"unknown function {module.start} (start function)")
        ft = funcs[module.start]
        if ft.params or ft.results:
            raise _fail(f"start function must have type [] -> [], function {module.start} has {ft}")

    names: set[str] = set()
    spaces = {"func": nfuncs, "table": len(tables), "memory": mems, "global": len(globals_)}
    nouns = {"func": "function", "table": "table", "memory": "memory", "global": "global"}
    for exp in module.exports:
        if exp.name in names:
            raise _fail(f"duplicate export name {exp.name!r}")
        names.add(exp.name)
        if exp.kind not in spaces:
            raise _fail(f"malformed export kind {exp.kind!r} (export {exp.name!r})")
        if not 0 <= exp.index < spaces[exp.kind]:
            raise _fail(f"unknown {nouns[exp.kind]} {exp.index} (export {exp.name!r})")

    ctx = _Context(
        types=types,
        funcs=funcs,
        tables=tables,
        mems=mems,
        globals=globals_,
        elems=elem_types,
        data_count=module.data_count,
        ndatas=len(module.datas),
        refs=_declared_refs(module),
        multi_memory=multi_memory,
        atomic_loads=_features.ATOMIC_LOADS in wanted,
        threads=_features.THREADS in wanted,
    )

    def check(k: int) -> FunctionInfo:
        return _validate_function_in(ctx, module, k, module.funcs[k])

    return check


def _validate_function_in(ctx: _Context, module: Module, k: int, func: Function) -> FunctionInfo:
    """Check defined function ``k`` and turn an internal failure into a located ValidationError."""
    try:
        return _check_function(ctx, func)
    except _Invalid as e:
        message, i = e.args[0], e.args[1]
        fidx = len(ctx.funcs) - len(module.funcs) + k
        where = f"function {fidx} ({module.func_name(fidx)})"
        if 0 <= i < len(func.body):
            ins = func.body[i]
            where += f", instruction {i} `{ops.name(ins.op)}` at body offset {ins.offset:#x}"
        raise ValidationError(f"{message} [in {where}]") from None


def validate_function(module: Module, func_idx: int, *, features: Iterable[str] = frozenset()) -> FunctionInfo:
    """Validate only the body of defined function ``func_idx`` (in the function index space).

    Useful after a pass rewrote one function; module-level declarations are assumed valid (call
    :func:`validate_module` for the full check), except that several memories still need the
    ``"multi-memory"`` feature. ``features`` is as for :func:`validate_module`.
    """
    wanted = _features.check(features)
    k = func_idx - module.num_imported_funcs()
    if not 0 <= k < len(module.funcs):
        raise ValidationError(f"unknown function {func_idx}")
    context = _context_of(module, _features.MULTI_MEMORY in wanted, _features.ATOMIC_LOADS in wanted,
                          _features.THREADS in wanted)
    return _validate_function_in(context, module, k, module.funcs[k])


def _context_of(module: Module, multi_memory: bool = False, atomic_loads: bool = False,
                threads: bool = False) -> _Context:
    """Build C for ``module`` without re-checking its declarations (but the memory count)."""
    mems = len(module.all_mems())
    if mems > 1 and not multi_memory:
        raise ValidationError("multiple memories")
    return _Context(
        types=module.types,
        funcs=[module.types[t] for t in module.func_type_indices()],
        tables=module.all_tables(),
        mems=mems,
        globals=module.all_globals(),
        elems=[e.type for e in module.elems],
        data_count=module.data_count,
        ndatas=len(module.datas),
        refs=_declared_refs(module),
        multi_memory=multi_memory,
        atomic_loads=atomic_loads,
        threads=threads,
    )
