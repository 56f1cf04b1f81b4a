"""Validation of function bodies: the spec appendix's *validation algorithm* over one function's
instructions (a stack of control frames, an operand stack whose entries may be ``None`` once code
is stack-polymorphic), recording the whole operand stack before every instruction
(:class:`FunctionInfo`). :mod:`wasmig.binary.validator` checks the module around it."""

from __future__ import annotations

from dataclasses import dataclass, field

from wasmig.binary import opcodes as ops
from wasmig.binary.ir import (
    REFTYPES,
    VALTYPES,
    Function,
    FuncType,
    GlobalType,
    TableType,
)

#: a memory may have at most 2**16 pages of 64 KiB (4 GiB) in wasm 2.0
MAX_PAGES = 65536
#: table sizes are u32
MAX_TABLE_SIZE = 2**32 - 1

# --- opcodes the checker handles by name (the table in opcodes.py is the single source) ------
UNREACHABLE, NOP, BLOCK, LOOP, IF, ELSE, END = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0B
BR, BR_IF, BR_TABLE, RETURN, CALL, CALL_INDIRECT, RETURN_CALL = 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12
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
#: loads, stores and the threads proposal's instructions: typed by their ``SIG`` once their
#: memory index, alignment and feature are checked (:func:`_memory_sig`)
_MEMORY_OPS = frozenset({*ops.LOADS, *ops.STORES, *ops.THREADS_OPS})



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


class Invalid(Exception):
    """Raised inside the function checker; the caller adds function/instruction context."""


class ControlFrame:
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
class CodeContext:
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
    tail_call: bool = False  # the tail-call proposal's return_call
    #: (opcode, memarg) of the loads and stores checked already -> their ``_PLAIN``-style
    #: signature: a module repeats a few thousand of them millions of times (:func:`_memory_sig`)
    memory_sigs: dict = field(default_factory=dict, repr=False, compare=False)


# --- small helpers -----------------------------------------------------------------------------


def fmt_types(types: tuple[str | None, ...] | list[str | None]) -> str:
    return "[" + " ".join(t or "?" for t in types) + "]"


def _mismatch(expect: str | None, actual: str | None) -> Invalid:
    return Invalid(f"type mismatch: expected {expect or 'a value'}, found {actual}")


def _pop(vals: list[str | None], frame: ControlFrame, expect: str | None) -> str | None:
    """Pop one operand, ``expect`` None meaning any type; returns the actual type (None = unknown)."""
    if len(vals) == frame.height:
        if frame.unreachable:
            return None
        raise Invalid(f"type mismatch: expected {expect or 'a value'} but the stack is empty")
    actual = vals.pop()
    if actual != expect and actual is not None and expect is not None:
        raise _mismatch(expect, actual)
    return actual


def _pop_vals(vals: list[str | None], frame: ControlFrame, types: tuple[str, ...]) -> list[str | None]:
    """Pop ``types`` (top of stack = last) and return what was actually there, bottom to top."""
    n = len(types)
    if n == 0:
        return []
    if len(vals) - n >= frame.height:  # all present: check in one go
        tail = vals[-n:]
        for e, a in zip(types, tail, strict=True):
            if a != e and a is not None:
                raise Invalid(f"type mismatch: expected {fmt_types(types)}, found {fmt_types(tail)}")
        del vals[-n:]
        return tail
    out: list[str | None] = [None] * n
    for k in range(n - 1, -1, -1):
        out[k] = _pop(vals, frame, types[k])
    return out


def _block_type(ctx: CodeContext, bt: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resolve a block type immediate to ``(params, results)``."""
    if bt is None:
        return (), ()
    if isinstance(bt, str):
        if bt not in VALTYPES:
            raise Invalid(f"invalid block type {bt!r}")
        return (), (bt,)
    if isinstance(bt, int) and not isinstance(bt, bool):
        if not 0 <= bt < len(ctx.types):
            raise Invalid(f"unknown type {bt}")
        ft = ctx.types[bt]
        return ft.params, ft.results
    raise Invalid(f"invalid block type {bt!r}")


def _index(imm: object, count: int, what: str) -> int:
    """Check an index immediate against its index space; ``what`` is the spec noun (``local``, ...)."""
    if not isinstance(imm, int) or isinstance(imm, bool) or not 0 <= imm < count:
        raise Invalid(f"unknown {what} {imm}")
    return imm


def _pair(imm: object, what: str) -> tuple:
    """Unpack a two-part immediate; hand-built IR may get the shape wrong, which must not crash."""
    if not isinstance(imm, tuple | list) or len(imm) != 2:
        raise Invalid(f"malformed {what} immediate {imm!r}")
    return imm[0], imm[1]


def _data_segment(ctx: CodeContext, idx: object) -> None:
    """``memory.init``/``data.drop``: the binary format only knows the segment count up front when
    a data count section is present, so without one these instructions are rejected."""
    if ctx.data_count is None:
        _index(idx, ctx.ndatas, "data segment")  # the more precise message when it is out of range anyway
        raise Invalid(f"data count section required (for data segment {idx})")
    _index(idx, ctx.data_count, "data segment")


def _memory(ctx: CodeContext, idx: object) -> None:
    _index(idx, ctx.mems, "memory")


def _table(ctx: CodeContext, idx: object) -> TableType:
    return ctx.tables[_index(idx, len(ctx.tables), "table")]


def _label(ctrls: list[ControlFrame], n: object) -> ControlFrame:
    if not isinstance(n, int) or not 0 <= n < len(ctrls):
        raise Invalid(f"unknown label {n}")
    return ctrls[-1 - n]


def _mem_access(ctx: CodeContext, op: int, imm: object) -> None:
    """A load/store: the memory must exist and the alignment must not exceed the access width."""
    if ctx.multi_memory and isinstance(imm, tuple | list) and len(imm) == 3:
        align, _offset, mem = imm
        _memory(ctx, mem)
    else:
        align, _offset = _pair(imm, "memarg")
        if ctx.mems == 0:
            raise Invalid("unknown memory 0")
    if op in ops.ATOMIC_WIDTH:
        if not isinstance(align, int) or align < 0 or (1 << min(align, 64)) != ops.ATOMIC_WIDTH[op]:
            raise Invalid("alignment must be equal to natural (an atomic access)")
        return
    width = ops.LOADS[op][1] if op in ops.LOADS else ops.STORES[op][1]
    if not isinstance(align, int) or align < 0 or (1 << min(align, 64)) > width:
        raise Invalid("alignment must not be larger than natural")


def _memory_sig(ctx: CodeContext, op: int, imm: object) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """A load's, store's or atomic instruction's signature, as ``_PLAIN`` has it, once its
    feature, memory and alignment are checked; remembered per ``(op, imm)`` in the context (the
    checks depend only on the context)."""
    if op in ops.THREADS_OPS and not ctx.threads and not (op in ops.ATOMIC_LOADS and ctx.atomic_loads):
        needs = "atomic-loads or threads" if op in ops.ATOMIC_LOADS else "threads"
        raise Invalid(f"illegal opcode {op:#x} ({ops.name(op)} needs the {needs} feature)")
    if op != ATOMIC_FENCE:
        _mem_access(ctx, op, imm)
    params, results = ops.SIG[op]
    sig = (params, results, params == results)
    try:
        ctx.memory_sigs[(op, imm)] = sig
    except TypeError:  # an unhashable immediate (hand-built IR): checked every time
        pass
    return sig


# --- function bodies -------------------------------------------------------------------------


def check_function(ctx: CodeContext, func: Function) -> FunctionInfo:
    """Run the validation algorithm over one body; raises ``Invalid`` with ``.args[1]`` = index."""
    if not 0 <= func.type_idx < len(ctx.types):
        raise Invalid(f"unknown type {func.type_idx}", -1)
    ftype = ctx.types[func.type_idx]
    for _count, t in func.locals:
        if t not in VALTYPES:
            raise Invalid(f"invalid local type {t!r}", -1)
    local_types = ftype.params + tuple(func.local_types())
    nlocals = len(local_types)
    globals_ = ctx.globals
    funcs = ctx.funcs
    plain = _PLAIN
    memory_ops, memory_sigs = _MEMORY_OPS, ctx.memory_sigs

    vals: list[str | None] = []
    ctrls: list[ControlFrame] = [ControlFrame(BLOCK, (), ftype.results, 0, False)]
    stack_before: list[tuple[str | None, ...]] = []
    unreachable: list[bool] = []
    body = func.body
    last = len(body) - 1
    snap: tuple[str | None, ...] = ()
    dirty = False
    max_stack = 0
    recorded = 0
    i = -1
    # the innermost frame and whether its code is unreachable, kept in locals: they change only
    # at the instructions after the fixed-signature ones (2.7 million instructions in CPython)
    frame: ControlFrame = ctrls[0]
    dead = False
    try:
        for i, ins in enumerate(body):  # noqa: B007 -- i is read by the except clause
            if dirty:
                snap = tuple(vals)
                if len(snap) > max_stack:
                    max_stack = len(snap)
                recorded += len(snap)
                if recorded > MAX_RECORDED_STACK_ENTRIES:
                    raise Invalid("implementation limit exceeded: operand stacks too deep for this function size "
                                   f"(more than {MAX_RECORDED_STACK_ENTRIES} recorded stack entries)")
                dirty = False
            stack_before.append(snap)
            unreachable.append(dead)
            op = ins.op
            imm = ins.imm

            if op == LOCAL_GET:  # a quarter of all instructions: first
                dirty = True
                vals.append(local_types[imm if imm.__class__ is int and 0 <= imm < nlocals
                                        else _index(imm, nlocals, "local")])
                continue
            sig = plain.get(op)
            if sig is None and op in memory_ops:  # a load or store: its memarg checked once per module
                try:
                    sig = memory_sigs[(op, imm)]
                except (KeyError, TypeError):
                    sig = _memory_sig(ctx, op, imm)
            if sig is not None:  # numeric, memory and other fixed-signature instructions: the hot path
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
                                raise Invalid(f"type mismatch: expected {fmt_types(params)}, "
                                              f"found {fmt_types(vals[-n:])}")
                        del vals[-n:]
                    else:
                        _pop_vals(vals, frame, params)
                vals.extend(results)
                continue

            dirty = True
            # the variables and calls first, each ending in `continue`: they leave the frame as it is
            if op == LOCAL_SET:
                t = local_types[imm if imm.__class__ is int and 0 <= imm < nlocals else _index(imm, nlocals, "local")]
                if len(vals) > frame.height and vals[-1] == t:
                    vals.pop()
                else:
                    _pop(vals, frame, t)
                continue
            if op == LOCAL_TEE:
                t = local_types[_index(imm, nlocals, "local")]
                if len(vals) > frame.height and vals[-1] == t:
                    dirty = False
                else:
                    _pop(vals, frame, t)
                    vals.append(t)
                continue
            if op == GLOBAL_GET:
                vals.append(globals_[_index(imm, len(globals_), "global")].type)
                continue
            if op == CALL:
                ft = funcs[_index(imm, len(funcs), "function")]
                _pop_vals(vals, frame, ft.params)
                vals.extend(ft.results)
                continue
            if op == GLOBAL_SET:
                g = globals_[_index(imm, len(globals_), "global")]
                if not g.mutable:
                    raise Invalid(f"global is immutable: global {imm}")
                _pop(vals, frame, g.type)
            elif op == BLOCK or op == LOOP or op == IF:
                params, results = _block_type(ctx, imm)
                if op == IF:
                    _pop(vals, frame, _I32)
                _pop_vals(vals, frame, params)
                ctrls.append(ControlFrame(op, params, results, len(vals), frame.unreachable or frame.dead))
                vals.extend(params)
            elif op == END:
                _pop_vals(vals, frame, frame.end)
                if len(vals) != frame.height:
                    raise Invalid(
                        f"type mismatch: block leaves extra values {fmt_types(vals[frame.height:])} "
                        f"beyond its results {fmt_types(frame.end)}"
                    )
                if frame.op == IF and frame.start != frame.end:
                    raise Invalid(
                        f"type mismatch: `if` without `else` must have equal params and results, "
                        f"got {fmt_types(frame.start)} -> {fmt_types(frame.end)}"
                    )
                ctrls.pop()
                vals.extend(frame.end)
            elif op == ELSE:
                if frame.op != IF:
                    raise Invalid("else without matching if")
                _pop_vals(vals, frame, frame.end)
                if len(vals) != frame.height:
                    raise Invalid(f"type mismatch: then branch leaves extra values {fmt_types(vals[frame.height:])}")
                ctrls[-1] = ControlFrame(ELSE, frame.start, frame.end, frame.height, frame.dead)
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
                    raise Invalid(f"malformed br_table immediate {imm!r}")
                _pop(vals, frame, _I32)
                default_types = _label(ctrls, default).label_types()
                arity = len(default_types)
                for n in labels:
                    types = _label(ctrls, n).label_types()
                    if len(types) != arity:
                        raise Invalid(
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
            elif op == RETURN_CALL:
                if not ctx.tail_call:
                    raise Invalid(f"illegal opcode {op:#x} (return_call needs the tail-call feature)")
                ft = funcs[_index(imm, len(funcs), "function")]
                if tuple(ft.results) != tuple(ctrls[0].end):
                    raise Invalid(f"type mismatch: return_call of a function returning {fmt_types(ft.results)} "
                                  f"from one returning {fmt_types(ctrls[0].end)}")
                _pop_vals(vals, frame, ft.params)
                del vals[frame.height:]
                frame.unreachable = True
            elif op == CALL_INDIRECT:
                type_idx, table_idx = _pair(imm, "call_indirect")
                if _table(ctx, table_idx).elem != "funcref":
                    raise Invalid(f"type mismatch: call_indirect through table {table_idx} which is not funcref")
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
                    raise Invalid(f"type mismatch: select without a type needs numeric operands, found {t2}, {t1}")
                if t1 != t2 and t1 is not None and t2 is not None:
                    raise Invalid(f"type mismatch: select operands differ: {t2} and {t1}")
                vals.append(t1 if t2 is None else t2)
            elif op == SELECT_T:
                if not isinstance(imm, tuple | list) or len(imm) != 1:
                    raise Invalid("invalid result arity: typed select needs exactly one type")
                t = imm[0]
                if t not in VALTYPES:
                    raise Invalid(f"invalid value type {t!r}")
                _pop(vals, frame, _I32)
                _pop(vals, frame, t)
                _pop(vals, frame, t)
                vals.append(t)
            elif op == REF_NULL:
                if imm not in REFTYPES:
                    raise Invalid(f"invalid reference type {imm!r}")
                vals.append(imm)
            elif op == REF_IS_NULL:
                t = _pop(vals, frame, None)
                if t is not None and t not in REFTYPES:
                    raise Invalid(f"type mismatch: ref.is_null needs a reference, found {t}")
                vals.append(_I32)
            elif op == REF_FUNC:
                _index(imm, len(funcs), "function")
                if imm not in ctx.refs:
                    raise Invalid(f"undeclared function reference {imm}")
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
                    raise Invalid(f"type mismatch: table.copy between tables {dst} and {src} of different types")
                _pop_vals(vals, frame, (_I32, _I32, _I32))
            elif op == TABLE_INIT:
                elem_idx, table_idx = _pair(imm, "table.init")
                tt = _table(ctx, table_idx)
                et = ctx.elems[_index(elem_idx, len(ctx.elems), "elem segment")]
                if tt.elem != et:
                    raise Invalid(f"type mismatch: table.init of a {et} segment into a {tt.elem} table")
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
                raise Invalid("instruction not supported by the validator")
            else:
                raise Invalid("illegal opcode")
            if ctrls:
                frame = ctrls[-1]
                dead = frame.unreachable or frame.dead
            elif i < last:  # the function's own `end` was not the last instruction
                i += 1
                raise Invalid("operators remaining after the end of the function")
    except Invalid as e:
        raise Invalid(e.args[0], i) from None
    if ctrls:
        raise Invalid("function body must end with `end`", len(func.body) - 1 if func.body else -1)
    max_stack = max(max_stack, len(vals))
    return FunctionInfo(stack_before, unreachable, max_stack, local_types)
