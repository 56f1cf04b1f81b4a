"""Code placements of a whole module, at the byte level (no decoding of the code): for the big programs.

Where the machine code of a hot loop lands relative to cache-line and fetch boundaries moves a program by several
percent with its code unchanged (overhead.py's ``placed`` docstring: up to 15% for a kernel). A compiled module is
mapped at a page boundary, so every process that loads one artifact runs at the *same* placement: medians over any
number of whole-process rounds still report that one placement's luck as the variant's cost. So
``real_programs.py`` times every variant at a few placements, as ``overhead.py`` and ``guest_real.py`` do for the
guest alone.

:func:`placed` is ``overhead.placed``'s padding written straight into the binary: ``stores`` new mutable i32
globals and, at the start of the first defined function, ``global.get g; if; (i32.const k; global.set g+k)*; end``
(the first new global is 0, so the stores never run). The rest of the module's bytes are kept as they are, so a
26 MB CPython module is placed in well under a second, where decoding it to the IR and encoding it again takes
much longer. Cranelift puts functions at 32-byte boundaries, and each store to a global of its own takes bytes, so
2, 6 and 9 stores move every later function by 32, 64 and 96 bytes (see ``overhead.PLACEMENTS``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wasmig.binary.decoder import sections  # noqa: E402
from wasmig.binary.leb128 import decode_u, encode_u  # noqa: E402

#: where the global section goes among the standard sections (the binary format's order; 13 is the tag section)
_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}
_GLOBAL, _IMPORT, _CODE = 6, 2, 10


class PlacementError(ValueError):
    """The module cannot be placed (no defined function, or an import this reader does not know)."""


def _imported_globals(data: bytes, start: int, end: int) -> int:
    """How many of the import section's entries (payload ``data[start:end]``) are globals: the new globals'
    indices come after them and the module's own."""
    count, pos = decode_u(data, start)
    found = 0
    for _ in range(count):
        for _name in range(2):  # module and field names
            size, pos = decode_u(data, pos)
            pos += size
        kind = data[pos]
        pos += 1
        if kind == 0:  # function: a type index
            _, pos = decode_u(data, pos)
        elif kind in (1, 2):  # table (reference type, then limits) or memory (limits)
            if kind == 1:
                pos += 1
            flags = data[pos]
            _, pos = decode_u(data, pos + 1)
            if flags & 1:
                _, pos = decode_u(data, pos)
        elif kind == 3:  # global: value type, mutability
            found += 1
            pos += 2
        else:
            raise PlacementError(f"import of kind {kind} (not a core wasm 2.0 import)")
    if pos != end:
        raise PlacementError("the import section's entries do not fill it")
    return found


def _section(sid: int, payload: bytes) -> bytes:
    return bytes((sid,)) + encode_u(len(payload)) + payload


def placed(data: bytes, stores: int) -> bytes:
    """``data`` (a wasm module) with ``stores`` never-executed global stores padding its first defined function:
    the same program, its later functions' machine code moved (see the module docstring). ``stores == 0`` is the
    module as it is."""
    if stores == 0:
        return data
    found = list(sections(data))
    imported = sum(_imported_globals(data, s, e) for sid, s, e in found if sid == _IMPORT)
    own = 0
    for sid, s, _e in found:
        if sid == _GLOBAL:
            own, _ = decode_u(data, s)
    first = imported + own  # the index of the first new global
    entry = b"\x7f\x01\x41\x00\x0b"  # mutable i32, initialised to i32.const 0
    pad = b"\x23" + encode_u(first) + b"\x04\x40"  # global.get first; if (empty block type)
    for k in range(stores):
        pad += b"\x41" + encode_u(k + 1) + b"\x24" + encode_u(first + k)  # i32.const k+1; global.set first+k
    pad += b"\x0b"

    if not any(sid == _CODE for sid, _s, _e in found):
        raise PlacementError("the module defines no function to pad")
    out = bytearray(data[:8])
    wrote_globals = False
    for sid, s, e in found:
        if not wrote_globals and sid != 0 and _ORDER.get(sid, 0) > _ORDER[_GLOBAL]:
            out += _section(_GLOBAL, encode_u(stores) + entry * stores)  # the module had no global section
            wrote_globals = True
        if sid == _GLOBAL:
            count, pos = decode_u(data, s)
            out += _section(_GLOBAL, encode_u(count + stores) + data[pos:e] + entry * stores)
            wrote_globals = True
        elif sid == _CODE:
            out += _section(_CODE, _padded_code(data, s, e, pad))
        else:
            out += _section(sid, data[s:e])
    return bytes(out)


def _padded_code(data: bytes, start: int, end: int, pad: bytes) -> bytes:
    """The code section's payload with ``pad`` after the first body's local declarations."""
    count, pos = decode_u(data, start)
    if count == 0:
        raise PlacementError("the module defines no function to pad")
    size, body = decode_u(data, pos)
    groups, at = decode_u(data, body)
    for _ in range(groups):
        _, at = decode_u(data, at)  # how many locals
        at += 1  # of which value type
    first = data[body:at] + pad + data[at:body + size]
    return encode_u(count) + encode_u(len(first)) + first + data[body + size:end]
