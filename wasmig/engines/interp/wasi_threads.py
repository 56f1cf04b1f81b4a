"""wasi-threads commands: a module with a shared memory that spawns threads through ``wasi.thread-spawn``.

The host makes the program's one shared memory (the module imports it, under any name, with the
limits it declares), every thread is a fresh instance of the module over that memory and the same
:class:`~wasmig.wasi.preview1.Wasi` (one file-descriptor table, one exit), and ``wasi_thread_start``
is each spawned thread's entry point. The interpreter runs them (:mod:`wasmig.interp.threads`);
see docs/threads.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmig.errors import LinkError
from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.preview1 import SIGNATURES, WASI_MODULE, ProcExit, Wasi
from wasmig.wasi.threads_abi import SPAWN, THREADS_MODULE, imports_thread_spawn

if TYPE_CHECKING:
    from wasmig.module import Module

#: the import wasi-threads adds


def is_threaded(module: Module) -> bool:
    """True when ``module`` is a wasi-threads program: it imports ``wasi.thread-spawn`` or a shared memory."""
    imports = module.ir.imports
    return imports_thread_spawn(imports) or any(imp.kind == "memory" and imp.desc.shared for imp in imports)


def _check_imports(module: Module) -> tuple[list[str], Any]:
    """The WASI functions the module imports and its one imported shared memory; a LinkError for
    anything else (no host resource is made because a module names it, beyond these)."""
    wasi_names: list[str] = []
    memory = None
    for imp in module.ir.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.kind == "memory":
            if memory is not None:
                raise LinkError(f"unknown import: {where} (a wasi-threads program imports one memory)")
            if not imp.desc.shared:
                raise LinkError(f"incompatible import type: {where} must be a shared memory")
            memory = imp
        elif imp.kind == "func" and imp.module == THREADS_MODULE and imp.name == SPAWN:
            ft = module.ir.types[imp.desc]
            if tuple(ft.params) != ("i32",) or tuple(ft.results) != ("i32",):
                raise LinkError(f"incompatible import type: {where} is [i32] -> [i32], the module expects {ft}")
        elif imp.kind == "func" and imp.module == WASI_MODULE and imp.name in SIGNATURES:
            wasi_names.append(imp.name)
        else:
            raise LinkError(f"unknown import: {where} is not provided to a wasi-threads program")
    if memory is None:
        raise LinkError("a wasi-threads program must import its shared memory")
    return wasi_names, memory


def run_threaded_command(module: Module, wasi: Wasi, *, seed: int = 0) -> int:
    """Run ``_start`` with its threads on the interpreter to the program's end; the exit code
    (``proc_exit``'s from any thread, else 0 when the main thread returns). Traps propagate as
    :class:`wasmig.Trap`. ``seed`` picks the interleaving (the same seed, the same run, but for
    host calls that block)."""
    from wasmig.engines.interp.instance import InterpInstance
    from wasmig.interp.store import HostFunc, Memory
    from wasmig.interp.threads import BLOCKING_CALLS, ThreadScheduler

    wasi_names, memory_import = _check_imports(module)
    limits = memory_import.desc.limits
    memory = Memory(limits.min, limits.max, shared=True)
    wasi.bind_memory(GuestMemory(lambda: memory.data))

    def instance() -> tuple[Any, Any]:
        inst = InterpInstance(module, imports, engine="interp")
        inst.wasi = wasi
        return inst.machine, inst.exports

    scheduler = ThreadScheduler(instance, seed=seed)

    def host_func(params: tuple[str, ...], results: tuple[str, ...], fn: Any, name: str) -> HostFunc:
        call = scheduler.blocking(fn) if name in BLOCKING_CALLS else fn
        return HostFunc(params, results, call, raw=True, name=f"{WASI_MODULE}.{name}")

    imports: dict[str, dict[str, Any]] = wasi.imports(host_func, wasi_names)
    imports.setdefault(THREADS_MODULE, {})[SPAWN] = scheduler.spawn_import()
    imports.setdefault(memory_import.module, {})[memory_import.name] = memory
    machine, exports = instance()
    start = exports.get("_start")
    if start is None:
        raise LinkError("the module has no `_start` export: it is not a WASI command")
    try:
        scheduler.run(machine, start, [])
    except ProcExit as e:
        return e.code
    return 0
