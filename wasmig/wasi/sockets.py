"""WASI's waiting and sockets in :class:`wasmig.wasi.preview1.Wasi`: ``poll_oneoff`` (interruptible
by a checkpoint request, :mod:`wasmig.wasi.blocking`), ``sock_*`` on preopened TCP listeners, and
the socket gateway's connections detached for a migration and attached again."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

from wasmig.wasi import constants as C
from wasmig.wasi import gateway
from wasmig.wasi.errno import Errno, WasiError
from wasmig.wasi.fdtable import DIR, FILE, STDIO, TCP_LISTENER, TCP_STREAM, FdEntry, FdTable
from wasmig.wire import WireError


class SocketCalls:
    """``poll_oneoff``, the ``sock_*`` calls and the gateway's connections, mixed into
    :class:`~wasmig.wasi.preview1.Wasi`."""

    fds: FdTable  # the state these calls share with the rest of preview1.Wasi
    gateway_handover: str | None

    # --- poll ------------------------------------------------------------------------------------------
    def poll_oneoff(self, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> None:
        if nsubs == 0:
            raise WasiError(Errno.INVAL, "poll_oneoff with no subscriptions")
        mem = self.mem
        raw = mem.read(in_ptr, C.SIZE_SUBSCRIPTION * nsubs)
        mem.read(out_ptr, C.SIZE_EVENT * nsubs)  # the output array must be valid memory too
        clocks: list[tuple[int, int]] = []  # (userdata, deadline in monotonic ns)
        readers: list[tuple[int, FdEntry, int]] = []
        writers: list[tuple[int, FdEntry, int]] = []
        events: list[bytes] = []
        now_mono = time.monotonic_ns()
        for i in range(nsubs):
            userdata, tag = struct.unpack_from("<QB", raw, i * C.SIZE_SUBSCRIPTION)
            body = i * C.SIZE_SUBSCRIPTION + 16
            if tag == C.EVENTTYPE_CLOCK:
                clock_id, timeout, _precision, flags = struct.unpack_from("<IxxxxQQH", raw, body)
                try:
                    now = self.now_ns(clock_id)
                except WasiError as e:
                    events.append(struct.pack("<QHB5xQH6x", userdata, e.errno, tag, 0, 0))
                    continue
                delay = max(0, timeout - now) if flags & C.SUBCLOCK_ABSTIME else timeout
                clocks.append((userdata, now_mono + delay))
            elif tag in (C.EVENTTYPE_FD_READ, C.EVENTTYPE_FD_WRITE):
                (fd,) = struct.unpack_from("<I", raw, body)
                entry = self.fds.entries.get(fd)
                if entry is None:  # wasmtime fails the whole call, rather than reporting an event
                    raise WasiError(Errno.BADF, f"poll_oneoff on fd {fd}, which is not open")
                if entry.kind == DIR:  # as wasmtime: a directory is no stream, the whole call fails
                    raise WasiError(Errno.BADF, f"poll_oneoff on fd {fd}, a directory")
                if entry.kind != STDIO:  # stdio holds no poll right (as in wasmtime) and is polled anyway
                    self._need(entry, C.RIGHT_POLL_FD_READWRITE)
                (readers if tag == C.EVENTTYPE_FD_READ else writers).append((userdata, entry, fd))
            else:
                raise WasiError(Errno.INVAL, f"unknown subscription type {tag}")
        if not events:
            events = self._wait(clocks, readers, writers)
        for i, ev in enumerate(events):
            mem.write(out_ptr + i * C.SIZE_EVENT, ev)
        mem.set_u32(nevents_ptr, len(events))

    def _wait(self, clocks: list[tuple[int, int]], readers: list[tuple[int, FdEntry, int]],
              writers: list[tuple[int, FdEntry, int]]) -> list[bytes]:
        deadline = min((d for _, d in clocks), default=None)
        while True:
            events = self._ready_fds(readers, writers, deadline)
            if events:
                return events
            now = time.monotonic_ns()
            if deadline is not None and now >= deadline:
                return [struct.pack("<QHB5xQH6x", u, 0, C.EVENTTYPE_CLOCK, 0, 0) for u, d in clocks if d <= now]
            if not readers and not writers and deadline is not None:
                self.waiter.sleep((deadline - now) / 1e9)

    def _ready_fds(self, readers: list[tuple[int, FdEntry, int]], writers: list[tuple[int, FdEntry, int]],
                   deadline: int | None) -> list[bytes]:
        if not readers and not writers:
            return []
        events: list[bytes] = []
        selectable_r, selectable_w = [], []
        for userdata, entry, _fd in readers:
            if entry.kind in (FILE, DIR) or entry.stream is not None or entry.pending:
                nbytes = len(entry.pending)
                if entry.kind == FILE:
                    nbytes = max(0, os.fstat(entry.fileno()).st_size - entry.offset())
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_READ, nbytes, 0))
            else:
                selectable_r.append((userdata, entry))
        for userdata, entry, _fd in writers:
            if entry.kind in (FILE, DIR) or entry.stream is not None:
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_WRITE, 0, 0))
            else:
                selectable_w.append((userdata, entry))
        if events:
            return events
        timeout = None if deadline is None else max(0.0, (deadline - time.monotonic_ns()) / 1e9)
        r_ready, w_ready = self.waiter.wait([e.fileno() for _, e in selectable_r],
                                            [e.fileno() for _, e in selectable_w], timeout)
        for userdata, entry in selectable_r:
            if entry.fileno() in r_ready:
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_READ, 1, 0))
        for userdata, entry in selectable_w:
            if entry.fileno() in w_ready:
                events.append(struct.pack("<QHB5xQH6x", userdata, 0, C.EVENTTYPE_FD_WRITE, 0, 0))
        return events

    # --- sockets ---------------------------------------------------------------------------------------
    def sock_accept(self, fd: int, flags: int, fd_ptr: int) -> None:
        entry = self.fds.get(fd)
        if entry.kind != TCP_LISTENER or entry.sock is None:
            raise WasiError(Errno.NOTSOCK if entry.kind != TCP_STREAM else Errno.INVAL)
        if flags & ~C.FDFLAGS_NONBLOCK:
            raise WasiError(Errno.INVAL)
        self._need(entry, C.RIGHT_SOCK_ACCEPT)
        blocking = not flags & C.FDFLAGS_NONBLOCK and not entry.fdflags & C.FDFLAGS_NONBLOCK
        if blocking:
            self.waiter.wait_readable(entry.sock.fileno())
        extra: dict[str, Any] = {}
        if entry.gateway is not None:  # a client announced by the gateway: attach a data connection
            if not blocking and not self.waiter.wait_readable(entry.sock.fileno(), 0):
                raise WasiError(Errno.AGAIN)  # (a blocking accept has just waited for it)
            try:
                conn_id = gateway.next_connection(entry.sock, entry.gateway)
                conn = gateway.attach(entry.gateway, entry.gateway_key or b"", conn_id)
            except WireError as e:
                raise WasiError(Errno.CONNABORTED, str(e)) from None
            extra = {"gateway": entry.gateway, "gateway_key": entry.gateway_key, "gateway_conn": conn_id}
        else:
            try:
                conn, _addr = entry.sock.accept()
            except BlockingIOError:
                raise WasiError(Errno.AGAIN) from None
        conn.setblocking(not flags & C.FDFLAGS_NONBLOCK)
        new = FdEntry(TCP_STREAM, C.FILETYPE_SOCKET_STREAM, C.RIGHTS_SOCKET & ~C.RIGHT_SOCK_ACCEPT, 0,
                      fdflags=flags & C.FDFLAGS_NONBLOCK, readable=True, writable=True, sock=conn, **extra)
        new_fd = self.fds.add(new)
        self.mem.set_u32(fd_ptr, new_fd)

    @staticmethod
    def _take_pending(entry: FdEntry, n: int, peek: bool = False) -> bytes:
        data = entry.pending[:n]
        if not peek:
            entry.pending = entry.pending[n:]
        return data

    # --- the socket gateway: migrating connections ----------------------------------------------
    def detach_gateway(self) -> None:
        """Before a migration stops for good: quiesce every connection that goes through a
        gateway, read what was in flight into its fd's pending bytes, and let go of the data
        and control connections (the fds stay, with what the target needs to re-attach)."""
        streams = [e for e in self.fds.entries.values()
                   if e.kind == TCP_STREAM and e.gateway is not None and e.sock is not None]
        by_gateway: dict[tuple[str, bytes], list[FdEntry]] = {}
        for e in self.fds.entries.values():  # every gateway (a listener's too: the handover names the target)
            if e.gateway is not None and e.sock is not None:
                by_gateway.setdefault((e.gateway, e.gateway_key or b""), [])
        for e in streams:
            by_gateway[(e.gateway, e.gateway_key or b"")].append(e)  # type: ignore[index]
        for (address, key), entries in by_gateway.items():
            gateway.quiesce(address, key, [e.gateway_conn for e in entries if e.gateway_conn is not None],
                            self.gateway_handover)
            for e in entries:
                assert e.sock is not None
                e.pending += gateway.drain(e.sock)
                e.sock.close()
                e.sock = None
        for e in self.fds.entries.values():
            if e.kind == TCP_LISTENER and e.gateway is not None and e.sock is not None:
                e.sock.close()
                e.sock = None

    def reattach_gateway(self) -> None:
        """Connect every detached gateway fd again (after a restore, or a migration given up); while
        the :attr:`gate` holds the program (a migration not yet committed), only when it opens."""
        if self.gate.defer(self.reattach_gateway):
            return
        for e in self.fds.entries.values():
            if e.gateway is None or e.sock is not None:
                continue
            key = e.gateway_key or b""
            if e.kind == TCP_LISTENER:
                e.sock = gateway.connect_listener(e.gateway, key)
            elif e.kind == TCP_STREAM and e.gateway_conn is not None:
                e.sock = gateway.attach(e.gateway, key, e.gateway_conn)
                e.sock.setblocking(not e.fdflags & C.FDFLAGS_NONBLOCK)

    def _stream(self, fd: int, need: int) -> socket.socket:
        entry = self.fds.get(fd)
        if entry.kind not in (TCP_STREAM, TCP_LISTENER):
            raise WasiError(Errno.NOTSOCK)
        if entry.kind == TCP_LISTENER or entry.sock is None:
            raise WasiError(Errno.NOTCONN)
        self._need(entry, need)
        return entry.sock

    def sock_recv(self, fd: int, ri_data: int, ri_len: int, ri_flags: int, ro_len_ptr: int,
                  ro_flags_ptr: int) -> None:
        entry = self.fds.get(fd)
        iovs = self.mem.iovecs(ri_data, ri_len)
        total = sum(length for _, length in iovs)
        if entry.pending and entry.kind == TCP_STREAM:
            self._need(entry, C.RIGHT_FD_READ)
            data = self._take_pending(entry, total, peek=bool(ri_flags & C.RECV_PEEK))
            self.mem.set_u32(ro_len_ptr, self._scatter(iovs, data))
            self.mem.set_u16(ro_flags_ptr, 0)
            return
        sock = self._stream(fd, C.RIGHT_FD_READ)
        flags = (socket.MSG_PEEK if ri_flags & C.RECV_PEEK else 0) | (
            socket.MSG_WAITALL if ri_flags & C.RECV_WAITALL else 0)
        if total and not entry.fdflags & C.FDFLAGS_NONBLOCK and not ri_flags & C.RECV_WAITALL:
            self.waiter.wait_readable(sock.fileno())
        try:
            data = sock.recv(total, flags) if total else b""
        except BlockingIOError:
            raise WasiError(Errno.AGAIN) from None
        self.mem.set_u32(ro_len_ptr, self._scatter(iovs, data))
        self.mem.set_u16(ro_flags_ptr, 0)

    def sock_send(self, fd: int, si_data: int, si_len: int, si_flags: int, so_len_ptr: int) -> None:
        sock = self._stream(fd, C.RIGHT_FD_WRITE)
        data = self._gather(self.mem.iovecs(si_data, si_len))
        try:
            sent = sock.send(data) if data else 0
        except BlockingIOError:
            raise WasiError(Errno.AGAIN) from None
        self.mem.set_u32(so_len_ptr, sent)

    def sock_shutdown(self, fd: int, how: int) -> None:
        sock = self._stream(fd, C.RIGHT_SOCK_SHUTDOWN)
        modes = {C.SHUT_RD: socket.SHUT_RD, C.SHUT_WR: socket.SHUT_WR, C.SHUT_RD | C.SHUT_WR: socket.SHUT_RDWR}
        if how not in modes:
            raise WasiError(Errno.INVAL)
        sock.shutdown(modes[how])
