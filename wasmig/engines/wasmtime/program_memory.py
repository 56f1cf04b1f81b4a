"""The program's view of an instrumented module's memory 0 when it has the hidden page.

The pass may put the poll byte in a page in front of memory 0 (:mod:`wasmig.instrument.hidden_page`),
so the program's byte ``a`` is the memory's byte ``a + HIDDEN``. Everything on the host side --
WASI, the snapshot's capture and load, a live migration's pages -- deals in the program's
addresses, so the instance's exports of memory 0 are replaced by a :class:`ProgramMemory`: the
same wasmtime memory (it links and imports as that memory: the extern is unchanged), whose size,
address, reads, writes and growth are the program's. Only the poll byte's address
(:func:`poll_address`) is of the whole memory.
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime

from wasmig.instrument.hidden_page import EXPORT, HIDDEN, PAGES

#: the exports that name memory 0 of an instrumented module (its own name, or the pass's)
MEMORY_0_EXPORTS = ("memory", "wasmig:mem0")
#: the memories the pass adds: its control memory and its poll memory
PASS_MEMORIES = frozenset(("wasmig:ctl", "wasmig:poll"))
_BytePointer = ctypes.POINTER(ctypes.c_ubyte)


class ProgramMemory(wasmtime.Memory):
    """Memory 0 from the program's first byte on (``HIDDEN`` bytes in): wasmtime-py's
    ``Memory`` methods answer for the program's memory (``read``, ``write`` and
    ``get_buffer_ptr`` go through :meth:`data_ptr` and :meth:`data_len`)."""

    def size(self, store: Any) -> int:
        return super().size(store) - PAGES

    def data_len(self, store: Any) -> int:
        return super().data_len(store) - HIDDEN

    def data_ptr(self, store: Any) -> ctypes._Pointer[ctypes.c_ubyte]:
        return ctypes.cast(self.whole_address(store) + HIDDEN, _BytePointer)

    def grow(self, store: Any, delta: int) -> int:
        return super().grow(store, delta) - PAGES

    def whole_address(self, store: Any) -> int:
        """The address of the whole memory's byte 0 (the hidden page's)."""
        return ctypes.addressof(super().data_ptr(store).contents)


def has_hidden_page(exports: Any) -> bool:
    """Whether an instance's exports are an instrumented module's with the hidden page."""
    return EXPORT in exports and "wasmig:state" in exports


def program_exports(items: dict[str, Any]) -> dict[str, Any]:
    """``items`` (an instance's exports by name), memory 0's exports made :class:`ProgramMemory`
    when the module has the hidden page; unchanged otherwise."""
    if has_hidden_page(items):  # every memory it exports but the pass's own is memory 0 (the one it had)
        for name, mem in items.items():
            if type(mem) is wasmtime.Memory and name not in PASS_MEMORIES:
                items[name] = ProgramMemory._from_raw(mem._memory)
    return items


def poll_address(exports: Any, store: Any, poll: int) -> int:
    """The address of the poll byte (at offset ``poll``): in memory 0's hidden page, else in the
    pass's poll memory. Neither memory ever moves (``memory_may_move`` is off)."""
    if has_hidden_page(exports):
        for name in MEMORY_0_EXPORTS:
            mem = exports.get(name)
            if isinstance(mem, ProgramMemory):
                return mem.whole_address(store) + poll
        raise RuntimeError("an instrumented module with the hidden page exports no memory 0")
    return ctypes.addressof(exports["wasmig:poll"].data_ptr(store).contents) + poll
