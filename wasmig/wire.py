"""Length-prefixed msgpack frames over a socket: the wire format of the migration protocol
(docs/migration.md) and of the socket gateway's control connections.

A frame is a 4-byte big-endian length, then that many bytes of msgpack: a map whose ``"t"`` is
the message type. Frames are bounded (:data:`MAX_FRAME`), so a hostile peer cannot make the other
side allocate without limit, and every read has a deadline, so a silent peer cannot hang it.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from functools import cache
from typing import Any

from wasmig import fdwait
from wasmig.errors import WasmError

MAX_FRAME = 32 << 20
#: the largest frame accepted before the peer authenticated: the handshake's frames are tiny, so a
#: stranger cannot make a daemon or a gateway allocate more than this
PREAUTH_FRAME = 4 << 10
_LENGTH = struct.Struct(">I")
#: seconds a TLS record may stay half-arrived: a peer writes each record whole, so its rest follows
#: at once unless the network broke, or a man in the middle lengthened the record (see _whole_record)
RECORD_STALL = 10.0
#: seconds a send may go on without the peer taking a byte (nothing acknowledged, nothing more
#: accepted: a zero window) before it gives up -- a peer, or a proxy, that stopped reading without
#: closing held a send for its whole timeout (60 s). A slow link that still moves is not cut off:
#: any byte it takes starts the count again. A peer that hung up (its FIN) fails a blocked send at once.
SEND_STALL = 15.0
ERROR_TIMEOUT = 2.0  # seconds an ``error`` frame, a courtesy to a peer we give up on, may take to go
LAST_WORD_TIMEOUT = 0.5  # seconds the rest of a peer's last frame, partly here already, may take to come
_TLS_HEADER = 5  # a TLS record: type, version (2 bytes), length (2 bytes), then that many bytes
_TLS_MAX_RECORD = (1 << 14) + 256  # the largest record body TLS 1.3 allows (RFC 8446, 5.2)
#: the most bytes a record TLS reads can take: ``k`` times this many bytes in the socket hold ``k``
#: whole records, whatever their lengths (a longer one is refused as soon as its header is read)
_TLS_RECORD_SPAN = _TLS_HEADER + _TLS_MAX_RECORD
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # the peer's FIN (Linux), even with its bytes still unread
_MAP_STARTS = {bytes([b]) for b in (*range(0x80, 0x90), 0xDE, 0xDF)}  # a msgpack map's first byte


class WireError(WasmError):
    """The peer, the network, or what was sent is at fault."""


class PeerGone(WireError):
    """The connection closed or timed out."""


class PeerError(WireError):
    """The peer gave up, and said why (its ``error`` frame)."""


#: what a first byte of a frame can be: a length's high byte (frames are at most MAX_FRAME bytes)
_FIRST_BYTES = range((MAX_FRAME >> 24) + 1)
#: how the peer that ``open_channel(spec, what)`` reaches is called when it turns out not to be one
_ROLES = {"target": "daemon"}


class Channel:
    """Frames over a connected socket.

    ``address`` (HOST:PORT) and ``role`` (``"daemon"``, ``"gateway"``), when given, name the peer
    in the error raised when its first answer is not a frame of this protocol at all (another
    kind of server on that port): ``HOST:PORT is not a wasmig daemon (it answered 'HTTP/1.1 ...')``.
    """

    def __init__(self, sock: socket.socket, peer: str = "peer", address: str | None = None,
                 role: str | None = None) -> None:
        self.sock = sock
        self.peer = peer
        self.address = address
        self.role = role
        self.bytes_sent = 0
        self.bytes_received = 0
        self.max_frame = MAX_FRAME  # PREAUTH_FRAME until the peer authenticated
        self._whole_records = 0  # TLS records known to be whole in the socket, beyond the next (_whole_record)
        self._queues = _queues()
        self._early: list[dict[str, Any]] = []  # frames the peer sent while a send of ours waited (_send_all)

    def send(self, t: str, **fields: Any) -> None:
        import msgpack  # here, not at the top: every WASI program imports this module, few send frames

        body = msgpack.packb({"t": t, **fields}, use_bin_type=True)
        if len(body) > MAX_FRAME:  # pragma: no cover - callers batch below the limit
            raise WireError(f"internal error: a {t} frame of {len(body)} bytes")
        try:
            self._send_all(_LENGTH.pack(len(body)) + body)
        except OSError as e:
            gone = PeerGone(f"{self.peer}: connection lost while sending ({e.strerror or e})")
        except PeerGone as e:
            gone = e
        else:
            self.bytes_sent += _LENGTH.size + len(body)
            return
        raise self._last_word() or gone from None

    def _last_word(self) -> PeerError | None:
        """Why the peer went, if it said so before: a side that gives up sends an ``error`` frame
        and closes while the other may still be sending (its reset fails the send), and that frame
        is still there to read -- the reason ("a page does not match its id"), not only "connection
        reset"."""
        try:
            if not self.readable(0):  # nothing there: TLS holds no bytes, the socket none either
                return None
            self.recv(LAST_WORD_TIMEOUT)
        except PeerError as e:
            return e
        except (WireError, OSError, ValueError):  # ValueError: closed meanwhile by another thread (fd -1)
            pass
        return None

    def _send_all(self, data: bytes) -> None:
        """Send all of ``data`` within the socket's timeout, as ``sendall`` would, but watching
        the peer while the kernel holds the rest back: a peer that hung up (its FIN: TCP goes on
        taking bytes it will never read, up to a full window) fails the send at once, and one that
        takes no byte for :data:`SEND_STALL` seconds -- nothing acknowledged, no room for more:
        it stopped reading, or the path broke -- fails it then, not after the whole timeout.
        Progress is room for more in the socket, or the kernel's count of bytes sent and not yet
        acknowledged (SIOCOUTQ) changing, looked at every second while the send waits. What the
        peer says meanwhile is read: its ``error`` fails the send at once with its reason, a TLS
        alert with the alert, and any other frame waits for the next :meth:`recv`."""
        sock = self.sock
        timeout = sock.gettimeout()
        blocked, must_read = _would_block(sock)
        view = memoryview(data)
        sent = 0
        watch: _SendWatch | None = None
        sock.settimeout(0.0)  # each try takes what fits (TLS: records, in its own retry), then we wait
        try:
            while sent < len(view):
                want = select.POLLOUT
                try:
                    sent += sock.send(view[sent:])
                    continue
                except blocked as e:  # TLS: the same write is tried again, as OpenSSL requires
                    if isinstance(e, must_read):  # a TLS write that must read first
                        want = select.POLLIN
                    if watch is not None and watch.ended:  # the socket reported its end, yet the send did not fail
                        raise PeerGone(f"{self.peer}: connection lost while sending") from None
                if watch is None:
                    watch = _SendWatch(sock, timeout, self._queues, self.peer)
                ready = watch.wait(want, sent)
                if ready & _POLLRDHUP and not watch.ended:
                    raise PeerGone(f"{self.peer}: hung up while we were sending (it closed the connection)")
                if ready & select.POLLIN and want == select.POLLOUT and not watch.ended:
                    # the peer talks mid-frame: it gave up (its error: PeerError; a TLS alert fails the
                    # read: PeerGone) or, rarely, sends a frame of its own, kept for recv
                    self._early.append(self._read(watch.left()))
                    sock.settimeout(0.0)
        finally:
            sock.settimeout(timeout)

    def recv(self, timeout: float | None = 60.0, expect: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The next message; an ``error`` message from the peer is raised as MigrationError."""
        msg = self._early.pop(0) if self._early else self._read(timeout)
        if expect is not None and msg["t"] not in expect:
            raise WireError(f"{self.peer}: expected {' or '.join(expect)}, got {msg['t']!r}")
        return msg

    def _read(self, timeout: float | None) -> dict[str, Any]:
        """The next frame off the socket, decoded; the peer's ``error`` raised as PeerError."""
        self.sock.settimeout(timeout)
        first = self.bytes_received == 0 and self.role is not None
        try:
            header = self._exactly(_LENGTH.size)
        except PeerGone as e:
            if first:  # not even a byte: say what the peer was supposed to be
                raise PeerGone(f"{e}, without an answer (is {self.address} a wasmig {self.role}?)") from None
            raise
        (length,) = _LENGTH.unpack(header)
        if first and (header[0] not in _FIRST_BYTES or length == 0):
            raise self._not_ours(bytes(header))
        if length > self.max_frame:
            raise WireError(f"{self.peer}: a frame of {length} bytes (at most {self.max_frame}"
                            f"{' before authentication' if self.max_frame < MAX_FRAME else ''})")
        body = self._exactly(length)
        if first and bytes(body[:1]) not in _MAP_STARTS:
            raise self._not_ours(bytes(header + body))
        self.bytes_received += _LENGTH.size + length
        import msgpack

        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise WireError(f"{self.peer}: malformed frame ({e})") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            raise WireError(f"{self.peer}: malformed frame (no message type)")
        if msg["t"] == "error":
            raise PeerError(f"{self.peer}: {msg.get('message', 'error')}")
        return msg

    def readable(self, timeout: float) -> bool:
        """Whether a frame (or its start) can be read now, waiting up to ``timeout``; TLS may hold
        decrypted bytes the socket no longer shows."""
        pending = getattr(self.sock, "pending", None)
        if self._early or pending is not None and pending():
            return True
        return bool(fdwait.wait([self.sock], [], timeout)[0])

    def _not_ours(self, start: bytes) -> WireError:
        """The peer answered, but not in this protocol: the error quotes the start of its answer."""
        data = start
        self.sock.settimeout(0.5)  # what else it sent right away (an HTTP status line, a banner)
        while b"\n" not in data and len(data) < 200:
            try:
                chunk = self.sock.recv(200)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        line = data.split(b"\n", 1)[0].rstrip(b"\r")[:80]
        text = line.decode("utf-8", "replace")
        if text.isprintable() and text.strip():
            answered = f"it answered {text!r}"
        else:
            answered = f"it answered bytes {data[:16].hex(' ')}"
        return WireError(f"{self.address} is not a wasmig {self.role} ({answered})")

    def _exactly(self, n: int) -> bytes | bytearray:
        """``n`` bytes, read into one buffer (TLS hands out a record, 16 KiB, per read: a fresh
        buffer per read would cost an allocation of the whole request each time)."""
        buf = bytearray(n)
        view = memoryview(buf)
        pos = 0
        sock = self.sock
        pending = getattr(sock, "pending", None)  # TLS: decrypted bytes it holds
        while pos < n:
            try:
                if pending is not None and not pending():  # this read takes a new record
                    self._whole_record()
                got = sock.recv_into(view[pos:], n - pos)
            except TimeoutError:
                raise PeerGone(f"{self.peer}: timed out") from None
            except OSError as e:
                raise PeerGone(f"{self.peer}: connection lost ({e.strerror or e})") from None
            if not got:
                raise PeerGone(f"{self.peer}: connection closed")
            pos += got
        view.release()
        return buf

    def _whole_record(self) -> None:
        """On TLS, before a read that needs a new record: wait until the whole record is in the
        socket, so that the TLS library, which would wait inside it, never does. A man in the
        middle who made the last record of a burst longer (its length field) would otherwise leave
        this side waiting for bytes that never come while the peer waits for its answer -- until
        a 60 s receive timeout, each way. A record that has stopped arriving half-way for
        :data:`RECORD_STALL` seconds is an error here; a wait for a record to start keeps the
        socket's timeout.

        Cheap in a stream (session 10): ``k`` records' largest size in the socket holds ``k``
        whole records whatever their lengths, so one count of the unread bytes (FIONREAD) lets
        that many reads go without a look; only a record at the end of a burst (less than a
        largest record's size left) has its header peeked (5 bytes, not the 64 KiB that counted
        records before: a copy of a third more than the data)."""
        if self._whole_records:
            self._whole_records -= 1
            return
        sock = self.sock
        have = self._queues.unread(sock.fileno())
        if have >= _TLS_RECORD_SPAN:
            self._whole_records = have // _TLS_RECORD_SPAN - 1
            return
        need = _record_size(socket.socket.recv(sock, _TLS_HEADER, socket.MSG_PEEK) if have else b"")
        if have >= need:
            return
        self._await_record(have, need)

    def _await_record(self, have: int, need: int) -> None:
        """Wait until the ``need`` bytes of the next record are in the socket (``have`` are)."""
        sock = self.sock
        timeout = sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        seen, stall_at = 0, 0.0
        while True:
            now = time.monotonic()
            if have != seen:
                seen, stall_at = have, now + RECORD_STALL
            if have and now >= stall_at:
                raise PeerGone(f"{self.peer}: a TLS record stopped arriving half-way ({have} of its {need} bytes "
                               f"for {RECORD_STALL:g} s): the connection was tampered with, or broke")
            if deadline is not None and now >= deadline:
                raise PeerGone(f"{self.peer}: timed out")
            left = None if deadline is None else deadline - now
            if have:  # a look every second: the rest arriving slowly is progress (poll tells only of ``need``)
                left = min(1.0, stall_at - now) if left is None else min(left, 1.0, stall_at - now)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)  # readable: ``need`` bytes there
            try:
                ready = fdwait.wait([sock], [], left)[0]
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            unread = self._queues.unread(sock.fileno())
            if ready and unread == have:
                return  # the end of the connection, or an error: the TLS read reports it
            have = unread
            if have >= _TLS_HEADER and need == _TLS_HEADER:  # the header arrived: now its body
                need = _record_size(socket.socket.recv(sock, _TLS_HEADER, socket.MSG_PEEK))
            if have >= need:
                return

    def error(self, message: str) -> None:
        """Tell the peer why, as far as it still listens -- for at most :data:`ERROR_TIMEOUT`
        seconds: a peer that stopped reading (a send to it has just timed out) held a failed
        migration up for a second full timeout (60 s) with its ``error`` frame."""
        try:
            timeout = self.sock.gettimeout()
            self.sock.settimeout(ERROR_TIMEOUT if timeout is None else min(timeout, ERROR_TIMEOUT))
            self.send("error", message=message)
        except (WireError, OSError):
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


class _SendWatch:
    """The waits of one send the kernel held back: for room, for the peer's end or its words,
    and whether the send still moves -- :data:`SEND_STALL` seconds without is an error, as is
    the socket's timeout over the whole send."""

    def __init__(self, sock: socket.socket, timeout: float | None, queues: _Queues, peer: str) -> None:
        self.sock, self.queues, self.peer = sock, queues, peer
        self.poller = select.poll()
        self.poller.register(sock, 0)
        now = time.monotonic()
        self.deadline = None if timeout is None else now + timeout
        self.moved_at, self.sent, self.unsent = now, 0, -1
        self.ready, self.ended = 0, False

    def wait(self, want: int, sent: int) -> int:
        """Wait (a second at most) for ``want`` (room to write, or to read for TLS), the peer's
        end or words; the poll events. ``sent``: the bytes of the send the kernel took so far."""
        now = time.monotonic()
        if self.ready & want or sent != self.sent:  # progress: there was room for more, or the kernel took more
            self.sent, self.moved_at, self.unsent = sent, now, -1
        else:  # a wait that ended without room: has the peer acknowledged bytes since the last look?
            # (looked at only here: the kernel refills to the same length, so no look says "room"; and an
            # ioctl lets other threads take the GIL, which must then be waited for)
            queued = self.queues.unsent(self.sock.fileno())
            if self.unsent >= 0 and queued != self.unsent:
                self.moved_at = now
            self.unsent = queued
            if now - self.moved_at >= SEND_STALL:
                raise PeerGone(f"{self.peer}: took no byte for {SEND_STALL:g} s while we were sending (it "
                               f"stopped reading, or the connection broke)")
        if self.deadline is not None and now >= self.deadline:
            raise PeerGone(f"{self.peer}: timed out while sending")
        left = min(1.0, self.moved_at + SEND_STALL - now, self.left() or 1.0)
        self.poller.modify(self.sock, want | _POLLRDHUP | (select.POLLIN if want == select.POLLOUT else 0))
        events = self.poller.poll(max(0, int(left * 1000) + 1))
        self.ready = events[0][1] if events else 0
        self.ended = bool(self.ready & (select.POLLHUP | select.POLLERR))  # the next send reports why
        return self.ready

    def left(self) -> float | None:
        """Seconds left of the send's timeout (None: none)."""
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())


def _would_block(sock: socket.socket) -> tuple[tuple[type[OSError], ...], tuple[type[OSError], ...]]:
    """What a send on ``sock`` with no timeout raises when the kernel takes nothing more, and
    which of those mean it must wait to read first: TLS has its own want-write and want-read
    (``ssl`` is loaded if ``sock`` is TLS; never imported here, for start-up's sake)."""
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(sock, ssl.SSLSocket):
        return (BlockingIOError,), ()
    return (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError), (ssl.SSLWantReadError,)


def _record_size(header: bytes) -> int:
    """The bytes the TLS record ``header`` (the first up to 5 bytes the socket holds) starts
    need in the socket to be whole: its header and body; only its header while that is not all
    there. A record longer than TLS allows needs no more: the TLS read refuses it at once."""
    if len(header) < _TLS_HEADER:
        return _TLS_HEADER
    length = int.from_bytes(header[3:5], "big")
    return 0 if length > _TLS_MAX_RECORD else _TLS_HEADER + length


class _Queues:
    """The lengths of a socket's queues, from the kernel (ioctl): what was received and not read
    yet (FIONREAD), and what was sent and not acknowledged yet (SIOCOUTQ, which is TIOCOUTQ).
    Made with the first channel, not at import: every WASI program imports this module and few
    open a channel, and fcntl and termios cost 0.5 ms to import."""

    def __init__(self) -> None:
        import fcntl
        import termios

        self._ioctl = fcntl.ioctl
        self._unread = termios.FIONREAD
        self._unsent = termios.TIOCOUTQ

    def unread(self, fd: int) -> int:
        return int.from_bytes(self._ioctl(fd, self._unread, b"\0\0\0\0"), sys.byteorder, signed=True)

    def unsent(self, fd: int) -> int:
        return int.from_bytes(self._ioctl(fd, self._unsent, b"\0\0\0\0"), sys.byteorder, signed=True)


_queues = cache(_Queues)


def parse_address(spec: str, what: str = "address", *, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); the error names what is wrong with it. ``any_port``: port 0
    (a listener's "any free port") is allowed."""
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise WireError(f"bad {what} {spec!r}: expected HOST:PORT")
    if not port.isascii() or not port.isdigit():
        problem = "no port after the ':'" if not port else f"the port {port!r} is not a number"
        raise WireError(f"bad {what} {spec!r}: {problem} (expected HOST:PORT)")
    low = 0 if any_port else 1
    if not low <= int(port) <= 65535:
        raise WireError(f"bad {what} {spec!r}: port {int(port)} is out of range ({low}-65535)")
    if not host.strip("[]"):
        raise WireError(f"bad {what} {spec!r}: no host before the port (expected HOST:PORT, e.g. 127.0.0.1:{port})")
    return host.strip("[]"), int(port)


def open_channel(spec: str, what: str, timeout: float = 10.0) -> Channel:
    """A connection to ``spec`` (HOST:PORT), named ``"{what} {spec}"`` in errors."""
    host, port = parse_address(spec, what)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise PeerGone(f"{what} {spec}: cannot connect ({e.strerror or e})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Channel(sock, f"{what} {spec}", spec, _ROLES.get(what, what))
