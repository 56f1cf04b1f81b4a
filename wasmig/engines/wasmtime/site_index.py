"""The site map in a compact binary form read lazily, per site and per function.

The instrumentation pass records its site map in the instrumented module as JSON (the custom
section ``wasmig.sitemap``, :mod:`wasmig.instrument.sites`). For CPython that is hundreds of
thousands of sites, and parsing it into objects costs over a second of every start of a
checkpointable run; a checkpoint or a restore needs only the sites of the frames on the stack.
So the host keeps, beside each cached instrumented module, its *site index*
(``instrumented-KEY.sites``): the same map as fixed-layout records with offset tables, read in
one piece and decoded a site or a function at a time when a capture or a rewind asks.
A :class:`SiteIndex` is a drop-in for :class:`~wasmig.instrument.sites.SiteMap` where the snapshot
code reads one (``sites[i]``, ``functions[f]``, ``sites_of(f)``, ``first_site(f)``, the three header
fields).

It also records the :func:`~wasmig.hashing.fast_digest` and size of the instrumented (run) module it
describes and of its rewind module (zeros when the run module holds its rewind copies itself),
which are the keys of their compiled artifacts (a cached start needs neither the
instrumented bytes nor their hash), and the parts of the pass's control layout
(:mod:`wasmig.instrument.unwind`) a run reads before any checkpoint: the poll byte's and the page
count's offsets, the ``$state`` values and ``$stop_at``'s "never" (so that a start imports
neither the pass nor the IR classes it is written with: 15 ms).

Layout (little-endian; the file's digest is in its sidecar, :mod:`wasmig.checked`, checked once per
file; docs/instrument.md, "The host's site index"):

- header: :data:`MAGIC` (16 bytes), u32 ctl_memory, u32 globals_base, u32 counts_steps,
  u32 site count S, u32 function count F, 32-byte digest of the instrumented module, u64 its size,
  u32 POLL, u32 MEMORY_PAGES, u32 STATE_UNWINDING, u32 STATE_REWINDING, u64 NEVER, 32-byte digest
  of the rewind module, u64 its size (zeros: none);
- F u32 function indices (ascending), F u32 offsets of their blocks, S u32 offsets of the sites'
  records (offsets into the blob that follows);
- a function block: u32 num_locals, u32 record_size, u32 local count L, u32 site count N, L type
  bytes padded to 4, N u32 site ids;
- a site record: u32 id, func, pc, kind, stack count A, argument count B, live count C; A + B
  type bytes padded to 4; A u32 spills, B u32 argument spills, C u32 live locals.

Types are their binary-format bytes (``0x7F`` i32 ...); kinds index :data:`~wasmig.instrument.sites.KINDS`.
"""

from __future__ import annotations

import bisect
import mmap
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the site map classes are imported when a site is decoded: a start decodes none
    from wasmig.instrument.sites import FunctionLayout, Site, SiteMap

MAGIC = b"wasmig-sites-v3\n"
_HEADER = struct.Struct("<16sIIIII32sQIIIIQ32sQ")
_FUNC = struct.Struct("<IIII")
_SITE = struct.Struct("<IIIIIII")
_TYPE_BYTES = {"i32": 0x7F, "i64": 0x7E, "f32": 0x7D, "f64": 0x7C, "v128": 0x7B, "funcref": 0x70, "externref": 0x6F}
_TYPE_NAMES = {v: k for k, v in _TYPE_BYTES.items()}


def _types(types: list[str]) -> bytes:
    raw = bytes(_TYPE_BYTES[t] for t in types)
    return raw + bytes(-len(raw) % 4)


def _u32s(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def encode(sitemap: SiteMap, digest: bytes, size: int, rewind: tuple[bytes, int] | None = None) -> bytes:
    """The site index of ``sitemap``, for the instrumented module of (``fast_hash`` digest, size)
    and its rewind module of ``rewind`` = (digest, size), if it has one."""
    from wasmig.instrument import unwind
    from wasmig.instrument.sites import KINDS

    kind_codes = {k: i for i, k in enumerate(KINDS)}
    rewind_digest, rewind_size = rewind if rewind is not None else (bytes(32), 0)
    if len(digest) != 32 or len(rewind_digest) != 32:
        raise ValueError("the module digest must be 32 bytes")
    funcs = sorted(sitemap.functions)
    by_func: dict[int, list[int]] = {f: [] for f in funcs}
    for i, site in enumerate(sitemap.sites):
        if site.id != i or site.func not in by_func:
            raise ValueError(f"site {i} (id {site.id}, function {site.func}) does not fit the site map")
        by_func[site.func].append(i)
    blob = bytearray()
    func_offsets = []
    for f in funcs:
        layout = sitemap.functions[f]
        func_offsets.append(len(blob))
        ids = by_func[f]
        blob += _FUNC.pack(layout.num_locals, layout.record_size, len(layout.local_types), len(ids))
        blob += _types(layout.local_types) + _u32s(ids)
    site_offsets = []
    for site in sitemap.sites:
        site_offsets.append(len(blob))
        blob += _SITE.pack(site.id, site.func, site.pc, kind_codes[site.kind], len(site.stack), len(site.args),
                           len(site.live))
        blob += _types(site.stack + site.args) + _u32s(site.spills + site.arg_spills + site.live)
    head = _HEADER.pack(MAGIC, sitemap.ctl_memory, sitemap.globals_base, int(sitemap.counts_steps),
                        len(sitemap.sites), len(funcs), digest, size, unwind.POLL, unwind.MEMORY_PAGES,
                        unwind.STATE_UNWINDING, unwind.STATE_REWINDING, unwind.NEVER, rewind_digest, rewind_size)
    return head + _u32s(funcs) + _u32s(func_offsets) + _u32s(site_offsets) + bytes(blob)


def _u32_table(raw: bytes | memoryview | mmap.mmap, pos: int, n: int) -> Sequence[int]:
    """``n`` u32s at ``pos``: a view, not a copy, on a little-endian host (every wasmtime host)."""
    if sys.byteorder == "little" and pos % 4 == 0:
        return memoryview(raw)[pos : pos + 4 * n].cast("I")
    return struct.unpack_from(f"<{n}I", raw, pos)


class SiteIndex:
    """A site index read back: :class:`SiteMap`'s reading surface, decoding on demand."""

    def __init__(self, raw: bytes | memoryview | mmap.mmap) -> None:
        """Raises ValueError when ``raw`` is not a whole site index of this version."""
        if len(raw) < _HEADER.size:
            raise ValueError("site index truncated")
        (magic, self.ctl_memory, self.globals_base, steps, n_sites, n_funcs, self.module_digest, self.module_size,
         self.poll, self.memory_pages, self.state_unwinding, self.state_rewinding,
         self.never, rewind_digest, rewind_size) = _HEADER.unpack_from(raw)
        #: (fast_digest, size) of the rewind module, or None when the run module holds the copies
        self.rewind: tuple[bytes, int] | None = (rewind_digest, rewind_size) if rewind_size else None
        if magic != MAGIC:
            raise ValueError("not a site index of this version")
        self.counts_steps = bool(steps)
        base = _HEADER.size
        tables = base + 4 * (2 * n_funcs + n_sites)
        if tables > len(raw):
            raise ValueError("site index truncated")
        self._raw = raw
        self._blob = tables
        self._func_ids = _u32_table(raw, base, n_funcs)
        self._func_offsets = _u32_table(raw, base + 4 * n_funcs, n_funcs)
        self._site_offsets = _u32_table(raw, base + 8 * n_funcs, n_sites)
        self.sites = _Sites(self)
        self.functions = _Layouts(self)
        self._site_cache: dict[int, Site] = {}
        self._layout_cache: dict[int, tuple[FunctionLayout, tuple[int, ...]]] = {}

    # --- decoding ---------------------------------------------------------------------------
    def _site(self, i: int) -> Site:
        site = self._site_cache.get(i)
        if site is not None:
            return site
        from wasmig.instrument.sites import KINDS, Site
        raw = self._raw
        pos = self._blob + self._site_offsets[i]
        try:
            sid, func, pc, kind, n_stack, n_args, n_live = _SITE.unpack_from(raw, pos)
            pos += _SITE.size
            types = [_TYPE_NAMES[b] for b in raw[pos : pos + n_stack + n_args]]
            pos += n_stack + n_args + (-(n_stack + n_args) % 4)
            slots = struct.unpack_from(f"<{n_stack + n_args + n_live}I", raw, pos)
            site = Site(sid, func, pc, KINDS[kind], types[:n_stack], list(slots[:n_stack]), types[n_stack:],
                        list(slots[n_stack : n_stack + n_args]), list(slots[n_stack + n_args :]))
        except (struct.error, KeyError, IndexError):
            raise ValueError(f"site index: site {i} is malformed") from None
        self._site_cache[i] = site
        return site

    def _function(self, func: int) -> tuple[FunctionLayout, tuple[int, ...]] | None:
        found = self._layout_cache.get(func)
        if found is not None:
            return found
        from wasmig.instrument.sites import FunctionLayout

        k = bisect.bisect_left(self._func_ids, func)
        if k == len(self._func_ids) or self._func_ids[k] != func:
            return None
        raw = self._raw
        pos = self._blob + self._func_offsets[k]
        try:
            num_locals, record_size, n_types, n_sites = _FUNC.unpack_from(raw, pos)
            pos += _FUNC.size
            types = [_TYPE_NAMES[b] for b in raw[pos : pos + n_types]]
            pos += n_types + (-n_types % 4)
            ids = struct.unpack_from(f"<{n_sites}I", raw, pos)
        except (struct.error, KeyError):
            raise ValueError(f"site index: function {func} is malformed") from None
        found = self._layout_cache[func] = (FunctionLayout(func, num_locals, types, record_size), ids)
        return found

    def first_site(self, func: int) -> int | None:
        """The id of function ``func``'s first site (:meth:`SiteMap.first_site`), None if none."""
        found = self._function(func)
        return found[1][0] if found is not None and found[1] else None

    def sites_of(self, func: int) -> list[Site]:
        """The sites of function ``func`` (none for a function the map does not know)."""
        found = self._function(func)
        return [] if found is None else [self._site(i) for i in found[1]]


class _Sites(Sequence["Site"]):
    def __init__(self, index: SiteIndex) -> None:
        self._index = index

    def __len__(self) -> int:
        return len(self._index._site_offsets)

    def __getitem__(self, i: int) -> Site:  # type: ignore[override]
        if not isinstance(i, int):
            raise TypeError("site ids are integers")
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._index._site(i)


class _Layouts(Mapping[int, "FunctionLayout"]):
    def __init__(self, index: SiteIndex) -> None:
        self._index = index

    def __getitem__(self, func: int) -> FunctionLayout:
        found = self._index._function(func) if isinstance(func, int) else None
        if found is None:
            raise KeyError(func)
        return found[0]

    def __iter__(self) -> Iterator[int]:
        return iter(self._index._func_ids)

    def __len__(self) -> int:
        return len(self._index._func_ids)
