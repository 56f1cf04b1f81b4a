"""``gc`` of an object store's pages: packs (layout 2) and page objects (layout 1), without a lock.

Writers may run while ``gc`` does; nothing a snapshot names (or a writer is about to name) may
disappear. Every removal therefore takes two steps a grace period apart (docs/stores.md, "gc"):

1. **Set aside**: a page or pack no snapshot names, older than the grace period, is moved where
   readers still find it but writers no longer count it as stored (a layout-1 page to
   ``.wasmig/fossils/``; a pack's index to ``.wasmig/index-aside/``, the pack itself stays).
2. **Remove or put back**: a set-aside page or pack that a snapshot names again (a writer saw it
   before it was set aside and published after) is put back; one set aside longer than the
   grace period and still unnamed is deleted.

A writer publishes a snapshot only if every page it names was seen stored (or uploaded) at most
:data:`~wasmig.snapshot.stores.objects.MAX_WRITE_S` before, which is less than the grace period;
so whatever ``gc`` sets aside after a writer saw it is named by a snapshot that exists by the
time it may be deleted, and the next ``gc`` puts it back.

Packs whose live pages are few are **compacted**: a pack older than the grace period that is
less than half live (by bytes), or small (many checkpoints of a fleet each leave a small one), is
rewritten with the packs like it into new packs holding only their live pages (each verified
against its name on the way), and the old packs are set aside as above. A pack set aside by a
compaction is put back only if it holds a named page that no live pack holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from wasmig.errors import SnapshotError
from wasmig.hashing import blake3
from wasmig.snapshot.container import _decompress_page
from wasmig.snapshot.stores.backend import ObjectBackend, ObjectInfo
from wasmig.snapshot.stores.objpacks import (
    FOSSILS,
    INDEX,
    INDEX_ASIDE,
    IO_THREADS,
    MAX_INDEX_BYTES,
    PACKS,
    PAGES,
    PackIndex,
    PageRef,
    decode_index,
    is_pack_id,
    upload_packs,
)

#: a pack smaller than this (older than the grace period) is merged with the others like it
SMALL_PACK_BYTES = 1 << 20
#: a pack with less than this fraction of its bytes live is compacted
SPARSE_FRACTION = 0.5

_Entries = list[tuple[str, int, int]]


def _parallel(work: list[Callable[[], object]]) -> list[object]:
    if not work:
        return []
    with ThreadPoolExecutor(min(IO_THREADS, len(work)), thread_name_prefix="wasmig-gc") as pool:
        return list(pool.map(lambda fn: fn(), work))


def _indexes(backend: ObjectBackend, top: str) -> dict[str, tuple[ObjectInfo, _Entries, int]]:
    """Every pack index under ``top``: pack id -> (its index object, entries, pack size)."""
    infos = [i for i in backend.listing(top) if is_pack_id(i.key[len(top):])]

    def read(info: ObjectInfo) -> tuple[str, tuple[ObjectInfo, _Entries, int]] | None:
        data = backend.get(info.key, MAX_INDEX_BYTES)
        if data is None:
            return None  # moved by a concurrent gc
        entries, size = decode_index(data, backend.location(info.key))
        return info.key[len(top):], (info, entries, size)

    found = _parallel([lambda i=info: read(i) for info in infos])
    return dict(r for r in found if r is not None)  # type: ignore[misc]


def collect_pages(backend: ObjectBackend, referenced: set[str], cutoff: float, dry_run: bool,
                  stats: dict[str, int]) -> None:
    """The layout-1 page objects' part of ``gc`` (module docstring), counts added to ``stats``."""
    work: list[Callable[[], object]] = []
    pages = {i.key[len(PAGES):]: i for i in backend.listing(PAGES)}
    for info in backend.listing(FOSSILS):
        h = info.key[len(FOSSILS):]
        if h in referenced:
            stats["pages_restored"] += 1
            work.append((lambda k=info.key: backend.delete(k)) if h in pages
                        else (lambda k=info.key, h=h: backend.move(k, PAGES + h)))
        elif info.modified < cutoff:
            stats["pages_removed"] += 1
            stats["bytes_removed"] += info.size
            work.append(lambda k=info.key: backend.delete(k))
    for h, info in pages.items():
        if h in referenced or info.modified >= cutoff:
            stats["pages_kept"] += 1
        else:
            stats["pages_set_aside"] += 1
            work.append(lambda k=info.key, h=h: backend.move(k, FOSSILS + h))
    if not dry_run:
        _parallel(work)


def collect_packs(backend: ObjectBackend, referenced: set[str], cutoff: float, dry_run: bool,
                  stats: dict[str, int]) -> None:
    """The packs' part of ``gc`` (module docstring), counts added to ``stats``."""
    live = _indexes(backend, INDEX)
    aside = _indexes(backend, INDEX_ASIDE)
    held = {h for _, entries, _ in live.values() for h, _, _ in entries}
    work: list[Callable[[], object]] = []
    for pack, (info, entries, size) in aside.items():
        named = {h for h, _, _ in entries if h in referenced}
        if named - held:
            stats["pages_restored"] += len(named - held)
            work.append(lambda p=pack: backend.move(INDEX_ASIDE + p, INDEX + p))
        elif info.modified < cutoff:
            stats["pages_removed"] += len({h for h, _, _ in entries} - held)  # not counting copies kept live
            stats["bytes_removed"] += size + info.size
            work.append(lambda p=pack: (backend.delete(INDEX_ASIDE + p), backend.delete(PACKS + p)))
    compact: list[str] = []
    for pack, (info, entries, size) in live.items():
        named_bytes = sum(n for h, _, n in entries if h in referenced)
        if info.modified >= cutoff:
            stats["pages_kept"] += len(entries)
        elif not named_bytes:
            stats["pages_set_aside"] += len(entries)
            work.append(lambda p=pack: backend.move(INDEX + p, INDEX_ASIDE + p))
        elif named_bytes < SPARSE_FRACTION * size:
            compact.append(pack)
        elif size < SMALL_PACK_BYTES:
            compact.append(pack)  # merged with the other small ones, if there are others
        else:
            stats["pages_kept"] += len(entries)
    dense_small = [p for p in compact if sum(n for h, _, n in live[p][1] if h in referenced)
                   >= SPARSE_FRACTION * live[p][2]]
    if len(compact) == 1 and dense_small:  # a lone small pack, mostly live: nothing to merge it with
        compact = []
        stats["pages_kept"] += len(live[dense_small[0]][1])
    orphans = [i for i in backend.listing(PACKS) if is_pack_id(i.key[len(PACKS):])
               and i.key[len(PACKS):] not in live and i.key[len(PACKS):] not in aside and i.modified < cutoff]
    stats["temp_files_removed"] += len(orphans)  # packs of writers killed before their index went up
    stats["bytes_removed"] += sum(i.size for i in orphans)
    work += [lambda k=i.key: backend.delete(k) for i in orphans]
    if compact:
        keep = {h: PageRef(p, off, n) for p in compact for h, off, n in live[p][1] if h in referenced}
        stats["pages_kept"] += len(keep)
        stats["pages_set_aside"] += len({h for p in compact for h, _, _ in live[p][1] if h not in referenced})
        stats["packs_rewritten"] += len(compact)
        if not dry_run:
            _rewrite(backend, keep)
            work += [lambda p=pack: backend.move(INDEX + p, INDEX_ASIDE + p) for pack in compact]
    if not dry_run:
        _parallel(work)


def _rewrite(backend: ObjectBackend, keep: dict[str, PageRef]) -> None:
    """The pages ``keep`` names, read from their packs (coalesced ranged GETs) and verified, as new
    packs (each uploaded before its index): after this, the old packs may be set aside."""
    index = PackIndex(backend)
    for h, ref in keep.items():
        index.add(ref.pack, [(h, ref.offset, ref.length)], time.monotonic())
    fetched = index.fetch(keep)
    pages = []
    for h in sorted(keep):
        comp = fetched.get(h)
        where = f"page {h} in {backend.location(PACKS + keep[h].pack)}"
        if comp is None or blake3(_decompress_page(comp, where)).hexdigest() != h:
            raise SnapshotError(f"{where} is corrupt (hash mismatch): gc stopped, nothing removed")
        pages.append((h, comp))
    upload_packs(backend, PackIndex(backend), pages)
