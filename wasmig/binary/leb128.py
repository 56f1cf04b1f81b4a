"""LEB128 encoders (the variable-length integers of the WebAssembly binary format), and one
plain unsigned reader.

The decoder keeps its own readers next to its cursor so it can report precise byte offsets and
enforce the spec's per-type length limits; :func:`decode_u` is for walking section headers and
reading wasmig's own custom sections, where neither matters.
"""

from __future__ import annotations

#: single-byte results are by far the most common (indices, small constants): precompute them
_SMALL_U = [bytes((i,)) for i in range(0x80)]
_SMALL_S = {i: bytes((i & 0x7F,)) for i in range(-64, 64)}


def encode_u(n: int) -> bytes:
    """Unsigned LEB128 of ``n`` (minimal length). Raises ``ValueError`` for negative ``n``."""
    if 0 <= n < 0x80:
        return _SMALL_U[n]
    if n < 0:
        raise ValueError(f"unsigned LEB128 of a negative number: {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_s(n: int) -> bytes:
    """Signed LEB128 of ``n`` (minimal length, two's complement)."""
    small = _SMALL_S.get(n)
    if small is not None:
        return small
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7  # arithmetic shift: stays -1 for negative numbers
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def decode_u(data: bytes, pos: int) -> tuple[int, int]:
    """(the unsigned LEB128 at ``pos``, the position after it). Raises ``ValueError`` when it runs
    past the end of ``data`` or is longer than a u64's ten bytes."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad or truncated unsigned LEB128")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos
