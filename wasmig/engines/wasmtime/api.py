"""``wasmig.Instance(module, imports, engine="wasmtime")``: the embedding API on wasmtime.

:class:`WasmtimeApiInstance` is what ``wasmig.Instance`` gives for ``engine="wasmtime"``: the
plain module compiled by wasmtime (:class:`wasmig.engines.wasmtime.runtime.WasmtimeInstance` underneath),
with the interpreter's surface where it makes sense:

- ``exports[name]``: functions are callables taking and returning the same Python values as the
  interpreter's (signed ints, floats; ``wasmig.Val`` for exact bits) and can be imported by
  other instances of either engine; memories have ``read``/``write``/``grow``/``size_pages``;
  globals ``value`` and ``raw``; tables ``size``;
- :meth:`~WasmtimeApiInstance.invoke` ``(name, *args, raw=False)``, the same conventions;
- imports: functions (``wasmig.HostFunc``, or a function exported by another instance of either
  engine), immutable ``wasmig.Global``s, and the memories, tables and globals of one wasmtime
  store — exported by an instance, or made by :meth:`WasmtimeMemory.create` /
  :meth:`WasmtimeTable.create` in a :func:`new_store` — which the instance then shares, being
  made in that store (wasmtime links within a store only). The interpreter's memories, tables
  and mutable globals cannot be shared with a wasmtime store, so importing them is a
  :class:`~wasmig.LinkError` that says so;
- a trap is a :class:`wasmig.Trap` with the interpreter's reason and backtrace format; an
  exception raised by a host function comes out of the call as itself.

Not here: ``stop_at``, ``checkpoint`` and ``resume`` (they raise ``NotImplementedError`` saying
what to use instead). Checkpointing on wasmtime needs the instrumented module and wasmig's WASI:
``wasmig.Instance(module, wasmig.wasi.Wasi(...), engine="wasmtime")`` gives that
(:mod:`wasmig.engines.wasmtime.wasi_instance`), as ``wasmig.restore(..., engine="wasmtime")`` does.
Reference-typed parameters of host functions, and f32 signalling-NaN payloads (wasmtime-py passes
f32 values as C floats, which quiets them), are the other differences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import wasmtime

from wasmig.binary.ir import FuncType
from wasmig.binary.ir import Module as IRModule
from wasmig.engines.base import Instance
from wasmig.engines.wasmtime.runtime import _VALTYPE, Exports, WasmtimeInstance
from wasmig.engines.wasmtime.runtime import engine as wasmtime_engine
from wasmig.engines.wasmtime.threads import SharedMemoryView, _define_shared_memory
from wasmig.errors import LinkError
from wasmig.interp.calls import convert_results
from wasmig.interp.instantiate import _resolve_import
from wasmig.interp.numeric import signed32, signed64
from wasmig.interp.store import (
    PAGE_SIZE,
    FuncInst,
    GlobalValue,
    HostFunc,
    WasmFunction,
    to_internal,
)
from wasmig.module import Module

_NUMERIC = ("i32", "i64", "f32", "f64")
_UNSUPPORTED = ("{what} is an interpreter feature with these imports: wasmig.Instance(..., engine='wasmtime') runs "
                "the plain module. Use engine='interp' for it, or, for a WASI program on wasmtime, pass a "
                "wasmig.wasi.Wasi as the imports: the instrumented module runs "
                "(wasmig.engines.wasmtime.checkpointable.Checkpointable, what wasmig.restore(..., engine='wasmtime') "
                "and `wasmig run --checkpoint-dir` run too)")


def _to_wasmtime(t: str, v: Any) -> Any:
    """An internal value (unsigned ints, exact floats) as wasmtime-py takes it."""
    if t == "i32":
        return signed32(v)
    if t == "i64":
        return signed64(v)
    return v


def _results(out: Any, count: int) -> list[Any]:
    """wasmtime-py's result for a function of ``count`` results (None, a value, or a list for
    several) as a list; a single null reference is None too, so ``count`` tells the cases apart."""
    if count == 1:
        return [out]
    if out is None:
        return []
    return list(out) if isinstance(out, (list, tuple)) else [out]


# --- imports ----------------------------------------------------------------------------------
def without_provided(ir: IRModule, host_imports: Mapping[str, Mapping[str, Any]]) -> IRModule:
    """``ir`` with only the imports ``host_imports`` does not provide (what WASI must serve)."""
    return replace(ir, imports=[imp for imp in ir.imports if imp.name not in host_imports.get(imp.module, {})])


def define_host_imports(inst: WasmtimeInstance, linker: wasmtime.Linker,
                        host_imports: Mapping[str, Mapping[str, Any]]) -> None:
    """Define the module's imports found in ``host_imports`` in ``linker``: functions as wasmtime
    host functions (an exception they raise is kept by ``inst`` and re-raised as itself once
    wasmtime unwound), immutable globals as fresh wasmtime globals holding their value, externs of
    ``inst``'s store as themselves."""
    ir = inst.module.ir
    done: set[tuple[str, str]] = set()
    for imp in ir.imports:
        key = (imp.module, imp.name)
        if key in done or imp.name not in host_imports.get(imp.module, {}):
            continue
        done.add(key)
        owned = host_imports[imp.module][imp.name]
        if isinstance(owned, _STORE_EXTERNS):  # same store (see store_of_imports): wasmtime checks the type
            linker.define(inst.store, imp.module, imp.name, owned.wasmtime_extern)
            continue
        if isinstance(owned, WasmtimeSharedMemory):  # the engine's: any store can import it
            _define_shared_memory(linker, inst.store, imp.module, imp.name, owned.wasmtime_extern)
            continue
        ext = _resolve_import(imp, host_imports, ir)  # the interpreter's checks and messages
        where = f"{imp.module}.{imp.name}"
        if imp.kind == "func":
            ft = ir.types[imp.desc]
            if any(t not in _NUMERIC for t in (*ft.params, *ft.results)):
                raise LinkError(f"cannot import {where} on wasmtime: host functions with reference-typed "
                                "parameters or results are interpreter-only")
            ty = wasmtime.FuncType([_VALTYPE[t]() for t in ft.params], [_VALTYPE[t]() for t in ft.results])
            linker.define_func(imp.module, imp.name, ty, _host_callback(inst, ext, ft))
        elif imp.kind == "global" and not ext.mutable and ext.type in _NUMERIC:
            gt = wasmtime.GlobalType(_VALTYPE[ext.type](), False)
            linker.define(inst.store, imp.module, imp.name,
                          wasmtime.Global(inst.store, gt, _to_wasmtime(ext.type, ext.internal)))
        else:
            what = "a mutable global" if imp.kind == "global" and ext.mutable else f"a {imp.kind}"
            raise LinkError(f"cannot import {where} on wasmtime: {what} cannot be shared with a wasmtime "
                            "instance (it imports host functions, immutable numeric globals, and the memories, tables "
                            "and globals of a wasmtime store: WasmtimeMemory.create, an instance's exports); "
                            "use engine='interp'")


def _call_internal(ext: FuncInst, args: list[Any]) -> list[Any]:
    """Call a wasmig function extern with internal values."""
    if isinstance(ext, HostFunc):  # WasmtimeFunction too: it calls its own instance
        return ext.call_internal(args)
    if isinstance(ext, WasmFunction):  # exported by an interpreter instance
        return ext.instance.machine.invoke(ext, args)
    raise LinkError(f"cannot call {ext!r} from wasmtime")


def _host_callback(inst: WasmtimeInstance, ext: FuncInst, ft: FuncType) -> Callable[..., Any]:
    params, results = ft.params, ft.results
    raised = inst._raised

    def call(*args: Any) -> Any:
        try:
            out = _call_internal(ext, [to_internal(t, a) for t, a in zip(params, args, strict=True)])
            values = [_to_wasmtime(t, v) for t, v in zip(results, out, strict=True)]
        except BaseException as e:  # re-raised as itself by WasmtimeInstance._guard
            raised.append(e)
            raise
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    return call


# --- exports ----------------------------------------------------------------------------------
class WasmtimeFunction(HostFunc):
    """An exported function of a wasmtime instance. Call it with Python values like an
    interpreter function (``f(1, 2)``); import it into another instance (either engine) like a
    :class:`~wasmig.HostFunc` (it then calls into this one)."""

    __slots__ = ("owner",)

    def __init__(self, owner: WasmtimeApiInstance, name: str, ftype: FuncType) -> None:
        super().__init__(ftype.params, ftype.results, lambda *args: owner._invoke_internal(name, list(args)),
                         raw=True, name=name)
        self.owner = owner

    def __call__(self, *args: Any) -> Any:
        return self.owner.invoke(self.name, *args)

    def __repr__(self) -> str:
        return f"<wasmtime function {self.name} {self.type}>"


class WasmtimeMemory:
    """An exported linear memory of a wasmtime instance (the interpreter's ``Memory`` methods), or
    a host memory made by :meth:`create`; instances of its store can import it."""

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._memory = memory

    @classmethod
    def create(cls, store: wasmtime.Store, minimum: int, maximum: int | None = None) -> WasmtimeMemory:
        """A host memory of ``minimum`` (up to ``maximum``) pages in ``store``: wasmtime links
        within one store, so this is how a host memory reaches a wasmtime instance."""
        return cls(store, wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(minimum, maximum))))

    @property
    def wasmtime_extern(self) -> wasmtime.Memory:
        return self._memory

    @property
    def size_pages(self) -> int:
        return self._memory.size(self._store)

    def __len__(self) -> int:
        return self._memory.data_len(self._store)

    def read(self, offset: int, n: int) -> bytes:
        size = len(self)
        if offset < 0 or n < 0 or offset + n > size:
            raise IndexError(f"memory read [{offset}, {offset + n}) out of bounds ({size} bytes)")
        return bytes(self._memory.read(self._store, offset, offset + n))

    def write(self, offset: int, data: bytes) -> None:
        size = len(self)
        if offset < 0 or offset + len(data) > size:
            raise IndexError(f"memory write [{offset}, {offset + len(data)}) out of bounds ({size} bytes)")
        self._memory.write(self._store, bytes(data), offset)

    def grow(self, delta: int) -> int:
        """Grow by ``delta`` pages; return the old size in pages, or -1 (as wasm's memory.grow)."""
        try:
            return self._memory.grow(self._store, delta)
        except wasmtime.WasmtimeError:
            return -1

    def __repr__(self) -> str:
        return f"<wasmtime memory, {len(self) // PAGE_SIZE} pages>"


class WasmtimeSharedMemory:
    """A shared memory (threads proposal) on wasmtime — a host one made by :meth:`create`, or a
    wasmtime instance's export — with ``WasmtimeMemory``'s methods. It belongs to the engine, not
    to a store, so an instance of any store can import it."""

    def __init__(self, memory: wasmtime.SharedMemory) -> None:
        self._memory = memory
        self._view = SharedMemoryView(memory)

    @classmethod
    def create(cls, minimum: int, maximum: int) -> WasmtimeSharedMemory:
        """A host shared memory of ``minimum`` (up to ``maximum``, which a shared memory must have) pages."""
        ty = wasmtime.MemoryType(wasmtime.Limits(minimum, maximum), shared=True)
        return cls(wasmtime.SharedMemory(wasmtime_engine(), ty))

    @property
    def wasmtime_extern(self) -> wasmtime.SharedMemory:
        return self._memory

    @property
    def size_pages(self) -> int:
        return len(self) // PAGE_SIZE

    def __len__(self) -> int:
        return self._memory.data_len()

    def read(self, offset: int, n: int) -> bytes:
        size = len(self)
        if offset < 0 or n < 0 or offset + n > size:
            raise IndexError(f"memory read [{offset}, {offset + n}) out of bounds ({size} bytes)")
        return bytes(self._view()[offset:offset + n])

    def write(self, offset: int, data: bytes) -> None:
        size = len(self)
        if offset < 0 or offset + len(data) > size:
            raise IndexError(f"memory write [{offset}, {offset + len(data)}) out of bounds ({size} bytes)")
        self._view()[offset:offset + len(data)] = data

    def grow(self, delta: int) -> int:
        """Grow by ``delta`` pages; return the old size in pages, or -1 (as wasm's memory.grow)."""
        try:
            return self._memory.grow(delta)
        except wasmtime.WasmtimeError:
            return -1

    def __repr__(self) -> str:
        return f"<wasmtime shared memory, {self.size_pages} pages>"


class WasmtimeGlobal(GlobalValue):
    """An exported global of a wasmtime instance: ``value`` (Python value), ``raw`` (type, bits)."""

    def __init__(self, store: wasmtime.Store, glob: wasmtime.Global, type: str, mutable: bool) -> None:
        self._store = store
        self._global = glob
        self.type = type
        self.mutable = mutable

    @property
    def wasmtime_extern(self) -> wasmtime.Global:
        return self._global

    @property
    def internal(self) -> Any:
        return to_internal(self.type, self._global.value(self._store))

    def _set_internal(self, internal: Any) -> None:
        self._global.set_value(self._store, _to_wasmtime(self.type, internal))


class WasmtimeTable:
    """An exported table of a wasmtime instance (its size; elements stay inside wasmtime), or a
    host table of null references made by :meth:`create`; instances of its store can import it."""

    def __init__(self, store: wasmtime.Store, table: wasmtime.Table, elem_type: str) -> None:
        self._store = store
        self._table = table
        self.elem_type = elem_type

    @classmethod
    def create(cls, store: wasmtime.Store, elem_type: str, minimum: int, maximum: int | None = None) -> WasmtimeTable:
        """A host table of ``minimum`` (up to ``maximum``) null ``elem_type`` references in ``store``."""
        if elem_type not in _REF_TYPES:
            raise ValueError(f"a table holds funcref or externref, not {elem_type!r}")
        ty = wasmtime.TableType(_REF_TYPES[elem_type](), wasmtime.Limits(minimum, maximum))
        return cls(store, wasmtime.Table(store, ty, None), elem_type)

    @property
    def wasmtime_extern(self) -> wasmtime.Table:
        return self._table

    @property
    def size(self) -> int:
        return self._table.size(self._store)


#: externs that live in a wasmtime store: imported as themselves by instances of that store
_STORE_EXTERNS = (WasmtimeMemory, WasmtimeTable, WasmtimeGlobal)
#: and those with the engine's shared memories, imported by instances of any store
_WASMTIME_EXTERNS = (*_STORE_EXTERNS, WasmtimeSharedMemory)
_REF_TYPES = {"funcref": wasmtime.ValType.funcref, "externref": wasmtime.ValType.externref}


def new_store() -> wasmtime.Store:
    """A store of wasmig's wasmtime engine, for host memories and tables (:meth:`WasmtimeMemory.create`)."""
    return wasmtime.Store(wasmtime_engine())


def store_of_imports(ir: IRModule, imports: Mapping[str, Mapping[str, Any]]) -> wasmtime.Store | None:
    """The store of the wasmtime memories, tables and globals ``ir`` imports (None: it imports
    none), after checking each is of the kind the import names; wasmtime links only within a
    store, so externs of two stores cannot meet in one instance."""
    store: wasmtime.Store | None = None
    for imp in ir.imports:
        ext = imports.get(imp.module, {}).get(imp.name)
        if not isinstance(ext, _WASMTIME_EXTERNS):
            continue
        kind = "global" if isinstance(ext, WasmtimeGlobal) else "table" if isinstance(ext, WasmtimeTable) else "memory"
        if kind != imp.kind:
            raise LinkError(f"incompatible import type: {imp.module}.{imp.name} must be a "
                            f"{'function' if imp.kind == 'func' else imp.kind}, not a {kind}")
        if isinstance(ext, WasmtimeSharedMemory):
            continue
        if store is not None and ext._store is not store:
            raise LinkError(f"cannot import {imp.module}.{imp.name} on wasmtime: the module's imported "
                            "memories, tables and globals come from two wasmtime stores")
        store = ext._store
    return store


# --- the instance -----------------------------------------------------------------------------
class WasmtimeApiInstance(Instance):
    """``wasmig.Instance(module, imports, engine="wasmtime")`` (see the module docstring).

    ``store`` is the wasmtime ``Store``; ``wasmtime_instance`` the underlying
    :class:`~wasmig.engines.wasmtime.runtime.WasmtimeInstance`."""

    engine = "wasmtime"

    def __init__(self, module: Module, imports: Mapping[str, Mapping[str, Any]] | None = None,
                 engine: str = "wasmtime", *, max_frames: int | None = None, initialize: bool = True,
                 cache_dir: Path | None = None) -> None:
        if engine != "wasmtime":
            raise ValueError(f"WasmtimeApiInstance runs on wasmtime, not {engine!r}")
        if max_frames is not None or not initialize:
            raise TypeError("max_frames and initialize=False are interpreter options")
        imports = imports or {}
        store = store_of_imports(module.ir, imports)
        for imp in module.ir.imports:  # every other import, with the interpreter's messages
            if not isinstance(imports.get(imp.module, {}).get(imp.name), _WASMTIME_EXTERNS):
                _resolve_import(imp, imports, module.ir)
        self.module = module
        self.wasi = None
        self.wasmtime_instance = WasmtimeInstance(module, None, cache_dir=cache_dir, host_imports=imports,
                                                  store=store)
        store = self.wasmtime_instance.store
        raw = self.wasmtime_instance.exports
        ir = module.ir
        items: dict[str, Any] = {}
        self._funcs: dict[str, tuple[wasmtime.Func, FuncType]] = {}
        for exp in ir.exports:
            obj = raw[exp.name]
            if exp.kind == "func":
                ftype = ir.func_type(exp.index)
                self._funcs[exp.name] = (obj, ftype)
                items[exp.name] = WasmtimeFunction(self, exp.name, ftype)
            elif exp.kind == "memory" and isinstance(obj, wasmtime.SharedMemory):
                items[exp.name] = WasmtimeSharedMemory(obj)
            elif exp.kind == "memory":
                items[exp.name] = WasmtimeMemory(store, obj)
            elif exp.kind == "global":
                gt = ir.all_globals()[exp.index]
                items[exp.name] = WasmtimeGlobal(store, obj, gt.type, gt.mutable)
            else:
                items[exp.name] = WasmtimeTable(store, obj, ir.all_tables()[exp.index].elem)
        self.exports = Exports(items)

    @property
    def store(self) -> wasmtime.Store:  # type: ignore[override]
        """The wasmtime ``Store`` of this instance."""
        return self.wasmtime_instance.store

    def _function(self, name: str) -> tuple[wasmtime.Func, FuncType]:
        found = self._funcs.get(name)
        if found is None:
            raise KeyError(f"no exported function named {name!r}")
        return found

    def _invoke_internal(self, name: str, args: list[Any]) -> list[Any]:
        """Call export ``name`` with internal values (unsigned ints); its results likewise."""
        func, ftype = self._function(name)
        wargs = [_to_wasmtime(t, a) for t, a in zip(ftype.params, args, strict=True)]
        out = self.wasmtime_instance._guard(lambda: func(self.store, *wargs))
        return [to_internal(t, v) for t, v in zip(ftype.results, _results(out, len(ftype.results)), strict=True)]

    def invoke(self, name: str, *args: Any, raw: bool = False) -> Any:
        """Call the exported function ``name``, as :meth:`wasmig.Instance.invoke` does: Python
        values (or ``wasmig.Val``) in; ``None``, one value or a tuple out, or with ``raw=True`` a
        list of ``(type, bits)`` pairs."""
        _, ftype = self._function(name)
        if len(args) != len(ftype.params):
            raise TypeError(f"{self.exports[name]!r} takes {len(ftype.params)} arguments, {len(args)} given")
        internal = [to_internal(t, a) for t, a in zip(ftype.params, args, strict=True)]
        return convert_results(ftype.results, self._invoke_internal(name, internal), raw)

    @property
    def steps(self) -> int | None:
        """None: the plain module counts no stable points."""
        return None

    def stop_at(self, *, step: int | None = None, instruction: int | None = None) -> None:
        raise NotImplementedError(_UNSUPPORTED.format(what="stop_at()"))

    def checkpoint(self) -> Any:
        raise NotImplementedError(_UNSUPPORTED.format(what="checkpoint()"))

    def resume(self, *, raw: bool = False) -> Any:
        raise NotImplementedError(_UNSUPPORTED.format(what="resume()"))

    def __repr__(self) -> str:
        return f"<wasmig.Instance on wasmtime, exports {sorted(self.exports)}>"
