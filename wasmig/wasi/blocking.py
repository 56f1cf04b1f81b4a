"""How the WASI layer waits, so that a checkpoint request can end any wait safely.

A blocked host call (reading a terminal or pipe, ``poll_oneoff`` sleeping, ``sock_accept``)
must be checkpointable. Raising from a signal handler into ``os.read`` could lose data that the
read had already consumed, so the WASI layer never blocks in the syscall itself: it waits in
``poll`` (:mod:`wasmig.fdwait`) on the fd *and* a wakeup pipe, and only then does the (now non-blocking) operation.
:meth:`Waiter.request` (called from a signal handler or timer) writes to the pipe; a wait that
sees a pending request raises :class:`HostCallInterrupted` before anything was consumed, and the
engine re-executes the call after the restore.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

from wasmig import fdwait
from wasmig.errors import HostCallInterrupted


class Waiter:
    def __init__(self) -> None:
        self.requested = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        # closed when the waiter is collected, if nobody closed it: every Wasi has one, and
        # programs run through the API are never closed, so a long-lived process (a pytest worker)
        # leaked a pipe a run (issue 20's repeated runs); at most once, so that a descriptor
        # number reused since is never closed again
        self._closer = weakref.finalize(self, _close_pipe, self._r, self._w)

    def request(self) -> None:
        """Ask every current and future wait to give up (async-signal-safe enough for Python handlers)."""
        self.requested = True
        try:
            os.write(self._w, b"!")
        except (BlockingIOError, OSError):
            pass

    def clear(self) -> None:
        self.requested = False
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _check(self) -> None:
        if self.requested:
            raise HostCallInterrupted()

    def wait_readable(self, fd: int, timeout: float | None = None) -> bool:
        """True when ``fd`` is readable, False on timeout; raises HostCallInterrupted on a request."""
        return self.wait([fd], [], timeout) != ([], [])

    def wait(self, readers: list[int], writers: list[int], timeout: float | None) -> tuple[list[int], list[int]]:
        self._check()
        r, w = fdwait.wait([*readers, self._r], writers, timeout)
        self._check()
        return [fd for fd in r if fd != self._r], w

    def sleep(self, seconds: float) -> None:
        self.wait([], [], max(0.0, seconds))

    def close(self) -> None:
        self._closer()


def _close_pipe(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Gate:
    """Holds a guest's host calls until it is opened: what a live migration's target runs the
    restored program behind until the source's commit (docs/migration.md). The guest may compute
    meanwhile, but nothing it does reaches the world (every WASI call waits here), so a
    migration given up before the commit leaves no trace of it.

    Open unless :meth:`close` was called; :attr:`touched` is set when the guest first reached it
    (a host call was made: the guest runs); :meth:`open` runs the deferred actions (``defer``:
    re-attaching gateway connections) before it lets the held calls go."""

    def __init__(self) -> None:
        self.closed = False
        self.touched = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._deferred: list[Callable[[], None]] = []
        self._opening = False

    def close(self) -> None:
        self.closed = True
        self._open.clear()

    def wait(self) -> None:
        """A host call arrived while closed: say so, and wait until opened."""
        self.touched.set()
        self._open.wait()

    def defer(self, action: Callable[[], None]) -> bool:
        """Run ``action`` when the gate opens (False, and nothing deferred: it is open, or
        opening and running what was deferred)."""
        if not self.closed or self._opening:
            return False
        self._deferred.append(action)
        return True

    def open(self) -> None:
        """Run what was deferred (host calls still held), then let them go."""
        actions, self._deferred = self._deferred, []
        self._opening = True
        try:
            for action in actions:
                action()
        finally:
            self._opening = False
            self.closed = False
            self._open.set()
