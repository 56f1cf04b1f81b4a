"""The bytes of a pack on their way to the disk: ``O_DIRECT`` from a reused staging buffer.

Why not the page cache: a checkpoint's pack is written once, made durable and, as a rule, not
read again by this host (a restore happens elsewhere, or much later). Written through the page
cache, each of its 4 KiB pages must first be allocated and filled by the kernel. On a host whose
free memory is not yet backed (a VM that hands free pages back to its hypervisor, as this
project's Firecracker test machines do), that allocation faults into the hypervisor: writing
256 MiB into fresh page cache cost 0.25-0.58 s of CPU, against 0.05 s when the kernel recycles
pages it just freed and 0.011 s with ``O_DIRECT`` (the disk DMAs straight from our buffer; all
three measured on the same machine, docs/snapshot-format.md "Writing"). That allocation was
most of a 256 MiB checkpoint's CPU (0.83 s against a floor of 0.11 s).

So the bytes reach the disk with ``O_DIRECT`` from page-aligned buffers that are touched once
and reused across writes (:func:`take_buffer`): the page loop's blocks, into which each worker
framed the pages it just hashed (the one copy any checkpoint makes: the floor's copy), are
written where they are (:meth:`PackFile.write_block`, at 4 KiB boundaries: a little zero
padding between blocks, which no index entry names); other bytes (the header, small blocks,
``gc``'s copies) are copied into a staging buffer written out in aligned runs. The unaligned
tail (the last bytes and the pack's index) goes through the page cache at
:meth:`PackFile.finish`. Durability still rests on the writer's one ``fsync``.
Where the filesystem refuses ``O_DIRECT`` (tmpfs, some network filesystems: ``EINVAL`` when
opening or writing), the pack is written through the page cache as before, starting the
writeback of each :data:`WRITEBACK_EVERY` bytes early, and blocks are not padded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wasmig.snapshot.durable import start_writeback

#: use ``O_DIRECT`` where the filesystem allows it (tests turn it off to compare both paths)
DIRECT = True
HUGE_PAGE = 2 << 20  # a transparent huge page on x86-64 and aarch64 (4 KiB base pages)
ALIGN = 4096  # O_DIRECT's alignment of memory, file offsets and lengths (any logical block size up to 4 KiB)
STAGE_SIZE = 4 << 20  # bytes a staging buffer holds: one O_DIRECT write each time it fills
#: buffers of each size kept for the next writes: the page loop's blocks in flight (2 per worker
#: and one, with 8 workers) and the staging buffer; about 40 MiB at most, 16 MiB with 2 workers
KEEP_BUFFERS = 20
#: a buffered writer starts the disk writing each run of this many new bytes (durable.start_writeback)
WRITEBACK_EVERY = 8 << 20
_IOV_MAX = 1024  # buffers per writev (Linux's limit)
_buffers: dict[int, list[memoryview]] = {}
_buffers_lock = threading.Lock()


def take_buffer(size: int) -> memoryview:
    """A buffer of ``size`` bytes, page-aligned (as O_DIRECT needs), backed by transparent huge
    pages where the kernel gives them: one an earlier write gave back when there is one, its
    memory touched already, so filling it costs no page faults. Huge pages because each
    ``O_DIRECT`` write pins the buffer's pages: 512 small pages per 2 MiB cost 0.019 s of CPU per
    256 MiB written, one huge page 0.005 s, and copying into it 0.036 -> 0.032 s (measured here)."""
    with _buffers_lock:
        free = _buffers.get(size)
        if free:
            return free.pop()
    span = size + -size % HUGE_PAGE
    # private: a child forked meanwhile gets its own copy on write, never the parent's block
    area = mmap.mmap(-1, span + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(area)) % HUGE_PAGE
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no THP here: small pages then
        area.madvise(mmap.MADV_HUGEPAGE, start, span)
    buf = memoryview(area)[start:start + size]
    buf[:] = bytes(size)  # touched now, once, rather than page by page on the write's critical path
    return buf


def give_buffer(buf: memoryview) -> None:
    """Return a buffer of :func:`take_buffer` for the next write (up to :data:`KEEP_BUFFERS` per size)."""
    with _buffers_lock:
        free = _buffers.setdefault(len(buf), [])
        if len(free) < KEEP_BUFFERS:
            free.append(buf)


def _open_direct(path: Path) -> int:
    """A second, ``O_DIRECT`` descriptor of the file at ``path`` (-1: not available here)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not DIRECT or not flag:
        return -1
    try:
        return os.open(path, os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return -1
        raise


class PackFile:
    """Appends bytes at consecutive offsets of a new file opened as ``fd`` (at ``path``).

    :meth:`write` takes a frame's parts (buffers, possibly views of a guest's memory: they are
    copied or written before it returns). :meth:`finish` writes what is still staged; the caller
    then fsyncs ``fd`` and closes this. Called from one thread; the ``O_DIRECT`` write releases
    the GIL, so the page workers hash and compress meanwhile."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.offset = 0  # bytes appended so far
        self._direct = _open_direct(path)
        self._view: memoryview | None = take_buffer(STAGE_SIZE) if self._direct >= 0 else None
        self._staged = 0  # bytes in the staging buffer, not yet written
        self._at = 0  # the file offset of the staging buffer's first byte
        self._written_back = 0  # buffered mode: the writeback of the bytes before this offset has started

    @property
    def direct(self) -> bool:
        """Whether the bytes go to the disk with ``O_DIRECT`` (False: through the page cache)."""
        return self._view is not None

    def write(self, parts: Iterable[Any]) -> None:
        """Append ``parts`` (buffers) in order."""
        pending = [memoryview(p).cast("B") for p in parts]
        self.offset += sum(len(p) for p in pending)
        while pending and self._view is not None:
            data = pending[0]
            n = min(len(data), STAGE_SIZE - self._staged)
            self._view[self._staged:self._staged + n] = data[:n]
            self._staged += n
            if n == len(data):
                pending.pop(0)
            else:
                pending[0] = data[n:]
            if self._staged == STAGE_SIZE:
                self._flush_direct()
        if pending:  # buffered mode, or the filesystem refused O_DIRECT just now
            self._write_buffered(pending)

    def write_block(self, block: memoryview, used: int) -> int:
        """Append ``block[:used]`` (a page-aligned buffer of the page loop) at a 4 KiB-aligned offset
        and return that offset. With ``O_DIRECT`` the block is written from where it is, no copy:
        what is staged is first padded with zeros to the boundary, and the block's own end too
        (in ``block`` past ``used``); the padding is named by no index entry. Through the page
        cache it is appended like :meth:`write`, unpadded."""
        if self._view is None:
            at = self.offset
            self.write([block[:used]])
            return at
        pad = -self.offset % ALIGN
        if pad:
            self.write([bytes(pad)])
        self._flush_direct()  # all of it: the staged bytes end on the boundary
        if self._view is None:  # the filesystem refused O_DIRECT just now
            return self.write_block(block, used)
        size = used + -used % ALIGN
        block[used:size] = bytes(size - used)
        at = self._at
        done = self._direct_write(block[:size], at)
        if done < size:
            self._release()
            os.lseek(self.fd, at + done, os.SEEK_SET)
            self._write_buffered([block[done:size]])
        self._at = at + size
        self.offset = at + size
        return at

    def _flush_direct(self) -> None:
        """Write the staged bytes' aligned prefix with ``O_DIRECT`` and keep the rest staged."""
        assert self._view is not None
        aligned = self._staged - self._staged % ALIGN
        done = self._direct_write(self._view[:aligned], self._at)
        if done < aligned:
            self._fall_back(done)
            return
        tail = self._staged - aligned
        self._view[:tail] = self._view[aligned:self._staged]
        self._at += aligned
        self._staged = tail

    def _direct_write(self, data: memoryview, at: int) -> int:
        """``data`` written at ``at`` with ``O_DIRECT``; returns how many bytes were written before
        the filesystem refused the rest (``EINVAL``), ``len(data)`` when all were."""
        done = 0
        while done < len(data):
            try:
                n = os.pwrite(self._direct, data[done:], at + done)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                return done
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        return done

    def _fall_back(self, done: int) -> None:
        """Leave ``O_DIRECT`` (the filesystem refused a write): what is staged beyond the first
        ``done`` bytes is written through the page cache, and so is everything after it."""
        assert self._view is not None
        rest = self._view[done:self._staged]
        at = self._at + done
        while rest:
            n = os.pwrite(self.fd, rest, at)
            rest, at = rest[n:], at + n
        self._release()
        os.lseek(self.fd, at, os.SEEK_SET)

    def _write_buffered(self, parts: list[Any]) -> None:
        """``writev`` at the file's position (the end of what was appended before)."""
        parts = [p for p in parts if len(p)]
        while parts:
            n = os.writev(self.fd, parts[:_IOV_MAX])
            while parts and n >= len(parts[0]):
                n -= len(parts.pop(0))
            if n:
                parts[0] = memoryview(parts[0])[n:]
        if self.offset - self._written_back >= WRITEBACK_EVERY:
            start_writeback(self.fd, self._written_back, self.offset - self._written_back)
            self._written_back = self.offset

    def finish(self) -> None:
        """Write everything still staged (its unaligned tail through the page cache)."""
        if self._view is None:
            return
        self._flush_direct()
        if self._view is None:
            return
        tail, at = self._view[:self._staged], self._at
        while tail:
            n = os.pwrite(self.fd, tail, at)
            tail, at = tail[n:], at + n
        self._release()
        os.lseek(self.fd, at, os.SEEK_SET)  # anything appended later goes after it

    def _release(self) -> None:
        if self._view is not None:
            give_buffer(self._view)
            self._view = None
        if self._direct >= 0:
            os.close(self._direct)
            self._direct = -1

    def close(self) -> None:
        """Give back the staging buffer and the ``O_DIRECT`` descriptor (``fd`` is the caller's)."""
        self._release()


#: the most bytes :func:`read_direct` reads at once (a restore batch: 16 pages of up to 64 KiB)
READ_MAX = 2 << 20
_reading = threading.local()  # per thread: the aligned buffer read_direct reads into


def read_direct(path: str, lo: int, hi: int) -> memoryview | None:
    """Bytes ``lo .. hi`` of the file at ``path`` (at most :data:`READ_MAX`), read with one
    ``O_DIRECT`` read into this thread's buffer (valid until its next call); None where that is
    not possible (no ``O_DIRECT`` here, the range too long, the file shorter): the caller reads
    the usual way then.

    Why: a pack written with ``O_DIRECT`` is not in the page cache, and reading it through the
    cache allocates a page for every 4 KiB read: reading 256 MiB cold in 64 KiB ``pread``s cost
    0.41 s of CPU and 0.91 s on this VM (fresh memory), in 2 MiB ``O_DIRECT`` reads 0.014 s and
    0.07-0.09 s."""
    if not DIRECT or not getattr(os, "O_DIRECT", 0) or hi - lo > READ_MAX or hi <= lo:
        return None
    start = lo - lo % ALIGN
    end = hi + -hi % ALIGN
    buf = getattr(_reading, "buf", None)
    if buf is None:
        buf = _reading.buf = take_buffer(READ_MAX + 2 * ALIGN)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        n = os.preadv(fd, [buf[:end - start]], start)
    except OSError:
        return None
    finally:
        os.close(fd)
    if n < hi - start:
        return None
    return buf[lo - start:hi - start]
