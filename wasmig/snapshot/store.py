"""Snapshots on disk: checkpoint directories with a shared page store, and single files.

The layout and the byte format are specified in docs/snapshot-format.md; this module is the only
code that reads or writes them. Three properties drive the design:

- **Crash safety.** A checkpoint is taken from a running program that may be killed (or whose
  host may lose power) at any moment, and the previous checkpoint is often the only copy of the
  program's state. So nothing is ever written in place: every file is written to a temporary
  name in its final directory, fsynced, renamed, and the directory fsynced. Pages go first, the
  snapshot file that references them last, so a snapshot file that exists is always complete and
  every page it names is on disk. Snapshot numbers are claimed with ``os.link`` (which, unlike
  ``rename``, refuses to replace an existing name), so concurrent writers never overwrite each
  other; page files are content-addressed, so two writers storing the same page write the same
  bytes and either copy is correct.
- **Untrusted input.** A snapshot may come over a wire, from a full disk or from a newer wasmig.
  Every failure while reading (I/O, msgpack, zstd, a hash mismatch, a missing page, a malformed
  manifest) is reported as a one-line :class:`SnapshotError` naming the file; decompression is
  bounded to one page so a crafted page cannot exhaust memory.
- **Speed.** A checkpoint pauses the guest, so the page loop is kept tight: zero pages are found
  with ``bytes.startswith`` (a ``memcmp``, no copy), pages are hashed and compressed from
  ``memoryview`` slices with reused zstd contexts, pages already in the store cost one ``stat``,
  and the per-file ``fsync`` is the dominant remaining cost (measured by
  ``benchmarks/snapshot_speed.py``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import re
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import zstandard

from wasmig.files import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, make_private_dir, open_private
from wasmig.hashing import blake3
from wasmig.snapshot.state import FORMAT_VERSION, PAGE_SIZE, Snapshot, SnapshotError, from_plain, to_plain

MAGIC = b"WASMIGSNAP"
_HEADER = struct.Struct("<10sII")  # magic, format version, manifest length
HEADER_SIZE = _HEADER.size
HASH_SIZE = 32
ZERO_PAGE = bytes(PAGE_SIZE)
ZSTD_LEVEL = 1  # level 1 compresses typical wasm heaps nearly as well as 3 at about twice the speed
# zstd's worst case for one incompressible 64 KiB page is a few bytes over the page; anything much
# larger is not a page we wrote, and reading it whole would let a corrupt store exhaust memory.
_MAX_COMPRESSED_PAGE = 2 * PAGE_SIZE
_MAX_MANIFEST = 0xFFFFFFFF  # the header's u32 length
_HASH_RE = re.compile(r"[0-9a-f]{64}")  # also what keeps a manifest from naming a path outside pages/
_SNAP_RE = re.compile(r"(\d{6,})\.snap")
_FIRST_NUMBER = 1
_IO_THREADS = 8
#: in a checkpoint directory: writers hold it shared while they write, ``gc`` exclusively, so a
#: collection never deletes a page that a snapshot being written is about to name
GC_LOCK = ".gc-lock"

_tls = threading.local()  # zstd contexts are not thread-safe; one set per thread, reused across calls


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _tls.__dict__.setdefault("cctx", {})
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


# --- statistics -----------------------------------------------------------------------------------
@dataclass
class WriteStats:
    """What one write did (``wasmig checkpoint``/``inspect`` show it; the benchmark measures it)."""

    pages_total: int = 0  # 64 KiB pages across all memories
    pages_zero: int = 0  # all-zero pages: not stored
    pages_new: int = 0  # pages compressed and written by this write
    pages_deduplicated: int = 0  # non-zero pages already stored (earlier snapshot, other writer, same snapshot)
    page_bytes_written: int = 0  # compressed bytes of the new pages
    snapshot_bytes: int = 0  # size of the snapshot file
    seconds: float = 0.0

    @property
    def bytes_written(self) -> int:
        return self.page_bytes_written + self.snapshot_bytes

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bytes_written"] = self.bytes_written
        return d


# --- small helpers ----------------------------------------------------------------------------------
def _one_line(text: str, limit: int = 500) -> str:
    """Error text for a terminal: one line, and bounded (validation messages may quote file contents)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return _one_line(str(exc)) or type(exc).__name__


# Everything a malformed file can make the libraries below raise. SnapshotError passes through.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, MemoryError, RecursionError,
    zstandard.ZstdError, msgpack.UnpackException,
)


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable. No-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories; nothing more can be done there
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _mkdirs_durable(path: Path) -> None:
    """Create ``path`` (and parents, mode 0700) and fsync each new entry's parent, so the directory
    survives a crash."""
    if path.is_dir():
        return
    for m in make_private_dir(path):
        _fsync_dir(m.parent)


def _temp_name(final: Path) -> Path:
    # Same directory as the final name (rename is only atomic within a filesystem); unique per writer.
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _write_temp(final: Path, chunks: list[bytes | memoryview]) -> Path:
    """Write ``chunks`` to a new temporary file next to ``final``, fsynced. Returns the temp path."""
    tmp = _temp_name(final)
    fd = open_private(tmp)
    try:
        with open(fd, "wb", closefd=True) as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _atomic_write(final: Path, chunks: list[bytes | memoryview], sync_dir: bool = True) -> None:
    """Temp file, write, fsync, rename over ``final``, fsync the directory: ``final`` is old or new, never partial."""
    tmp = _write_temp(final, chunks)
    try:
        os.replace(tmp, final)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if sync_dir:
        _fsync_dir(final.parent)


def _iter_pages(data: bytes | bytearray) -> Iterator[memoryview | None]:
    """The memory's pages as zero-copy views, ``None`` for an all-zero page."""
    mv = memoryview(data)
    for off in range(0, len(data), PAGE_SIZE):
        # startswith is a memcmp against the shared zero page: no slice copy, ~50x faster than
        # comparing memoryviews, which goes element by element.
        yield None if data.startswith(ZERO_PAGE, off) else mv[off:off + PAGE_SIZE]


def _memory_bytes(snapshot: Snapshot) -> list[bytes | bytearray]:
    out = []
    for i, m in enumerate(snapshot.memories):
        data = m.data if isinstance(m.data, (bytes, bytearray)) else bytes(m.data)
        if len(data) % PAGE_SIZE:
            raise SnapshotError(f"cannot write snapshot: memory {i} is {len(data)} bytes, not a whole number of pages")
        out.append(data)
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


def _encode(manifest: dict[str, Any], *, sign: bool = True) -> list[bytes]:
    """Header, msgpack manifest, trailing BLAKE3 of both and (``sign``, when the user has a key) the
    seal signing that checksum (:mod:`wasmig.snapshot.signing`), as chunks (a single file's manifest
    can be large)."""
    try:
        body = msgpack.packb(manifest, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise SnapshotError(f"cannot encode snapshot: {_describe(e)}") from None
    if len(body) > _MAX_MANIFEST:
        raise SnapshotError(f"snapshot manifest is {len(body)} bytes, more than the format's 4 GiB limit; "
                            "use a checkpoint directory instead of a single file")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(body))
    h = blake3(header)
    h.update(body)
    checksum = h.digest()
    if not sign:
        return [header, body, checksum]
    from wasmig.snapshot.signing import seal_for  # the cryptography package, imported when a snapshot is written

    return [header, body, checksum, seal_for(checksum)]


def _decompress_page(comp: bytes, what: str) -> bytes:
    """One stored page, bounded to PAGE_SIZE of output whatever its frame header claims."""
    if len(comp) > _MAX_COMPRESSED_PAGE:
        raise SnapshotError(f"{what} is {len(comp)} bytes compressed, too large for a 64 KiB page")
    # python-zstandard trusts the frame's content size and allocates it before decompressing, so a
    # crafted header could claim gigabytes: check the claim first, then cap the output anyway.
    try:
        claimed = zstandard.frame_content_size(comp)
        if claimed not in (PAGE_SIZE, -1):
            raise SnapshotError(f"{what} decompresses to {claimed} bytes, not {PAGE_SIZE}")
        page = _decompressor().decompress(comp, max_output_size=PAGE_SIZE, allow_extra_data=False)
    except zstandard.ZstdError as e:  # includes output that would exceed one page
        raise SnapshotError(f"{what} is not a valid compressed 64 KiB page ({_describe(e)})") from None
    if len(page) != PAGE_SIZE:
        raise SnapshotError(f"{what} decompresses to {len(page)} bytes, not {PAGE_SIZE}")
    return page


# --- reading ----------------------------------------------------------------------------------------
def _read_manifest(path: Path, expect: bytes | None = None) -> dict[str, Any]:
    """Read and verify a snapshot file's container (magic, version, length, hash); return the manifest.
    ``expect``: the checksum it must have (the one whose seal was checked; see :func:`read_sealed`)."""
    with open(path, "rb") as f:
        container = _read_container(f, os.fstat(f.fileno()).st_size)
    _check_expected(container.checksum, expect)
    return container.manifest


def _check_expected(checksum: bytes, expect: bytes | None) -> None:
    if expect is not None and checksum != expect:
        raise SnapshotError("snapshot changed after its signature was checked")


def _read_manifest_from(f: BinaryIO, size: int) -> dict[str, Any]:
    """:func:`_read_manifest` for a container of ``size`` bytes at ``f``'s position (a snapshot
    file, or the one inside a .wsnap, given as a ``BytesIO``)."""
    return _read_container(f, size).manifest


@dataclass(frozen=True)
class Container:
    """A snapshot file's manifest, its checksum and its :class:`~wasmig.snapshot.signing.Seal`
    (None: unsigned). The seal is parsed, not verified: whether its signer is trusted is the
    caller's question (:func:`wasmig.snapshot.signing.check_trust`)."""

    manifest: dict[str, Any]
    checksum: bytes
    seal: Any


def _read_container(f: BinaryIO, size: int) -> Container:
    """Read and verify a container of ``size`` bytes at ``f``'s position."""
    header = f.read(HEADER_SIZE)
    if header[:len(MAGIC)] != MAGIC:
        if header and MAGIC.startswith(header):
            raise SnapshotError(f"truncated snapshot ({len(header)} bytes)")
        raise SnapshotError("not a wasmig snapshot (bad magic)")
    if len(header) < HEADER_SIZE:
        raise SnapshotError(f"truncated snapshot ({len(header)} bytes, shorter than the header)")
    _, version, length = _HEADER.unpack(header)
    if version > FORMAT_VERSION:
        raise SnapshotError(f"snapshot has newer format version {version}, this wasmig reads {FORMAT_VERSION}; "
                            "upgrade wasmig to restore it")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"unknown snapshot format version {version}")
    expected = HEADER_SIZE + length + HASH_SIZE
    if size < expected:
        raise SnapshotError(f"truncated snapshot ({size} bytes, the header says {expected})")
    from wasmig.snapshot.signing import SEAL_MAGIC, SEAL_SIZE, Seal

    if size > expected + SEAL_SIZE:
        raise SnapshotError(f"snapshot has {size - expected} bytes of trailing garbage")
    rest = f.read(size - HEADER_SIZE + 1)
    if len(rest) != size - HEADER_SIZE:
        raise SnapshotError("snapshot changed size while being read")
    body = memoryview(rest)[:length]
    h = blake3(header)
    h.update(body)
    checksum = rest[length:length + HASH_SIZE]
    if h.digest() != checksum:
        raise SnapshotError("snapshot is corrupt (checksum mismatch)")
    tail = rest[length + HASH_SIZE:]
    seal = None
    if len(tail) == SEAL_SIZE:
        seal = Seal.parse(tail, checksum)
    elif tail and (SEAL_MAGIC.startswith(tail[:len(SEAL_MAGIC)])):
        raise SnapshotError(f"truncated snapshot ({size} bytes: its signature is cut short)")
    elif tail:
        raise SnapshotError(f"snapshot has {len(tail)} bytes of trailing garbage")
    manifest = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    if not isinstance(manifest, dict):
        raise SnapshotError("corrupt snapshot: manifest is not a map")
    if manifest.get("format_version") != version:
        raise SnapshotError("corrupt snapshot: manifest and header disagree on the format version")
    return Container(manifest, bytes(checksum), seal)


def read_sealed(path: str | Path) -> tuple[Path, Container]:
    """The snapshot file ``path`` means (a checkpoint directory: its latest) and its container
    (for a .wsnap: the snapshot inside it), checked as a read checks it but no page read. A
    restore checks the seal and the memory size here, then loads the file with ``expect=`` the
    container's checksum: what it restores is what was checked, even if the file is replaced
    in between."""
    path = Path(path)
    file = _guarded(path, "read snapshot", _resolve, path)
    from wasmig.snapshot import wsnap

    def read() -> Container:
        if wsnap.is_wsnap(file):
            return wsnap.container(file)
        with open(file, "rb") as f:
            return _read_container(f, os.fstat(f.fileno()).st_size)

    return file, _guarded(file, "read snapshot", read)


class _PageSource:
    """Resolves a manifest's page entries: ``None`` (zero), a hash (page store) or bytes (embedded)."""

    def __init__(self, pages_dir: Path | None) -> None:
        self.pages_dir = pages_dir
        self._cache: dict[str, bytes] = {}  # repeated pages are read and verified once
        self._store_checked = False

    def stored(self, h: str) -> bytes:
        page = self._cache.get(h)
        if page is not None:
            return page
        if not self._store_checked:
            if self.pages_dir is None or not self.pages_dir.is_dir():
                raise SnapshotError(f"page {h} is missing: this snapshot references a page store and "
                                    f"{self.pages_dir or 'its pages/ directory'} does not exist")
            self._store_checked = True
        assert self.pages_dir is not None
        p = self.pages_dir / h[:2] / h
        try:
            with open(p, "rb") as f:
                comp = f.read(_MAX_COMPRESSED_PAGE + 1)
        except FileNotFoundError:
            raise SnapshotError(f"page {h} is missing from the page store ({p})") from None
        page = _decompress_page(comp, f"page file {p}")
        if blake3(page).hexdigest() != h:
            raise SnapshotError(f"page file {p} is corrupt (hash mismatch)")
        self._cache[h] = page
        return page

    def memory(self, index: int, raw: Any, size_pages: int) -> bytes:
        paged = self.deferred(index, raw, size_pages)
        return b"".join(ZERO_PAGE if entry is None else paged.page(j) for j, entry in enumerate(paged.entries))

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


def _load_file(path: Path, pages_dir: Path | None, expect: bytes | None = None) -> Snapshot:
    manifest = _read_manifest(path, expect)
    return from_plain(manifest, _PageSource(pages_dir).memory)


def _guarded(path: Path, what: str, fn: Any, *args: Any) -> Any:
    """Run a read, turning *every* failure into a one-line SnapshotError that names ``path``.

    Callers (the CLI, a migration receiver) rely on "a snapshot either loads or raises
    SnapshotError": a malformed file must never surface as a msgpack/zstd/KeyError traceback.
    The final ``except Exception`` is that contract's backstop; its message says "internal error" and
    keeps the exception type so a real bug stays recognisable (the corruption tests assert it is
    never reached).
    """
    try:
        return fn(*args)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {_one_line(str(e))}") from None
    except _READ_ERRORS as e:
        raise SnapshotError(f"{path}: cannot {what}: {_describe(e)}") from None
    except Exception as e:  # the backstop: see the docstring
        raise SnapshotError(f"{path}: cannot {what}: internal error {type(e).__name__}: {_describe(e)}") from e


def _pages_dir_for(file: Path) -> Path:
    return file.parent.parent / "pages"


def load_snapshot(path: str | Path, expect: bytes | None = None) -> Snapshot:
    """Load a snapshot from a checkpoint directory (its latest), a snapshot file in one, a single
    file, or a single-file export (.wsnap). ``expect``: see :func:`read_sealed`."""
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
        for j, entry in enumerate(paged.entries):
            if entry is not None:
                image[j * PAGE_SIZE:(j + 1) * PAGE_SIZE] = paged.page(j)
        mem.data = image  # type: ignore[assignment]


class _GuardedPages(PagedMemory):
    """A :class:`PagedMemory` whose read failures name the snapshot file (see :func:`_guarded`)."""

    def __init__(self, file: Path, inner: PagedMemory) -> None:
        super().__init__(inner.index, inner.entries, inner._source)
        self._file = file

    def page(self, j: int) -> bytes:
        return _guarded(self._file, "read snapshot", super().page, j)


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


def storage_stats(path: str | Path) -> dict[str, Any]:
    """How a snapshot file (or a checkpoint directory's latest) stores its memory, from its manifest alone.

    For ``wasmig inspect``: pass the result to :func:`wasmig.snapshot.inspect.summarize`. Keys:
    ``pages_total``/``pages_zero``/``pages_distinct`` (distinct non-zero contents),
    ``pages_repeated`` (non-zero pages identical to another page of the same snapshot),
    ``stored_bytes`` (compressed size of its distinct pages), ``snapshot_bytes``, ``layout``
    (``checkpoint-dir`` or ``single-file``) and, in a checkpoint directory,
    ``pages_shared_with_previous``: distinct pages the previous snapshot also references, i.e.
    what this snapshot did not have to write.
    """
    path = _guarded(Path(path), "read snapshot", _resolve, Path(path))
    from wasmig.snapshot import wsnap

    if wsnap.is_wsnap(path):
        return _guarded(path, "read snapshot", wsnap.storage_stats, path)

    def compute() -> dict[str, Any]:
        manifest = _read_manifest(path)
        entries = [e for m in _list_memories(manifest) for e in m]
        for e in entries:
            if not (e is None or isinstance(e, bytes) or isinstance(e, str) and _HASH_RE.fullmatch(e)):
                raise SnapshotError("corrupt snapshot: a page entry is neither a hash nor a page")
        distinct = {e if isinstance(e, str) else blake3(e).hexdigest() for e in entries if e is not None}
        embedded = any(isinstance(e, bytes) for e in entries)
        in_dir = path.parent.name == "snapshots" and not embedded
        stats: dict[str, Any] = {
            "layout": "checkpoint-dir" if in_dir else "single-file",
            "pages_total": len(entries),
            "pages_zero": sum(e is None for e in entries),
            "pages_distinct": len(distinct),
            "pages_repeated": sum(e is not None for e in entries) - len(distinct),
            "snapshot_bytes": os.path.getsize(path),
        }
        if embedded:
            stats["stored_bytes"] = sum(len(e) for e in entries if isinstance(e, bytes))
            return stats
        stats["stored_bytes"] = _stored_bytes(_pages_dir_for(path), distinct)
        if in_dir:
            prev = _previous(path)
            if prev is not None:
                stats["pages_shared_with_previous"] = len(distinct & _page_hashes(_read_manifest(prev)))
        return stats

    return _guarded(path, "read snapshot", compute)


def checkpoint_chain(path: str | Path) -> list[dict[str, Any]] | None:
    """The snapshots of the checkpoint directory that ``path`` is (or holds a snapshot of), oldest
    first: per snapshot its number, steps, pages, the distinct pages that no earlier snapshot
    still in the directory names (what it added to the store) and their stored bytes; None for a
    single-file snapshot. Each references the pages it shares with earlier ones, so deleting any
    snapshot file leaves the others whole (``wasmig gc`` then frees the pages nobody names)."""
    path = _guarded(Path(path), "read snapshot", _resolve, Path(path))
    if path.parent.name != "snapshots" or not _SNAP_RE.fullmatch(path.name):
        return None
    store = CheckpointDir(path.parent.parent)

    def compute() -> list[dict[str, Any]]:
        seen: set[str] = set()
        chain = []
        for snap in store.snapshots():
            manifest = _read_manifest(snap)
            hashes = _page_hashes(manifest)
            new = hashes - seen
            steps = manifest.get("steps")
            chain.append({"snapshot": snap.name, "steps": steps if isinstance(steps, int) else None,
                          "pages_total": sum(len(m) for m in _list_memories(manifest)), "pages_new": len(new),
                          "new_bytes": _stored_bytes(store.pages_dir, {h for h in new if _HASH_RE.fullmatch(h)}),
                          "snapshot_bytes": os.path.getsize(snap), "this": snap == path})
            seen |= hashes
        return chain

    return _guarded(path, "read snapshot", compute)


def _page_hashes(manifest: dict[str, Any]) -> set[str]:
    """The page-store hashes a manifest names (not its zero or embedded pages)."""
    return {e for m in _list_memories(manifest) for e in m if isinstance(e, str)}


def _stored_bytes(pages_dir: Path, hashes: set[str]) -> int:
    """What these pages take in the page store (a missing one counts nothing)."""
    total = 0
    for h in hashes:
        with contextlib.suppress(OSError):
            total += os.path.getsize(pages_dir / h[:2] / h)
    return total


def _list_memories(manifest: dict[str, Any]) -> list[list[Any]]:
    mems = manifest.get("memories")
    if not isinstance(mems, list) or not all(isinstance(m, dict) and isinstance(m.get("data"), list) for m in mems):
        raise SnapshotError("corrupt snapshot: malformed memories")
    return [m["data"] for m in mems]


def _previous(path: Path) -> Path | None:
    m = _SNAP_RE.fullmatch(path.name)
    if not m:
        return None
    earlier = [p for p in CheckpointDir(path.parent.parent).snapshots() if _number(p) < int(m.group(1))]
    return earlier[-1] if earlier else None


def _number(p: Path) -> int:
    m = _SNAP_RE.fullmatch(p.name)
    return int(m.group(1)) if m else -1


# --- writing ----------------------------------------------------------------------------------------
def write_single_file(snapshot: Snapshot, path: str | Path, level: int = ZSTD_LEVEL) -> WriteStats:
    """Write a self-contained snapshot (pages embedded) atomically to ``path``; replaces an existing file."""
    t0 = time.perf_counter()
    path = Path(path)
    stats = WriteStats()
    memories = _memory_bytes(snapshot)
    _validate_for_write(to_plain(snapshot, lambda i, _data: []))
    cctx = _compressor(level)
    lists: list[list[bytes | None]] = []
    for data in memories:
        entries: list[bytes | None] = []
        for page in _iter_pages(data):
            stats.pages_total += 1
            if page is None:
                stats.pages_zero += 1
                entries.append(None)
            else:
                stats.pages_new += 1
                entries.append(cctx.compress(page))
        lists.append(entries)
    chunks = _encode(to_plain(snapshot, lambda i, _data: lists[i]))
    try:
        _mkdirs_durable(path.parent)
        _atomic_write(path, chunks)
    except OSError as e:
        raise SnapshotError(f"{path}: cannot write snapshot: {_describe(e)}") from None
    stats.snapshot_bytes = sum(len(c) for c in chunks)  # the pages are inside it: page_bytes_written stays 0
    stats.seconds = time.perf_counter() - t0
    return stats


class _PageWriter:
    """Writes page files on a few threads, because a checkpoint's time is mostly ``fsync`` latency.

    Hashing and compressing stay on the caller's thread (they are fast); each page file's
    write + fsync + rename runs on a small pool, which lets the filesystem overlap the flushes
    (about 1.5-2x faster than one at a time on the ext4 disk measured). At most ``window``
    compressed pages wait in memory, so a slow disk does not make a copy of the whole heap.
    """

    def __init__(self, threads: int | None = None, window: int = 128) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads or _IO_THREADS, thread_name_prefix="wasmig-pages")
        self._pending: deque[Future[None]] = deque()
        self._window = window

    def submit(self, final: Path, data: bytes) -> None:
        while len(self._pending) >= self._window:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_atomic_write, final, [data], False))

    def finish(self) -> None:
        """Wait for every submitted page; re-raise the first failure."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> _PageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._pending:
            f.cancel()
        self._pool.shutdown(wait=True)  # no page write may outlive the call that started it


class CheckpointDir:
    """A directory of numbered snapshots of one program sharing a content-addressed page store.

    Safe to use from several processes at once (each snapshot gets its own number, pages are
    idempotent); one instance is not meant to be shared between threads while writing.
    """

    def __init__(self, path: str | Path, level: int = ZSTD_LEVEL) -> None:
        self.path = Path(path)
        self.snapshots_dir = self.path / "snapshots"
        self.pages_dir = self.path / "pages"
        self.level = level
        self.last_stats: WriteStats | None = None
        self._made_dirs: set[str] = set()  # page subdirectories known to exist (saves a stat per page)
        # Pages whose directory entry this process has made durable. A page found on disk but not in
        # here may have been renamed into place by a writer that died before fsyncing the directory,
        # so its directory is fsynced before a snapshot starts depending on it.
        self._durable: set[str] = set()

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
    def write(self, snapshot: Snapshot) -> Path:
        """Store ``snapshot`` (new pages first, then the snapshot file) and return the snapshot file's path.

        Statistics of the write are left in :attr:`last_stats`.
        """
        try:
            _mkdirs_durable(self.path)
            with self._gc_lock(fcntl.LOCK_SH):
                return self._write(snapshot)
        except OSError as e:
            raise SnapshotError(f"{self.path}: cannot write snapshot: {_describe(e)}") from None

    @contextlib.contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        with open(self.path / GC_LOCK, "a+b", opener=lambda p, f: os.open(p, f, PRIVATE_FILE_MODE)) as lock:
            fcntl.flock(lock.fileno(), mode)
            yield  # closing the file releases the lock

    def _write(self, snapshot: Snapshot) -> Path:
        t0 = time.perf_counter()
        stats = WriteStats()
        memories = _memory_bytes(snapshot)
        # Validate before touching the disk: an invalid snapshot must not leave pages behind either.
        _validate_for_write(to_plain(snapshot, lambda i, _data: []))
        _mkdirs_durable(self.pages_dir)
        _mkdirs_durable(self.snapshots_dir)
        with _PageWriter() as writer:
            lists, sync_dirs, seen = self._store_pages(memories, writer, stats)
            writer.finish()  # every new page file is complete and fsynced ...
        # ... and its name durable (page directories first, then pages/ for any new page
        # directory), before a snapshot names it.
        for d in sorted(sync_dirs, key=lambda d: (len(d), d), reverse=True):
            _fsync_dir(Path(d))
        self._durable |= seen
        chunks = _encode(to_plain(snapshot, lambda i, _data: lists[i]))
        path = self._install(chunks)
        stats.snapshot_bytes = sum(len(c) for c in chunks)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return path

    def _store_pages(self, memories: list[bytes | bytearray], writer: _PageWriter,
                     stats: WriteStats) -> tuple[list[list[str | None]], set[str], set[str]]:
        """Hash every page, hand the ones not yet stored to ``writer``; the manifest's page lists."""
        cctx = _compressor(self.level)
        pages_dir = str(self.pages_dir)
        seen: set[str] = set()
        sync_dirs: set[str] = set()
        lists: list[list[str | None]] = []
        for data in memories:
            hashes: list[str | None] = []
            for page in _iter_pages(data):
                stats.pages_total += 1
                if page is None:
                    stats.pages_zero += 1
                    hashes.append(None)
                    continue
                h = blake3(page).hexdigest()
                hashes.append(h)
                if h in seen:
                    stats.pages_deduplicated += 1
                    continue
                seen.add(h)
                sub = h[:2]
                subdir = f"{pages_dir}/{sub}"
                final = f"{subdir}/{h}"
                if sub not in self._made_dirs:
                    try:
                        os.mkdir(subdir, PRIVATE_DIR_MODE)
                        sync_dirs.add(pages_dir)  # its new entry is made durable with the pages
                    except FileExistsError:
                        pass
                    self._made_dirs.add(sub)
                if os.path.exists(final):
                    stats.pages_deduplicated += 1
                    if h not in self._durable:
                        sync_dirs.add(subdir)
                    continue
                comp = cctx.compress(page)
                writer.submit(Path(final), comp)
                sync_dirs.add(subdir)
                stats.pages_new += 1
                stats.page_bytes_written += len(comp)
            lists.append(hashes)
        return lists, sync_dirs, seen

    def _next_number(self) -> int:
        snaps = self.snapshots()
        return _number(snaps[-1]) + 1 if snaps else _FIRST_NUMBER

    def _install(self, chunks: list[bytes]) -> Path:
        """Give the fsynced snapshot the next free number without ever replacing another writer's file.

        ``os.link`` fails with EEXIST instead of replacing, so two writers racing for a number both
        succeed with different numbers, and the file appears under its final name complete.
        """
        tmp = _write_temp(self.snapshots_dir / "snapshot", chunks)
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
        """Delete the page files no snapshot of the directory names any more (after snapshots were
        deleted) and writers' stale temporary files; return counts and bytes.

        Deleting a snapshot file never breaks another: pages are shared by content and only this
        removes them. Writers hold :data:`GC_LOCK` shared while they write pages and install the
        snapshot naming them; this holds it exclusively, so it never sees a page that a
        snapshot being written is about to name as unreferenced."""
        if not self.path.is_dir():
            raise SnapshotError(f"{self.path}: not a checkpoint directory")
        try:
            with self._gc_lock(fcntl.LOCK_EX):
                refs = self.referenced_pages()
                referenced = set().union(*refs.values())
                stats = {"snapshots": len(refs), "pages_kept": 0, "pages_removed": 0,
                         "bytes_removed": 0, "temp_files_removed": 0}
                subdirs = sorted(p for p in self.pages_dir.iterdir() if p.is_dir()) if self.pages_dir.is_dir() else []
                for sub in subdirs:
                    removed_here = False
                    for entry in os.scandir(sub):
                        if not _HASH_RE.fullmatch(entry.name):
                            continue  # temp files below; anything else is not ours to delete
                        if entry.name in referenced:
                            stats["pages_kept"] += 1
                            continue
                        stats["pages_removed"] += 1
                        stats["bytes_removed"] += entry.stat().st_size
                        if not dry_run:
                            os.unlink(entry.path)
                            removed_here = True
                    if removed_here:
                        _fsync_dir(sub)
                if not dry_run:
                    stats["temp_files_removed"] = self.remove_stale_temp_files()
                    self._durable.clear()
                return stats
        except OSError as e:
            raise SnapshotError(f"{self.path}: cannot collect pages: {_describe(e)}") from None

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
            dirs += [p for p in self.pages_dir.iterdir() if p.is_dir()]
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.name.startswith(".") and e.name.endswith(".tmp"):
                    try:
                        if e.stat().st_mtime < cutoff:
                            os.unlink(e.path)
                            removed += 1
                    except OSError:
                        pass
        return removed
