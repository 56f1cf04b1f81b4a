"""Capture the canonical snapshot of an instrumented module that unwound on wasmtime.

After the instrumented module has unwound (``$state == 1``), its control memory holds the frame
records; this module turns them and the rest of the instance (memory, globals via the pass's
``wasmig:dump``, tables, dropped segments, the WASI state) into the same :class:`Snapshot` the
interpreter produces for the same program at the same step.
"""

from __future__ import annotations

import ctypes
import struct
import time
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError

if TYPE_CHECKING:  # imported by a capture, not by the start of a run that imports this module
    from wasmig.instrument.sites import SiteMap
    from wasmig.module import Module
    from wasmig.snapshot.state import FrameState, GlobalState, Snapshot, TableState


def static_tables(module: Module) -> list[TableState]:
    """The tables as the module's active element segments leave them (there is no table write),
    from the module's facts (:mod:`wasmig.binary.facts`: learnt once, cached by module digest)."""
    from wasmig.snapshot.state import TableState

    facts = module.facts
    if facts.elements is None:
        raise SnapshotError(f"cannot checkpoint on wasmtime: {facts.static_tables_problem}")
    return [TableState(elem, lo, hi, list(slots)) for (elem, lo, hi), slots in zip(facts.tables, facts.elements,
                                                                                     strict=True)]


def memory_export(exports: Any, i: int) -> Any:
    """Memory ``i`` of an instrumented instance: memory 0 under its own export name when the
    module exports it so, else as the pass exports every memory (``wasmig:mem<i>``)."""
    return exports["memory"] if i == 0 and "memory" in exports else exports[f"wasmig:mem{i}"]


def capture_wasmtime(instance: Any, module: Module, sitemap: SiteMap, *, with_memory: bool = True,
                     memory_in_place: bool = False) -> Snapshot:
    """``instance``: a :class:`wasmig.engines.wasmtime.runtime.WasmtimeInstance` of the instrumented module,
    just unwound; ``module``: the original module; ``sitemap``: the pass's site map.
    ``with_memory=False`` leaves the memories' bytes empty, ``memory_in_place=True`` makes them
    views of the guest's memory instead of copies (see :func:`wasmig.engines.interp.capture.capture`):
    valid only while the guest stays stopped."""
    from wasmig.engines.wasmtime.records import MASKS
    from wasmig.snapshot.state import MemoryState, Snapshot

    store, ex = instance.store, instance.exports
    frames, point, globals_, dropped_data, dropped_elems = capture_instance_parts(instance, module, sitemap)
    facts = module.facts
    memories = []
    for i, (least, most) in enumerate(facts.mems):
        mem = memory_export(ex, i)
        size = mem.data_len(store) if with_memory else 0
        address = ctypes.addressof(mem.data_ptr(store).contents) if size else 0
        if not size:
            data: bytes | memoryview = b""
        elif memory_in_place:
            data = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
        else:
            data = ctypes.string_at(address, size)  # one copy
        memories.append(MemoryState(least, most, data))
    wasi_state = None
    if instance.wasi is not None:
        from wasmig.wasi.snapshot import capture_wasi

        wasi_state = capture_wasi(instance.wasi)
    steps = ex["wasmig:steps"].value(store) & MASKS["i64"] if sitemap.counts_steps else None
    return Snapshot(module_sha256=module.sha256 or "", steps=steps,
                    point=point, frames=frames, memories=memories, tables=static_tables(module), globals=globals_,
                    dropped_data=dropped_data, dropped_elems=dropped_elems, wasi=wasi_state, instructions=None,
                    engine="wasmtime", created_ns=time.time_ns())


def capture_instance_parts(instance: Any, module: Module, sitemap: SiteMap
                           ) -> tuple[list[FrameState], str, list[GlobalState], list[bool], list[bool]]:
    """What an instrumented instance that just unwound has of its own: (frames, point, globals,
    dropped data segments, dropped element segments) — a single-threaded snapshot's, or one
    thread's of a wasi-threads program (its memory is the run's shared one)."""
    from wasmig.engines.wasmtime.records import MASKS, frames_from_records
    from wasmig.instrument.unwind import DROPS_BASE, GLOBALS_BASE
    from wasmig.snapshot.state import GlobalState

    store, ex = instance.store, instance.exports
    if ex["wasmig:state"].value(store) != 1:
        raise SnapshotError("internal error: the instrumented module has not unwound")
    instance.invoke("wasmig:dump")
    ctl_mem = ex["wasmig:ctl"]
    ctl = bytes(ctl_mem.read(store, 0, ctl_mem.data_len(store)))
    frames, point = frames_from_records(ctl, sitemap)
    facts = module.facts
    globals_ = []
    for i, (gtype, mutable) in enumerate(facts.globals):
        if gtype not in MASKS:
            raise SnapshotError("cannot checkpoint on wasmtime: reference-typed globals")
        bits = struct.unpack_from("<Q", ctl, GLOBALS_BASE + 8 * i)[0] & MASKS[gtype]
        globals_.append(GlobalState(gtype, mutable, (gtype, bits)))
    n_data = len(facts.data_modes)
    dropped_data = [mode == "a" or ctl[DROPS_BASE + i] != 0 for i, mode in enumerate(facts.data_modes)]
    dropped_elems = [mode != "p" or ctl[DROPS_BASE + n_data + i] != 0 for i, mode in enumerate(facts.elem_modes)]
    return frames, point, globals_, dropped_data, dropped_elems
