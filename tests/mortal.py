"""An object backend whose writer dies at a chosen write, for the tests that sweep a death at each
write of a runner (tests/test_fleet_jobstore.py) or of a snapshot commit and a gc
(tests/test_store_commit_deaths.py)."""

from __future__ import annotations

import threading
from typing import Any

from wasmig.snapshot.stores.fsobjects import FsObjects


class Killed(BaseException):
    """The writer's process ends here (SIGKILL, its machine lost): none of its writes happen after this one."""


class Mortal:
    """A backend whose writer dies at its ``kill_at``-th write (put, put_new, delete or move: the
    calls where a death leaves something behind); the writes before it are done, that one and every
    later one (other threads' too) never are."""

    def __init__(self, backend: FsObjects, kill_at: int | None) -> None:
        self._backend, self.kill_at, self.writes, self.dead = backend, kill_at, 0, False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _write(self) -> None:
        with self._lock:
            if self.dead or self.writes == self.kill_at:
                self.dead = True
                raise Killed()
            self.writes += 1

    def put(self, key: str, data: bytes) -> None:
        self._write()
        self._backend.put(key, data)

    def put_new(self, key: str, data: bytes) -> bool:
        self._write()
        return self._backend.put_new(key, data)

    def delete(self, key: str) -> None:
        self._write()
        self._backend.delete(key)

    def move(self, src: str, dst: str) -> None:
        self._write()
        self._backend.move(src, dst)
