"""The migration wire protocol: framing, messages and mutual authentication (docs/migration.md).

A connection carries *frames*: a 4-byte big-endian length, then that many bytes of msgpack: a
map with at least ``"t"`` (the message type, a short string). Frames are bounded
(:data:`MAX_FRAME`), so a hostile peer cannot make the other side allocate without limit, and
every read has a deadline, so a silent peer cannot hang it. Before anything else both sides
prove they hold the shared token, without sending it: HMAC-SHA256 over both sides' random
nonces, in both directions (a source never sends a program to a target that does not know the
token either). An unauthenticated peer gets one ``error`` frame and is disconnected.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import struct
from hashlib import sha256
from pathlib import Path
from typing import Any

import msgpack

from wasmig.errors import WasmError

PROTOCOL = "wasmig-migrate"
VERSION = 1
MAX_FRAME = 32 << 20  # a page batch is at most PAGE_BATCH bytes of pages plus framing
PAGE_BATCH = 4 << 20
NONCE_SIZE = 32
_LENGTH = struct.Struct(">I")
AUTH_TIMEOUT = 10.0  # seconds a peer has to authenticate


class MigrationError(WasmError):
    """A migration could not be done: the peer, the network, or what was sent is at fault."""


class PeerGone(MigrationError):
    """The connection closed or timed out."""


def read_token(path: str | Path) -> bytes:
    """The shared secret in ``path`` (surrounding whitespace dropped); refused when empty or
    readable by other users (a token anyone on the host can read authenticates anyone)."""
    p = Path(path)
    try:
        st = p.stat()
        token = p.read_bytes().strip()
    except OSError as e:
        raise MigrationError(f"token file {path}: {e.strerror or e}") from None
    if len(token) < 16:
        raise MigrationError(f"token file {path}: the token is shorter than 16 bytes")
    if st.st_mode & 0o077:
        raise MigrationError(f"token file {path}: readable by others (chmod 600 it)")
    return token


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
            raise MigrationError(f"internal error: a {t} frame of {len(body)} bytes")
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
            raise MigrationError(f"{self.peer}: a frame of {length} bytes (at most {MAX_FRAME})")
        body = self._exactly(length)
        self.bytes_received += _LENGTH.size + length
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise MigrationError(f"{self.peer}: malformed frame ({e})") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            raise MigrationError(f"{self.peer}: malformed frame (no message type)")
        if msg["t"] == "error":
            raise MigrationError(f"{self.peer}: {msg.get('message', 'error')}")
        if expect is not None and msg["t"] not in expect:
            raise MigrationError(f"{self.peer}: expected {' or '.join(expect)}, got {msg['t']!r}")
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
        except MigrationError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


def _mac(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, b"wasmig-migrate-v1 " + role + first + second, sha256).digest()


def _field(msg: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = msg.get(name)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise MigrationError(f"malformed {msg.get('t')} message: bad {name}")
    return value


def authenticate_as_client(ch: Channel, token: bytes) -> None:
    """hello -> challenge -> auth -> welcome; raises MigrationError if either side is wrong."""
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    ch.send("hello", protocol=PROTOCOL, version=VERSION, nonce=client_nonce)
    msg = ch.recv(AUTH_TIMEOUT, expect=("challenge",))
    server_nonce = _field(msg, "nonce", NONCE_SIZE)
    ch.send("auth", mac=_mac(token, b"client", server_nonce, client_nonce))
    msg = ch.recv(AUTH_TIMEOUT, expect=("welcome",))
    if not hmac.compare_digest(_field(msg, "mac"), _mac(token, b"server", client_nonce, server_nonce)):
        raise MigrationError(f"{ch.peer}: the target does not know the token")


def authenticate_as_server(ch: Channel, token: bytes) -> None:
    """The daemon's side; raises MigrationError (after telling the peer) on a bad peer."""
    msg = ch.recv(AUTH_TIMEOUT, expect=("hello",))
    if msg.get("protocol") != PROTOCOL or msg.get("version") != VERSION:
        ch.error(f"unsupported protocol {msg.get('protocol')!r} version {msg.get('version')!r} "
                 f"(this target speaks {PROTOCOL} {VERSION})")
        raise MigrationError(f"{ch.peer}: unsupported protocol version {msg.get('version')!r}")
    client_nonce = _field(msg, "nonce", NONCE_SIZE)
    server_nonce = secrets.token_bytes(NONCE_SIZE)
    ch.send("challenge", nonce=server_nonce)
    msg = ch.recv(AUTH_TIMEOUT, expect=("auth",))
    if not hmac.compare_digest(_field(msg, "mac"), _mac(token, b"client", server_nonce, client_nonce)):
        ch.error("authentication failed")
        raise MigrationError(f"{ch.peer}: authentication failed (wrong token)")
    ch.send("welcome", mac=_mac(token, b"server", client_nonce, server_nonce))


def parse_address(spec: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise MigrationError(f"bad {what} {spec!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def connect(spec: str, token: bytes, timeout: float = 10.0) -> Channel:
    host, port = parse_address(spec, "target")
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise PeerGone(f"target {spec}: cannot connect ({e.strerror or e})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ch = Channel(sock, f"target {spec}")
    try:
        authenticate_as_client(ch, token)
    except BaseException:
        ch.close()
        raise
    return ch
