"""Pages in an object store as packs (layout 2): a write's new pages in one or a few objects.

One object per page (layout 1) made a first write to S3 ~65x a single PUT of the same bytes: a
request per page. A write now uploads its new pages as pack objects, each followed by its index
(docs/stores.md, "Layout"):

- ``.wasmig/packs/<id>``: compressed pages (one zstd frame each) back to back, nothing else;
- ``.wasmig/index/<id>``: that pack's index, written after the pack: which page (BLAKE3) lies at
  which offset and length. A pack is part of the bucket once its index is listed there;
- ``.wasmig/index-aside/<id>``: the index of a pack ``gc`` set aside (still read, see
  :mod:`wasmig.snapshot.stores.objects`' ``gc``).

Pages stay content-addressed and shared by every program of the bucket: a writer lists the
indexes (one LIST, and a GET for each index it has not read yet) and uploads only the pages no
live pack holds. A reader finds a page through the indexes and fetches it with a ranged GET;
a restore fetches adjacent pages of a pack with one GET (:meth:`PackIndex.fetch`). Every page is
still verified against its name, so an index is untrusted like everything else: its entries are
bounded, and a wrong offset only yields a page that fails its hash.

Pack ids are ``<time_ns hex>-<random hex>``: unique without coordination, and sorted by age.
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from wasmig.errors import SnapshotError
from wasmig.snapshot.packs import MAX_COMPRESSED_PAGE
from wasmig.snapshot.stores.backend import ObjectBackend

SHARED = ".wasmig/"
PACKS = SHARED + "packs/"
INDEX = SHARED + "index/"
INDEX_ASIDE = SHARED + "index-aside/"
PAGES = SHARED + "pages/"  # layout 1: one object per page (read and collected, no longer written)
FOSSILS = SHARED + "fossils/"  # layout 1 pages gc set aside
MODULES = SHARED + "modules/"
#: the object layout a writer of this version produces (1: one object per page, still read)
LAYOUT_VERSION = 2

_MAGIC = b"WMIDX\x00\x00\x02"  # the index format, version 2 (= the layout)
_HEADER = struct.Struct("<8sIQ")  # magic, entries, the pack's size
_ENTRY = struct.Struct("<32sQI")  # BLAKE3 digest, offset, length
MAX_PACK_ENTRIES = 1 << 16  # 4 GiB of pages before compression: a pack is far smaller
MAX_INDEX_BYTES = _HEADER.size + MAX_PACK_ENTRIES * _ENTRY.size
#: a write's new pages are cut into packs of about this many compressed bytes, uploaded in parallel
PACK_TARGET_BYTES = 16 << 20
#: adjacent pages of a pack are fetched together when what lies between them is at most this
_COALESCE_GAP = 64 << 10
#: and no single ranged GET is longer than this
_MAX_RANGE = 8 << 20
IO_THREADS = 16  # requests in flight for a write, a read or a gc


class PackMissing(SnapshotError):
    """A pack an index named is not there (``gc`` removed it since the index was read)."""


def new_pack_id() -> str:
    return f"{time.time_ns():016x}-{secrets.token_hex(8)}"


def is_pack_id(name: str) -> bool:
    head, _, tail = name.partition("-")
    return len(head) == 16 and len(tail) == 16 and all(c in "0123456789abcdef" for c in head + tail)


@dataclass(frozen=True)
class PageRef:
    """Where a page lies: pack ``pack``, ``length`` bytes from ``offset``."""

    pack: str
    offset: int
    length: int


_Entries = list[tuple[str, int, int]]  # (page hash, offset, length) in a pack


def _lookup(packs: dict[str, _Entries]) -> dict[str, PageRef]:
    """Page -> a pack holding it (the first by id: any will do, every page read is verified)."""
    out: dict[str, PageRef] = {}
    for pack in sorted(packs):
        for h, off, n in packs[pack]:
            out.setdefault(h, PageRef(pack, off, n))
    return out


def encode_index(entries: list[tuple[str, int, int]], pack_size: int) -> bytes:
    out = [_HEADER.pack(_MAGIC, len(entries), pack_size)]
    out += [_ENTRY.pack(bytes.fromhex(h), off, n) for h, off, n in entries]
    return b"".join(out)


def decode_index(data: bytes, where: str) -> tuple[list[tuple[str, int, int]], int]:
    """An index's entries (hash, offset, length) and its pack's size; a one-line SnapshotError
    when it is not a well-formed index (entries outside the pack, pages larger than a page may be)."""
    if len(data) < _HEADER.size:
        raise SnapshotError(f"{where}: not a pack index (too short)")
    magic, count, pack_size = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise SnapshotError(f"{where}: not a pack index of layout {LAYOUT_VERSION}")
    if count > MAX_PACK_ENTRIES or len(data) != _HEADER.size + count * _ENTRY.size:
        raise SnapshotError(f"{where}: damaged pack index (its size does not match its entries)")
    entries = []
    for digest, off, n in _ENTRY.iter_unpack(memoryview(data)[_HEADER.size:]):
        if not 1 <= n <= MAX_COMPRESSED_PAGE or off + n > pack_size:
            raise SnapshotError(f"{where}: damaged pack index (an entry points outside its pack)")
        entries.append((digest.hex(), off, n))
    return entries, pack_size


def cut_into_packs(pages: list[tuple[str, bytes]],
                   target: int = PACK_TARGET_BYTES) -> list[tuple[str, list[bytes], list[tuple[str, int, int]]]]:
    """``pages`` (hash, compressed) as packs of about ``target`` bytes each, balanced: per pack its
    id, its parts (to join) and its index entries."""
    total = sum(len(c) for _, c in pages)
    count = max(1, -(-total // target), -(-len(pages) // MAX_PACK_ENTRIES))
    share = -(-total // count)
    packs: list[tuple[str, list[bytes], list[tuple[str, int, int]]]] = []
    parts: list[bytes] = []
    entries: list[tuple[str, int, int]] = []
    offset = 0
    for h, comp in pages:
        if parts and (offset >= share or len(entries) >= MAX_PACK_ENTRIES):  # full: at most a page over
            packs.append((new_pack_id(), parts, entries))
            parts, entries, offset = [], [], 0
        parts.append(comp)
        entries.append((h, offset, len(comp)))
        offset += len(comp)
    if parts:
        packs.append((new_pack_id(), parts, entries))
    return packs


def coalesce(refs: Iterable[tuple[str, PageRef]]) -> list[tuple[str, int, int, list[tuple[str, PageRef]]]]:
    """Ranged GETs covering ``refs``: per GET its pack, start, length and the pages in it; pages of a
    pack closer than ``_COALESCE_GAP`` go in one GET of at most ``_MAX_RANGE`` bytes."""
    by_pack: dict[str, list[tuple[str, PageRef]]] = {}
    for h, ref in refs:
        by_pack.setdefault(ref.pack, []).append((h, ref))
    ranges: list[tuple[str, int, int, list[tuple[str, PageRef]]]] = []
    for pack, items in by_pack.items():
        items.sort(key=lambda item: item[1].offset)
        start = end = -1
        group: list[tuple[str, PageRef]] = []
        for h, ref in items:
            if group and ref.offset - end <= _COALESCE_GAP and ref.offset + ref.length - start <= _MAX_RANGE:
                end = max(end, ref.offset + ref.length)
                group.append((h, ref))
                continue
            if group:
                ranges.append((pack, start, end - start, group))
            start, end, group = ref.offset, ref.offset + ref.length, [(h, ref)]
        if group:
            ranges.append((pack, start, end - start, group))
    return ranges


class PackIndex:
    """This process's view of the bucket's pack indexes: page -> where, and when each pack was
    last seen live (listed under ``index/``), which the writers' rule against ``gc`` needs
    (:data:`wasmig.snapshot.stores.objects.MAX_WRITE_S`). An index never changes once written, so
    each is read once (a pack set aside and put back keeps its entries); a refresh lists the
    indexes and reads only the new ones. Thread-safe."""

    def __init__(self, backend: ObjectBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._live_packs: dict[str, _Entries] = {}  # pack id -> its entries, for the live packs
        self._aside_packs: dict[str, _Entries] = {}  # and for those gc set aside (readers only)
        self._live: dict[str, PageRef] = {}  # page -> a live pack holding it
        self._aside: dict[str, PageRef] = {}  # page -> a set-aside pack holding it
        #: pack id -> monotonic time at which it was last known to be live (listed, or just written)
        self.seen: dict[str, float] = {}

    # --- the view ----------------------------------------------------------------------------------
    def live(self, h: str) -> PageRef | None:
        with self._lock:
            return self._live.get(h)

    def find(self, h: str) -> PageRef | None:
        """Where page ``h`` can be read: a live pack, else a set-aside one."""
        with self._lock:
            return self._live.get(h) or self._aside.get(h)

    def seen_at(self, h: str) -> float | None:
        """When a pack holding ``h`` was last seen live (monotonic; for a pack set aside since, the
        last time it was), None if no pack read holds it."""
        with self._lock:
            ref = self._live.get(h) or self._aside.get(h)
            return None if ref is None else self.seen.get(ref.pack)

    def add(self, pack: str, entries: _Entries, seen: float) -> None:
        """A pack this process has just written (its index included)."""
        with self._lock:
            self._live_packs[pack] = entries
            for h, off, n in entries:
                self._live.setdefault(h, PageRef(pack, off, n))
            self.seen[pack] = seen

    def refresh(self, *, aside: bool = False) -> None:
        """List the live indexes (and with ``aside``, the set-aside ones too) and read those not read
        yet. A pack no longer listed live is no longer counted live (gc set it aside or removed it);
        with ``aside``, one listed nowhere is forgotten."""
        listed_at = time.monotonic()  # every pack listed below was live at some point after this
        live_ids = [i.key[len(INDEX):] for i in self._backend.listing(INDEX) if is_pack_id(i.key[len(INDEX):])]
        aside_ids = ([i.key[len(INDEX_ASIDE):] for i in self._backend.listing(INDEX_ASIDE)
                      if is_pack_id(i.key[len(INDEX_ASIDE):])] if aside else [])
        with self._lock:
            known = self._live_packs.keys() | self._aside_packs.keys()
            todo = [(INDEX + p, p) for p in live_ids if p not in known]
            todo += [(INDEX_ASIDE + p, p) for p in aside_ids if p not in known]
        loaded = self._read_indexes(todo)
        with self._lock:
            entries_of = {**self._aside_packs, **self._live_packs, **{p: e for _, p, e in loaded}}
            # a pack this process wrote after the listing began is not in it, and stays live
            stays = {p for p in self._live_packs if self.seen.get(p, 0.0) >= listed_at}
            live = {p: entries_of[p] for p in (*live_ids, *stays) if p in entries_of}
            gone = {p: e for p, e in self._live_packs.items() if p not in live}
            if aside:
                set_aside = {p: entries_of[p] for p in aside_ids if p in entries_of and p not in live}
            else:
                set_aside = {p: e for p, e in {**self._aside_packs, **gone}.items() if p not in live}
            if gone or set_aside.keys() != self._aside_packs.keys():
                self._live, self._aside = _lookup(live), _lookup(set_aside)  # packs left: rebuilt
            else:  # only new packs (the usual commit): added, not rebuilt (a bucket's pages can be millions)
                for p in live.keys() - self._live_packs.keys():
                    for h, off, n in live[p]:
                        self._live.setdefault(h, PageRef(p, off, n))
            self._live_packs, self._aside_packs = live, set_aside
            for p in live_ids:
                self.seen[p] = listed_at

    def read_packs(self, packs: list[str]) -> None:
        """Read the indexes of ``packs`` not read yet (live, or else set aside), without listing the
        bucket: a reader's hint. They count as found, not as seen live (a writer relies on a pack
        only once a listing showed it live)."""
        with self._lock:
            todo = [p for p in dict.fromkeys(packs) if p not in self._live_packs and p not in self._aside_packs]
        if not todo:
            return
        loaded = {p: e for _, p, e in self._read_indexes([(INDEX + p, p) for p in todo])}
        missing = [p for p in todo if p not in loaded]
        loaded |= {p: e for _, p, e in self._read_indexes([(INDEX_ASIDE + p, p) for p in missing])}
        with self._lock:
            for p, entries in loaded.items():
                if p not in self._live_packs and p not in self._aside_packs:
                    self._aside_packs[p] = entries
                    for h, off, n in entries:
                        self._aside.setdefault(h, PageRef(p, off, n))

    def _read_indexes(self, todo: list[tuple[str, str]]) -> list[tuple[str, str, _Entries]]:
        def one(item: tuple[str, str]) -> tuple[str, str, _Entries] | None:
            key, pack = item
            data = self._backend.get(key, MAX_INDEX_BYTES)
            if data is None:
                return None  # moved (set aside, or back) since it was listed
            return key, pack, decode_index(data, self._backend.location(key))[0]

        if not todo:
            return []
        with ThreadPoolExecutor(min(IO_THREADS, len(todo)), thread_name_prefix="wasmig-index") as pool:
            return [r for r in pool.map(one, todo) if r is not None]

    # --- reading pages -----------------------------------------------------------------------------
    def get_range(self, ref: PageRef, start: int | None = None, length: int | None = None) -> bytes:
        """Bytes of ``ref``'s pack (by default, ``ref``'s page); a one-line SnapshotError if the
        pack is gone or shorter than its index says."""
        start = ref.offset if start is None else start
        length = ref.length if length is None else length
        key = PACKS + ref.pack
        data = self._backend.get_range(key, start, length)
        if data is None:
            raise PackMissing(f"{self._backend.location(key)}: pack missing (removed by gc?)")
        if len(data) != length:
            raise SnapshotError(f"{self._backend.location(key)}: pack shorter than its index says")
        return data

    def fetch(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The compressed bytes of every page of ``hashes`` that a pack holds, fetched with as few
        ranged GETs as their places allow, in parallel (not verified: the caller hashes each page)."""
        refs = [(h, ref) for h in dict.fromkeys(hashes) if (ref := self.find(h)) is not None]
        ranges = coalesce(refs)
        out: dict[str, bytes] = {}

        def one(item: tuple[str, int, int, list[tuple[str, PageRef]]]) -> list[tuple[str, bytes]]:
            pack, start, length, group = item
            data = self.get_range(PageRef(pack, start, length))
            return [(h, data[ref.offset - start:ref.offset - start + ref.length]) for h, ref in group]

        if not ranges:
            return out
        if len(ranges) == 1:
            out.update(one(ranges[0]))
            return out
        with ThreadPoolExecutor(min(IO_THREADS, len(ranges)), thread_name_prefix="wasmig-fetch") as pool:
            for pairs in pool.map(one, ranges):
                out.update(pairs)
        return out


def upload_packs(backend: ObjectBackend, index: PackIndex, pages: list[tuple[str, bytes]]) -> int:
    """``pages`` as new packs, uploaded in parallel, each pack before its index; the bytes sent."""
    packs = cut_into_packs(pages)

    def one(pack: tuple[str, list[bytes], list[tuple[str, int, int]]]) -> int:
        pack_id, parts, entries = pack
        data = b"".join(parts)
        idx = encode_index(entries, len(data))
        backend.put(PACKS + pack_id, data)
        backend.put(INDEX + pack_id, idx)  # the pack is part of the bucket from here on
        index.add(pack_id, entries, time.monotonic())
        return len(data) + len(idx)

    if not packs:
        return 0
    if len(packs) == 1:
        return one(packs[0])
    with ThreadPoolExecutor(min(IO_THREADS, len(packs)), thread_name_prefix="wasmig-pack") as pool:
        return sum(pool.map(one, packs))
