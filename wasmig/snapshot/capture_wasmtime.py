"""Capture the canonical snapshot of an instrumented module that unwound on wasmtime.

After the instrumented module has unwound (``$state == 1``), its control memory holds the frame
records; this module turns them and the rest of the instance (memory, globals via the pass's
``wasmig:dump``, tables, dropped segments, the WASI state) into the same :class:`Snapshot` the
interpreter produces for the same program at the same step.
"""

from __future__ import annotations

import copy
import ctypes
import struct
import time
from typing import Any

from wasmig.instrument.sites import SiteMap
from wasmig.instrument.unwind import DROPS_BASE, GLOBALS_BASE
from wasmig.module import Module
from wasmig.snapshot.records import MASKS, frames_from_records
from wasmig.snapshot.state import GlobalState, MemoryState, Snapshot, SnapshotError, TableState

#: instructions that change a table at run time: wasmtime's tables cannot be read back as
#: function indices, so their contents are derived from the module (correct only without these)
_TABLE_MUTATORS = frozenset({0x26, 0xFC0C, 0xFC0E, 0xFC0F, 0xFC11})


_STATIC_TABLES: dict[str, list[TableState]] = {}


def static_tables(module: Module) -> list[TableState]:
    """The tables as the module's active element segments leave them (there is no table write);
    remembered per module (by sha256): it scans every instruction."""
    key = module.sha256
    if key is not None and key in _STATIC_TABLES:
        return copy.deepcopy(_STATIC_TABLES[key])
    tables = _static_tables(module)
    if key is not None:
        if len(_STATIC_TABLES) > 16:
            _STATIC_TABLES.clear()
        _STATIC_TABLES[key] = copy.deepcopy(tables)
    return tables


def _static_tables(module: Module) -> list[TableState]:
    ir = module.ir
    for f in ir.funcs:
        if any(ins.op in _TABLE_MUTATORS for ins in f.body):
            raise SnapshotError("cannot checkpoint on wasmtime: the module changes its tables at run time")
    tables = [TableState(t.elem, t.limits.min, t.limits.max, [None] * t.limits.min) for t in ir.all_tables()]
    for seg in ir.elems:
        if seg.mode != "active":
            continue
        if not seg.offset or seg.offset[0].op != 0x41:
            raise SnapshotError("cannot checkpoint on wasmtime: an element segment's offset is not a constant")
        offset = seg.offset[0].imm
        for k, expr in enumerate(seg.init):
            head = expr[0]
            tables[seg.table].elements[offset + k] = head.imm if head.op == 0xD2 else None
    return tables


def memory_export(exports: Any, i: int) -> Any:
    """Memory ``i`` of an instrumented instance: memory 0 under its own export name when the
    module exports it so, else as the pass exports every memory (``wasmig:mem<i>``)."""
    return exports["memory"] if i == 0 and "memory" in exports else exports[f"wasmig:mem{i}"]


def capture_wasmtime(instance: Any, module: Module, sitemap: SiteMap, *, with_memory: bool = True) -> Snapshot:
    """``instance``: a :class:`wasmig.engines.wasmtime.WasmtimeInstance` of the instrumented module,
    just unwound; ``module``: the original module; ``sitemap``: the pass's site map.
    ``with_memory=False`` leaves the memories' bytes empty (see :func:`wasmig.snapshot.capture.capture`)."""
    store, ex = instance.store, instance.exports
    if ex["wasmig:state"].value(store) != 1:
        raise SnapshotError("internal error: the instrumented module has not unwound")
    instance.invoke("wasmig:dump")
    ctl_mem = ex["wasmig:ctl"]
    ctl = bytes(ctl_mem.read(store, 0, ctl_mem.data_len(store)))
    frames, point = frames_from_records(ctl, sitemap)
    ir = module.ir
    globals_ = []
    for i, gt in enumerate(ir.all_globals()):
        if gt.type not in MASKS:
            raise SnapshotError("cannot checkpoint on wasmtime: reference-typed globals")
        bits = struct.unpack_from("<Q", ctl, GLOBALS_BASE + 8 * i)[0] & MASKS[gt.type]
        globals_.append(GlobalState(gt.type, gt.mutable, (gt.type, bits)))
    memories = []
    for i, mt in enumerate(ir.all_mems()):
        mem = memory_export(ex, i)
        size = mem.data_len(store) if with_memory else 0
        data = ctypes.string_at(ctypes.addressof(mem.data_ptr(store).contents), size) if size else b""  # one copy
        memories.append(MemoryState(mt.limits.min, mt.limits.max, data))
    n_data = len(ir.datas)
    dropped_data = [seg.mode == "active" or ctl[DROPS_BASE + i] != 0 for i, seg in enumerate(ir.datas)]
    dropped_elems = [seg.mode != "passive" or ctl[DROPS_BASE + n_data + i] != 0 for i, seg in enumerate(ir.elems)]
    wasi_state = None
    if instance.wasi is not None:
        from wasmig.wasi.snapshot import capture_wasi

        wasi_state = capture_wasi(instance.wasi)
    steps = ex["wasmig:steps"].value(store) & MASKS["i64"] if sitemap.counts_steps else None
    return Snapshot(module_sha256=module.sha256 or "", steps=steps,
                    point=point, frames=frames, memories=memories, tables=static_tables(module), globals=globals_,
                    dropped_data=dropped_data, dropped_elems=dropped_elems, wasi=wasi_state, instructions=None,
                    engine="wasmtime", created_ns=time.time_ns())
