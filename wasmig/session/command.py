"""Run a WASI command module (``_start``) on an engine with wasmig's own WASI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmig.errors import LinkError
from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.preview1 import WASI_MODULE, ProcExit, Wasi, check_wasi_imports

if TYPE_CHECKING:  # the interpreter is imported only when a run uses it (start-up of a run on wasmtime)
    from wasmig.engines.interp.instance import Instance
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.interp.store import HostFunc
    from wasmig.module import Module


def _host_func(params: tuple[str, ...], results: tuple[str, ...], fn: Any, name: str) -> HostFunc:
    from wasmig.interp.store import HostFunc

    return HostFunc(params, results, fn, raw=True, name=f"{WASI_MODULE}.{name}")


def wasi_imports(module: Module, wasi: Wasi) -> dict[str, dict[str, Any]]:
    """The import object for ``module``: the WASI functions it imports, nothing else (LinkError otherwise)."""
    return wasi.imports(_host_func, [imp.name for imp in check_wasi_imports(module.interface)])


def instantiate_with_wasi(module: Module, wasi: Wasi, engine: str = "interp",
                          **wasmtime_options: Any) -> Instance | WasmtimeInstance:
    """Instantiate ``module`` with ``wasi`` as its ``wasi_snapshot_preview1`` and bind its memory:
    an :class:`Instance` (``interp``) or a :class:`wasmig.engines.wasmtime.runtime.WasmtimeInstance`
    (``wasmtime_options``: its keyword arguments, e.g. ``cache_dir``)."""
    if engine == "wasmtime":
        from wasmig.engines.wasmtime.runtime import WasmtimeInstance

        return WasmtimeInstance(module, wasi, **wasmtime_options)
    if wasmtime_options:
        raise TypeError(f"options {sorted(wasmtime_options)} are for the wasmtime engine")
    from wasmig.engines.interp.instance import Instance

    return bind_wasi(Instance(module, wasi_imports(module, wasi), engine), wasi)


def bind_wasi(inst: Instance, wasi: Wasi) -> Instance:
    """Attach ``wasi`` to an interpreter instance: WASI reaches the exported ``memory`` (the live
    bytearray, so growth is seen) and the instance knows its WASI state (for checkpoints)."""
    from wasmig.interp.store import Memory

    inst.wasi = wasi
    memory = inst.exports.get("memory")
    if isinstance(memory, Memory):
        wasi.bind_memory(GuestMemory(lambda: memory.data))
    return inst


def run_command(module: Module, wasi: Wasi, engine: str = "interp", **wasmtime_options: Any) -> int:
    """Run ``_start`` to completion and return the exit code (``proc_exit``'s, else 0).

    Traps propagate as :class:`wasmig.Trap` (the caller reports them)."""
    return run_start(instantiate_with_wasi(module, wasi, engine, **wasmtime_options))


def run_start(inst: Instance | WasmtimeInstance) -> int:
    """Run an instance's ``_start`` (any engine) to completion; the exit code as for :func:`run_command`."""
    start = inst.exports.get("_start")
    if start is None:
        raise LinkError("the module has no `_start` export: it is not a WASI command")
    try:
        inst.invoke("_start")
    except ProcExit as e:
        return e.code
    return 0
