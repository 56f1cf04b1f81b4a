"""The page loop of a checkpoint: guest memory read in place, in batches on a thread pool.

A checkpoint keeps the guest stopped while its memory is read, so this is on the critical path
of every checkpoint (docs/snapshot-format.md, "Writing"). Per 64 KiB page, cheapest test first:

1. **Zero?** A ``memcmp`` against a zero page, on the memory itself (``bytes.startswith`` for
   bytes, libc ``memcmp`` through ctypes for a view of an engine's memory): no copy, no hash,
   and it stops at the first non-zero byte of a non-zero page.
2. **Unchanged?** The page's xxh3-128 fingerprint (about 10 GB/s, a quarter of BLAKE3's cost)
   compared with the fingerprint this writer recorded for the same page index when it last
   BLAKE3-hashed it. Equal, and that hash still in the store: the page is named by the old hash
   without hashing it again. This is what makes a 1%-changed incremental checkpoint of 256 MiB
   cost about one xxh3 pass. Why a fingerprint match may stand in for the content hash is
   argued in docs/snapshot-format.md ("Incremental checkpoints").
3. Otherwise BLAKE3 (the page's name in the manifest), and zstd if the store lacks the page
   (:func:`page_frame`: a page whose middle 4 KiB do not compress is framed raw, uncompressed).

Batches of pages go to a thread pool (the compiled BLAKE3, xxhash, zstd and ``memcmp`` run in C);
the caller's thread consumes the results in order and appends new pages to the pack, whose
``os.write`` releases the GIL, so writing overlaps the hashing and compressing of the next
batches. At most a few batches are in flight, so a slow disk never holds a copy of the memory.
Nothing here reads the memory after :func:`hash_and_store` returns: the guest may run then.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import zstandard

from wasmig.hashing import blake3
from wasmig.snapshot.packfile import ALIGN, give_buffer, take_buffer
from wasmig.snapshot.state import PAGE_SIZE

try:
    from xxhash import xxh3_128_intdigest as fingerprint
except ImportError:  # pragma: no cover - a platform without the compiled package: slower, as strong
    import hashlib

    def fingerprint(data: bytes | memoryview) -> int:  # type: ignore[misc]
        return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "little")

ZERO_PAGE = bytes(PAGE_SIZE)
#: the zstd frame header of a 64 KiB page stored as one raw (uncompressed) block: magic, a
#: single-segment frame with a 2-byte content size (65536 - 256), then the block header (last
#: block, raw, 65536 bytes); byte for byte what zstd itself writes for an incompressible page
RAW_FRAME_HEADER = bytes.fromhex("28b52ffd" "60" "00ff" "010008")
RAW_FRAME = len(RAW_FRAME_HEADER) + PAGE_SIZE  # the largest frame a page is stored as
SAMPLE = 4096  # bytes of a page compressed first, to tell an incompressible page cheaply
_SAMPLE_AT = (PAGE_SIZE - SAMPLE) // 2
#: pages per task: about 2 MiB, large enough that the pool's overhead is noise, and 31 so that
#: the batch's block of frames (31 x 65546 bytes at most) fits one 2 MiB huge page
BATCH = 31
MAX_THREADS = 8
_libc_memcmp: Any = None
_ZERO_ADDRESS = ctypes.cast(ctypes.c_char_p(ZERO_PAGE), ctypes.c_void_p).value
_tls = threading.local()  # zstd contexts are not thread-safe; one set per thread, reused across calls
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()

#: a page's zstd frame as its consecutive parts: bytes, or a view of the page itself (a raw frame
#: is its 10-byte header and the page, copied by :func:`put_frame` and never joined into a ``bytes``)
Frame = tuple[Any, ...]
#: per page of a memory: None (zero page) or (xxh3-128 fingerprint, hex BLAKE3) as last hashed
Fingerprints = list[tuple[int, str] | None]


def compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _tls.__dict__.setdefault("cctx", {})
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def frame_parts(cctx: zstandard.ZstdCompressor, page: memoryview) -> Frame:
    """The zstd frame a page is stored as, as its parts. A page whose middle 4 KiB do not
    compress at all (random bytes, compressed or encrypted data) is framed as one raw block
    without running the compressor over all of it: compressing such a page costs as much as
    hashing it and gains nothing, and the frame is the one zstd would write. Any reader
    decompresses either kind; a page compressible outside its sample is merely stored larger.
    A raw frame is ``(header, page)``, ``page`` still the caller's view: joining them allocated
    a fresh 64 KiB per page, which on a VM whose free memory is not backed faulted into the
    hypervisor (256 MiB of random pages: 0.017 s of CPU recycled, 0.21 s fresh)."""
    if len(cctx.compress(page[_SAMPLE_AT:_SAMPLE_AT + SAMPLE])) >= SAMPLE:
        return (RAW_FRAME_HEADER, page)
    comp = cctx.compress(page)
    if len(comp) >= RAW_FRAME:  # compressible in the middle only: never larger than raw
        return (RAW_FRAME_HEADER, page)
    return (comp,)


def page_frame(cctx: zstandard.ZstdCompressor, page: memoryview) -> bytes:
    """:func:`frame_parts` as one ``bytes`` (a page embedded in a single-file snapshot)."""
    return b"".join(frame_parts(cctx, page))


def default_threads() -> int:
    """The cores this process may run on (at most :data:`MAX_THREADS`)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, n))


def pool(threads: int | None) -> ThreadPoolExecutor | None:
    """A process-wide pool of ``threads`` workers (None: work on the caller's thread alone)."""
    n = default_threads() if threads is None else threads
    if n <= 1:
        return None
    with _pools_lock:
        ex = _pools.get(n)
        if ex is None:
            ex = _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="wasmig-pages")
        return ex


def _memcmp() -> Any:
    global _libc_memcmp
    if _libc_memcmp is None:
        # PyDLL: the GIL is kept during the call (a memcmp of at most 64 KiB, often stopping at the
        # first byte): releasing it would hand it to another pool thread and back for every page,
        # which cost more CPU than the compare itself with two threads (pool(2): 0.229 -> 0.212 s
        # CPU for 256 MiB of random pages)
        f = ctypes.PyDLL(None).memcmp
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        _libc_memcmp = f
    return _libc_memcmp


class MemoryPages:
    """One memory's pages, read where they are: ``bytes``/``bytearray`` (the interpreter's
    memory, a loaded snapshot) or any writable buffer, such as a ``memoryview`` over wasmtime's
    memory while the guest is stopped."""

    def __init__(self, data: Any) -> None:
        self.data = data
        view = memoryview(data)  # our own view (released by release()), even of a memoryview
        self.view = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        self.count = len(self.view) // PAGE_SIZE
        self._startswith: Callable[..., bool] | None = None
        self._address: int | None = None
        if isinstance(data, (bytes, bytearray)):
            self._startswith = data.startswith
        elif self.count:
            try:
                self._address = ctypes.addressof(ctypes.c_char.from_buffer(self.view))
            except TypeError:  # a read-only view: compare through the object it views, or copies
                obj = self.view.obj
                if isinstance(obj, (bytes, bytearray)) and len(obj) == len(self.view):
                    self._startswith = obj.startswith

    def is_zero(self, j: int) -> bool:
        off = j * PAGE_SIZE
        if self._startswith is not None:
            return self._startswith(ZERO_PAGE, off)  # a memcmp, no slice copy
        if self._address is not None:
            return _memcmp()(self._address + off, _ZERO_ADDRESS, PAGE_SIZE) == 0
        return self.view[off:off + PAGE_SIZE].tobytes() == ZERO_PAGE

    def page(self, j: int) -> memoryview:
        return self.view[j * PAGE_SIZE:(j + 1) * PAGE_SIZE]

    def release(self) -> None:
        """Give up the buffer export (a ``bytearray`` cannot be resized while a view of it lives)."""
        self.view.release()


class PageSink(Protocol):
    """Where new pages go: per batch, a block whose first ``used`` bytes are frames back to back
    (``block[start:start + length]`` is the frame of page ``hash``, per entry; bytes no entry
    names may lie between them). ``block`` is a reused page-aligned buffer of
    :func:`block_size` bytes (the sink may overwrite what lies past ``used``, as padding); the
    sink copies or writes what it keeps before returning."""

    def append_block(self, block: memoryview, used: int, entries: list[tuple[str, int, int]]) -> None: ...


@dataclass
class PageTally:
    """What :func:`hash_and_store` found (it fills the store's WriteStats from this)."""

    total: int = 0
    zero: int = 0
    new: int = 0
    deduplicated: int = 0
    bytes_written: int = 0
    new_hashes: set[str] = field(default_factory=set)  # the pages appended to the sink


#: per new page of a batch: (page index, hash, start of its frame in the batch's block, or -1
#: when another batch claimed the page first, its length)
_Fresh = list[tuple[int, str, int, int]]
def block_size(batch: int) -> int:
    """Bytes of the block one batch of ``batch`` pages fills at most (aligned, as O_DIRECT wants)."""
    size = batch * RAW_FRAME
    return size + -size % ALIGN


def put_frame(cctx: zstandard.ZstdCompressor, page: memoryview, block: memoryview, at: int) -> int:
    """Page ``page``'s frame (:func:`frame_parts`) copied into ``block`` at ``at``; its length.
    Called right after the page was hashed, so the copy reads it from this core's cache."""
    n = at
    for part in frame_parts(cctx, page):
        block[n:n + len(part)] = part
        n += len(part)
    return n - at


def _scan(mem: MemoryPages, lo: int, hi: int, prior: Fingerprints | None, known: Callable[[str], bool],
          claimed: set[str], level: int, block: memoryview) -> tuple[Fingerprints, _Fresh, int]:
    """Pages ``lo..hi`` of ``mem``: their fingerprints (None: zero page), the pages the store
    lacks, and how many bytes of ``block`` their frames fill. A new page is framed into ``block``
    unless another batch claimed it first (``claimed``: hashes some worker frames; shared, so a
    page repeated within the snapshot is compressed once)."""
    cctx = compressor(level)
    prints: Fingerprints = []
    fresh: _Fresh = []
    used = 0
    is_zero, page_at = mem.is_zero, mem.page
    for j in range(lo, hi):
        if is_zero(j):
            prints.append(None)
            continue
        page = page_at(j)
        fp = fingerprint(page)
        last = prior[j] if prior is not None and j < len(prior) else None
        if last is not None and last[0] == fp and known(last[1]):
            prints.append(last)
            continue
        h = blake3(page).hexdigest()
        prints.append((fp, h))
        if not known(h):
            if h in claimed:
                fresh.append((j, h, -1, 0))
            else:
                claimed.add(h)
                n = put_frame(cctx, page, block, used)
                fresh.append((j, h, used, n))
                used += n
    return prints, fresh, used


def hash_and_store(memories: Iterable[Any], prior: list[Fingerprints] | None, known: Callable[[str], bool],
                   sink: PageSink, level: int,
                   threads: int | None = None) -> tuple[list[list[str | None]], list[Fingerprints], PageTally]:
    """Name every page of ``memories`` by its hash, appending the pages ``known`` lacks to ``sink``.

    ``prior``: per memory, the fingerprints this writer's last write recorded (None: hash all).
    Returns the manifest's page lists, the fingerprints to pass as ``prior`` next time, and a
    tally. Every read of the memories is finished when this returns or raises.

    Each batch frames its new pages into a block of its own (reused buffers, touched once), so
    the page is copied once, by the core that just hashed it, and the pack writes the block as
    it is (docs/snapshot-format.md, "Writing")."""
    workers = default_threads() if threads is None else threads
    executor = pool(workers)
    window = 2 * workers + 1 if executor is not None else 1  # batches in flight: bounded memory
    tally = PageTally()
    pages = [MemoryPages(m) for m in memories]
    prints: list[Fingerprints] = [[] for _ in pages]
    claimed: set[str] = set()
    cctx = compressor(level)
    room = block_size(BATCH)
    jobs: deque[tuple[int, int, int, Any, Future[Any] | None]] = deque()

    def consume() -> None:
        m, lo, hi, buf, fut = jobs.popleft()
        mem = pages[m]
        block = memoryview(buf)
        prior_m = prior[m] if prior is not None and m < len(prior) else None
        batch, fresh, used = (fut.result() if fut is not None
                              else _scan(mem, lo, hi, prior_m, known, claimed, level, block))
        prints[m] += batch
        entries: list[tuple[str, int, int]] = []
        for j, h, start, length in fresh:
            if h in tally.new_hashes:
                continue  # repeated within the snapshot (its frame, if any, stays unnamed in the block)
            if start < 0:  # the batch that claimed it framed it, but may come later
                start, length = used, put_frame(cctx, mem.page(j), block, used)
                used += length
            entries.append((h, start, length))
            tally.new_hashes.add(h)
            tally.bytes_written += length
        if entries:
            sink.append_block(block, used, entries)
        block.release()
        give_buffer(buf)

    try:
        for m, mem in enumerate(pages):
            prior_m = prior[m] if prior is not None and m < len(prior) else None
            for lo in range(0, mem.count, BATCH):
                hi = min(lo + BATCH, mem.count)
                buf = take_buffer(room)
                fut = (executor.submit(_scan, mem, lo, hi, prior_m, known, claimed, level, memoryview(buf))
                       if executor is not None else None)
                jobs.append((m, lo, hi, buf, fut))
                while len(jobs) > window:
                    consume()
        while jobs:
            consume()
    finally:  # on failure: no worker may still be reading the memory when the guest resumes
        pending = [f for *_, f in jobs if f is not None and not f.cancel()]
        wait(pending)
        for mem in pages:
            mem.release()  # the interpreter's bytearray must be free to grow again
    lists = [[None if p is None else p[1] for p in pm] for pm in prints]
    tally.total = sum(len(pm) for pm in prints)
    tally.zero = sum(pm.count(None) for pm in prints)
    tally.new = len(tally.new_hashes)
    tally.deduplicated = tally.total - tally.zero - tally.new
    return lists, prints, tally
