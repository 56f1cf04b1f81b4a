"""Snapshots in an object store (S3, or a shared filesystem laid out the same way).

Layout (docs/stores.md), for a store ``s3://bucket/prefix``:

- ``prefix/snapshots/NNNNNN.snap``: the sealed snapshot files, byte for byte what a checkpoint
  directory holds (the seal covers the manifest, which names pages by BLAKE3);
- ``.wasmig/packs/<id>`` and ``.wasmig/index/<id>``: the pages, one zstd frame per 64 KiB page,
  in packs (layout 2, :mod:`.objpacks`): a write uploads its new pages as one or a few pack
  objects, each followed by its index. Pages are content-addressed and shared by every store of
  the bucket, so identical pages of any programs and checkpoints are stored once;
- ``.wasmig/pages/<blake3>``: one object per page (layout 1, written before packs): still read,
  and collected by ``gc``, never written;
- ``.wasmig/modules/<sha256>.wasm``: the modules, by hash, also shared;
- ``.wasmig/index-aside/<id>``, ``.wasmig/fossils/<blake3>``: packs and layout-1 pages ``gc`` set
  aside (:mod:`.objgc`).

Writes are atomic for readers: new packs go first, the snapshot file last, claimed under the
next free number with a conditional put, so a writer killed at any point leaves no snapshot
visible (only packs no manifest names, which ``gc`` removes). A reader lists snapshot files only.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError
from wasmig.hashing import blake3
from wasmig.snapshot.container import (
    _HASH_RE,
    _decompress_page,
    _encode,
    _guarded,
    _page_hashes,
    _read_container,
)
from wasmig.snapshot.limits import MAX_STORE_MANIFEST
from wasmig.snapshot.packs import MAX_COMPRESSED_PAGE
from wasmig.snapshot.paged import PagedMemory, _GuardedPages, _PageSource
from wasmig.snapshot.pagework import Fingerprints, hash_and_store
from wasmig.snapshot.state import PAGE_SIZE, from_plain, to_plain
from wasmig.snapshot.stores import DEFAULT_GC_GRACE_S, SnapshotStore, StagedSnapshot, module_data_if_missing
from wasmig.snapshot.stores.backend import ObjectBackend
from wasmig.snapshot.stores.objpacks import (
    FOSSILS,
    IO_THREADS,
    MODULES,
    PACKS,
    PAGES,
    SHARED,
    PackIndex,
    PackMissing,
    is_pack_id,
    upload_packs,
)

if TYPE_CHECKING:
    from wasmig.module import Module
    from wasmig.snapshot.container import Container
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import WriteStats

_SNAP_KEY_RE = re.compile(r"(?:.*/)?snapshots/(\d{6,})\.snap")
_FIRST_NUMBER = 1
#: a writer publishes a snapshot only if every page it names was seen stored (or uploaded) at
#: most this long before: ``gc``'s grace period must be longer (docs/stores.md, "gc")
MAX_WRITE_S = DEFAULT_GC_GRACE_S / 2
#: a page seen stored longer ago than this is looked at again by the next write
_RECHECK_S = MAX_WRITE_S / 2
#: pages a restore fetches (with coalesced ranged GETs) before it decompresses them: bounded memory
_RESTORE_WINDOW = 1024
#: ``<snapshot>.packs``: which packs hold its pages (see ObjectStore._write_hint)
HINT_SUFFIX = ".packs"
MAX_HINT_BYTES = 4 << 20
_IMPORT_BATCH = 1024  # pages held in memory at once by an import (a pack each)


class _MemorySink:
    """Collects the pages a write must upload (the guest is stopped while they are produced)."""

    def __init__(self) -> None:
        self.pages: list[tuple[str, bytes]] = []

    def append_block(self, block: memoryview, used: int, entries: list[tuple[str, int, int]]) -> None:
        self.pages += [(h, bytes(block[start:start + length])) for h, start, length in entries]


class _ObjectPages:
    """A :class:`~wasmig.snapshot.paged.PageReader` over the bucket's packs (through the store's
    :class:`~.objpacks.PackIndex`, read again once when a page is not in it) and layout-1 page
    objects (falling back to a fossil: a page ``gc`` set aside is still readable until the next
    ``gc`` finds it referenced)."""

    def __init__(self, backend: ObjectBackend, index: PackIndex, hint: list[str] | None = None) -> None:
        self._backend = backend
        self._index = index
        self._hint = hint  # the packs the snapshot's writer found its pages in (its .packs object)
        self._refreshed = False
        self._healed = False
        self._fetched: dict[str, bytes] = {}  # pages prefetched for a restore (see prefetch)

    def _find(self, hashes: list[str]) -> None:
        """Read the indexes of the packs the snapshot's writer named, then, if a page is still in
        none read, the bucket's (once per reader: gc may have compacted the named ones)."""
        if self._hint and any(self._index.find(h) is None for h in hashes):
            self._index.read_packs(self._hint)
            self._hint = None
        if not self._refreshed and any(self._index.find(h) is None for h in hashes):
            self._index.refresh(aside=True)
            self._refreshed = True

    def prefetch(self, hashes: list[str]) -> None:
        """Fetch these pages with coalesced ranged GETs; they are served from memory until the next
        prefetch (a restore's window)."""
        self._find(hashes)
        try:
            self._fetched = self._index.fetch(hashes)
        except PackMissing as missing:
            self._heal(missing)
            self._fetched = self._index.fetch(hashes)

    def _heal(self, missing: PackMissing) -> None:
        """A pack the index names is gone (gc removed it after this process read the index): read
        the indexes again, once per reader (the pages may be in a pack gc compacted them into)."""
        if self._healed:
            raise missing
        self._healed = self._refreshed = True
        self._index.refresh(aside=True)

    def read(self, h: str) -> tuple[bytes, str] | None:
        self._find([h])
        ref = self._index.find(h)
        if ref is not None:
            data = self._fetched.get(h)
            if data is None:
                try:
                    data = self._index.get_range(ref)
                except PackMissing as missing:
                    self._heal(missing)
                    return self.read(h)
            return data, f"page {h} in {self._backend.location(PACKS + ref.pack)}"
        for key in (PAGES + h, FOSSILS + h):
            data = self._backend.get(key, MAX_COMPRESSED_PAGE)
            if data is not None:
                return data, f"page {self._backend.location(key)}"
        return None

    def read_view(self, h: str) -> tuple[memoryview, str] | None:
        found = self.read(h)
        return None if found is None else (memoryview(found[0]), found[1])

    def why_missing(self) -> str:
        return ""


class _ObjectPagedMemory(_GuardedPages):
    """A memory's deferred pages from an object store: fetched a window at a time with coalesced
    ranged GETs in parallel (:meth:`~.objpacks.PackIndex.fetch`), then decompressed and verified
    into place on all cores; a layout-1 page is a GET of its own, with as many in flight as a
    write has (bound by latency, not a ``pread``)."""

    def __init__(self, file: Path | str, inner: PagedMemory, reader: _ObjectPages) -> None:
        super().__init__(file, inner)  # type: ignore[arg-type]
        self._reader = reader

    def copy_into(self, target: memoryview | int, pages: Any, threads: int | None = None) -> None:
        wanted = list(pages)
        for lo in range(0, len(wanted), _RESTORE_WINDOW):
            window = wanted[lo:lo + _RESTORE_WINDOW]
            hashes = [e for j in window if isinstance(e := self.entries[j], str)]
            _guarded(self._file, "read snapshot", self._reader.prefetch, hashes)
            super().copy_into(target, window, IO_THREADS if threads is None else threads)
        self._reader.prefetch([])


class _ObjectStaged(StagedSnapshot):
    def __init__(self, store: ObjectStore, pages: list[tuple[str, bytes]], named: set[str], chunks: list[bytes],
                 prints: list[Fingerprints], stats: WriteStats, started: float) -> None:
        self._store, self._pages, self._named, self._chunks = store, pages, named, chunks
        self._prints, self.stats, self._started = prints, stats, started
        self._done = False

    def commit(self) -> str:
        from wasmig.snapshot.store import record_commit

        if self._done:
            raise SnapshotError(f"{self._store.url}: this write was committed or aborted already")
        self._done = True
        store = self._store
        uploaded, present, nbytes = store._upload_pages(self._pages)
        self.stats.pages_new = uploaded
        self.stats.pages_deduplicated += present
        self.stats.page_bytes_written = nbytes
        # every page named was seen in a live pack (or uploaded) at most MAX_WRITE_S ago (gc's rule)
        oldest = min((store._index.seen_at(h) or 0.0 for h in self._named), default=time.monotonic())
        if time.monotonic() - oldest > MAX_WRITE_S:
            raise SnapshotError(f"{store.url}: cannot write snapshot: it took longer than {MAX_WRITE_S:.0f} s, "
                                "so gc may have collected pages it names; not published")
        location = store._publish(self._chunks)
        store._write_hint(location, self._named)
        record_commit(store, self._prints, self.stats, self._chunks, self._started)
        return location

    def abort(self) -> None:
        self._done = True
        self._pages = []


class ObjectStore(SnapshotStore):
    """The snapshots of one program under ``prefix/`` of an object backend, pages shared at the top."""

    def __init__(self, url: str, backend: ObjectBackend, threads: int | None = None, level: int = 1) -> None:
        self.url = url.rstrip("/")
        self.backend = backend
        self.threads = threads
        self.level = level
        self.last_stats: WriteStats | None = None
        #: the bucket's packs as this process last listed them (pages, and when each pack was seen live)
        self._index = PackIndex(backend)
        self._prior: list[Fingerprints] | None = None

    # --- reading ---------------------------------------------------------------------------------
    def snapshots(self) -> list[str]:
        found = []
        for info in self.backend.listing(self.backend.prefix + "snapshots/"):
            m = _SNAP_KEY_RE.fullmatch(info.key)
            if m and info.key == f"{self.backend.prefix}snapshots/{m.group(1)}.snap":
                found.append((int(m.group(1)), info.key))
        return [self.backend.location(k) for _, k in sorted(found)]

    def check_root(self) -> None:
        self.backend.check_root()

    def _key(self, which: str | None) -> tuple[str, str]:
        location = self._which(which)
        key = self.backend.key_of(location)
        if key is None or not _SNAP_KEY_RE.fullmatch(key):
            raise SnapshotError(f"{location}: not a snapshot of {self.url}")
        return location, key

    def read_sealed(self, which: str | None = None) -> tuple[str, Container]:
        location, key = self._key(which)
        return location, self._container(location, key)

    def _container(self, location: str, key: str) -> Container:
        def read() -> Container:
            data = self.backend.get(key, MAX_STORE_MANIFEST)
            if data is None:
                raise SnapshotError("no such snapshot")
            return _read_container(io.BytesIO(data), len(data))

        return _guarded(location, "read snapshot", read)  # type: ignore[arg-type]

    def _manifest(self, which: str | None, expect: bytes | None) -> tuple[str, dict[str, Any]]:
        location, key = self._key(which)
        container = self._container(location, key)
        if expect is not None and container.checksum != expect:
            raise SnapshotError(f"{location}: snapshot changed after its signature was checked")
        return location, container.manifest

    def _reader(self, hint: list[str] | None = None) -> tuple[_PageSource, _ObjectPages]:
        reader = _ObjectPages(self.backend, self._index, hint)
        return _PageSource(None, reader, self.backend.location(SHARED).rstrip("/")), reader

    def _write_hint(self, location: str, named: set[str]) -> None:
        """``<snapshot>.packs``: the packs holding the snapshot's pages as its writer knows them, so
        a reader reads those indexes only, not the bucket's (hundreds, in a fleet's bucket). Not
        part of the snapshot: written after it, untrusted (a wrong one only costs the full read)."""
        packs = sorted({ref.pack for h in named if (ref := self._index.find(h)) is not None})
        key = self.backend.key_of(location)
        if key is not None and packs:
            try:
                self.backend.put(key + HINT_SUFFIX, json.dumps(packs).encode())
            except SnapshotError:
                pass  # readers read every index instead

    def _read_hint(self, key: str) -> list[str] | None:
        data = self.backend.get(key + HINT_SUFFIX, MAX_HINT_BYTES)
        try:
            packs = json.loads(data) if data else None
        except ValueError:
            return None
        if not isinstance(packs, list) or not all(isinstance(p, str) and is_pack_id(p) for p in packs):
            return None
        return packs

    def load(self, which: str | None = None, expect: bytes | None = None) -> Snapshot:
        snap, paged = self.load_deferred(which, expect)
        for state, pages in zip(snap.memories, paged or [], strict=True):
            out = bytearray(len(pages) * PAGE_SIZE)
            if out:
                pages.copy_into(memoryview(out), range(len(pages)))  # fetched a window at a time
            state.data = bytes(out)
        return snap

    def load_deferred(self, which: str | None = None,
                      expect: bytes | None = None) -> tuple[Snapshot, list[PagedMemory] | None]:
        location, manifest = self._manifest(which, expect)
        source, reader = self._reader(self._read_hint(self.backend.key_of(location) or ""))
        pages: list[PagedMemory] = []

        def defer(index: int, raw: Any, size_pages: int) -> None:
            pages.append(source.deferred(index, raw, size_pages))

        snap = _guarded(location, "read snapshot", from_plain, manifest, defer)  # type: ignore[arg-type]
        return snap, [_ObjectPagedMemory(location, p, reader) for p in pages]

    def _head(self, key: str) -> int:
        info = self.backend.head(key)
        return 0 if info is None else info.size

    def _stored_bytes(self, hashes: set[str]) -> int:
        """What these pages take in the bucket: their length in their pack, or (layout 1) their
        object's size by HEAD, in parallel; a missing one counts nothing."""
        if not hashes:
            return 0
        if any(self._index.find(h) is None for h in hashes):
            self._index.refresh(aside=True)
        in_packs = {h: ref.length for h in hashes if (ref := self._index.find(h)) is not None}
        rest = sorted(hashes - in_packs.keys())
        if not rest:
            return sum(in_packs.values())
        with ThreadPoolExecutor(min(IO_THREADS, len(rest)), thread_name_prefix="wasmig-head") as pool:
            return sum(in_packs.values()) + sum(pool.map(lambda h: self._head(PAGES + h), rest))

    def storage_stats(self, which: str | None = None) -> dict[str, Any]:
        from wasmig.snapshot.store_stats import manifest_stats

        location, key = self._key(which)
        manifest = self._container(location, key).manifest
        earlier = [s for s in self.snapshots() if self._number(s) < self._number(location)]
        previous = (lambda: self._manifest(earlier[-1], None)[1]) if earlier else None
        return _guarded(location, "read snapshot", manifest_stats,  # type: ignore[arg-type]
                        manifest, self._head(key), "object-store", self._stored_bytes, previous)

    def checkpoint_chain(self, which: str | None = None) -> list[dict[str, Any]] | None:
        from wasmig.snapshot.store_stats import chain_entry

        location, _ = self._key(which)
        seen: set[str] = set()
        chain = []
        for snap in self.snapshots():
            snap_key = self.backend.key_of(snap) or ""
            manifest = self._container(snap, snap_key).manifest
            chain.append(_guarded(snap, "read snapshot", chain_entry,  # type: ignore[arg-type]
                                  snap_key.rsplit("/", 1)[-1], manifest, seen, self._stored_bytes,
                                  self._head(snap_key), snap == location))
        return chain

    def has_page(self, h: str) -> bool:
        if self._index.live(h) is None:
            self._index.refresh()
        return self._index.live(h) is not None or self.backend.head(PAGES + h) is not None

    def read_page(self, h: str) -> bytes:
        found = _ObjectPages(self.backend, self._index).read(h)
        if found is None:
            raise SnapshotError(f"page {h} is missing from {self.backend.location(SHARED)}")
        page = _decompress_page(*found)
        if blake3(page).hexdigest() != h:
            raise SnapshotError(f"{found[1]} is corrupt (hash mismatch)")
        return page

    def module_bytes(self, sha256: str) -> bytes | None:
        import hashlib

        from wasmig.snapshot.wsnap import MAX_MODULE_BYTES

        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise SnapshotError(f"{sha256!r} is not a module's sha256")
        key = f"{MODULES}{sha256}.wasm"
        data = self.backend.get(key, MAX_MODULE_BYTES)
        if data is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise SnapshotError(f"{self.backend.location(key)} is corrupt (sha256 mismatch)")
        return data

    # --- writing ---------------------------------------------------------------------------------
    def _known(self, h: str) -> bool:
        """Whether a live pack holds ``h``, seen so recently that a write naming it is safe from gc."""
        seen = self._index.seen_at(h)
        return seen is not None and time.monotonic() - seen < _RECHECK_S

    def stage(self, snapshot: Snapshot) -> StagedSnapshot:
        from wasmig.snapshot.store import WriteStats, _memory_buffers, _validate_for_write

        t0 = time.perf_counter()
        memories = _memory_buffers(snapshot)
        _validate_for_write(to_plain(snapshot, lambda i, _data: []))
        sink = _MemorySink()
        lists, prints, tally = hash_and_store(memories, self._prior, self._known, sink, self.level, self.threads)
        pause = time.perf_counter() - t0
        chunks = _encode(to_plain(snapshot, lambda i, _data: lists[i]))
        stats = WriteStats(pages_total=tally.total, pages_zero=tally.zero, pages_new=tally.new,
                           pages_deduplicated=tally.deduplicated, pause_seconds=pause)
        named = {h for hashes in lists for h in hashes if h is not None}
        return _ObjectStaged(self, sink.pages, named, chunks, prints, stats, t0)

    def _upload_pages(self, pages: list[tuple[str, bytes]]) -> tuple[int, int, int]:
        """Upload, as new packs, the pages no live pack holds (the indexes listed again first: one
        LIST, and a GET per index not read yet, so pages another writer stored meanwhile are not
        sent twice); (uploaded, already present, bytes uploaded: packs and their indexes)."""
        self._index.refresh()
        fresh = [(h, comp) for h, comp in pages if self._index.live(h) is None]
        sent = upload_packs(self.backend, self._index, fresh)
        return len(fresh), len(pages) - len(fresh), sent

    def _publish(self, chunks: list[bytes]) -> str:
        """The snapshot file under the next free number, never replacing another writer's."""
        data = b"".join(chunks)
        snaps = self.snapshots()
        n = self._number(snaps[-1]) + 1 if snaps else _FIRST_NUMBER
        for _ in range(1000):
            key = f"{self.backend.prefix}snapshots/{n:06d}.snap"
            if self.backend.put_new(key, data):
                return self.backend.location(key)
            n += 1
        raise SnapshotError(f"{self.url}: cannot write snapshot: no free snapshot number found")

    def _number(self, location: str) -> int:
        key = self.backend.key_of(location) or ""
        m = _SNAP_KEY_RE.fullmatch(key)
        return int(m.group(1)) if m else 0

    def put_module(self, module: Module) -> str:
        sha256, data = module_data_if_missing(
            module, lambda sha: self.backend.head(f"{MODULES}{sha}.wasm") is not None)
        key = f"{MODULES}{sha256}.wasm"
        if data is not None:
            self.backend.put(key, data)
        return self.backend.location(key)

    def check_writable(self) -> None:
        self.backend.check()

    # --- export and import (.wsnap) ---------------------------------------------------------------
    def import_sealed(self, snapshot_bytes: bytes, pages: Iterable[tuple[str, bytes]], module_sha256: str,
                      module_bytes: bytes) -> str:
        """Publish an already sealed snapshot (a verified .wsnap's): its pages the bucket lacks,
        in batches, then the module, then the snapshot file last; its location."""
        batch: list[tuple[str, bytes]] = []
        for item in pages:
            batch.append(item)
            if len(batch) >= _IMPORT_BATCH:
                self._upload_pages(batch)
                batch = []
        self._upload_pages(batch)
        key = f"{MODULES}{module_sha256}.wasm"
        if self.backend.head(key) is None:
            self.backend.put(key, module_bytes)
        return self._publish([snapshot_bytes])

    def to_directory(self, which: str | None, directory: Path) -> Path:
        """Copy a snapshot, the pages it names (each verified) and its module into a new local
        checkpoint directory (for ``export``); the snapshot file's path there."""
        from wasmig.snapshot import packs
        from wasmig.snapshot.durable import mkdirs_durable
        from wasmig.snapshot.stores.local import write_module_file

        location, key = self._key(which)
        raw = self.backend.get(key, MAX_STORE_MANIFEST)
        if raw is None:
            raise SnapshotError(f"{location}: no such snapshot")
        manifest = _guarded(location, "read snapshot",  # type: ignore[arg-type]
                            lambda: _read_container(io.BytesIO(raw), len(raw)).manifest)
        (directory / "snapshots").mkdir(parents=True, exist_ok=True, mode=0o700)
        mkdirs_durable(directory / "pages")
        writer = packs.PackWriter(directory / "pages")
        source = _ObjectPages(self.backend, self._index)
        hashes = sorted(_page_hashes(manifest))
        try:
            for j, h in enumerate(hashes):
                if j % _RESTORE_WINDOW == 0:  # a window's pages in coalesced ranged GETs
                    source.prefetch(hashes[j:j + _RESTORE_WINDOW])
                found = source.read(h)
                if found is None:
                    raise SnapshotError(f"{location}: page {h} is missing from {self.backend.location(SHARED)}")
                if blake3(_decompress_page(*found)).hexdigest() != h:
                    raise SnapshotError(f"{found[1]} is corrupt (hash mismatch)")
                writer.append(h, found[0])
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        sha = manifest.get("module_sha256")
        module = self.module_bytes(sha) if isinstance(sha, str) else None
        if module is not None:
            write_module_file(directory, sha, module)
        file = directory / "snapshots" / key.rsplit("/", 1)[-1]
        file.write_bytes(raw)
        return file

    # --- collecting ------------------------------------------------------------------------------
    def all_manifests(self) -> list[str]:
        """The keys of every snapshot file of the bucket (or root), whatever store wrote it."""
        return sorted(i.key for i in self.backend.listing("")
                      if not i.key.startswith(SHARED) and _SNAP_KEY_RE.fullmatch(i.key))

    def referenced_pages(self) -> set[str]:
        """Every page any snapshot of the bucket names; a snapshot that cannot be read stops gc."""
        out: set[str] = set()
        for key in self.all_manifests():
            location = self.backend.location(key)
            hashes = _guarded(location, "read snapshot",  # type: ignore[arg-type]
                              lambda k=key, loc=location: _page_hashes(self._container(loc, k).manifest))
            if any(not _HASH_RE.fullmatch(h) for h in hashes):
                raise SnapshotError(f"{location}: corrupt snapshot: a page entry is not a hash")
            out |= hashes
        return out

    def gc(self, *, dry_run: bool = False, grace_s: float | None = None) -> dict[str, int]:
        """Collect the bucket's packs and layout-1 pages no snapshot of the bucket names, in two
        steps a grace period apart, without a lock (:mod:`.objgc`: why that is safe while writers
        run), compacting packs that are mostly dead."""
        from wasmig.snapshot.stores.objgc import collect_packs, collect_pages

        grace = DEFAULT_GC_GRACE_S if grace_s is None else grace_s
        if grace < 0:
            raise SnapshotError("the gc grace period cannot be negative")
        self.check_root()
        started = time.time()
        referenced = self.referenced_pages()
        stats = {"snapshots": len(self.all_manifests()), "pages_kept": 0, "pages_removed": 0, "bytes_removed": 0,
                 "pages_set_aside": 0, "pages_restored": 0, "temp_files_removed": 0, "packs_rewritten": 0}
        collect_pages(self.backend, referenced, started - grace, dry_run, stats)
        collect_packs(self.backend, referenced, started - grace, dry_run, stats)
        if not dry_run:
            stats["temp_files_removed"] += self.backend.stale_temporaries(3600.0)
            snaps = set(self.all_manifests())  # the hints of snapshots deleted since: useless now
            for info in self.backend.listing(""):
                if info.key.endswith(HINT_SUFFIX) and info.key[:-len(HINT_SUFFIX)] not in snaps \
                        and not info.key.startswith(SHARED) and info.modified < started - grace:
                    self.backend.delete(info.key)
        return stats

    def describe(self) -> str:
        return self.url
