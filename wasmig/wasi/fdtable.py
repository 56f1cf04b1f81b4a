"""The guest's file-descriptor table.

Each :class:`FdEntry` separates *plain data* (what a snapshot records: kind, paths, flags,
rights, offset, readdir cursor, preopen name) from *runtime handles* (the host fd, socket or
Python stream, which are re-created on restore). :func:`wasmig.wasi.snapshot.capture_wasi`
turns the table into the snapshot's plain form.
"""

from __future__ import annotations

import os
import socket
from typing import BinaryIO

from wasmig.wasi.errno import Errno, WasiError

#: kinds of descriptor
STDIO = "stdio"
FILE = "file"
DIR = "dir"
TCP_LISTENER = "tcp_listener"
TCP_STREAM = "tcp_stream"


class FdEntry:
    """One guest file descriptor. A plain class, not a dataclass: every WASI run imports this module,
    and ``dataclasses`` brings ``inspect`` and ``ast`` with it (5 ms of a run's start-up)."""

    def __init__(self, kind: str, filetype: int, rights_base: int, rights_inheriting: int, fdflags: int = 0,
                 guest_path: str | None = None, host_path: str | None = None, preopen: str | None = None,
                 readable: bool = False, writable: bool = False, readdir_cookie: int = 0,
                 gateway: str | None = None, gateway_key: bytes | None = None, gateway_conn: int | None = None,
                 pending: bytes = b"", host_fd: int | None = None, sock: socket.socket | None = None,
                 stream: BinaryIO | None = None, dir_entries: list[tuple[str, int, int]] | None = None,
                 owns_host_fd: bool = True) -> None:
        self.kind = kind
        self.filetype = filetype
        self.rights_base = rights_base
        self.rights_inheriting = rights_inheriting
        self.fdflags = fdflags
        self.guest_path = guest_path
        self.host_path = host_path
        self.preopen = preopen
        self.readable = readable
        self.writable = writable
        self.readdir_cookie = readdir_cookie
        #: behind a socket gateway (wasmig/wasi/gateway.py): its control address, the sha256 of its key (pinned)
        #: and, for a connection, the gateway's id of it; bytes received but not yet read (drained
        #: from the data connection when the program was quiesced for a migration)
        self.gateway = gateway
        self.gateway_key = gateway_key
        self.gateway_conn = gateway_conn
        self.pending = pending
        # --- runtime only ---------------------------------------------------------------------------
        self.host_fd = host_fd
        self.sock = sock
        self.stream = stream
        self.dir_entries = dir_entries
        self.owns_host_fd = owns_host_fd

    def __repr__(self) -> str:
        shown = ("kind", "filetype", "rights_base", "rights_inheriting", "fdflags", "guest_path", "host_path",
                 "preopen", "readable", "writable", "readdir_cookie", "gateway", "gateway_conn")
        return f"FdEntry({', '.join(f'{k}={getattr(self, k)!r}' for k in shown)})"

    def fileno(self) -> int:
        if self.sock is not None:
            return self.sock.fileno()
        if self.host_fd is None:
            raise WasiError(Errno.BADF, "descriptor has no host handle")
        return self.host_fd

    def offset(self) -> int:
        if self.kind != FILE or self.host_fd is None:
            return 0
        try:
            return os.lseek(self.host_fd, 0, os.SEEK_CUR)
        except OSError:
            return 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        elif self.host_fd is not None and self.owns_host_fd:
            try:
                os.close(self.host_fd)
            except OSError:
                pass
        self.host_fd = None


class FdTable:
    """fd number -> entry, allocating the lowest free number as POSIX (and wasi-libc) expect."""

    def __init__(self) -> None:
        self.entries: dict[int, FdEntry] = {}

    def get(self, fd: int) -> FdEntry:
        entry = self.entries.get(fd)
        if entry is None:
            raise WasiError(Errno.BADF, f"fd {fd} is not open")
        return entry

    def add(self, entry: FdEntry) -> int:
        fd = 0
        while fd in self.entries:
            fd += 1
        if fd > 0xFFFFFFFF:
            raise WasiError(Errno.NFILE)
        self.entries[fd] = entry
        return fd

    def set(self, fd: int, entry: FdEntry) -> None:
        self.entries[fd] = entry

    def remove(self, fd: int) -> FdEntry:
        entry = self.get(fd)
        del self.entries[fd]
        return entry

    def renumber(self, src: int, dst: int) -> None:
        entry = self.get(src)
        old = self.get(dst)
        if src == dst:
            return
        old.close()
        self.entries[dst] = entry
        del self.entries[src]

    def close_all(self) -> None:
        for entry in self.entries.values():
            entry.close()
        self.entries.clear()
