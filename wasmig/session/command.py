"""Run a WASI command module (``_start``) on any engine with wasmig's own WASI, without checkpoints
(what tests and ``wasmig run --invoke`` need; ``wasmig run`` itself goes through a
:class:`~wasmig.session.loop.Session`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmig import engines
from wasmig.errors import LinkError
from wasmig.wasi.preview1 import ProcExit

if TYPE_CHECKING:
    from wasmig.engines.base import WasiInstance
    from wasmig.module import Module
    from wasmig.wasi.preview1 import Wasi


def instantiate_with_wasi(module: Module, wasi: Wasi, engine: str = "interp", **options: Any) -> WasiInstance:
    """Instantiate ``module`` with ``wasi`` as its ``wasi_snapshot_preview1`` and bind its memory, on
    ``engine`` (:meth:`wasmig.engines.base.Engine.instantiate_wasi`; ``options``: the engine's, e.g.
    wasmtime's ``cache_dir``)."""
    return engines.get(engine).instantiate_wasi(module, wasi, **options)


def run_command(module: Module, wasi: Wasi, engine: str = "interp", **options: Any) -> int:
    """Run ``_start`` to completion and return the exit code (``proc_exit``'s, else 0).

    Traps propagate as :class:`wasmig.Trap` (the caller reports them)."""
    return run_start(instantiate_with_wasi(module, wasi, engine, **options))


def run_start(inst: WasiInstance) -> int:
    """Run an instance's ``_start`` (any engine) to completion; the exit code as for :func:`run_command`."""
    start = inst.exports.get("_start")
    if start is None:
        raise LinkError("the module has no `_start` export: it is not a WASI command")
    try:
        inst.invoke("_start")
    except ProcExit as e:
        return e.code
    return 0
