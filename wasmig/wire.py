"""Length-prefixed msgpack frames over a socket: the wire format of the migration protocol
(docs/migration.md) and of the socket gateway's control connections.

A frame is a 4-byte big-endian length, then that many bytes of msgpack: a map whose ``"t"`` is
the message type. Frames are bounded (:data:`MAX_FRAME`), so a hostile peer cannot make the other
side allocate without limit, and every read has a deadline, so a silent peer cannot hang it.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

from wasmig.errors import WasmError

MAX_FRAME = 32 << 20
_LENGTH = struct.Struct(">I")


class WireError(WasmError):
    """The peer, the network, or what was sent is at fault."""


class PeerGone(WireError):
    """The connection closed or timed out."""


class Channel:
    """Frames over a connected socket."""

    def __init__(self, sock: socket.socket, peer: str = "peer") -> None:
        self.sock = sock
        self.peer = peer
        self.bytes_sent = 0
        self.bytes_received = 0

    def send(self, t: str, **fields: Any) -> None:
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
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        if length > MAX_FRAME:
            raise WireError(f"{self.peer}: a frame of {length} bytes (at most {MAX_FRAME})")
        body = self._exactly(length)
        self.bytes_received += _LENGTH.size + length
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

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            try:
                chunk = self.sock.recv(min(n, 1 << 20))
            except TimeoutError:
                raise PeerGone(f"{self.peer}: timed out") from None
            except OSError as e:
                raise PeerGone(f"{self.peer}: connection lost ({e.strerror or e})") from None
            if not chunk:
                raise PeerGone(f"{self.peer}: connection closed")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def error(self, message: str) -> None:
        """Tell the peer why, as far as it still listens."""
        try:
            self.send("error", message=message)
        except WireError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


def parse_address(spec: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise WireError(f"bad {what} {spec!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def open_channel(spec: str, what: str, timeout: float = 10.0) -> Channel:
    """A connection to ``spec`` (HOST:PORT), named ``"{what} {spec}"`` in errors."""
    host, port = parse_address(spec, what)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise PeerGone(f"{what} {spec}: cannot connect ({e.strerror or e})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Channel(sock, f"{what} {spec}")
