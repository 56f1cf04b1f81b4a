"""Which memory pages changed since they were last sent: the source's half of pre-copy.

There is no write barrier to tell which pages a running guest dirtied (wasmtime's compiled code
writes memory directly, and this kernel has no soft-dirty bits), so every round hashes every
page with a fast non-cryptographic hash (xxh3: 256 MiB in about 15 ms) and compares with the
hash of the copy last sent. A changed page is copied once, and the copy is what is hashed,
identified (blake3, the content address the target deduplicates by) and sent: a page the guest
writes while it is read is caught by the next round, and the last round runs with the guest
stopped, so the target ends up with exactly the final contents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from wasmig.hashing import blake3
from wasmig.snapshot.state import PAGE_SIZE

try:
    from xxhash import xxh3_64_intdigest as _fast_hash
except ImportError:  # pragma: no cover - a platform without the compiled package: slower, same results
    import hashlib

    def _fast_hash(data: bytes | memoryview) -> int:
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")

ZERO_PAGE = bytes(PAGE_SIZE)


def page_id(data: bytes | memoryview) -> bytes | None:
    """The content address of a page (None for a zero page, which is never sent)."""
    if data == ZERO_PAGE:
        return None
    return blake3(data).digest()


@dataclass
class ChangedPage:
    memory: int
    index: int
    id: bytes | None  # None: all zeros
    data: bytes  # the copy that was hashed


@dataclass
class PageTracker:
    """Per memory, the fast hash of every page as last sent (None: never sent)."""

    sent: list[list[int | None]] = field(default_factory=list)

    def changed(self, memories: list[tuple[int, Callable[[int], bytes | memoryview]]]) -> list[ChangedPage]:
        """The pages that differ from what was last sent. ``memories``: per memory its size in
        bytes and a function giving page ``i`` (a view of the live memory or a copy)."""
        while len(self.sent) < len(memories):
            self.sent.append([])
        out: list[ChangedPage] = []
        for m, (size, page) in enumerate(memories):
            known = self.sent[m]
            count = size // PAGE_SIZE
            if len(known) > count:  # memories never shrink; a new instance would start over
                del known[count:]
            known.extend([None] * (count - len(known)))
            for i in range(count):
                if _fast_hash(page(i)) == known[i]:
                    continue
                data = bytes(page(i))  # one consistent copy: what is sent is what is hashed
                h = _fast_hash(data)
                if h == known[i]:
                    continue
                known[i] = h
                out.append(ChangedPage(m, i, page_id(data), data))
        return out

    def forget(self, pages: list[ChangedPage]) -> None:
        """These were not delivered after all: send them again next round."""
        for p in pages:
            self.sent[p.memory][p.index] = None
