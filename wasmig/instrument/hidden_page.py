"""The hidden page: the poll byte in a page of memory 0 that the program cannot reach.

A poll is a load of the poll byte. In a memory of its own, the poll needs that memory's base
address, which Cranelift loads once per function and keeps in a callee-saved register across
the calls of the hot functions (a register fewer for the program: spills in QuickJS's
``map_find_record`` and ``JS_CallInternal``). Memory 0's base is kept in a register anyway, so
a poll of a byte of memory 0 costs only its load: priced at 1.5-4% of QuickJS's run
(docs/instrument.md, "Session 12").

Memory 0 holds the program's bytes, so the pass gives it one page more, *in front*: the
instrumented module's memory 0 is ``HIDDEN`` bytes longer and the program's byte ``a`` lives at
``a + HIDDEN``. Every access of the program's code to memory 0 is moved up by ``HIDDEN``:

- a load, store or atomic's static offset (its ``memarg``) grows by ``HIDDEN``: the program's
  address space ``[0, size)`` becomes ``[HIDDEN, HIDDEN + size)`` and its out-of-bounds accesses
  stay out of bounds, so the program can neither read nor write the hidden page;
- ``memory.size`` answers one page less, ``memory.grow`` one page less than the old size (and
  -1 still for a failure);
- ``memory.fill``, ``memory.copy`` and ``memory.init`` move their memory addresses, saturating
  at 2**32 - 1 (an address beyond the memory stays beyond it);
- an active data segment's offset grows by ``HIDDEN``; the memory's limits by a page.

The host sees the program's memory from byte ``HIDDEN`` on
(:class:`wasmig.engines.wasmtime.program_memory.ProgramMemory`), so the canonical state, WASI
and the snapshots are unchanged. A module gets the hidden page only when all of this is possible
(:func:`fits`); otherwise the pass polls a memory of its own, as before.

Which modules get it (:func:`chosen`): the page is not free. Cranelift folds an access's base,
index and displacement into one x86 operand for a plain load or store, but a load it merges into
an arithmetic instruction (``vmulsd 0x10000(%r15)``) gets a ``lea`` of its own for base + index
once the displacement is not zero: a loop of array arithmetic pays an instruction per access
(``overhead.py``, session 13: matmul 1.26x plain against 0.95x, pb_syrk 1.42x against 1.00x,
geomean of 27 kernels 1.05x against 1.00x). A register is worth more than that in the giant
functions of an interpreter, where the poll memory's base held one across the whole dispatch loop
(QuickJS's guest 1.024x and 1.034x plain against 1.089x and 1.068x, two runs; CPython 0.852x
either way). So by default a module gets the page when one of its functions has
``MIN_FUNCTION`` instructions or more (the size at which :mod:`~wasmig.instrument.widen` too
treats a function as an interpreter's loop); ``instrument(hidden_page=True)`` asks for it
wherever it fits (the spec and unit tests), ``False`` never.

Limit: a memory that may grow to all 65,536 pages gives the program 65,535 (a page is the
hidden one), and a bulk operation of zero bytes at an address past 2**32 - 65,537 in such a
full memory traps where it would not. Neither is reachable below 4 GiB.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wasmig.binary.opcodes import IMM

if TYPE_CHECKING:
    from wasmig.binary.ir import Instr
    from wasmig.binary.ir import Module as IRModule

#: the hidden page's size: the program's memory starts this many bytes into memory 0
HIDDEN = 65536
PAGES = 1
#: the export (an immutable i32 global: ``HIDDEN``) that tells the host memory 0 has the page
EXPORT = "wasmig:base"
_U32 = 0xFFFFFFFF
#: a module with a function of this many instructions gets the page by default (:func:`chosen`):
#: widen.MIN_BIG's size of an interpreter's loop, written again because every start reads this
#: module and importing widen.py would add its imports (dataclasses among them) to each
MIN_FUNCTION = 5000
#: the opcodes with a ``memarg`` (loads, stores, atomics): their offset moves
MEMARG_OPS = frozenset(op for op, kind in IMM.items() if kind == "memarg")


def _f64(x: float) -> int:
    """The bits of ``f64.const x`` (the IR's immediate)."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


#: ``memory.size``'s result, less the hidden page
SIZE_FIX: tuple[tuple[int, object], ...] = ((0x41, PAGES), (0x6B, None))
#: ``memory.grow``'s result r (old size in pages, or -1): r - 1, or -1. One use of r, so no local:
#: max(r - 1, -1) as f64 (exact for every i32)
GROW_FIX: tuple[tuple[int, object], ...] = (
    (0xB7, None), (0x44, _f64(PAGES)), (0xA1, None), (0x44, _f64(-1.0)), (0xA5, None), (0xAA, None))
#: an address on the stack moved up by the hidden page: min(a + HIDDEN, 2**32 - 1) as f64 (exact)
ADDRESS_FIX: tuple[tuple[int, object], ...] = (
    (0xB8, None), (0x44, _f64(HIDDEN)), (0xA0, None), (0x44, _f64(_U32)), (0xA4, None), (0xAB, None))


def fits(ir: IRModule) -> bool:
    """Whether ``ir`` (wasm 2.0 or the threads proposal, at most one memory) can have the hidden
    page: its one memory is its own (not imported: the importer made it) and not shared (a
    wasi-threads program's, which its runner makes), every active data segment's offset is a
    constant, and no static offset of an access is within a page of 2**32."""
    if len(ir.mems) != 1 or ir.all_mems() != ir.mems or ir.mems[0].shared:
        return False
    for seg in ir.datas:
        if seg.mode == "active" and not _const_offset(seg.offset):
            return False
    for f in ir.funcs:
        for ins in f.body:
            if ins.op in MEMARG_OPS and ins.imm[1] > _U32 - HIDDEN:
                return False
    return True


def chosen(ir: IRModule, asked: bool | None) -> bool:
    """Whether the pass gives ``ir`` the hidden page: ``asked`` True (wherever it fits), False
    (never) or None (by default: where it fits and a function has ``MIN_FUNCTION``
    instructions or more; see the module's docstring)."""
    if asked is False or not fits(ir):
        return False
    return asked is True or any(len(f.body) >= MIN_FUNCTION for f in ir.funcs)


def _const_offset(expr: Sequence[Instr] | None) -> bool:
    return expr is not None and len(expr) == 2 and expr[0].op == 0x41 and expr[1].op == 0x0B


def hide(ir: IRModule) -> None:
    """Give ``ir``'s memory 0 the hidden page: its limits and its active data segments (``ir``'s
    lists are the pass's copies; the bodies move one at a time, :func:`shifted_body`)."""
    from wasmig.binary.ir import Data, Instr, Limits, MemType  # the host's start (constants only) stays light

    limits = ir.mems[0].limits
    most = None if limits.max is None or limits.max + PAGES > 65536 else limits.max + PAGES
    ir.mems[0] = MemType(Limits(limits.min + PAGES, most))
    for k, seg in enumerate(ir.datas):
        if seg.mode == "active" and seg.memory == 0:
            at = (seg.offset[0].imm & _U32) + HIDDEN  # type: ignore[index]
            if at > _U32:  # the segment lies beyond any memory: instantiation fails, as it did
                at = _U32
            signed = at - (1 << 32) if at >= 1 << 31 else at
            ir.datas[k] = Data("active", seg.init, 0, [Instr(0x41, signed), Instr(0x0B)])


def shifted_body(body: list[Instr]) -> list[Instr]:
    """``body`` with every memory-0 access's static offset moved up by the hidden page (the same
    list if it has none). Each instruction keeps its original offset, which the site map and
    the origin tags record."""
    from wasmig.binary.ir import Instr

    at = [k for k, ins in enumerate(body) if ins.op in MEMARG_OPS]
    if not at:
        return body
    out = list(body)
    for k in at:
        ins = out[k]
        imm = ins.imm
        if len(imm) == 2 or imm[2] == 0:
            out[k] = Instr(ins.op, (imm[0], imm[1] + HIDDEN), ins.offset)
    return out


def hidden_function(f: object) -> object:
    """Function ``f`` with its body's accesses moved (:func:`shifted_body`); ``f`` itself if it
    has none. A new Function is not ``canonical``: its bytes are no longer the module's."""
    import dataclasses

    body = shifted_body(f.body)  # type: ignore[attr-defined]
    return f if body is f.body else dataclasses.replace(f, body=body)  # type: ignore[attr-defined, type-var]
