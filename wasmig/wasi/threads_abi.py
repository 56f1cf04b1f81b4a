"""The wasi-threads ABI's names, for every engine and for the command line, which must tell a
threaded program from its imports alone (before decoding its code: a shared memory is a
proposal the default decoder refuses)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: the import wasi-threads adds: ``wasi.thread-spawn(start_arg: i32) -> i32``
THREADS_MODULE = "wasi"
SPAWN = "thread-spawn"
#: the export each spawned thread starts in: ``wasi_thread_start(tid: i32, start_arg: i32)``
THREAD_START = "wasi_thread_start"


def imports_thread_spawn(imports: Iterable[Any]) -> bool:
    """True when an import list (a module's interface) has ``wasi.thread-spawn``: a wasi-threads program."""
    return any(imp.module == THREADS_MODULE and imp.name == SPAWN for imp in imports)
