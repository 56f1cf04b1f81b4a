"""Running a benchmark's module on wasmtime with wasmig's own WASI, timing only ``_start``.

The guest benchmarks (``overhead.py``, ``guest_real.py``) compare variants of one program's code
(plain, the fast variant, a baseline's) under one host layer, so that only the guest's code
differs. That host used to be wasmtime's own WASI; since the pass puts the poll byte in a hidden
page in front of memory 0 (wasmig/instrument/hidden_page.py), only a host that sees the program's
memory from that page on can run the instrumented module: wasmig's WASI does
(:class:`wasmig.engines.wasmtime.program_memory.ProgramMemory`). Every variant, plain included,
runs under it, on wasmig's engine (:func:`wasmig.engines.wasmtime.runtime.engine`, the one
``wasmig run`` uses). The benchmarks' programs make few host calls, so the host's cost is small
and the same for every variant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import wasmtime

from wasmig import Module
from wasmig.engines.wasmtime.runtime import ENGINE_SETTINGS, WasmtimeInstance, new_engine
from wasmig.wasi.preview1 import ProcExit, Wasi


class _EngineOnly:
    """:class:`~wasmig.engines.wasmtime.runtime.ExtraLinks` that only names the engine (the
    compiled module's) and adds nothing."""

    provides: dict[str, tuple[str, ...]] = {}

    def __init__(self, wasm_engine: wasmtime.Engine) -> None:
        self.wasm_engine = wasm_engine

    def define(self, inst: WasmtimeInstance, linker: wasmtime.Linker) -> None:
        pass

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn


_ENGINE: list[wasmtime.Engine] = []


def bench_engine() -> wasmtime.Engine:
    """The engine every variant is compiled for: ``wasmig run``'s settings, and the
    exception-handling proposal with ``WASMIG_BENCH_EXCEPTIONS=1`` (unwind_exceptions.py's
    pricing modules use it)."""
    if not _ENGINE:
        settings = dict(ENGINE_SETTINGS)
        if os.environ.get("WASMIG_BENCH_EXCEPTIONS") == "1":
            settings["wasm_exceptions"] = True
        _ENGINE.append(new_engine(settings))
    return _ENGINE[0]


def timed_start(host: Module, compiled: wasmtime.Module, argv: Sequence[str], *, stdout: BinaryIO | None = None,
                preopens: Sequence[tuple[str, str]] = (), clock: Callable[[], float] = time.thread_time,
                wasm_engine: wasmtime.Engine | None = None) -> float:
    """Instantiate ``compiled`` (a variant of ``host``'s code: the same imports) with wasmig's
    WASI (``argv``; ``stdout`` a binary file, or the process's own; ``preopens`` as
    ``(host_dir, guest_name)``) and run ``_start``: the ``clock`` time it took. A non-zero exit
    code raises ``SystemExit``."""
    wasi = Wasi(list(argv), stdout=stdout, preopens=preopens)
    links = _EngineOnly(wasm_engine or bench_engine())
    inst = WasmtimeInstance(host, wasi, compiled=compiled, code=b"", links=links)
    start = inst.exports.get("wasmig:start")  # an instrumented module's start section, run on a fresh start
    if isinstance(start, wasmtime.Func):
        inst.invoke("wasmig:start")
    t0 = clock()
    try:
        inst.invoke("_start")
    except ProcExit as e:
        if e.code:
            raise SystemExit(f"the guest exited with code {e.code}") from None
    finally:
        elapsed = clock() - t0
        wasi.close()
    return elapsed
