"""What the object-layout store needs of where it keeps objects: S3 (:mod:`.s3`) or a shared
filesystem (:mod:`.fsobjects`). Keys are ``/``-separated names below the bucket (or root
directory); the store decides the layout (:mod:`.objects`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes and last-modified time (seconds since the epoch)."""

    key: str
    size: int
    modified: float


class ObjectBackend(Protocol):
    """A flat namespace of immutable objects with atomic whole-object writes.

    Every method raises a one-line :class:`~wasmig.errors.SnapshotError` on failure (no such
    bucket, unreachable endpoint, denied), naming :meth:`location` of what failed."""

    #: the URL the store was opened with, without its trailing ``/``
    url: str
    #: the store's own keys start with this (``""`` or ``"a/b/"``); the shared ``.wasmig/`` is at the top
    prefix: str

    def location(self, key: str) -> str:
        """The URL of ``key`` (for listings and messages)."""

    def key_of(self, location: str) -> str | None:
        """The key of a :meth:`location` of this backend; None if it names something else."""

    def get(self, key: str, limit: int) -> bytes | None:
        """The object's bytes, None if there is none; refused (SnapshotError) *before* it is read
        when it is larger than ``limit`` bytes."""

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        """``length`` bytes of the object from ``start`` (fewer if it ends first), None if there is
        no such object."""

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and age, None if there is none."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (readers see all of it or the old object); a
        large object goes up in parts, in parallel, where the backend can."""

    def put_new(self, key: str, data: bytes) -> bool:
        """:meth:`put` unless ``key`` exists (then False, nothing written): how snapshot numbers are claimed."""

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively), in no particular order."""

    def delete(self, key: str) -> None:
        """Remove the object (no error if it is gone already)."""

    def move(self, src: str, dst: str) -> None:
        """Give ``src``'s bytes the key ``dst`` (its modified time: now) and remove ``src``."""

    def check(self) -> None:
        """Contact the backend now: the bucket (or root directory) exists and objects can be written."""

    def check_root(self) -> None:
        """The bucket (or root directory) exists, else a SnapshotError saying so: a mistyped root
        must not read as an empty store (gc 'collecting' nothing with success, 'no snapshots')."""

    def stale_temporaries(self, older_than_s: float) -> int:
        """Remove temporary objects left by killed writers (a filesystem's temp files); how many."""
