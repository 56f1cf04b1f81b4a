"""wasmig.fdwait: waits on descriptors of any number, with select's meaning."""

from __future__ import annotations

import errno
import os
import resource
import socket
import time
from collections.abc import Iterator

import pytest

from wasmig import fdwait
from wasmig.wasi.blocking import Waiter

HIGH_FD = 1500  # beyond select()'s FD_SETSIZE of 1024


@pytest.fixture
def high_pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose read end is descriptor HIGH_FD (the soft limit raised for it if need be)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD:
        pytest.skip(f"descriptors are limited to {hard} here")
    if soft != resource.RLIM_INFINITY and soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 1, hard))
    r, w = os.pipe()
    os.dup2(r, HIGH_FD)
    os.close(r)
    try:
        yield HIGH_FD, w
    finally:
        for fd in (HIGH_FD, w):
            try:
                os.close(fd)
            except OSError:
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_wasi_wait_on_a_descriptor_beyond_1024(high_pipe: tuple[int, int]) -> None:
    r, w = high_pipe
    waiter = Waiter()
    try:
        assert waiter.wait_readable(r, timeout=0.05) is False
        os.write(w, b"x")
        assert waiter.wait_readable(r, timeout=5.0) is True
    finally:
        waiter.close()


def test_readiness_timeout_and_hangup() -> None:
    r, w = os.pipe()
    try:
        started = time.monotonic()
        assert fdwait.wait([r], [], 0.1) == ([], [])
        assert time.monotonic() - started >= 0.09
        assert fdwait.wait([r], [w], 0) == ([], [w])  # an empty pipe: writable, not readable
        os.close(w)
        w = -1
        assert fdwait.wait([r], [], 5.0) == ([r], [])  # the other end gone: readable (EOF), as select says
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def test_objects_come_back_as_given_and_a_closed_descriptor_is_ebadf() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"hello")
        readable, writable = fdwait.wait([a], [a, b], 5.0)
        assert readable == [a] and readable[0] is a and writable == [a, b]
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        with pytest.raises(OSError) as caught:
            fdwait.wait([r], [], 0)
        assert caught.value.errno == errno.EBADF
    finally:
        a.close()
        b.close()
