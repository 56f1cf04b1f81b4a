"""Files checked once per file, not once per read: big cache entries, and the modules wasmig runs.

A cached start on wasmtime would otherwise hash, every time, the compiled artifact it maps
(116 MB for CPython's instrumented variant: 25 ms, a sixth of the start), the site index it reads
(9 MB) and the module it runs (26 MB: 8 ms, to find the other two). Instead, what a check learnt
is kept with the file's *stamp*, ``(inode, size, mtime_ns, ctime_ns)``, and the time of the
check: while the file has that stamp it holds those bytes. Every change made through the file
system (a write, a truncation, a replacement, ``touch``) moves the ctime, which no program can
set back. Git trusts its index the same way, and for the same reason refuses a stamp that is
*racy*: a file changed again within its file system's timestamp granularity (up to 2 s: FAT)
after it was stamped could keep the stamp, so a stamp taken less than :data:`RACY_NS` after the
file's last change is not trusted, and the file is checked again (and stamped again, later).
What a stamp cannot see is a bit flipped on the medium under the file system.

- :func:`write` / :func:`open_checked`: a cache entry and its sidecar ``NAME.sum``
  (:data:`MAGIC`, the payload's :func:`~wasmig.hashing.fast_hash` digest, its size, the stamp and
  the check's time), written atomically, the entry first; reading checks the digest unless the
  stamp says the file is the one checked, and returns a read-only mapping of it.
- :func:`remembered_digest` / :func:`remember_digest`: a module's digest (and its interface) by
  its path and stamp, so that a cached start neither hashes nor even reads the module it runs
  (:meth:`wasmig.Module.from_file`).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

from wasmig.hashing import fast_digest, fast_hash

MAGIC = b"wasmig-checked1\n"
_SUM = struct.Struct("<16s32sQQQQQ")  # magic, digest, inode, size, mtime_ns, ctime_ns, checked_ns
_MEMO = struct.Struct("<16s32sQQQQQQ")  # magic, digest, device, inode, size, mtime_ns, ctime_ns, checked_ns
MEMO_MAGIC = b"wasmig-digest-2\n"
#: a stamp taken this soon after the file last changed is not trusted (coarse timestamps)
RACY_NS = 2_000_000_000

Stamp = tuple[int, int, int, int]


def stamp(st: os.stat_result) -> Stamp:
    """The file's stamp: inode, size, mtime_ns, ctime_ns."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def trusted(recorded: Stamp, checked_ns: int, st: os.stat_result) -> bool:
    """Whether a file with ``st`` is the one checked at ``checked_ns`` with stamp ``recorded``."""
    return recorded == stamp(st) and checked_ns - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_NS


def sum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sum")


def _sum(digest: bytes, st: os.stat_result) -> bytes:
    return _SUM.pack(MAGIC, digest, *stamp(st), time.time_ns())


def write(path: Path, payload: bytes | memoryview) -> None:
    """Write ``payload`` at ``path`` and its sidecar (both atomically, the entry first: a reader
    that finds the sidecar finds the whole entry). Raises OSError."""
    from wasmig.files import write_atomically

    write_atomically(path, payload)
    # the stamp taken now is racy (the file just changed): the first read checks the digest anyway
    write_atomically(sum_path(path), _sum(fast_hash(payload).digest(), os.stat(path)))


def open_checked(path: Path) -> tuple[mmap.mmap | None, bool]:
    """(a read-only mapping of the entry at ``path``, or None when it is missing or damaged;
    whether an entry was there at all). Its digest is computed over the mapping unless the
    sidecar's stamp says this very file was checked; a file checked now gets its stamp recorded."""
    try:
        head = sum_path(path).read_bytes()
    except OSError:
        return None, path.exists()
    if len(head) != _SUM.size or not head.startswith(MAGIC):
        return None, True
    _, digest, ino, size, mtime, ctime, checked_ns = _SUM.unpack(head)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if size == 0 or st.st_size != size:
                return None, True
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None, True
    if trusted((ino, size, mtime, ctime), checked_ns, st):
        return mapped, True
    if fast_hash(mapped).digest() != digest:
        mapped.close()
        return None, True
    try:  # checked: the next read of this very file need not hash it again
        from wasmig.files import write_atomically

        write_atomically(sum_path(path), _sum(digest, st))
    except OSError:
        pass
    return mapped, True


def _memo_path(folder: Path, path: Path) -> Path:
    return folder / f"digest-{fast_digest(os.fsencode(os.path.abspath(path)))[:32]}"


def remembered_digest(folder: Path, path: Path, st: os.stat_result, *,
                      with_extra: bool = False) -> str | tuple[str, bytes] | None:
    """The digest remembered for the file at ``path`` if it still has the stamp of ``st`` (taken
    before and after its bytes were read, unchanged); ``with_extra``: and what was remembered
    with it."""
    try:
        raw = _memo_path(folder, path).read_bytes()
    except OSError:
        return None
    if len(raw) < _MEMO.size or not raw.startswith(MEMO_MAGIC):
        return None
    _, digest, dev, ino, size, mtime, ctime, checked_ns = _MEMO.unpack_from(raw)
    if dev != st.st_dev or not trusted((ino, size, mtime, ctime), checked_ns, st):
        return None
    return (digest.hex(), raw[_MEMO.size :]) if with_extra else digest.hex()


def remember_digest(folder: Path, path: Path, st: os.stat_result, digest: str, extra: bytes = b"") -> None:
    """Remember ``digest`` (and ``extra``) for the file at ``path`` with stamp ``st`` (best effort)."""
    from wasmig.files import write_atomically

    ino, size, mtime, ctime = stamp(st)
    try:
        write_atomically(_memo_path(folder, path), _MEMO.pack(MEMO_MAGIC, bytes.fromhex(digest), st.st_dev, ino, size,
                                                              mtime, ctime, time.time_ns()) + extra)
    except (OSError, ValueError):
        pass


#: A cache entry made by :func:`cache_entry` (the instrumented modules): this magic, the BLAKE3
#: (sha256 without the blake3 package) of the payload, then the payload.
CACHE_MAGIC = b"wasmig-cwasm-v2\n"


def cache_entry(payload: bytes) -> bytes:
    """A cache file's contents: :data:`CACHE_MAGIC`, the payload's 32-byte BLAKE3 (or sha256) digest,
    the payload."""
    return CACHE_MAGIC + fast_hash(payload).digest() + payload


def cache_payload(blob: bytes) -> bytes | None:
    """The payload of a :func:`cache_entry`, or None when it is truncated or fails its checksum."""
    head = len(CACHE_MAGIC)
    if not blob.startswith(CACHE_MAGIC) or len(blob) < head + 32:
        return None
    digest, payload = blob[head : head + 32], blob[head + 32 :]
    return payload if fast_hash(payload).digest() == digest else None
