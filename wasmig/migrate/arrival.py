"""The state a migrated program arrived in, kept by the target so that a program that traps or
fails after the commit -- when the source is gone -- is not lost (docs/migration.md).

Nothing is copied while the program runs, and nothing is written unless it fails: every page of
its memory at the stop is known by its content id from the page rounds (the first round lists
every page, later rounds what changed), and the contents of each are where the target got them:
the page cache (the pages of every round but the last), the last round's pages (kept here, as
they came: at most what that round sent), or the module's data segments (pages the target
already held). Only when the program fails is the snapshot assembled from those and written as
a single file, which `wasmig restore` continues -- from the migration's stop, so what the
program did on the target since is done again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from wasmig.binary.image import initial_image
from wasmig.files import make_private_dir
from wasmig.migrate.pages import page_id
from wasmig.snapshot.state import PAGE_SIZE, SnapshotError, from_plain


class Arrival:
    """Collects what it takes: the page ids, the last round's pages, the state message."""

    def __init__(self) -> None:
        self.ids: dict[tuple[int, int], bytes | None] = {}  # (memory, page) -> content id (None: zeros)
        self.last_round: dict[bytes, bytes] = {}  # content id -> zstd bytes, as received
        self.state: Any = None  # the `state` message's snapshot (memories as sizes only)

    def page(self, memory: int, index: int, pid: bytes | None) -> None:
        self.ids[(memory, index)] = pid

    def received(self, pid: bytes, compressed: bytes, final: bool) -> None:
        if final:  # the page cache keeps the others
            self.last_round[pid] = compressed

    def write(self, path: Path, cached: Callable[[bytes], bytes | None],
              initial_pages: Callable[[], dict[bytes, bytes]]) -> Path:
        """Assemble the snapshot and write it to ``path`` (a single file). ``cached``: a page
        from the page cache by id, or None; ``initial_pages``: the module's data-segment pages
        by id (computed only if a page is found nowhere else). Raises SnapshotError when a page
        cannot be found (the cache lost it)."""
        from wasmig.snapshot.store import write_single_file

        if self.state is None:
            raise SnapshotError("the program's state never arrived")
        dctx = zstandard.ZstdDecompressor()
        initial: dict[bytes, bytes] | None = None

        def contents(pid: bytes) -> bytes:
            nonlocal initial
            data = None
            if pid in self.last_round:
                data = dctx.decompress(self.last_round[pid], max_output_size=PAGE_SIZE)
            if data is None or page_id(data) != pid:
                data = cached(pid)
            if data is None:
                if initial is None:
                    initial = initial_pages()
                data = initial.get(pid)
            if data is None:
                raise SnapshotError(f"page {pid.hex()[:16]}... is no longer in the page cache")
            return data

        def memory(i: int, _repr: Any, size_pages: int) -> bytes:
            image = bytearray(size_pages * PAGE_SIZE)
            for k in range(size_pages):
                pid = self.ids.get((i, k))
                if pid is not None:
                    image[k * PAGE_SIZE:(k + 1) * PAGE_SIZE] = contents(pid)
            return bytes(image)

        snap = from_plain(self.state, memory)
        make_private_dir(path.parent)
        write_single_file(snap, path)  # 0600: the program's memory
        return path


def data_segment_pages(module: Any) -> dict[bytes, bytes]:
    """The non-zero pages of :func:`initial_image`, by content id."""
    image = initial_image(module)
    pages: dict[bytes, bytes] = {}
    for k in range(len(image) // PAGE_SIZE):
        data = bytes(image[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
        pid = page_id(data)
        if pid is not None:
            pages[pid] = data
    return pages
