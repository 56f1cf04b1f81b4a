"""Waiting for file descriptors to be ready, for any descriptor number.

``select.select`` takes only descriptors below ``FD_SETSIZE`` (1024): a process that holds many
files (a daemon with many programs, a guest that opened a thousand files, a pytest worker) would
get ``ValueError: filedescriptor out of range in select()`` from a wait on a high one. ``poll``
has no such limit; :func:`wait` keeps ``select``'s meaning (a hang-up or an error counts as ready,
so the read or write that follows reports it; an invalid descriptor is ``EBADF``).
"""

from __future__ import annotations

import errno
import math
import os
import select
from collections.abc import Sequence
from typing import Protocol, TypeVar


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


F = TypeVar("F", bound=int | _HasFileno)

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_ENDED = select.POLLHUP | select.POLLERR


def _fd(item: int | _HasFileno) -> int:
    return item if isinstance(item, int) else item.fileno()


def wait(readers: Sequence[F], writers: Sequence[F], timeout: float | None) -> tuple[list[F], list[F]]:
    """The ``readers`` that can be read and the ``writers`` that can be written without blocking,
    waiting up to ``timeout`` seconds (None: until one is; 0: a look). Each is a descriptor or
    an object with ``fileno()``, returned as given, in the order given."""
    poller = select.poll()
    masks: dict[int, int] = {}
    for item in readers:
        masks[_fd(item)] = masks.get(_fd(item), 0) | _READ
    for item in writers:
        masks[_fd(item)] = masks.get(_fd(item), 0) | _WRITE
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    events = dict(poller.poll(ms))
    if any(event & select.POLLNVAL for event in events.values()):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    readable = [item for item in readers if events.get(_fd(item), 0) & (_READ | _ENDED)]
    writable = [item for item in writers if events.get(_fd(item), 0) & (_WRITE | _ENDED)]
    return readable, writable
