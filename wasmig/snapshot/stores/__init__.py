"""Where snapshots are kept, behind one interface: :class:`SnapshotStore`, opened by URL.

The run loop, ``restore``/``inspect``/``gc``/``export``/``import``, migration and the Ray fleet
need the same few things of a place that holds snapshots: list them, find the latest, read one's
sealed manifest and its pages (deferred, for a restore), stage a write while the guest is stopped
and commit it after, keep the module, and collect unreferenced pages. Three backends provide them
(docs/stores.md):

- a plain path: today's checkpoint directory (:class:`~wasmig.snapshot.store.CheckpointDir`,
  on-disk format unchanged: flock for ``gc``, fsync of directories, ``link`` for numbers);
- ``file:///mnt/x/prefix``: a shared filesystem (NFS and the like) laid out as an object store,
  relying on nothing NFS lacks (no flock, no directory fsync): pages content-addressed under the
  nearest ``.wasmig/`` up the tree, the manifest published last, ``gc`` by grace period;
- ``s3://bucket/prefix``: S3-compatible object storage through boto3, the same layout with the
  bucket's ``.wasmig/`` shared by every prefix in it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError

if TYPE_CHECKING:
    from wasmig.module import Module
    from wasmig.snapshot.container import Container
    from wasmig.snapshot.paged import PagedMemory
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import WriteStats

__all__ = ["SnapshotStore", "StagedSnapshot", "open_store", "check_store_name", "is_store_url", "locate", "reader_for",
           "DEFAULT_GC_GRACE_S"]

#: how old an unreferenced page must be before an object-store ``gc`` removes it (docs/stores.md)
DEFAULT_GC_GRACE_S = 3600.0
_SCHEMES = ("s3://", "file://")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class StagedSnapshot(ABC):
    """A write whose memory has been read (the guest may run again): :meth:`commit` publishes it."""

    stats: WriteStats

    @abstractmethod
    def commit(self) -> str:
        """Make the pages durable, then publish the manifest; the new snapshot's location."""

    @abstractmethod
    def abort(self) -> None:
        """Discard the write: nothing becomes visible."""


class SnapshotStore(ABC):
    """A place that holds the numbered snapshots of one program and the pages they name.

    A snapshot is named by its *location*, a string: a file path for a local store, a URL
    (``s3://bucket/prefix/snapshots/000001.snap``) for the others; :meth:`snapshots` lists them
    oldest first, and every method taking ``which`` accepts one (None: the latest). Reads treat
    the store as untrusted (every page checked against its BLAKE3 name, every object's size
    bounded before it is read); failures are one-line :class:`SnapshotError`.
    """

    #: the URL or path the store was opened with
    url: str
    #: what this instance's last committed write did (pages new and deduplicated, bytes, seconds)
    last_stats: WriteStats | None

    # --- reading ---------------------------------------------------------------------------------
    @abstractmethod
    def snapshots(self) -> list[str]:
        """Locations of the published snapshots, oldest first (never one being written)."""

    def latest(self) -> str | None:
        snaps = self.snapshots()
        return snaps[-1] if snaps else None

    def _which(self, which: str | None) -> str:
        if which is not None:
            return which
        latest = self.latest()
        if latest is None:
            self.check_root()  # a root that is not there says so, rather than 'has no snapshots'
            raise SnapshotError(f"{self.url}: checkpoint store has no snapshots")
        return latest

    @abstractmethod
    def check_root(self) -> None:
        """A one-line SnapshotError when the store is not there (a bucket, a file:// root, a
        checkpoint directory without ``snapshots/``), so that a mistyped name does not read as an
        empty store: asked by gc and by a read of the latest snapshot that finds none."""

    @abstractmethod
    def read_sealed(self, which: str | None = None) -> tuple[str, Container]:
        """The snapshot's location and its verified container (seal parsed, no page read)."""

    @abstractmethod
    def load(self, which: str | None = None, expect: bytes | None = None) -> Snapshot:
        """The whole snapshot (``expect``: the checksum it must have, as ``read_sealed`` gave it)."""

    @abstractmethod
    def load_deferred(self, which: str | None = None,
                      expect: bytes | None = None) -> tuple[Snapshot, list[PagedMemory] | None]:
        """The snapshot with its memories' pages left to read when a restore writes them."""

    @abstractmethod
    def has_page(self, h: str) -> bool:
        """Whether page ``h`` (hex BLAKE3 of the 64 KiB page) is stored."""

    @abstractmethod
    def read_page(self, h: str) -> bytes:
        """Page ``h``'s 64 KiB, decompressed and verified against its name."""

    @abstractmethod
    def module_bytes(self, sha256: str) -> bytes | None:
        """The module kept with the snapshots (by its sha256), None when it is not there."""

    @abstractmethod
    def storage_stats(self, which: str | None = None) -> dict[str, Any]:
        """How the snapshot stores its pages (``wasmig inspect``; see :mod:`wasmig.snapshot.store_stats`)."""

    @abstractmethod
    def checkpoint_chain(self, which: str | None = None) -> list[dict[str, Any]] | None:
        """The store's snapshots, oldest first, with the pages each added (``wasmig inspect``)."""

    # --- writing ---------------------------------------------------------------------------------
    @abstractmethod
    def stage(self, snapshot: Snapshot) -> StagedSnapshot:
        """Read ``snapshot``'s memories (the guest stays stopped only for this); commit it after."""

    def write(self, snapshot: Snapshot) -> str:
        """Stage and commit ``snapshot``; its location."""
        return self.stage(snapshot).commit()

    @abstractmethod
    def put_module(self, module: Module) -> str:
        """Keep the module's bytes with the snapshots (once); where it is kept."""

    def prepare_writes(self) -> None:
        """Make ready now what the first write would otherwise make inside its pause (a local
        store's directories); a one-line SnapshotError if that fails. Object stores need nothing."""
        return None

    @abstractmethod
    def check_writable(self) -> None:
        """Raise a one-line SnapshotError now if snapshots cannot be written here (before a run starts)."""
        raise NotImplementedError

    # --- collecting ------------------------------------------------------------------------------
    @abstractmethod
    def gc(self, *, dry_run: bool = False, grace_s: float | None = None) -> dict[str, int]:
        """Remove pages no snapshot names; counts: snapshots, pages_kept, pages_removed,
        bytes_removed, temp_files_removed. ``grace_s``: the object stores' grace period."""

    def describe(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def module_data_if_missing(module: Module, present: Callable[[str], bool]) -> tuple[str, bytes | None]:
    """The module's sha256, and its bytes when ``present(sha256)`` says the store lacks it (None:
    nothing to write). A module not read at start is read now; one changed on disk since is a
    one-line SnapshotError (how both stores' ``put_module`` begin)."""
    from wasmig.errors import WasmError

    try:
        sha256 = module.sha256
        return sha256, (None if present(sha256) else module.data)
    except WasmError as e:
        raise SnapshotError(f"cannot keep the module beside the snapshot: {e}") from None


def is_store_url(text: Any) -> bool:
    """Whether ``text`` names a store by URL (``s3://``, ``file://``) rather than a local path."""
    return isinstance(text, str) and text.startswith(_SCHEMES)


def check_store_name(url: Any) -> None:
    """Refuse, in one line, what :func:`open_store` would refuse by its name alone: no name, or
    an unknown URL scheme (``ftp://...`` is not made a directory). Apart from it because a
    checkpointing start checks a local directory's name without importing the store's backend
    (the snapshot writer's modules: 20-30 ms), which waits until the run is under way."""
    if not isinstance(url, str) or not url:
        raise SnapshotError("a checkpoint store must be a path or an s3:// or file:// URL")
    if not url.startswith(_SCHEMES) and _URL_RE.match(url):
        raise SnapshotError(f"{url}: unknown store URL scheme (use a path, file:// or s3://)")


def open_store(url: str, *, threads: int | None = None) -> SnapshotStore:
    """The store ``url`` names: ``s3://bucket/prefix``, ``file:///shared/path``, or a plain path
    (a local checkpoint directory). A malformed URL is a one-line SnapshotError; nothing is
    contacted until the store is used (``check_writable`` contacts it at once)."""
    check_store_name(url)
    if url.startswith("s3://"):
        from wasmig.snapshot.stores.objects import ObjectStore
        from wasmig.snapshot.stores.s3 import S3Objects

        return ObjectStore(url, S3Objects.from_url(url), threads=threads)
    if url.startswith("file://"):
        from wasmig.snapshot.stores.fsobjects import FsObjects
        from wasmig.snapshot.stores.objects import ObjectStore

        return ObjectStore(url, FsObjects.from_url(url), threads=threads)
    from wasmig.snapshot.stores.local import LocalStore

    return LocalStore(url, threads=threads)


_readers: dict[tuple[str, str | None, str | None], SnapshotStore] = {}


def reader_for(url: str) -> tuple[SnapshotStore, str | None]:
    """The store a snapshot URL is in (one per URL and endpoint, kept: a command reads the seal,
    the manifest, the pages and the module through it, and an S3 client costs ~50 ms to make)
    and the snapshot the URL names (None: the latest)."""
    import os

    store_url, which = locate(url)
    key = (store_url, os.environ.get("WASMIG_S3_ENDPOINT"), os.environ.get("AWS_ENDPOINT_URL"))
    store = _readers.get(key)
    if store is None:
        store = _readers[key] = open_store(store_url)
    return store, which


def locate(url: str) -> tuple[str, str | None]:
    """A snapshot URL split into its store and the snapshot: ``s3://b/p`` -> (``s3://b/p``, None:
    its latest); ``s3://b/p/snapshots/000003.snap`` -> (``s3://b/p``, that URL)."""
    m = re.fullmatch(r"(.*?)/snapshots/\d{6,}\.snap", url)
    if m:
        return m.group(1), url
    return url.rstrip("/"), None
