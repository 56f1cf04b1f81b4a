"""Reading a snapshot's pages: from the page store (packs or layout-1 files), embedded in a
single file, or (:mod:`wasmig.snapshot.wsnap`) from a .wsnap; each page verified against its
BLAKE3 name before it is used.

A restore writes pages straight into the memory being restored (:meth:`PagedMemory.copy_into`):
each is read into a per-thread buffer, decompressed into place and hashed there, in batches on
all cores, so a 256 MiB memory costs no allocation per page and no extra copy. A batch's frames
that lie together in one pack are read with one ``O_DIRECT`` read (``PackStore.read_ahead``): a
pack written with ``O_DIRECT`` is not in the page cache, and filling the cache cost more CPU
than the whole restore.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import wait
from pathlib import Path
from typing import Any, Protocol

from wasmig.hashing import blake3
from wasmig.snapshot import packs
from wasmig.snapshot.container import _HASH_RE, _decompress_into, _decompress_page, _guarded
from wasmig.snapshot.pagework import ZERO_PAGE, pool
from wasmig.snapshot.state import PAGE_SIZE, SnapshotError

_RESTORE_BATCH = 16  # pages per restore task


class PageReader(Protocol):
    """Where a page store's compressed pages come from: a checkpoint directory's packs
    (:class:`~wasmig.snapshot.packs.PackStore`) or an object store's page objects."""

    def read(self, h: str) -> tuple[bytes, str] | None: ...

    def read_view(self, h: str) -> tuple[memoryview, str] | None: ...

    def why_missing(self) -> str: ...


class _PageSource:
    """Resolves a manifest's page entries: ``None`` (zero), a hash (page store) or bytes (embedded).
    ``reader``: where stored pages come from when not the packs of ``pages_dir``; ``where``: how
    to name that store in errors."""

    def __init__(self, pages_dir: Path | None, reader: PageReader | None = None, where: str | None = None) -> None:
        self.pages_dir = pages_dir
        self._where = where if where is not None else str(pages_dir)
        self._cache: dict[str, bytes] = {}  # pages named more than once are read and verified once
        self._repeated: set[str] = set()
        self._store: PageReader | None = reader

    def _packs(self) -> PageReader:
        if self._store is None:
            if self.pages_dir is None or not self.pages_dir.is_dir():
                raise SnapshotError("a page is missing: this snapshot references a page store and "
                                    f"{self.pages_dir or 'its pages/ directory'} does not exist")
            store = packs.PackStore(self.pages_dir)
            store.refresh()
            self._store = store
        return self._store

    def stored(self, h: str) -> bytes:
        page = self._cache.get(h)
        if page is not None:
            return page
        store = self._packs()
        found = store.read(h)
        if found is None:
            raise SnapshotError(f"page {h} is missing from the page store ({self._where}){store.why_missing()}")
        comp, where = found
        page = _decompress_page(comp, where)
        if blake3(page).hexdigest() != h:
            raise SnapshotError(f"{where} is corrupt (hash mismatch)")
        if h in self._repeated:
            self._cache[h] = page
        return page

    def copy_stored(self, h: str, target: memoryview) -> None:
        """Page ``h`` decompressed straight into ``target`` (64 KiB of the memory being restored)
        and verified there: no allocation or copy per page besides the read. On failure the
        target holds garbage and the error stands (the restore is abandoned)."""
        page = self._cache.get(h)
        if page is not None:
            target[:] = page
            return
        store = self._packs()
        found = store.read_view(h)
        if found is None:
            raise SnapshotError(f"page {h} is missing from the page store ({self._where}){store.why_missing()}")
        comp, where = found
        _decompress_into(comp, target, where)
        if blake3(target).hexdigest() != h:
            raise SnapshotError(f"{where} is corrupt (hash mismatch)")
        if h in self._repeated:
            self._cache[h] = bytes(target)

    def read_ahead(self, hashes: list[str]) -> None:
        """Let the page store read these pages' frames together, when it can (a pack store reads
        neighbouring frames with one read: :meth:`~wasmig.snapshot.packs.PackStore.read_ahead`; an
        object store's reader fetches its own windows and is left alone)."""
        wanted = [h for h in hashes if h not in self._cache]
        if len(wanted) < 2 or self._store is None and (self.pages_dir is None or not self.pages_dir.is_dir()):
            return  # nothing to gain, or no store: the pages' own reads report that
        ahead = getattr(self._packs(), "read_ahead", None)
        if ahead is not None:
            ahead(wanted)

    def note_repeats(self, entries: list[Any]) -> None:
        """Remember which hashes ``entries`` names more than once: only those are kept once read."""
        seen: set[str] = set()
        for e in entries:
            if isinstance(e, str):
                if e in seen:
                    self._repeated.add(e)
                seen.add(e)

    def memory(self, index: int, raw: Any, size_pages: int) -> bytes:
        paged = self.deferred(index, raw, size_pages)
        out = bytearray(len(paged) * PAGE_SIZE)
        if out:
            paged.copy_into(memoryview(out), range(len(paged)))
        return bytes(out)

    def deferred(self, index: int, raw: Any, size_pages: int) -> PagedMemory:
        """Memory ``index``'s page list, checked, its pages left to read when asked."""
        if not isinstance(raw, list) or len(raw) != size_pages:
            raise SnapshotError(f"corrupt snapshot: memory {index} page list does not match its size")
        for j, entry in enumerate(raw):
            if isinstance(entry, str):
                if not _HASH_RE.fullmatch(entry):
                    raise SnapshotError(f"corrupt snapshot: memory {index} page {j} has an invalid hash")
            elif entry is not None and not isinstance(entry, bytes):
                raise SnapshotError(f"corrupt snapshot: memory {index} page {j} is neither a hash nor a page")
        self.note_repeats(raw)
        return PagedMemory(index, raw, self)


class PagedMemory:
    """One memory of a snapshot read with :func:`load_snapshot_deferred`: its page list, each page
    read (decompressed and verified) only when :meth:`page` asks for it. A restore on wasmtime
    writes the pages straight into the new instance's memory and does not even read those it
    holds already (zero pages; data-segment pages the program never changed)."""

    def __init__(self, index: int, entries: list[Any], source: _PageSource) -> None:
        self.index = index
        #: per page: None (all zero), a page-store hash (hex BLAKE3 of the page) or an embedded,
        #: compressed page
        self.entries = entries
        self._source = source

    def __len__(self) -> int:
        return len(self.entries)

    def digest(self, j: int) -> str | None:
        """Page ``j``'s hex BLAKE3 when the snapshot names it (a page-store page), else None."""
        entry = self.entries[j]
        return entry if isinstance(entry, str) else None

    def page(self, j: int) -> bytes:
        """Page ``j``'s 64 KiB (verified against its hash); raises SnapshotError."""
        entry = self.entries[j]
        if entry is None:
            return ZERO_PAGE
        if isinstance(entry, str):
            return self._source.stored(entry)
        return _decompress_page(entry, f"embedded page {j} of memory {self.index}")

    def copy_page(self, j: int, target: memoryview) -> None:
        """Page ``j`` written into ``target`` (64 KiB), verified."""
        entry = self.entries[j]
        if isinstance(entry, str):
            self._source.copy_stored(entry, target)
        else:
            target[:] = self.page(j)

    def copy_into(self, target: memoryview | int, pages: Any, threads: int | None = None) -> None:
        """Write pages ``pages`` (indices) into ``target`` at their offsets: a writable buffer of the
        memory's size, or the address of one. Reading, decompressing, verifying and copying run in
        batches on all cores (zstd, BLAKE3 and the copies release the GIL)."""
        address = target if isinstance(target, int) else ctypes.addressof(ctypes.c_char.from_buffer(target))
        if not isinstance(target, int) and target.nbytes < len(self) * PAGE_SIZE:
            raise ValueError("copy_into: the target is smaller than the memory")

        view = memoryview((ctypes.c_char * (len(self) * PAGE_SIZE)).from_address(address)).cast("B")

        def batch(js: list[int]) -> None:
            self._source.read_ahead([e for j in js if isinstance(e := self.entries[j], str)])
            for j in js:
                self.copy_page(j, view[j * PAGE_SIZE:(j + 1) * PAGE_SIZE])

        wanted = list(pages)
        batches = [wanted[i:i + _RESTORE_BATCH] for i in range(0, len(wanted), _RESTORE_BATCH)]
        executor = pool(threads)
        if executor is None or len(batches) < 2:
            for b in batches:
                batch(b)
            return
        futures = [executor.submit(batch, b) for b in batches]
        try:
            for f in futures:
                f.result()
        finally:  # no worker may write into the memory after this returns
            wait([f for f in futures if not f.cancel()])


class _GuardedPages(PagedMemory):
    """A :class:`PagedMemory` whose read failures name the snapshot file (see :func:`_guarded`)."""

    def __init__(self, file: Path, inner: PagedMemory) -> None:
        super().__init__(inner.index, inner.entries, inner._source)
        self._file = file

    def page(self, j: int) -> bytes:
        return _guarded(self._file, "read snapshot", super().page, j)

    def copy_into(self, target: memoryview | int, pages: Any, threads: int | None = None) -> None:
        _guarded(self._file, "read snapshot", super().copy_into, target, pages, threads)


