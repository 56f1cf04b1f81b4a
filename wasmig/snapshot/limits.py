"""How much memory a restore may give a snapshot's program (``restore --max-memory``).

A snapshot's manifest says how large each memory is; a zero page costs it one msgpack ``nil``, so
a 67 KB snapshot can declare 65536 pages (4 GiB) per memory, which an interpreter restore used to
allocate, twice over. The size is therefore checked against a limit on the manifest alone, before
any page is read or any memory allocated: by default :data:`DEFAULT_MAX_MEMORY` (what the
interpreter can reasonably hold, and far above the largest real program tested, CPython's 80 MB),
or what ``--max-memory`` says. The module's own declared maximum is checked as well where the
module has been decoded (the interpreter); on wasmtime, the engine refuses to grow a memory
beyond it and maps pages only as they are written.
"""

from __future__ import annotations

import re
from typing import Any

from wasmig.errors import SnapshotError
from wasmig.snapshot.state import PAGE_SIZE

DEFAULT_MAX_MEMORY = 1 << 30
#: the largest snapshot file read from an object store (checked before it is downloaded): a
#: manifest names each of up to 65536 pages per memory with a 67-byte msgpack string, so 4 GiB
#: memories take 4.4 MB each; the rest (frames, globals, WASI state) is far smaller
MAX_STORE_MANIFEST = 256 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE_RE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4096``, ``512M``, ``2G``, ``64KiB`` -> bytes; ValueError (one line) otherwise."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size (expected e.g. 512M, 2G or a number of bytes).")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < PAGE_SIZE:
        raise ValueError(f"{text!r} is less than one 64 KiB page.")
    return value


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


def check_manifest_memory(manifest: dict[str, Any], limit: int | None, api: bool = False) -> int:
    """Refuse a manifest whose memories add up to more than ``limit`` bytes (default
    :data:`DEFAULT_MAX_MEMORY`); return their total. Reads only the page lists' lengths.
    ``api``: the message names :func:`wasmig.restore`'s ``max_memory`` instead of ``--max-memory``."""
    limit = DEFAULT_MAX_MEMORY if limit is None else limit
    memories = manifest.get("memories")
    if not isinstance(memories, list):
        raise SnapshotError("corrupt snapshot: malformed memories")
    total = 0
    for i, m in enumerate(memories):
        data = m.get("data") if isinstance(m, dict) else None
        if not isinstance(data, list):
            raise SnapshotError(f"corrupt snapshot: memory {i} has no page list")
        total += len(data) * PAGE_SIZE
    if total > limit:
        option = "max_memory=BYTES" if api else "--max-memory SIZE"
        raise SnapshotError(f"the snapshot's memory is {_mib(total)}, more than the {_mib(limit)} this restore "
                            f"allows (raise it with {option} if you trust the snapshot)")
    return total


def check_module_maximum(sizes: list[int], ir: Any) -> None:
    """Each memory's size in pages (``sizes``) within the maximum its module declares (``ir``: a
    decoded module), checked before the memories are built."""
    mems = ir.all_mems()
    if len(mems) != len(sizes):
        raise SnapshotError("snapshot does not fit the module: memory counts differ")
    for i, (mem, pages) in enumerate(zip(mems, sizes, strict=True)):
        cap = 65536 if mem.limits.max is None else mem.limits.max
        if pages > cap:
            raise SnapshotError(f"snapshot does not fit the module: memory {i} has {pages} pages, more than the "
                                f"module's maximum of {cap}")
