"""Snapshots on disk: checkpoint directories with a shared page store, and single files.

The layout and the byte format are specified in docs/snapshot-format.md; this module (with
:mod:`~wasmig.snapshot.packs` for the page store's files, :mod:`~wasmig.snapshot.pagework` for
the page loop and :mod:`~wasmig.snapshot.durable` for crash-safe writes) is the only code that
reads or writes them. Three properties drive the design:

- **Crash safety.** A checkpoint is taken from a running program that may be killed (or whose
  host may lose power) at any moment, and the previous checkpoint is often the only copy of the
  program's state. So nothing is ever written in place: every file is written to a temporary
  name, fsynced, renamed, and the directory fsynced. Pages go first (one pack file per write),
  the snapshot file that references them last, so a snapshot file that exists is always
  complete and every page it names is on disk. Snapshot numbers are claimed with ``os.link``
  (which, unlike ``rename``, refuses to replace an existing name), so concurrent writers never
  overwrite each other; pages are content-addressed, so two writers storing the same page
  store the same bytes and either copy is correct.
- **Untrusted input.** A snapshot may come over a wire, from a full disk or from a newer wasmig.
  Every failure while reading (I/O, msgpack, zstd, a hash mismatch, a missing page, a malformed
  manifest or pack) is reported as a one-line :class:`SnapshotError` naming the file;
  decompression is bounded to one page so a crafted page cannot exhaust memory.
- **Speed.** A checkpoint pauses the guest, so memory is read in place, zero pages cost a
  ``memcmp``, unchanged pages an xxh3 fingerprint, and the rest BLAKE3 and zstd on all cores
  (:mod:`~wasmig.snapshot.pagework`); the new pages go into one pack, fsynced once
  (``benchmarks/checkpoint.py`` measures it against copy + hash + compress of the same bytes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig.files import PRIVATE_FILE_MODE
from wasmig.snapshot import packs
from wasmig.snapshot.container import (
    _HASH_RE,
    _HEADER,
    _MAX_COMPRESSED_PAGE,
    _READ_ERRORS,
    HASH_SIZE,
    HEADER_SIZE,
    MAGIC,
    Container,
    _decompress_page,
    _describe,
    _encode,
    _guarded,
    _list_memories,
    _one_line,
    _page_hashes,
    _read_container,
    _read_manifest,
    _read_manifest_from,
)
from wasmig.snapshot.durable import atomic_write as _atomic_write
from wasmig.snapshot.durable import fsync_dir as _fsync_dir
from wasmig.snapshot.durable import is_temp_name, write_temp
from wasmig.snapshot.durable import mkdirs_durable as _mkdirs_durable
from wasmig.snapshot.durable import temp_name as _temp_name
from wasmig.snapshot.durable import unlink_quietly as _unlink_quietly
from wasmig.snapshot.paged import PagedMemory, _GuardedPages, _PageSource
from wasmig.snapshot.pagework import Fingerprints, MemoryPages, compressor, hash_and_store, page_frame
from wasmig.snapshot.state import PAGE_SIZE, Snapshot, SnapshotError, from_plain, to_plain

if TYPE_CHECKING:
    from wasmig.snapshot.stores import SnapshotStore

# the public API, and what the single-file export (wsnap) and the tests use from the modules above
__all__ = ["CheckpointDir", "Container", "HASH_SIZE", "HEADER_SIZE", "MAGIC", "PagedMemory", "StagedWrite",
           "WriteStats", "read_sealed", "_read_container",
           "load_snapshot", "load_snapshot_deferred", "materialize",
           "write_single_file", "_HASH_RE", "_HEADER", "_MAX_COMPRESSED_PAGE", "_READ_ERRORS", "_PageSource",
           "_atomic_write", "_decompress_page", "_describe", "_fsync_dir", "_mkdirs_durable", "_one_line",
           "_read_manifest_from", "_temp_name", "_unlink_quietly", "_list_memories"]

ZSTD_LEVEL = 1  # level 1 compresses typical wasm heaps nearly as well as 3 at about twice the speed
_SNAP_RE = re.compile(r"(\d{6,})\.snap")
_FIRST_NUMBER = 1
#: in a checkpoint directory: writers hold it shared while they write, ``gc`` exclusively, so a
#: collection never deletes a page that a snapshot being written is about to name
GC_LOCK = ".gc-lock"

# --- statistics -----------------------------------------------------------------------------------
@dataclass
class WriteStats:
    """What one write did (``wasmig checkpoint``/``inspect`` show it; the benchmark measures it)."""

    pages_total: int = 0  # 64 KiB pages across all memories
    pages_zero: int = 0  # all-zero pages: not stored
    pages_new: int = 0  # pages compressed and written by this write
    pages_deduplicated: int = 0  # non-zero pages already stored (earlier snapshot, other writer, same snapshot)
    page_bytes_written: int = 0  # bytes of the new pages on disk (a checkpoint directory: its pack file)
    snapshot_bytes: int = 0  # size of the snapshot file
    seconds: float = 0.0  # the whole write
    #: the part of ``seconds`` that reads the memories (scan, hash, compress, write into the pack):
    #: all the guest must stay stopped for; the fsyncs and the snapshot file come after
    pause_seconds: float = 0.0

    @property
    def bytes_written(self) -> int:
        return self.page_bytes_written + self.snapshot_bytes

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bytes_written"] = self.bytes_written
        return d


def record_commit(writer: Any, prints: list[Fingerprints], stats: WriteStats, chunks: list[bytes],
                  started: float) -> None:
    """What every store does once a staged write is published: the fingerprints become the next
    write's ``_prior`` (unchanged pages are then not hashed again), and the write's size and time
    complete ``stats``, which become the writer's ``last_stats``."""
    writer._prior = prints
    stats.snapshot_bytes = sum(len(c) for c in chunks)
    stats.seconds = time.perf_counter() - started
    writer.last_stats = stats


def _memory_buffers(snapshot: Snapshot) -> list[Any]:
    """The memories' bytes as they are (bytes, bytearray, or a view of an engine's memory: no copy)."""
    out = []
    for i, m in enumerate(snapshot.memories):
        size = memoryview(m.data).nbytes
        if size % PAGE_SIZE:
            raise SnapshotError(f"cannot write snapshot: memory {i} is {size} bytes, not a whole number of pages")
        out.append(m.data)
    return out


def _validate_for_write(manifest: dict[str, Any]) -> None:
    """Refuse to write what could not be read back: run the reader's validation on everything but the pages."""
    try:
        from_plain(dict(manifest, memories=[]))
    except SnapshotError as e:
        raise SnapshotError(f"refusing to write an invalid snapshot: {_one_line(str(e))}") from None
    for i, m in enumerate(manifest["memories"]):
        for key in ("min", "max"):
            v = m[key]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65536):
                raise SnapshotError(f"refusing to write an invalid snapshot: memory {i} {key} is {v!r}")


def _private_opener(path: str, flags: int) -> int:
    """``open``'s opener for files wasmig creates in a checkpoint directory: 0600 (docs/security.md)."""
    return os.open(path, flags, PRIVATE_FILE_MODE)


def _load_file(path: Path, pages_dir: Path | None, expect: bytes | None = None) -> Snapshot:
    manifest = _read_manifest(path, expect)
    return from_plain(manifest, _PageSource(pages_dir).memory)


def _pages_dir_for(file: Path) -> Path:
    return file.parent.parent / "pages"


def load_snapshot(path: str | Path, expect: bytes | None = None) -> Snapshot:
    """Load a snapshot from a checkpoint directory (its latest), a snapshot file in one, a single
    file, or a single-file export (.wsnap), or a store URL (``s3://``, ``file://``: its latest, or
    one of its snapshots). ``expect``: see :func:`read_sealed`."""
    remote = _in_store(path)
    if remote is not None:
        return remote[0].load(remote[1], expect)
    path = Path(path)
    file = _guarded(path, "read snapshot", _resolve, path)
    from wasmig.snapshot import wsnap

    if wsnap.is_wsnap(file):
        return _guarded(file, "read snapshot", wsnap.load_wsnap, file, expect)
    return _guarded(file, "read snapshot", _load_file, file, _pages_dir_for(file), expect)


def load_snapshot_deferred(path: str | Path,
                           expect: bytes | None = None) -> tuple[Snapshot, list[PagedMemory] | None]:
    """:func:`load_snapshot` that reads only the manifest of a snapshot in a checkpoint directory
    or a single file: the memories' bytes are left empty and their pages come back as
    :class:`PagedMemory`, to be read when the restore writes them (a ``.wsnap`` is loaded whole:
    None). The path for a restore that does not need the memory as one ``bytes`` (on wasmtime,
    decompressing, joining and copying 79 MB of CPython memory took 0.4 s)."""
    remote = _in_store(path)
    if remote is not None:
        return remote[0].load_deferred(remote[1], expect)
    path = Path(path)
    file = _guarded(path, "read snapshot", _resolve, path)
    from wasmig.snapshot import wsnap

    if wsnap.is_wsnap(file):
        return _guarded(file, "read snapshot", wsnap.load_wsnap, file, expect), None
    source = _PageSource(_pages_dir_for(file))
    pages: list[PagedMemory] = []

    def defer(index: int, raw: Any, size_pages: int) -> None:
        pages.append(source.deferred(index, raw, size_pages))

    snap = _guarded(file, "read snapshot", lambda: from_plain(_read_manifest(file, expect), defer))
    return snap, [_GuardedPages(file, p) for p in pages]


def materialize(snap: Snapshot, pages: list[PagedMemory] | None) -> None:
    """Read the pages :func:`load_snapshot_deferred` left out into ``snap``'s memories (for a
    consumer that needs the bytes: the interpreter). Each memory is an anonymous ``mmap``, which
    the kernel gives zero-filled and backs with RAM only where written: its zero pages cost nothing
    until the interpreter copies the memory into its own (joining the pages into one ``bytes`` made
    a 4 GiB memory of zero pages cost 8.5 GB). Read it as a buffer: ``len``, slices, ``bytes()``."""
    if pages is None:
        return
    for paged, mem in zip(pages, snap.memories, strict=True):
        if not len(paged):
            mem.data = b""
            continue
        image = mmap.mmap(-1, len(paged) * PAGE_SIZE)
        paged.copy_into(memoryview(image), [j for j, entry in enumerate(paged.entries) if entry is not None])
        mem.data = image  # type: ignore[assignment]


def read_sealed(path: str | Path) -> tuple[Path | str, Container]:
    """The snapshot file ``path`` means (a checkpoint directory: its latest) and its container
    (for a .wsnap: the snapshot inside it), checked as a read checks it but no page read. A
    restore checks the seal and the memory size here, then loads the file with ``expect=`` the
    container's checksum: what it restores is what was checked, even if the file is replaced
    in between. A store URL gives the snapshot's URL (a str) in place of the file."""
    remote = _in_store(path)
    if remote is not None:
        return remote[0].read_sealed(remote[1])
    path = Path(path)
    file = _guarded(path, "read snapshot", _resolve, path)
    from wasmig.snapshot import wsnap

    def read() -> Container:
        if wsnap.is_wsnap(file):
            return wsnap.container(file)
        with open(file, "rb") as f:
            return _read_container(f, os.fstat(f.fileno()).st_size)

    return file, _guarded(file, "read snapshot", read)


def _in_store(path: str | Path) -> tuple[SnapshotStore, str | None] | None:
    """For a store URL: the store and the snapshot it names (None: the latest); else None."""
    from wasmig.snapshot.stores import is_store_url, reader_for

    return reader_for(str(path)) if is_store_url(path) else None


def _resolve(path: Path) -> Path:
    """A checkpoint directory means its latest snapshot; anything else is taken as a snapshot file."""
    if not os.path.isdir(path):
        return path
    latest = CheckpointDir(path).latest()
    if latest is None:
        if not os.path.isdir(path / "snapshots"):
            raise SnapshotError("not a checkpoint directory (no snapshots/ in it)")
        raise SnapshotError("checkpoint directory has no snapshots")
    return latest


def _number(p: Path) -> int:
    m = _SNAP_RE.fullmatch(p.name)
    return int(m.group(1)) if m else -1


# --- writing ----------------------------------------------------------------------------------------
def write_single_file(snapshot: Snapshot, path: str | Path, level: int = ZSTD_LEVEL) -> WriteStats:
    """Write a self-contained snapshot (pages embedded) atomically to ``path``; replaces an existing file."""
    t0 = time.perf_counter()
    path = Path(path)
    stats = WriteStats()
    memories = _memory_buffers(snapshot)
    _validate_for_write(to_plain(snapshot, lambda i, _data: []))
    cctx = compressor(level)
    lists: list[list[bytes | None]] = []
    for data in memories:
        mem = MemoryPages(data)
        entries: list[bytes | None] = []
        for j in range(mem.count):
            stats.pages_total += 1
            if mem.is_zero(j):
                stats.pages_zero += 1
                entries.append(None)
            else:
                stats.pages_new += 1
                entries.append(page_frame(cctx, mem.page(j)))
        mem.release()
        lists.append(entries)
    stats.pause_seconds = time.perf_counter() - t0
    chunks = _encode(to_plain(snapshot, lambda i, _data: lists[i]))
    try:
        _mkdirs_durable(path.parent)
        _atomic_write(path, chunks)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot write snapshot: {_describe(e)}") from None
    stats.snapshot_bytes = sum(len(c) for c in chunks)  # the pages are inside it: page_bytes_written stays 0
    stats.seconds = time.perf_counter() - t0
    return stats


class StagedWrite:
    """A checkpoint whose memory has been read (the guest may run again) and whose new pages are
    in a pack not yet durable. :meth:`commit` makes the pages durable and publishes the snapshot
    file; :meth:`abort` discards it. Holds the directory's gc lock (shared) until either."""

    def __init__(self, store: CheckpointDir, lock: BinaryIO, writer: packs.PackWriter, chunks: list[bytes],
                 prints: list[Fingerprints], reused: set[str], stats: WriteStats, started: float) -> None:
        self._store, self._lock, self._writer = store, lock, writer
        self._chunks, self._prints, self._reused = chunks, prints, reused
        self.stats = stats
        self._started = started

    def commit(self) -> Path:
        """Pack (fsync, rename), the directories that must be durable, then the snapshot file; its path."""
        store = self._store
        pack: Path | None = None
        try:
            try:
                pack = self._writer.commit()
                store._make_reused_durable(self._reused, pack is not None)
                path = store._install(self._chunks)
            finally:
                self._lock.close()  # releases the lock
        except BaseException as e:
            self._writer.abort()
            if pack is not None:  # published, and no snapshot names it (a full disk): taken back
                store.discard_pack(pack, self._writer.page_hashes())
            if isinstance(e, OSError):
                raise SnapshotError(f"{store.path}: cannot write snapshot: {_describe(e)}") from None
            raise
        if pack is not None:
            store._durable_packs.add(pack.name)
            self.stats.page_bytes_written = self._writer.offset  # the pack file: pages, index, checksum
        record_commit(store, self._prints, self.stats, self._chunks, self._started)
        return path

    def abort(self) -> None:
        self._writer.abort()
        self._lock.close()


class CheckpointDir:
    """A directory of numbered snapshots of one program sharing a content-addressed page store.

    Safe to use from several processes at once (each snapshot gets its own number, pages are
    idempotent); one instance is not meant to be shared between threads while writing.
    ``threads``: workers for hashing and compressing (None: every core this process may use).
    """

    def __init__(self, path: str | Path, level: int = ZSTD_LEVEL, threads: int | None = None) -> None:
        self.path = Path(path)
        self.snapshots_dir = self.path / "snapshots"
        self.pages_dir = self.path / "pages"
        self.level = level
        self.threads = threads
        self.last_stats: WriteStats | None = None
        self._packs = packs.PackStore(self.pages_dir)
        # Packs whose directory entry this process made durable. A pack found on disk but not in
        # here may have been renamed into place by a writer that died before fsyncing pages/, so
        # pages/ is fsynced before a snapshot starts depending on it (likewise for layout-1 pages).
        self._durable_packs: set[str] = set()
        self._durable_legacy_dirs: set[str] = set()
        #: the fingerprints of this instance's last write (pagework: unchanged pages are not rehashed)
        self._prior: list[Fingerprints] | None = None
        self._dirs_lock = threading.Lock()

    # reading
    def snapshots(self) -> list[Path]:
        """The snapshot files, oldest (lowest number) first. Temporary files are never listed."""
        try:
            names = os.listdir(self.snapshots_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise SnapshotError(f"{self.snapshots_dir}: cannot list snapshots: {_describe(e)}") from None
        found = [(int(m.group(1)), n) for n in names if (m := _SNAP_RE.fullmatch(n))]
        return [self.snapshots_dir / n for _, n in sorted(found)]

    def latest(self) -> Path | None:
        snaps = self.snapshots()
        return snaps[-1] if snaps else None

    def load(self, which: str | Path | int | None = None) -> Snapshot:
        """Load a snapshot of this directory: a path, a snapshot number, or (default) the latest."""
        if which is None:
            latest = self.latest()
            if latest is None:
                raise SnapshotError(f"{self.path}: checkpoint directory has no snapshots")
            path = latest
        elif isinstance(which, int):
            path = self.snapshots_dir / f"{which:06d}.snap"
        else:
            path = Path(which)
        return _guarded(path, "read snapshot", _load_file, path, self.pages_dir)

    # writing
    def prepare(self) -> None:
        """Make the directory and its ``pages/`` and ``snapshots/`` durably now, before the first
        write: a run does this once its program is under way, so the first checkpoint's pause does
        not hold their creation and the fsyncs of their parents (3 directory fsyncs, ~12 ms of a
        90 ms checkpoint of a zero-heavy 256 MiB memory). A write makes them as well when missing."""
        try:
            self._make_dirs()
        except OSError as e:
            raise SnapshotError(f"{self.path}: cannot write snapshot: {_describe(e)}") from None

    def _make_dirs(self) -> None:
        # under a lock: a run prepares on another thread than its checkpoints, and a write must not
        # go on while the other thread has made a directory but not yet fsynced its parent
        with self._dirs_lock:
            _mkdirs_durable(self.path)
            _mkdirs_durable(self.pages_dir)
            _mkdirs_durable(self.snapshots_dir)

    def write(self, snapshot: Snapshot) -> Path:
        """Store ``snapshot`` (new pages first, then the snapshot file) and return the snapshot file's path.

        Statistics of the write are left in :attr:`last_stats`.
        """
        return self.stage(snapshot).commit()

    def stage(self, snapshot: Snapshot) -> StagedWrite:
        """Read ``snapshot``'s memories into a new pack (not yet durable) and encode its manifest:
        the part of a write that needs the memories (a guest stays stopped for it; ``memories``
        may be views of its live memory). Finish with :meth:`StagedWrite.commit`."""
        t0 = time.perf_counter()
        memories = _memory_buffers(snapshot)
        # Validate before touching the disk: an invalid snapshot must not leave pages behind either.
        _validate_for_write(to_plain(snapshot, lambda i, _data: []))
        lock: BinaryIO | None = None
        writer: packs.PackWriter | None = None
        try:
            self._make_dirs()
            lock = open(self.path / GC_LOCK, "a+b", opener=_private_opener)  # noqa: SIM115 - held until commit or abort
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH)
            self._packs.refresh()
            writer = packs.PackWriter(self.pages_dir)
            lists, prints, tally = hash_and_store(memories, self._prior, self._packs.has, writer, self.level,
                                                  self.threads)
            pause = time.perf_counter() - t0
            chunks = _encode(to_plain(snapshot, lambda i, _data: lists[i]))
        except BaseException as e:
            if writer is not None:
                writer.abort()
            if lock is not None:
                lock.close()
            if isinstance(e, OSError):
                raise SnapshotError(f"{self.path}: cannot write snapshot: {_describe(e)}") from None
            raise
        stats = WriteStats(pages_total=tally.total, pages_zero=tally.zero, pages_new=tally.new,
                           pages_deduplicated=tally.deduplicated, page_bytes_written=tally.bytes_written,
                           pause_seconds=pause)
        reused = {h for hashes in lists for h in hashes if h is not None} - tally.new_hashes
        return StagedWrite(self, lock, writer, chunks, prints, reused, stats, t0)

    @contextlib.contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        with open(self.path / GC_LOCK, "a+b", opener=_private_opener) as lock:
            fcntl.flock(lock.fileno(), mode)
            yield  # closing the file releases the lock

    def _make_reused_durable(self, reused: set[str], wrote_pack: bool) -> None:
        """fsync ``pages/`` (once) when this write added a pack or names pages of a pack this process
        has not seen durable, and each layout-1 page directory it names pages of for the first time."""
        sync_pages = wrote_pack
        other_packs: set[str] = set()
        legacy_dirs: set[str] = set()
        for h in reused:
            loc = self._packs.locations.get(h)
            if loc is not None:
                if loc.pack not in self._durable_packs:
                    other_packs.add(loc.pack)
            elif h[:2] not in self._durable_legacy_dirs:
                legacy_dirs.add(h[:2])
        for d in sorted(legacy_dirs):
            _fsync_dir(self.pages_dir / d)
        self._durable_legacy_dirs |= legacy_dirs
        if sync_pages or other_packs:
            _fsync_dir(self.pages_dir)
        self._durable_packs |= other_packs

    def _next_number(self) -> int:
        snaps = self.snapshots()
        return _number(snaps[-1]) + 1 if snaps else _FIRST_NUMBER

    def _install(self, chunks: list[bytes]) -> Path:
        """Give the fsynced snapshot the next free number without ever replacing another writer's file.

        ``os.link`` fails with EEXIST instead of replacing, so two writers racing for a number both
        succeed with different numbers, and the file appears under its final name complete.
        """
        tmp = write_temp(self.snapshots_dir / "snapshot", chunks)
        try:
            n = self._next_number()
            while True:
                final = self.snapshots_dir / f"{n:06d}.snap"
                try:
                    os.link(tmp, final)
                    break
                except FileExistsError:
                    n = max(n + 1, self._next_number())
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    return self._install_locked(tmp)  # a filesystem without hard links
        finally:
            _unlink_quietly(tmp)
        _fsync_dir(self.snapshots_dir)
        return final

    def _install_locked(self, tmp: Path) -> Path:
        import fcntl  # POSIX only, like hard-link-less filesystems on POSIX hosts that need this path

        with open(self.snapshots_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            final = self.snapshots_dir / f"{self._next_number():06d}.snap"
            os.replace(tmp, final)
            _fsync_dir(self.snapshots_dir)
            return final

    def discard_pack(self, pack: Path, hashes: set[str]) -> bool:
        """Remove ``pack`` (holding pages ``hashes``), published by a write that then failed, unless
        a snapshot names one of its pages; whether it was removed. Another writer may have found
        pages in it meanwhile and named them, so this is gc's decision for one pack, under gc's
        exclusive lock: taken without waiting (the caller must hold none), and when a writer holds
        it, or a snapshot cannot be read, the pack is left for gc."""
        try:
            with self._gc_lock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                if any(hashes & named for named in self.referenced_pages().values()):
                    return False
                os.unlink(pack)
                _fsync_dir(self.pages_dir)
                return True
        except (OSError, SnapshotError):
            return False

    # collecting
    def referenced_pages(self) -> dict[Path, set[str]]:
        """Each snapshot's page hashes. A snapshot that cannot be read stops everything: its pages
        may be all that is left of it, so nothing may be collected on a guess."""
        out: dict[Path, set[str]] = {}
        for snap in self.snapshots():
            hashes = _guarded(snap, "read snapshot", lambda p=snap: _page_hashes(_read_manifest(p)))
            if any(not _HASH_RE.fullmatch(h) for h in hashes):
                raise SnapshotError(f"{snap}: corrupt snapshot: a page entry is not a hash")
            out[snap] = hashes
        return out

    def gc(self, *, dry_run: bool = False) -> dict[str, int]:
        """Remove the pages no snapshot of the directory names any more (after snapshots were
        deleted) and writers' stale temporary files; return counts and bytes.

        Packs holding unreferenced pages are compacted: their live pages are copied into one new
        pack (written, fsynced and renamed in like any pack, then ``pages/`` fsynced), and only
        then are the old packs deleted, so a crash at any point leaves every page at least once.
        Deleting a snapshot file never breaks another: pages are shared by content and only this
        removes them. Writers hold :data:`GC_LOCK` shared while they write pages and install the
        snapshot naming them; this holds it exclusively, so it never sees a page that a
        snapshot being written is about to name as unreferenced."""
        if not self.path.is_dir():
            raise SnapshotError(f"{self.path}: not a checkpoint directory")
        try:
            with self._gc_lock(fcntl.LOCK_EX):
                refs = self.referenced_pages()
                stats = self._collect(set().union(*refs.values()), dry_run)
                stats["snapshots"] = len(refs)
                if not dry_run:
                    stats["temp_files_removed"] = self.remove_stale_temp_files()
                return {k: stats[k] for k in ("snapshots", "pages_kept", "pages_removed", "bytes_removed",
                                              "temp_files_removed")}
        except OSError as e:
            raise SnapshotError(f"{self.path}: cannot collect pages: {_describe(e)}") from None

    def _collect(self, referenced: set[str], dry_run: bool) -> dict[str, int]:
        store = packs.PackStore(self.pages_dir)
        store.refresh()
        stats = {"pages_kept": 0, "pages_removed": 0, "bytes_removed": 0, "temp_files_removed": 0}
        kept: set[str] = set()
        doomed: list[str] = []
        live: list[tuple[str, str, int, int]] = []  # pages to copy out of doomed packs
        for name, entries in sorted(store.packs.items()):
            mine = [(h, off, n) for h, off, n in entries if h in referenced and h not in kept]
            kept.update(h for h, _, _ in mine)
            if len(mine) < len(entries):
                doomed.append(name)
                live += [(name, h, off, n) for h, off, n in mine]
                stats["pages_removed"] += len(entries) - len(mine)
                stats["bytes_removed"] += (self.pages_dir / name).stat().st_size
        legacy_doomed = []
        for entry in store.legacy_files():
            if entry.name in referenced and entry.name not in kept:
                kept.add(entry.name)
            else:
                legacy_doomed.append(entry)
                stats["pages_removed"] += 1
                stats["bytes_removed"] += entry.stat().st_size
        stats["pages_kept"] = len(kept)
        if dry_run:
            stats["bytes_removed"] -= sum(n for _, _, _, n in live)  # what the compacted pack will hold
            return stats
        if live:
            writer = packs.PackWriter(self.pages_dir)
            try:
                for name, h, off, n in live:
                    comp = os.pread(store._fd(name), n, off)  # noqa: SLF001 - the store's own reader
                    if len(comp) != n:
                        raise SnapshotError(f"pack {self.pages_dir / name} changed size during gc")
                    writer.append(h, comp)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            stats["bytes_removed"] -= writer.offset
            _fsync_dir(self.pages_dir)  # the copies are durable before an original goes
        store.close()
        for name in doomed:
            os.unlink(self.pages_dir / name)
        for entry in legacy_doomed:
            os.unlink(entry.path)
        for sub in sorted({Path(e.path).parent for e in legacy_doomed}):
            _fsync_dir(sub)
        if doomed:
            _fsync_dir(self.pages_dir)
        self._durable_packs.clear()
        self._durable_legacy_dirs.clear()
        return stats

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by writers that were killed mid-write; returns how many.

        Only files older than ``older_than_s`` are touched, so a concurrent writer's live temp file
        is never removed from under it. Temporary files are never read, so leaving them is safe;
        this only reclaims space.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        dirs = [self.snapshots_dir]
        if self.pages_dir.is_dir():
            dirs += [self.pages_dir] + [p for p in self.pages_dir.iterdir() if p.is_dir()]
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if is_temp_name(e.name):
                    try:
                        if e.stat().st_mtime < cutoff:
                            os.unlink(e.path)
                            removed += 1
                    except OSError:
                        pass
        return removed
