"""Capture a suspended interpreter instance into the canonical :class:`Snapshot`, and rebuild a
running interpreter instance from one.

The interpreter keeps pcs as instruction indices and values in its internal representation;
this module is the one place that translates them to canonical byte offsets and ``(type, bits)``
values and back, using the validator's operand-stack types for the type of every stack slot.
Restoring checks every frame against the module (function, pc, locals and stack types), so a
snapshot that does not fit the module is refused instead of running into undefined behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from wasmig.engines.interp.instance import InterpInstance
from wasmig.instrument.liveness import dead_value, live_locals_of
from wasmig.interp.machine import Frame, ensure_compiled
from wasmig.interp.store import WasmFunction, from_bits, to_bits
from wasmig.module import Module
from wasmig.snapshot.state import (
    FrameState,
    GlobalState,
    MemoryState,
    Snapshot,
    SnapshotError,
    TableState,
    Value,
)
from wasmig.wasi.preview1 import Wasi

_CALLS = (0x10, 0x11)


def _value(t: str, v: Any, func_index: dict[int, int]) -> Value:
    if t == "funcref":
        if v is None:
            return (t, None)
        idx = func_index.get(id(v))
        if idx is None:
            raise SnapshotError("cannot checkpoint: a function reference from another instance is live")
        return (t, idx)
    if t == "externref":
        if v is not None:
            raise SnapshotError("cannot checkpoint: a host (externref) value is live")
        return (t, None)
    return (t, to_bits(t, v))


def capture(instance: InterpInstance, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
    """The canonical state of a suspended instance (its machine must be stopped at a point).
    ``with_memory=False`` leaves the memories' bytes empty (a live migration sends them itself,
    page by page, without a copy of the whole memory while the guest is stopped).
    ``memory_in_place``: the memories' data are the instance's own bytearrays, not copies, for a
    checkpoint written before the machine runs again (no copy of the whole memory)."""
    machine = instance.machine
    inst = instance.store
    module = instance.module
    if machine.frames and machine.point is None:
        raise SnapshotError("cannot checkpoint: the instance is running and not suspended at a checkpointable point")
    point = machine.point if machine.frames else "idle"  # idle: between calls, no frames at all
    frames = capture_frames(instance, point)
    memories = [MemoryState(mdesc.limits.min, m.max_pages,
                            (m.data if memory_in_place else bytes(m.data)) if with_memory else b"")
                for m, mdesc in zip(inst.mems, module.ir.all_mems(), strict=True)]
    tables, globals_, dropped_data, dropped_elems = capture_instance_parts(instance)
    wasi_state = None
    if instance.wasi is not None:
        from wasmig.wasi.snapshot import capture_wasi

        wasi_state = capture_wasi(instance.wasi)
    return Snapshot(
        module_sha256=module.sha256 or "", steps=machine.steps if machine.steps_counted else None, point=point,
        frames=frames,
        memories=memories, tables=tables, globals=globals_,
        dropped_data=dropped_data, dropped_elems=dropped_elems,
        wasi=wasi_state, instructions=machine.instructions, engine="interp", created_ns=time.time_ns(),
    )


def capture_frames(instance: InterpInstance, point: str, pending: list[Any] | tuple[Any, ...] = ()) -> list[FrameState]:
    """The canonical frames of an instance's machine, its innermost frame at ``point``. ``pending``:
    values the innermost frame's operand stack holds in the snapshot but the machine does not (a
    thread in ``memory.atomic.wait``: the wait's operands, its pc past the wait; a thread back
    from a host call and waiting for its turn: the call's results, its pc past the call)."""
    machine = instance.machine
    inst = instance.store
    module = instance.module
    func_index = {id(f): i for i, f in enumerate(inst.funcs)}
    n_imported = module.ir.num_imported_funcs()
    frames: list[FrameState] = []
    all_frames = machine.frames
    for depth, fr in enumerate(all_frames):
        func = fr.func
        if func.instance is not inst:
            raise SnapshotError("cannot checkpoint: frames of another module instance are on the stack")
        body = func.ir.body
        info = inst.validation.functions[func.index - n_imported]
        innermost = depth == len(all_frames) - 1
        end = all_frames[depth + 1].base if not innermost else len(machine.stack)
        values = machine.stack[fr.base:end]
        if innermost and pending:
            values = [*values, *pending]
        if not innermost:
            at = fr.pc - 1  # suspended in the call at pc - 1
            callee = all_frames[depth + 1].func
            consumed = len(callee.type.params) + (1 if body[at].op == 0x11 else 0)  # + call_indirect's index
            types = info.stack_before[at][: len(info.stack_before[at]) - consumed]
        elif point in ("loop", "wait"):
            at = fr.pc - 1  # the loop instruction, already entered; the wait, its operands taken
            types = info.stack_before[at]
        else:  # entry, import_call, instruction: pc is the instruction to execute next
            at = fr.pc
            types = info.stack_before[at]
        if len(types) != len(values) or any(t is None for t in types):
            raise SnapshotError(f"internal error: operand stack of {func.name} does not match the validator "
                                f"({len(values)} values, {len(types)} types)")
        local_types = info.local_types
        live = live_locals_of(info, body)[at]  # dead locals are canonically zero (snapshot-format.md)
        frames.append(FrameState(
            func.index, body[at].offset,
            [_value(t, v, func_index) if live >> j & 1 else dead_value(t)
             for j, (t, v) in enumerate(zip(local_types, fr.locals, strict=True))],
            [_value(t, v, func_index) for t, v in zip(types, values, strict=True)],  # type: ignore[arg-type]
        ))
    return frames


def capture_instance_parts(instance: InterpInstance) -> tuple[list[TableState], list[GlobalState], list[bool],
                                                                  list[bool]]:
    """An instance's tables, globals and dropped segments, canonical."""
    inst = instance.store
    func_index = {id(f): i for i, f in enumerate(inst.funcs)}
    tables = [TableState(t.elem_type, tdesc.limits.min, t.max,
                         [_value(t.elem_type, e, func_index)[1] for e in t.elements])
              for t, tdesc in zip(inst.tables, instance.module.ir.all_tables(), strict=True)]
    globals_ = [GlobalState(g.type, g.mutable, _value(g.type, g.internal, func_index)) for g in inst.globals]
    return tables, globals_, [len(d) == 0 for d in inst.datas], [len(e) == 0 for e in inst.elems]


def _internal(value: Value, want: str, inst: Any, what: str) -> Any:
    t, bits = value
    if t != want:
        raise SnapshotError(f"snapshot does not fit the module: {what} is {t}, the module says {want}")
    if t == "funcref":
        if bits is None:
            return None
        if bits >= len(inst.funcs):
            raise SnapshotError(f"snapshot does not fit the module: {what} refers to function {bits}")
        return inst.funcs[bits]
    return from_bits(t, bits)


def restore(module: Module, snap: Snapshot, imports: Mapping[str, Mapping[str, Any]] | Wasi | None = None,
            engine: str = "interp", *, instance: InterpInstance | None = None) -> InterpInstance:
    """An interpreter instance in the snapshot's state, ready for ``instance.machine.resume()``.
    ``instance``: put the state into this one, made beforehand with ``Instance(module, imports,
    engine, initialize=False)`` and never run (a live migration's target makes it before the
    program stops: 0.17 s for CPython's 11,448 functions)."""
    if module.sha256 != snap.module_sha256:
        raise SnapshotError(f"the snapshot is of another module (sha256 {snap.module_sha256[:16]}..., "
                            f"this module is {str(module.sha256)[:16]}...)")
    if snap.threads is not None:
        raise SnapshotError("the snapshot is of a multi-threaded program: it restores as a whole program "
                            "(`wasmig restore`, or the interpreter engine's restore), not as one instance")
    if instance is None:
        instance = InterpInstance(module, imports, engine, initialize=False)
    inst = instance.store
    machine = instance.machine
    ir = module.ir
    if (len(snap.memories), len(snap.tables), len(snap.globals)) != (len(inst.mems), len(inst.tables),
                                                                       len(inst.globals)):
        raise SnapshotError("snapshot does not fit the module: memory, table or global counts differ")
    for i, (m, ms) in enumerate(zip(inst.mems, snap.memories, strict=True)):
        pages = len(ms.data) // 65536
        cap = 65536 if m.max_pages is None else m.max_pages
        if pages > cap or pages < ir.all_mems()[i].limits.min:
            raise SnapshotError(f"snapshot does not fit the module: memory {i} has {pages} pages")
        m.data[:] = ms.data  # in place: the bytearray object stays the one everything refers to
    restore_instance_parts(instance, snap.point, snap.frames, snap.tables, snap.globals, snap.dropped_data,
                           snap.dropped_elems)
    # a snapshot without a step count (wasmtime's fast variant) continues without one: the
    # machine counts from 0 internally but its snapshots say None
    machine.steps = snap.steps or 0
    machine.steps_counted = snap.steps is not None
    machine.instructions = snap.instructions
    machine.point = snap.point if snap.frames else None
    return instance


def restore_instance_parts(instance: InterpInstance, point: str, frames: list[FrameState], tables: list[TableState],
                           globals_: list[GlobalState], dropped_data: list[bool], dropped_elems: list[bool]) -> None:
    """Put an instance's own state (what a thread of a threaded program has of its own: everything
    but the memories) into ``instance``, each part checked against the module. At a ``wait`` point
    the wait's operands are left on top of the machine's stack, the pc past the wait."""
    inst = instance.store
    if (len(tables), len(globals_)) != (len(inst.tables), len(inst.globals)):
        raise SnapshotError("snapshot does not fit the module: table or global counts differ")
    if (len(dropped_data), len(dropped_elems)) != (len(inst.datas), len(inst.elems)):
        raise SnapshotError("snapshot does not fit the module: segment counts differ")
    for i, (t, ts) in enumerate(zip(inst.tables, tables, strict=True)):
        if ts.elem_type != t.elem_type or len(ts.elements) < t.limits.min:
            raise SnapshotError(f"snapshot does not fit the module: table {i}")
        t.elements[:] = [_internal((ts.elem_type, e), t.elem_type, inst, f"table {i} element") for e in ts.elements]
    for i, (g, gs) in enumerate(zip(inst.globals, globals_, strict=True)):
        if gs.type != g.type or gs.mutable != g.mutable:
            raise SnapshotError(f"snapshot does not fit the module: global {i}")
        g.internal = _internal(gs.value, g.type, inst, f"global {i}")
    for i, dropped in enumerate(dropped_data):
        if dropped:
            inst.datas[i] = b""
    for i, dropped in enumerate(dropped_elems):
        if dropped:
            inst.elems[i] = []
    _restore_frames(instance, point, frames, tables)


_WAITS = (0xFE01, 0xFE02)


def _restore_frames(instance: InterpInstance, point: str, snap_frames: list[FrameState],
                    snap_tables: list[TableState]) -> None:
    inst = instance.store
    machine = instance.machine
    ir = instance.module.ir
    n_imported = ir.num_imported_funcs()
    if (point == "idle") != (not snap_frames):
        raise SnapshotError("corrupt snapshot: an idle snapshot has no frames, any other has some")
    slots = 0
    for depth, fs in enumerate(snap_frames):
        innermost = depth == len(snap_frames) - 1
        if not n_imported <= fs.func < len(inst.funcs):
            raise SnapshotError(f"snapshot does not fit the module: frame {depth} is in function {fs.func}")
        func = inst.funcs[fs.func]
        assert isinstance(func, WasmFunction)
        ensure_compiled(func)
        body = func.ir.body
        index = {ins.offset: i for i, ins in enumerate(body)}
        at = index.get(fs.pc)
        info = inst.validation.functions[fs.func - n_imported]
        if at is None or info.unreachable[at]:
            raise SnapshotError(f"snapshot does not fit the module: frame {depth} pc {fs.pc:#x} is not a live "
                                f"instruction of {func.name}")
        op = body[at].op
        if not innermost:
            if op not in _CALLS:
                raise SnapshotError(f"snapshot does not fit the module: frame {depth} is not at a call")
            callee_idx = snap_frames[depth + 1].func
            callee = inst.funcs[callee_idx] if callee_idx < len(inst.funcs) else None
            if op == 0x10 and body[at].imm != callee_idx:
                raise SnapshotError(f"snapshot does not fit the module: frame {depth} calls another function")
            if callee is None:
                raise SnapshotError("snapshot does not fit the module: unknown callee")
            if op == 0x11 and callee.type != ir.types[body[at].imm[0]]:
                raise SnapshotError(f"snapshot does not fit the module: frame {depth}'s indirect call has another type")
            consumed = len(callee.type.params) + (1 if op == 0x11 else 0)  # + call_indirect's table index
            types = info.stack_before[at][: len(info.stack_before[at]) - consumed]
            resume = at + 1
        elif point == "loop":
            if op != 0x03:
                raise SnapshotError("snapshot does not fit the module: a loop point that is not at a loop")
            types, resume = info.stack_before[at], at + 1
        elif point == "import_call":
            types, resume = info.stack_before[at], at
            if op == 0x10:
                target = body[at].imm
            elif op == 0x11 and fs.stack and fs.stack[-1][0] == "i32":  # the table index is on top
                table_idx = body[at].imm[1]
                elements = snap_tables[table_idx].elements if table_idx < len(snap_tables) else []
                slot = fs.stack[-1][1]
                target = elements[slot] if isinstance(slot, int) and slot < len(elements) else None
            else:
                target = None
            if target is None or target >= n_imported:
                raise SnapshotError("snapshot does not fit the module: an import_call point not at an import call")
        elif point == "after_call":  # the fast variant stopped just after a call returned
            if at == 0 or body[at - 1].op not in _CALLS or info.unreachable[at - 1]:
                raise SnapshotError("snapshot does not fit the module: an after_call point not just after a call")
            types, resume = info.stack_before[at], at
        elif point == "entry":
            if at != 0:
                raise SnapshotError("snapshot does not fit the module: an entry point not at a function's start")
            types, resume = info.stack_before[at], at
        elif point == "wait":
            if op not in _WAITS:
                raise SnapshotError("snapshot does not fit the module: a wait point not at memory.atomic.wait")
            types, resume = info.stack_before[at], at + 1
        else:
            types, resume = info.stack_before[at], at
        if len(fs.locals) != len(info.local_types) or len(fs.stack) != len(types):
            raise SnapshotError(f"snapshot does not fit the module: frame {depth} ({func.name}) has "
                                f"{len(fs.locals)} locals and {len(fs.stack)} stack values, expected "
                                f"{len(info.local_types)} and {len(types)}")
        locals_ = [_internal(v, t, inst, f"frame {depth} local {i}")
                   for i, (v, t) in enumerate(zip(fs.locals, info.local_types, strict=True))]
        base = len(machine.stack)
        machine.stack.extend(_internal(v, t, inst, f"frame {depth} stack slot {i}")  # type: ignore[arg-type]
                             for i, (v, t) in enumerate(zip(fs.stack, types, strict=True)))
        slots += len(locals_)
        frame = Frame(func, locals_, base, slots)
        frame.pc = resume
        machine.frames.append(frame)
    if len(machine.frames) > machine.max_frames or slots > machine.max_slots:
        raise SnapshotError("snapshot's call stack is deeper than this machine allows")

