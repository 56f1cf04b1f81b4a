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
from dataclasses import dataclass

from wasmig.binary import features as _features
from wasmig.binary import opcodes as ops
from wasmig.binary.code_check import (
    END,
    F32_CONST,
    F64_CONST,
    GLOBAL_GET,
    I32_CONST,
    I64_CONST,
    MAX_PAGES,
    MAX_TABLE_SIZE,
    REF_FUNC,
    REF_NULL,
    CodeContext,
    FunctionInfo,
    Invalid,
    check_function,
    fmt_types,
)
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


@dataclass
class ModuleInfo:
    """Per-function results, one entry per ``module.funcs`` entry (defined functions only)."""

    functions: list[FunctionInfo]


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
        raise _fail(f"type mismatch: {what} must produce [{expected}], produces {fmt_types(stack)}")


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

    ctx = CodeContext(
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
        tail_call=_features.TAIL_CALL in wanted,
    )

    def check(k: int) -> FunctionInfo:
        return _validate_function_in(ctx, module, k, module.funcs[k])

    return check


def _validate_function_in(ctx: CodeContext, module: Module, k: int, func: Function) -> FunctionInfo:
    """Check defined function ``k`` and turn an internal failure into a located ValidationError."""
    try:
        return check_function(ctx, func)
    except Invalid as e:
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
                          _features.THREADS in wanted, _features.TAIL_CALL in wanted)
    return _validate_function_in(context, module, k, module.funcs[k])


def _context_of(module: Module, multi_memory: bool = False, atomic_loads: bool = False,
                threads: bool = False, tail_call: bool = False) -> CodeContext:
    """Build C for ``module`` without re-checking its declarations (but the memory count)."""
    mems = len(module.all_mems())
    if mems > 1 and not multi_memory:
        raise ValidationError("multiple memories")
    return CodeContext(
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
        tail_call=tail_call,
    )
