"""Crash-safe file writing for the snapshot store: nothing is written in place.

Every file is written under a temporary name in its final directory, fsynced, and only then
given its final name (``rename``, or ``link`` where an existing name must never be replaced);
the directory is fsynced when a new name must survive a crash. A ``kill -9`` or power loss at
any moment therefore leaves at most a stray temporary file (``.<name>.<pid>.<random>.tmp``,
never read), never a partial file under a final name (docs/snapshot-format.md, "Writing").
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from wasmig.files import make_private_dir, open_private


def fsync_dir(path: Path) -> None:
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


def mkdirs_durable(path: Path) -> None:
    """Create ``path`` (and parents, mode 0700) and fsync each new entry's parent, so the directory
    survives a crash."""
    if path.is_dir():
        return
    for m in make_private_dir(path):
        fsync_dir(m.parent)


def temp_name(final: Path) -> Path:
    """A writer-unique temporary name in ``final``'s directory (rename is only atomic within a filesystem)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one :func:`temp_name` makes (never read; reclaimed when stale)."""
    return name.startswith(".") and name.endswith(".tmp")


def create_temp(final: Path) -> tuple[Path, int]:
    """A new temporary file next to ``final``, opened for writing: (its path, its fd)."""
    tmp = temp_name(final)
    return tmp, open_private(tmp)  # 0600 from the first byte (docs/security.md)


def write_temp(final: Path, chunks: list[bytes | memoryview]) -> Path:
    """Write ``chunks`` to a new temporary file next to ``final``, fsynced. Returns the temp path."""
    tmp, fd = create_temp(final)
    try:
        with open(fd, "wb", closefd=True) as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages in the range, do not wait
_sync_file_range: Any = None  # the libc function once looked up; False where there is none


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``fd``'s bytes ``offset .. offset+length`` to the disk now,
    without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; a no-op elsewhere).

    Why: a pack of a 256 MiB checkpoint is written into the page cache in a fraction of a second,
    and the single ``fsync`` that makes it durable then waited for the disk to take all of it
    (0.15 s of a 0.32 s checkpoint). Starting the writeback of each part as soon as it is written
    overlaps the disk with the hashing and compressing of the next pages, so the ``fsync`` finds
    most of the file already written. Durability still rests on that ``fsync`` alone: this call
    only moves work earlier, and any failure of it is ignored (the ``fsync`` reports I/O errors).
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                f = ctypes.CDLL(None, use_errno=True).sync_file_range  # CDLL: the GIL is released during the call
            except (OSError, AttributeError):  # pragma: no cover - a libc without it
                pass
            else:
                f.restype = ctypes.c_int
                f.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range = f
    if _sync_file_range and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write(final: Path, chunks: list[bytes | memoryview], sync_dir: bool = True) -> None:
    """Temp file, write, fsync, rename over ``final``, fsync the directory: ``final`` is old or new, never partial."""
    tmp = write_temp(final, chunks)
    try:
        os.replace(tmp, final)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if sync_dir:
        fsync_dir(final.parent)
