"""Pack files: the page store's layout 2, where one checkpoint's new pages go into one file.

Layout 1 stored every page as its own file (``pages/ab/<hash>``), each written, fsynced and
renamed, and 256 hash-prefix directories fsynced: 1.8 s of a 2.35 s checkpoint of 256 MiB went
to those fsyncs. A pack holds all the pages one write adds, followed by its own index (page
hash -> offset, length) and a checksum over header and index, so a checkpoint costs one file
write and one ``fsync`` whatever its page count (docs/snapshot-format.md, "Page store").

A pack is written under a temporary name and renamed into place only once complete and
fsynced, so a pack under its final name is always whole; packs are never modified afterwards
(``gc`` compacts by writing a new pack of the live pages, then deleting the old one). Pages are
still named by their BLAKE3 in the manifests, so dedup, incremental chains and signatures over
manifests do not depend on where a page lives. Layout 1 page files are still read (and
collected), so a directory written by an older wasmig keeps working and may hold both.

A pack is untrusted input like any snapshot file: its index is bounded and checksummed before
use, every entry must lie inside the pack's page area, and every page read is decompressed
(bounded) and hashed by the reader before it is used.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wasmig.hashing import blake3
from wasmig.snapshot.durable import create_temp, unlink_quietly
from wasmig.snapshot.packfile import PackFile, read_direct
from wasmig.snapshot.state import PAGE_SIZE, SnapshotError

PACK_MAGIC = b"WASMIGPACK"
PACK_VERSION = 1
_HEADER = struct.Struct("<10sI")  # magic, version
_ENTRY = struct.Struct("<32sQI")  # BLAKE3-256 of the uncompressed page, offset in the pack, compressed length
_TRAILER = struct.Struct("<QI10s")  # offset of the index, number of entries, magic again
_SUM = 32  # BLAKE3-256 of header + index + trailer
#: zstd's worst case for one incompressible 64 KiB page is a few bytes over the page
MAX_COMPRESSED_PAGE = 2 * PAGE_SIZE
PACK_RE = re.compile(r"pack-[0-9a-f]{16}-[0-9a-f]{8}\.pack")
_LEGACY_DIR_RE = re.compile(r"[0-9a-f]{2}")
_LEGACY_PAGE_RE = re.compile(r"[0-9a-f]{64}")
_OPEN_FDS = 64  # packs a reader keeps open at once
#: a block of new pages at least this large is written in place with O_DIRECT (padding it to
#: 4 KiB costs at most 2 x 4 KiB, under 3%); a smaller one is copied into the staging buffer
DIRECT_BLOCK_MIN = 256 << 10
_tls = threading.local()  # per thread: a read buffer


class PackError(SnapshotError):
    """A pack file that is not well formed (the caller names the file)."""


@dataclass(frozen=True)
class Location:
    """Where a page's zstd frame lies: pack file name (in the pages directory), offset, length."""

    pack: str
    offset: int
    length: int


def new_pack_name() -> str:
    """A name no other writer picks: creation time (so packs list oldest first) and 32 random bits."""
    return f"pack-{time.time_ns():016x}-{secrets.token_hex(4)}.pack"


def read_index(path: Path) -> list[tuple[str, int, int]]:
    """The (hex hash, offset, length) entries of the pack at ``path``, verified; raises PackError/OSError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tail_len = _TRAILER.size + _SUM
        if size < _HEADER.size + tail_len:
            raise PackError(f"truncated pack ({size} bytes)")
        header = f.read(_HEADER.size)
        magic, version = _HEADER.unpack(header)
        if magic != PACK_MAGIC:
            raise PackError("not a wasmig pack (bad magic)")
        if version != PACK_VERSION:
            raise PackError(f"pack has format version {version}, this wasmig reads {PACK_VERSION}")
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        index_at, count, magic2 = _TRAILER.unpack_from(tail)
        if magic2 != PACK_MAGIC:
            raise PackError("truncated or damaged pack (no trailer)")
        if index_at < _HEADER.size or index_at + count * _ENTRY.size + tail_len != size:
            raise PackError("damaged pack (its index does not fit the file)")
        f.seek(index_at)
        table = f.read(count * _ENTRY.size)
    digest = blake3(header)
    digest.update(table)
    digest.update(tail[:_TRAILER.size])
    if digest.digest() != tail[_TRAILER.size:]:
        raise PackError("damaged pack (index checksum mismatch)")
    out = []
    for digest_bytes, offset, length in _ENTRY.iter_unpack(table):
        if not 1 <= length <= MAX_COMPRESSED_PAGE or offset < _HEADER.size or offset + length > index_at:
            raise PackError("damaged pack (an index entry points outside its pages)")
        out.append((digest_bytes.hex(), offset, length))
    return out


class PackStore:
    """The pages of one pages directory: its packs' indexes, plus layout-1 page files.

    :meth:`refresh` (re)reads the directory; packs are immutable, so an index read once stays
    valid for as long as its pack exists. A damaged pack is left out (its pages count as
    missing) and remembered in :attr:`damaged`, so a missing page can be explained.
    """

    def __init__(self, pages_dir: Path) -> None:
        self.pages_dir = pages_dir
        self._dir = str(pages_dir)
        self.locations: dict[str, Location] = {}
        self.packs: dict[str, list[tuple[str, int, int]]] = {}  # pack name -> its index entries
        self.damaged: dict[str, str] = {}  # pack name -> why it was left out
        self.has_legacy = False  # layout-1 page directories exist
        self._fds: dict[str, int] = {}
        self._retired: list[int] = []  # evicted from _fds; closed with the store
        self._fds_lock = threading.Lock()

    def refresh(self) -> None:
        """Read the indexes of packs that appeared since the last call; forget packs that went away."""
        try:
            names = os.listdir(self.pages_dir)
        except FileNotFoundError:
            names = []
        packs = {n for n in names if PACK_RE.fullmatch(n)}
        self.has_legacy = any(_LEGACY_DIR_RE.fullmatch(n) for n in names)
        gone = (self.packs.keys() | self.damaged.keys()) - packs
        for name in gone:
            self.packs.pop(name, None)
            self.damaged.pop(name, None)
            fd = self._fds.pop(name, None)
            if fd is not None:
                os.close(fd)
        if gone:
            self.locations = {h: loc for h, loc in self.locations.items() if loc.pack not in gone}
        for name in sorted(packs - self.packs.keys() - self.damaged.keys()):
            try:
                entries = read_index(self.pages_dir / name)
            except FileNotFoundError:
                continue  # collected meanwhile
            except (PackError, OSError, ValueError, struct.error) as e:
                self.damaged[name] = str(e)
                continue
            self.packs[name] = entries
            for h, offset, length in entries:
                self.locations.setdefault(h, Location(name, offset, length))

    def legacy_path(self, h: str) -> Path:
        return self.pages_dir / h[:2] / h

    def has(self, h: str) -> bool:
        """Whether page ``h`` is stored (as of the last :meth:`refresh` for packs)."""
        return h in self.locations or self.has_legacy and os.path.exists(self.legacy_path(h))

    def size(self, h: str) -> int | None:
        """Compressed size of page ``h`` in the store, None if it is not there."""
        loc = self.locations.get(h)
        if loc is not None:
            return loc.length
        try:
            return os.path.getsize(self.legacy_path(h)) if self.has_legacy else None
        except OSError:
            return None

    def read_ahead(self, hs: list[str]) -> None:
        """Read the frames of the pages ``hs`` that lie close together in one pack (the pack most
        of them are in) with one ``O_DIRECT`` read (:func:`~wasmig.snapshot.packfile.read_direct`);
        this thread's next :meth:`read_view` calls serve them from it. A restore calls it per
        batch: the pages of one checkpoint lie in page order in its pack."""
        _tls.ahead = {}
        locs = [(h, loc) for h in hs if (loc := self.locations.get(h)) is not None]
        if len(locs) < 2:
            return
        packs_of = [loc.pack for _, loc in locs]
        pack = max(set(packs_of), key=packs_of.count)
        mine = [(h, loc) for h, loc in locs if loc.pack == pack]
        lo = min(loc.offset for _, loc in mine)
        hi = max(loc.offset + loc.length for _, loc in mine)
        data = read_direct(f"{self._dir}/{pack}", lo, hi)
        if data is not None:
            where = f"pack {self._dir}/{pack}"
            _tls.ahead = {h: (data[loc.offset - lo:loc.offset - lo + loc.length], f"page {h} in {where}")
                          for h, loc in mine}

    def read_view(self, h: str) -> tuple[memoryview, str] | None:
        """:meth:`read` into a buffer of the calling thread's, reused (no allocation per page): the
        view is valid until this thread's next call (or :meth:`read_ahead`)."""
        ahead = getattr(_tls, "ahead", None)
        if ahead:
            found = ahead.pop(h, None)
            if found is not None:
                return found
        loc = self.locations.get(h)
        if loc is None:
            found = self.read(h)
            return None if found is None else (memoryview(found[0]), found[1])
        buf = getattr(_tls, "buf", None)
        if buf is None:
            buf = _tls.buf = memoryview(bytearray(MAX_COMPRESSED_PAGE))
        n = os.preadv(self._fd(loc.pack), [buf[:loc.length]], loc.offset)
        if n != loc.length:
            raise PackError(f"pack {self._dir}/{loc.pack} changed size while being read")
        return buf[:n], f"page {h} in pack {self._dir}/{loc.pack}"

    def read(self, h: str) -> tuple[bytes, str] | None:
        """Page ``h``'s zstd frame and a description of where it came from (for errors); None if missing."""
        loc = self.locations.get(h)
        if loc is not None:
            fd = self._fd(loc.pack)
            comp = os.pread(fd, loc.length, loc.offset)
            if len(comp) != loc.length:
                raise PackError(f"pack {self._dir}/{loc.pack} changed size while being read")
            return comp, f"page {h} in pack {self._dir}/{loc.pack}"
        p = self.legacy_path(h)
        try:
            with open(p, "rb") as f:
                return f.read(MAX_COMPRESSED_PAGE + 1), f"page file {p}"
        except (FileNotFoundError, NotADirectoryError):
            return None

    def why_missing(self) -> str:
        """A note for a missing-page error: damaged packs that may have held it."""
        if not self.damaged:
            return ""
        name, why = next(iter(sorted(self.damaged.items())))
        more = f" and {len(self.damaged) - 1} more" if len(self.damaged) > 1 else ""
        return f"; pack {self.pages_dir / name} is unreadable ({why}){more}"

    def _fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            with self._fds_lock:  # the parallel restore reads from several threads
                fd = self._fds.get(name)
                if fd is None:
                    if len(self._fds) >= _OPEN_FDS:
                        self._retired.append(self._fds.pop(next(iter(self._fds))))  # another thread may use it
                    fd = self._fds[name] = os.open(f"{self._dir}/{name}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return fd

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._retired]:
            os.close(fd)
        self._fds.clear()
        self._retired.clear()

    def __del__(self) -> None:
        self.close()

    def legacy_files(self) -> list[os.DirEntry[str]]:
        """Layout-1 page files (for ``gc``)."""
        out: list[os.DirEntry[str]] = []
        if not self.has_legacy:
            return out
        for sub in sorted(os.listdir(self.pages_dir)):
            if _LEGACY_DIR_RE.fullmatch(sub) and (self.pages_dir / sub).is_dir():
                out += [e for e in os.scandir(self.pages_dir / sub) if _LEGACY_PAGE_RE.fullmatch(e.name)]
        return out


class PackWriter:
    """Appends compressed pages to a new pack under a temporary name; :meth:`commit` adds the
    index, fsyncs once and renames it into place (the caller fsyncs the directory once).

    :meth:`append_block` is called from one thread (the page loop's consumer); the bytes go to
    the disk through :class:`~wasmig.snapshot.packfile.PackFile` (``O_DIRECT`` from reused
    buffers where the filesystem allows it), whose writes release the GIL, so the page loop's
    workers hash and compress the next pages meanwhile."""

    def __init__(self, pages_dir: Path) -> None:
        self.final = pages_dir / new_pack_name()
        self.tmp, self._fd = create_temp(self.final)
        self.entries: list[tuple[bytes, int, int]] = []
        try:
            self._out = PackFile(self._fd, self.tmp)
        except BaseException:
            os.close(self._fd)
            unlink_quietly(self.tmp)
            raise
        self._out.write([_HEADER.pack(PACK_MAGIC, PACK_VERSION)])

    @property
    def offset(self) -> int:
        """Bytes of the pack so far (after :meth:`commit`: its size)."""
        return self._out.offset

    def page_hashes(self) -> set[str]:
        """The pages written so far (hex hashes): what a failed write takes back with its pack."""
        return {h.hex() for h, _, _ in self.entries}

    def append(self, h: str, comp: bytes) -> None:
        """Add page ``h`` (hex BLAKE3 of the page) as the zstd frame ``comp``."""
        self.entries.append((bytes.fromhex(h), self.offset, len(comp)))
        self._out.write([comp])

    def append_block(self, block: memoryview, used: int, entries: list[tuple[str, int, int]]) -> None:
        """Add the pages whose frames ``block[:used]`` holds (``entries``: hash, start, length; the
        page loop's PageSink). A large block is written from where it is with ``O_DIRECT``, at a
        4 KiB boundary (zero padding before and after it, named by no entry); a small one is
        copied into the staging buffer, so that sparse writes (a few pages changed) are not padded."""
        if self._out.direct and used >= DIRECT_BLOCK_MIN:
            base = self._out.write_block(block, used)
        else:
            base = self.offset
            self._out.write([block[:used]])
        self.entries += [(bytes.fromhex(h), base + start, length) for h, start, length in entries]

    def commit(self) -> Path | None:
        """Write the index, fsync, rename to the final name; the pack's path, None when empty (discarded)."""
        if not self.entries:
            self.abort()
            return None
        index_at = self.offset
        table = b"".join(_ENTRY.pack(*e) for e in self.entries)
        trailer = _TRAILER.pack(index_at, len(self.entries), PACK_MAGIC)
        digest = blake3(_HEADER.pack(PACK_MAGIC, PACK_VERSION))
        digest.update(table)
        digest.update(trailer)
        try:
            self._out.write([table + trailer + digest.digest()])
            self._out.finish()
            os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        self._out.close()
        os.close(self._fd)
        self._fd = -1
        try:
            os.replace(self.tmp, self.final)
        except BaseException:
            unlink_quietly(self.tmp)
            raise
        return self.final

    def abort(self) -> None:
        """Discard the pack (nothing under a final name was written)."""
        self._out.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        unlink_quietly(self.tmp)
