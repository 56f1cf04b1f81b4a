"""Where each instruction of an instrumented function came from, so a trap in the instrumented
module is reported at the original module's byte offsets (as the interpreter reports it).

The pass tags every instruction it copies from the original body with that instruction's
canonical offset and every instruction it adds with -1; this module stores the tags, per
defined function of the module (the pass's own functions after the instrumented ones, then the
copies, then the *entry functions* of the functions with entry loops (``transfer.py``); a rewind
module's functions are the copies and entry functions alone) in emission order, as the custom
section ``wasmig.origins`` (zlib-compressed LEB128 of ``offset + 1``, 0 for an added
instruction), followed by the *owners*: the count of entry functions and, for each, the original
defined function whose code it runs (an entry function exists only for some functions, so its
index does not say whose it is). On a trap, the instrumented module is decoded once and its instruction list
— the same list, in the same order — aligned with them.
"""

from __future__ import annotations

import zlib
from typing import Any

from wasmig.binary.leb128 import decode_u, encode_u
from wasmig.instrument.linking import HELPERS

SECTION_NAME = "wasmig.origins"


def origin_tags(offsets: list[int]) -> bytes:
    """One function's entry of the section: its instruction count, then the tag of each
    instruction from its original offset (-1: added by the pass)."""
    out = bytearray(encode_u(len(offsets)))
    for offset in offsets:
        tag = offset + 1 if offset >= 0 else 0
        if tag < 0x80:  # most tags are 0 (added) or fit two bytes: no call for those
            out.append(tag)
        elif tag < 0x4000:
            out.append(tag & 0x7F | 0x80)
            out.append(tag >> 7)
        else:
            out += encode_u(tag)
    return bytes(out)


def pack_origins(entries: list[bytes], owners: list[int] | None = None) -> bytes:
    """The section's payload from every function's :func:`origin_tags`, in function order (the
    pass makes them one function at a time and keeps only these bytes), then the entry
    functions' ``owners`` (original defined function indices)."""
    owners = owners or []
    tail = encode_u(len(owners)) + b"".join(encode_u(k) for k in owners)
    return zlib.compress(encode_u(len(entries)) + b"".join(entries) + tail, 6)


def encode_origins(bodies: list[list[Any]]) -> bytes:
    return pack_origins([origin_tags([ins.offset for ins in body]) for body in bodies])


def decode_origins(raw: bytes) -> tuple[list[list[int]], list[int]]:
    """Every function's tags, and the entry functions' owners (:func:`pack_origins`)."""
    data = zlib.decompress(raw)
    n, pos = decode_u(data, 0)
    bodies = []
    for _ in range(n):
        count, pos = decode_u(data, pos)
        tags = []
        for _ in range(count):
            tag, pos = decode_u(data, pos)
            tags.append(tag - 1)
        bodies.append(tags)
    owners: list[int] = []
    if pos < len(data):
        n, pos = decode_u(data, pos)
        for _ in range(n):
            k, pos = decode_u(data, pos)
            owners.append(k)
    return bodies, owners


def canonical_defined(defined: int, n_original: int, owners: list[int] | None = None) -> int | None:
    """The original defined function whose code instrumented defined function ``defined`` runs:
    itself, for a rewind copy (``n_original + HELPERS + k``) function ``k``, for entry function
    ``2 * n_original + HELPERS + j`` its owner ``owners[j]``; None for the pass's own functions.
    (A rewind module's copies and entry functions have those same function indices.)"""
    if 0 <= defined < n_original:
        return defined
    if n_original + HELPERS <= defined < 2 * n_original + HELPERS:
        return defined - n_original - HELPERS
    j = defined - 2 * n_original - HELPERS
    if owners and 0 <= j < len(owners):
        return owners[j]
    return None


class OriginMap:
    """Translate (function index, absolute offset in the instrumented module) into the absolute
    offset of the original instruction it was copied from (None for an added instruction)."""

    def __init__(self, instrumented: bytes, original: Any) -> None:
        from wasmig.binary.decoder import decode_module, read_custom_section
        from wasmig.binary.features import INSTRUMENTED

        raw = read_custom_section(instrumented, SECTION_NAME)
        self._tags, self.owners = decode_origins(raw) if raw is not None else ([], [])
        self._ir = decode_module(instrumented, features=INSTRUMENTED)
        self._original = original  # the original module's IR
        self._index: dict[int, dict[int, int]] = {}

    def translate(self, func_index: int, offset: int) -> int | None:
        imported = self._ir.num_imported_funcs()
        defined = func_index - imported
        if not 0 <= defined < len(self._tags):
            return None
        # a rewind module's functions are the copies alone, after its imports (every function of
        # the run module): its tags are the copies'
        original = canonical_defined(func_index - self._original.num_imported_funcs(), len(self._original.funcs),
                                     self.owners)
        if original is None:
            return None
        index = self._index.get(defined)
        if index is None:
            func = self._ir.funcs[defined]
            index = self._index[defined] = {func.body_offset + ins.offset: i for i, ins in enumerate(func.body)}
        i = index.get(offset)
        tags = self._tags[defined]
        if i is None or i >= len(tags) or tags[i] < 0:
            return None
        return self._original.funcs[original].body_offset + tags[i]
