"""The pages a migration target received in earlier migrations, kept by content id so that a
program that comes back, or another with the same pages, does not send them again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import zstandard

from wasmig.files import write_atomically
from wasmig.migrate.pages import page_id
from wasmig.snapshot.state import PAGE_SIZE


class PageCache:
    """The pages this daemon received in earlier migrations, by content id (``STATE_DIR/pages/
    ab/abcd...``, zstd as they came), so a program that comes back, or another one with the same
    pages, does not send them again. A cache: written without fsync, checked on every read (a
    damaged entry is dropped and asked for). When the daemon starts, entries unused for
    :data:`PAGE_CACHE_DAYS` are removed, then the least recently used ones beyond its size limit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dctx = zstandard.ZstdDecompressor()

    def _path(self, pid: bytes) -> Path:
        h = pid.hex()
        return self.root / h[:2] / h

    def get(self, pid: bytes) -> bytes | None:
        path = self._path(pid)
        try:
            data = self.dctx.decompress(path.read_bytes(), max_output_size=PAGE_SIZE)
        except (OSError, zstandard.ZstdError):
            return None
        if page_id(data) != pid:
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: kept by the pruning
        return data

    def put(self, pid: bytes, compressed: bytes) -> None:
        try:
            write_atomically(self._path(pid), compressed)
        except OSError:
            pass  # a cache: a page not kept is sent again next time

    def prune(self, max_age_s: float, max_bytes: int) -> int:
        """Remove entries unused for ``max_age_s``, then the least recently used beyond
        ``max_bytes``; how many were removed."""
        cutoff, removed = time.time() - max_age_s, 0
        kept: list[tuple[float, int, str]] = []
        for sub in self.root.glob("??"):
            for entry in os.scandir(sub):
                try:
                    st = entry.stat()
                    if st.st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                    else:
                        kept.append((st.st_mtime, st.st_size, entry.path))
                except OSError:
                    pass
        total = sum(size for _, size, _ in kept)
        for _, size, path in sorted(kept):  # oldest use first
            if total <= max_bytes:
                break
            try:
                os.unlink(path)
                removed += 1
                total -= size
            except OSError:
                pass
        return removed


PAGE_CACHE_DAYS = 7
PAGE_CACHE_MB = 2048
