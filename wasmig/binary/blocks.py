"""The block structure of a function body: which ``end`` (and ``else``) closes each construct.
Shared by the interpreter's compiler and the instrumentation pass, which both walk bodies."""

from __future__ import annotations

from collections.abc import Iterable

from wasmig.binary.ir import Instr


def match_blocks(body: list[Instr], at: Iterable[int] | None = None) -> tuple[dict[int, int], dict[int, int]]:
    """Map each block/loop/if index to its ``end`` index, and each ``if`` to its ``else`` (if any).
    ``at``: ascending indices of ``body`` holding every block/loop/if/else/end (others may be
    among them), when the caller has them: only those are looked at."""
    end_of: dict[int, int] = {}
    else_of: dict[int, int] = {}
    open_blocks: list[int] = []
    for i in range(len(body)) if at is None else at:
        op = body[i].op
        if op in (0x02, 0x03, 0x04):
            open_blocks.append(i)
        elif op == 0x05:
            else_of[open_blocks[-1]] = i
        elif op == 0x0B and open_blocks:
            end_of[open_blocks.pop()] = i
    return end_of, else_of
