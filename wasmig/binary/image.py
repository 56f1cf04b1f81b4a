"""A module's initial linear memory, computed from its IR without instantiating it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wasmig.module import Module

PAGE_SIZE = 65536


def initial_image(module: Module) -> bytearray:
    """Memory 0 as a fresh instance of ``module`` has it: its minimum size, with the active data
    segments at constant offsets in place (what a migration's target holds before any page arrives)."""
    ir = module.ir
    mems = ir.all_mems()
    if not mems:
        return bytearray()
    image = bytearray(mems[0].limits.min * PAGE_SIZE)
    for seg in ir.datas:
        if seg.mode != "active" or seg.memory != 0 or len(seg.offset) != 2 or seg.offset[0].op != 0x41:
            continue
        start = seg.offset[0].imm
        if 0 <= start and start + len(seg.init) <= len(image):
            image[start:start + len(seg.init)] = seg.init
    return image
