"""Length-prefixed msgpack frames over a socket: the wire format of the migration protocol
(docs/migration.md) and of the socket gateway's control connections.

A frame is a 4-byte big-endian length, then that many bytes of msgpack: a map whose ``"t"`` is
the message type. Frames are bounded (:data:`MAX_FRAME`), so a hostile peer cannot make the other
side allocate without limit, and every read has a deadline, so a silent peer cannot hang it.
"""

from __future__ import annotations

import socket
import struct
import time
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
ERROR_TIMEOUT = 2.0  # seconds an ``error`` frame, a courtesy to a peer we give up on, may take to go
_TLS_HEADER = 5  # a TLS record: type, version (2 bytes), length (2 bytes), then that many bytes
_TLS_MAX_RECORD = (1 << 14) + 256  # the largest record body TLS 1.3 allows (RFC 8446, 5.2)
_MAP_STARTS = {bytes([b]) for b in (*range(0x80, 0x90), 0xDE, 0xDF)}  # a msgpack map's first byte


class WireError(WasmError):
    """The peer, the network, or what was sent is at fault."""


class PeerGone(WireError):
    """The connection closed or timed out."""


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

    def send(self, t: str, **fields: Any) -> None:
        import msgpack  # here, not at the top: every WASI program imports this module, few send frames

        body = msgpack.packb({"t": t, **fields}, use_bin_type=True)
        if len(body) > MAX_FRAME:  # pragma: no cover - callers batch below the limit
            raise WireError(f"internal error: a {t} frame of {len(body)} bytes")
        try:
            self.sock.sendall(_LENGTH.pack(len(body)) + body)
        except OSError as e:
            raise PeerGone(f"{self.peer}: connection lost while sending ({e.strerror or e})") from None
        self.bytes_sent += _LENGTH.size + len(body)

    def recv(self, timeout: float | None = 60.0, expect: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The next message; an ``error`` message from the peer is raised as MigrationError."""
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
            raise WireError(f"{self.peer}: {msg.get('message', 'error')}")
        if expect is not None and msg["t"] not in expect:
            raise WireError(f"{self.peer}: expected {' or '.join(expect)}, got {msg['t']!r}")
        return msg

    def readable(self, timeout: float) -> bool:
        """Whether a frame (or its start) can be read now, waiting up to ``timeout``; TLS may hold
        decrypted bytes the socket no longer shows."""
        pending = getattr(self.sock, "pending", None)
        if pending is not None and pending():
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
        while pos < n:
            try:
                self._whole_record()
                got = self.sock.recv_into(view[pos:], n - pos)
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
        socket's timeout. (Each such read takes one record: the records seen whole in one look
        are counted down, not looked at again.)"""
        pending = getattr(self.sock, "pending", None)
        if pending is None or pending():  # not TLS, or decrypted bytes are waiting already
            return
        if self._whole_records:
            self._whole_records -= 1
            return
        sock = self.sock
        timeout = sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        seen, stall_at = 0, 0.0
        while True:
            have = _unread(sock)
            whole, need = _whole_records(socket.socket.recv(sock, min(have, 1 << 16), socket.MSG_PEEK)
                                         if have else b"")  # a look at the TCP bytes under TLS
            if whole:
                self._whole_records = whole - 1
                return
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
            if ready and _unread(sock) == have:
                return  # the end of the connection, or an error: the TLS read reports it

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


def _whole_records(data: bytes) -> tuple[int, int]:
    """How many whole TLS records ``data`` (the start of what the socket holds) begins with, and
    when none, how many bytes the first one needs (its header, or its header and body). A record
    longer than TLS allows counts as whole: the TLS read refuses it at once."""
    pos = count = 0
    while len(data) - pos >= _TLS_HEADER:
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if length > _TLS_MAX_RECORD:
            return count + 1, 0
        if len(data) - pos < _TLS_HEADER + length:
            return count, _TLS_HEADER + length
        pos += _TLS_HEADER + length
        count += 1
    return count, _TLS_HEADER if data else 1


def _unread(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not read yet (FIONREAD)."""
    import fcntl
    import termios

    (count,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4)))
    return int(count)


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
