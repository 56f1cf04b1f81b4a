"""Instantiate a validated module on the interpreter, following the spec's instantiation steps:
resolve and type-check imports, allocate functions/tables/memories/globals, evaluate segment
initialisers, copy active element and data segments in order (a failing segment traps after
earlier ones were applied, as the spec requires), then run the start function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wasmig.binary.ir import Expr, GlobalType, Limits, MemType, TableType
from wasmig.errors import LinkError, Trap, UnsupportedFeature
from wasmig.interp.machine import Machine
from wasmig.interp.numeric import f32_from_bits, f64_from_bits
from wasmig.interp.store import FuncInst, Global, Memory, ModuleInstance, Table, WasmFunction


def _limits_match(actual: Limits, declared: Limits) -> bool:
    if actual.min < declared.min:
        return False
    if declared.max is None:
        return True
    return actual.max is not None and actual.max <= declared.max


def _resolve_import(imp: Any, imports: Mapping[str, Mapping[str, Any]], module: Any) -> Any:
    namespace = imports.get(imp.module)
    if namespace is None or imp.name not in namespace:
        raise LinkError(f"unknown import: {imp.module}.{imp.name} was not provided")
    ext = namespace[imp.name]
    where = f"{imp.module}.{imp.name}"
    if imp.kind == "func":
        if not isinstance(ext, FuncInst):
            raise LinkError(f"incompatible import type: {where} must be a function")
        want = module.types[imp.desc]
        if ext.type != want:
            raise LinkError(f"incompatible import type: {where} is {ext.type}, the module expects {want}")
    elif imp.kind == "table":
        desc: TableType = imp.desc
        if not isinstance(ext, Table) or ext.elem_type != desc.elem or not _limits_match(ext.limits, desc.limits):
            raise LinkError(f"incompatible import type: {where} must be a table {desc.elem} {desc.limits}")
    elif imp.kind == "memory":
        mdesc: MemType = imp.desc
        if (not isinstance(ext, Memory) or not _limits_match(ext.limits, mdesc.limits)
                or ext.shared != mdesc.shared):
            raise LinkError(f"incompatible import type: {where} must be a memory with limits {mdesc.limits}")
    else:
        gdesc: GlobalType = imp.desc
        if not isinstance(ext, Global) or ext.type != gdesc.type or ext.mutable != gdesc.mutable:
            raise LinkError(f"incompatible import type: {where} must be a global {gdesc.type}"
                            f"{' (mutable)' if gdesc.mutable else ''}")
    return ext


def eval_const(expr: Expr, inst: ModuleInstance) -> Any:
    """Evaluate a constant expression (validated: one value-producing instruction then ``end``)."""
    value: Any = None
    for ins in expr:
        op = ins.op
        if op == 0x41 or op == 0x42:
            value = ins.imm
        elif op == 0x43:
            value = f32_from_bits(ins.imm)
        elif op == 0x44:
            value = f64_from_bits(ins.imm)
        elif op == 0xD0:
            value = None
        elif op == 0xD2:
            value = inst.funcs[ins.imm]
        elif op == 0x23:
            value = inst.globals[ins.imm].internal
    return value


def instantiate(module: Any, imports: Mapping[str, Mapping[str, Any]] | None, machine: Machine, *,
                initialize: bool = True) -> ModuleInstance:
    """Create a :class:`ModuleInstance` for ``module`` (a :class:`wasmig.Module`) on ``machine``.

    ``initialize=False`` allocates everything but applies no segments and runs no start function:
    a restore overwrites memories, tables and globals from a snapshot instead.
    """
    ir = module.ir
    if len(ir.all_mems()) > 1:
        # only validates with the opt-in multi-memory feature; the interpreter addresses memory 0
        # only, so running it would silently mix the memories up
        raise UnsupportedFeature("the interpreter does not implement multi-memory (module has "
                                 f"{len(ir.all_mems())} memories)")
    imports = imports or {}
    inst = ModuleInstance(ir)
    inst.validation = module.validation  # type: ignore[attr-defined]
    inst.machine = machine  # type: ignore[attr-defined]
    for imp in ir.imports:
        ext = _resolve_import(imp, imports, ir)
        {"func": inst.funcs, "table": inst.tables, "memory": inst.mems, "global": inst.globals}[imp.kind].append(ext)
    n_imported = len(inst.funcs)
    for i, f in enumerate(ir.funcs):
        inst.funcs.append(WasmFunction(inst, n_imported + i, ir.types[f.type_idx], f))
    try:
        for t in ir.tables:
            inst.tables.append(Table(t.elem, t.limits.min, t.limits.max))
        for m in ir.mems:
            inst.mems.append(Memory(m.limits.min, m.limits.max, m.shared))
    except (ValueError, MemoryError) as e:
        raise LinkError(f"cannot allocate: {e}") from None
    for g in ir.globals:
        glob = Global(g.type.type, None, g.type.mutable)
        glob.internal = eval_const(g.init, inst)
        inst.globals.append(glob)
    for exp in ir.exports:
        space = {"func": inst.funcs, "table": inst.tables, "memory": inst.mems, "global": inst.globals}[exp.kind]
        inst.exports[exp.name] = space[exp.index]
    inst.elems = [[eval_const(e, inst) for e in seg.init] for seg in ir.elems]
    inst.datas = [seg.init for seg in ir.datas]
    if not initialize:
        return inst

    for i, seg in enumerate(ir.elems):
        if seg.mode == "active":
            offset = eval_const(seg.offset, inst)
            table = inst.tables[seg.table].elements
            items = inst.elems[i]
            if offset + len(items) > len(table):
                raise Trap("out of bounds table access")
            table[offset : offset + len(items)] = items
        if seg.mode != "passive":
            inst.elems[i] = []
    for i, dseg in enumerate(ir.datas):
        if dseg.mode == "active":
            offset = eval_const(dseg.offset, inst)
            mem = inst.mems[dseg.memory].data
            if offset + len(dseg.init) > len(mem):
                raise Trap("out of bounds memory access")
            mem[offset : offset + len(dseg.init)] = dseg.init
            inst.datas[i] = b""
    if ir.start is not None:
        machine.invoke(inst.funcs[ir.start], [])
    return inst
