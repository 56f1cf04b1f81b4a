"""The local backend: a checkpoint directory (:class:`~wasmig.snapshot.store.CheckpointDir`)
behind :class:`~wasmig.snapshot.stores.SnapshotStore`, its on-disk format unchanged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError
from wasmig.files import make_private_dir, open_private
from wasmig.snapshot import store as _store
from wasmig.snapshot.stores import SnapshotStore, StagedSnapshot, module_data_if_missing

if TYPE_CHECKING:
    from wasmig.module import Module
    from wasmig.snapshot.container import Container
    from wasmig.snapshot.paged import PagedMemory
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import WriteStats

MODULE_FILE_PREFIX = "module-"


class _LocalStaged(StagedSnapshot):
    def __init__(self, inner: _store.StagedWrite) -> None:
        self._inner = inner
        self.stats = inner.stats

    def commit(self) -> str:
        return str(self._inner.commit())

    def abort(self) -> None:
        self._inner.abort()


def write_module_file(directory: Path, sha256: str, data: bytes | None) -> Path:
    """``directory/module-<sha256>.wasm``, written once (temp file, fsync, rename) when missing;
    ``data`` None: only its path (the caller found it there)."""
    make_private_dir(directory)
    path = directory / f"{MODULE_FILE_PREFIX}{sha256}.wasm"
    if data is not None and not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)  # left by a killed writer of this pid
        try:
            with open(open_private(tmp), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk: no half-written module copy left behind
            tmp.unlink(missing_ok=True)
            raise
    return path


class LocalStore(SnapshotStore):
    """A local checkpoint directory: ``snapshots/NNNNNN.snap``, ``pages/`` packs, ``module-*.wasm``."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.url = str(path)
        self.dir = _store.CheckpointDir(path, threads=threads)

    @property  # type: ignore[override]
    def last_stats(self) -> WriteStats | None:
        return self.dir.last_stats

    def snapshots(self) -> list[str]:
        return [str(p) for p in self.dir.snapshots()]

    def read_sealed(self, which: str | None = None) -> tuple[str, Container]:
        file, container = _store.read_sealed(self._which(which))
        return str(file), container

    def load(self, which: str | None = None, expect: bytes | None = None) -> Snapshot:
        return _store.load_snapshot(self._which(which), expect)

    def load_deferred(self, which: str | None = None,
                      expect: bytes | None = None) -> tuple[Snapshot, list[PagedMemory] | None]:
        return _store.load_snapshot_deferred(self._which(which), expect)

    def storage_stats(self, which: str | None = None) -> dict[str, Any]:
        from wasmig.snapshot.store_stats import storage_stats

        return storage_stats(self._which(which))

    def checkpoint_chain(self, which: str | None = None) -> list[dict[str, Any]] | None:
        from wasmig.snapshot.store_stats import checkpoint_chain

        return checkpoint_chain(self._which(which))

    def has_page(self, h: str) -> bool:
        packs = self.dir._packs  # noqa: SLF001 - the directory's own page index
        packs.refresh()
        return packs.has(h)

    def read_page(self, h: str) -> bytes:
        from wasmig.snapshot.paged import _PageSource

        return _PageSource(self.dir.pages_dir).stored(h)

    def module_bytes(self, sha256: str) -> bytes | None:
        from wasmig.snapshot.wsnap import MAX_MODULE_BYTES

        path = self.dir.path / f"{MODULE_FILE_PREFIX}{sha256}.wasm"
        try:
            if path.stat().st_size > MAX_MODULE_BYTES:
                raise SnapshotError(f"{path}: larger than the {MAX_MODULE_BYTES} bytes a module may be")
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SnapshotError(f"{path}: cannot read the module: {e.strerror or e}") from None

    def stage(self, snapshot: Snapshot) -> StagedSnapshot:
        return _LocalStaged(self.dir.stage(snapshot))

    def put_module(self, module: Module) -> str:
        sha256, data = module_data_if_missing(
            module, lambda sha: (self.dir.path / f"{MODULE_FILE_PREFIX}{sha}.wasm").exists())
        return str(write_module_file(self.dir.path, sha256, data))

    def prepare_writes(self) -> None:
        self.dir.prepare()

    def check_root(self) -> None:
        if not os.path.isdir(self.dir.snapshots_dir):
            raise SnapshotError(f"{self.url}: not a checkpoint directory (no snapshots/ in it)")

    def check_writable(self) -> None:
        import time

        try:
            os.makedirs(self.dir.path, mode=0o700, exist_ok=True)  # snapshots are their owner's alone
            probe = self.dir.path / f".wasmig-probe-{os.getpid()}-{time.monotonic_ns()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise SnapshotError(f"{self.url}: cannot write there ({e.strerror or e})") from None

    def gc(self, *, dry_run: bool = False, grace_s: float | None = None) -> dict[str, int]:
        """The checkpoint directory's gc (its flock excludes writers: no grace period needed)."""
        self.check_root()
        return self.dir.gc(dry_run=dry_run)
