"""wasi-threads commands: a module with a shared memory that spawns threads through ``wasi.thread-spawn``.

The host makes the program's one shared memory (the module imports it, under any name, with the
limits it declares), every thread is a fresh instance of the module over that memory and the same
:class:`~wasmig.wasi.preview1.Wasi` (one file-descriptor table, one exit), and ``wasi_thread_start``
is each spawned thread's entry point. The interpreter runs them (:mod:`wasmig.interp.threads`);
see docs/threads.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.preview1 import WASI_MODULE, ProcExit, Wasi
from wasmig.wasi.threads_abi import SPAWN, THREADS_MODULE, check_threaded_imports, imports_thread_spawn

if TYPE_CHECKING:
    from wasmig.module import Module


def is_threaded(module: Module) -> bool:
    """True when ``module`` is a wasi-threads program: it imports ``wasi.thread-spawn`` or a shared memory."""
    imports = module.ir.imports
    return imports_thread_spawn(imports) or any(imp.kind == "memory" and imp.desc.shared for imp in imports)


def threaded_linker(module: Module, wasi: Wasi, scheduler: Any) -> tuple[Callable[..., Any], Any]:
    """Link a wasi-threads program: the host's shared memory (made here, with the limits the module
    declares; bound to ``wasi``) and ``make_instance(initialize=True)``, which instantiates the
    module once more over it (a thread's instance, its WASI calls through ``scheduler``)."""
    from wasmig.engines.interp.instance import InterpInstance
    from wasmig.interp.store import HostFunc, Memory
    from wasmig.interp.threads import BLOCKING_CALLS

    wasi_names, memory_import = check_threaded_imports(module)
    limits = memory_import.desc.limits
    memory = Memory(limits.min, limits.max, shared=True)
    wasi.bind_memory(GuestMemory(lambda: memory.data))

    def host_func(params: tuple[str, ...], results: tuple[str, ...], fn: Any, name: str) -> HostFunc:
        call = scheduler.blocking(fn, len(results)) if name in BLOCKING_CALLS else fn
        return HostFunc(params, results, call, raw=True, name=f"{WASI_MODULE}.{name}")

    imports: dict[str, dict[str, Any]] = wasi.imports(host_func, wasi_names)
    imports.setdefault(THREADS_MODULE, {})[SPAWN] = scheduler.spawn_import()
    imports.setdefault(memory_import.module, {})[memory_import.name] = memory

    def make_instance(initialize: bool = True) -> InterpInstance:
        inst = InterpInstance(module, imports, engine="interp", initialize=initialize)
        inst.wasi = wasi
        return inst

    return make_instance, memory


def run_threaded_command(module: Module, wasi: Wasi, *, seed: int = 0) -> int:
    """Run ``_start`` with its threads on the interpreter to the program's end; the exit code
    (``proc_exit``'s from any thread, else 0 when the main thread returns). Traps propagate as
    :class:`wasmig.Trap`. ``seed`` picks the interleaving (the same seed, the same run, but for
    host calls that block)."""
    from wasmig.engines.interp.threaded import threaded_program

    program = threaded_program(module, wasi, seed=seed)
    try:
        program.start()
    except ProcExit as e:
        return e.code
    return 0
