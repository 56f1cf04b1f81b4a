"""The wasi-threads ABI's names, for every engine and for the command line, which must tell a
threaded program from its imports alone (before decoding its code: a shared memory is a
proposal the default decoder refuses)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wasmig.errors import LinkError
from wasmig.wasi.preview1 import SIGNATURES, WASI_MODULE

if TYPE_CHECKING:
    from wasmig.module import Module

#: the import wasi-threads adds: ``wasi.thread-spawn(start_arg: i32) -> i32``
THREADS_MODULE = "wasi"
SPAWN = "thread-spawn"
#: the export each spawned thread starts in: ``wasi_thread_start(tid: i32, start_arg: i32)``
THREAD_START = "wasi_thread_start"


def imports_thread_spawn(imports: Iterable[Any]) -> bool:
    """True when an import list (a module's interface) has ``wasi.thread-spawn``: a wasi-threads program."""
    return any(imp.module == THREADS_MODULE and imp.name == SPAWN for imp in imports)


def check_threaded_imports(module: Module) -> tuple[list[str], Any]:
    """The WASI functions a wasi-threads program imports and its one imported shared memory (its
    import entry); a LinkError for anything else: no host resource is made because a module names
    it, beyond these. The same check on every engine."""
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
