"""Objects as files on a shared filesystem (``file:///mnt/shared/prefix``), for the object layout.

A checkpoint directory relies on ``flock`` to keep ``gc`` from writers and on fsyncing
directories to make new names durable; NFS (v3 without lockd, or with ``nolock``) and several
other shared filesystems give neither reliably. This backend needs only what they do give:
a file written, fsynced and renamed into place appears whole to every client (close-to-open
consistency), and ``link`` fails when the name exists (how snapshot numbers are claimed).
``gc`` then works by grace period, not by lock (:meth:`ObjectStore.gc`), with file mtimes as
ages: the clients' clocks and the server's must agree to well within the grace period.

The root (the bucket's equivalent, where the shared ``.wasmig/`` lives) is the nearest
directory at or above the store's that has a ``.wasmig/`` in it, else the store's own: make
``/mnt/shared/.wasmig`` once and every store below ``/mnt/shared`` shares its pages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from wasmig.errors import SnapshotError
from wasmig.files import make_private_dir
from wasmig.snapshot.durable import is_temp_name, unlink_quietly, write_temp
from wasmig.snapshot.stores.backend import ObjectInfo


def _why(e: OSError) -> str:
    return e.strerror or str(e)


class FsObjects:
    """An :class:`~wasmig.snapshot.stores.backend.ObjectBackend` on a directory tree."""

    def __init__(self, store_dir: Path) -> None:
        store_dir = Path(os.path.abspath(store_dir))
        root = next((d for d in (store_dir, *store_dir.parents) if (d / ".wasmig").is_dir()), store_dir)
        self.root = root
        rel = store_dir.relative_to(root).as_posix()
        self.prefix = "" if rel == "." else rel + "/"
        self.url = f"file://{store_dir}"

    @classmethod
    def from_url(cls, url: str) -> FsObjects:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or not parts.path.startswith("/"):
            raise SnapshotError(f"{url}: a file:// store URL is file:///absolute/path")
        return cls(Path(unquote(parts.path)))

    def _path(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def key_of(self, location: str) -> str | None:
        head = f"file://{self.root}/"
        return location[len(head):] if location.startswith(head) else None

    def _fail(self, key: str, what: str, e: OSError) -> SnapshotError:
        return SnapshotError(f"{self.location(key)}: cannot {what}: {_why(e)}")

    def get(self, key: str, limit: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise SnapshotError(f"{self.location(key)}: {size} bytes, more than the {limit} it may be")
                data = f.read(limit + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._fail(key, "read", e) from None
        if len(data) > limit:
            raise SnapshotError(f"{self.location(key)}: grew past {limit} bytes while being read")
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return os.pread(f.fileno(), length, start)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._fail(key, "read", e) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._fail(key, "look at", e) from None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def _temp(self, key: str, data: bytes) -> tuple[Path, Path]:
        final = self._path(key)
        make_private_dir(final.parent)
        return final, write_temp(final, [data])

    def put(self, key: str, data: bytes) -> None:
        try:
            final, tmp = self._temp(key, data)
            try:
                os.replace(tmp, final)
            except BaseException:
                unlink_quietly(tmp)
                raise
        except OSError as e:
            raise self._fail(key, "write", e) from None

    def put_new(self, key: str, data: bytes) -> bool:
        try:
            final, tmp = self._temp(key, data)
            try:
                os.link(tmp, final)  # refuses, unlike rename, to replace an existing name
                return True
            except FileExistsError:
                return False
            finally:
                unlink_quietly(tmp)
        except OSError as e:
            raise self._fail(key, "write", e) from None

    def listing(self, prefix: str) -> Iterator[ObjectInfo]:
        top = self._path(prefix) if prefix.endswith("/") or not prefix else self._path(prefix).parent
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if is_temp_name(name):
                    continue
                path = os.path.join(dirpath, name)
                key = Path(path).relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # removed meanwhile
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._fail(key, "delete", e) from None

    def move(self, src: str, dst: str) -> None:
        try:
            make_private_dir(self._path(dst).parent)
            os.replace(self._path(src), self._path(dst))
            os.utime(self._path(dst))  # its age counts from now: see ObjectStore.gc
        except FileNotFoundError:
            pass  # moved by another gc
        except OSError as e:
            raise self._fail(src, "move", e) from None

    def check(self) -> None:
        store_dir = self._path(self.prefix)
        key = f"{self.prefix}.wasmig-probe-{os.getpid()}-{time.monotonic_ns()}"
        try:
            make_private_dir(store_dir)
        except OSError as e:
            raise SnapshotError(f"{self.url}: cannot write there ({_why(e)})") from None
        self.put(key, b"")
        self.delete(key)

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise SnapshotError(f"{self.url}: no such directory")

    def stale_temporaries(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).parts
            if not rel or (rel[0] != ".wasmig" and rel[-1] != "snapshots"):
                continue  # only where this backend writes: the root may hold other files
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if is_temp_name(name) and os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    continue
        return removed
