"""The migration wire protocol: messages and mutual authentication (docs/migration.md), over
the frames of :mod:`wasmig.wire`.

Before anything else both sides
prove they hold the shared token, without sending it: HMAC-SHA256 over both sides' random
nonces, in both directions (a source never sends a program to a target that does not know the
token either). An unauthenticated peer gets one ``error`` frame and is disconnected.
"""

from __future__ import annotations

import hmac
import secrets
from hashlib import sha256
from pathlib import Path
from typing import Any

from wasmig.wire import Channel, PeerGone, WireError, open_channel, parse_address

PROTOCOL = "wasmig-migrate"
#: 2: ``prepared`` means the program resumed on the target (held until the commit), and ``status``
#: says what became of a committed program
VERSION = 2
PAGE_BATCH = 4 << 20  # bytes of pages per frame (wire.MAX_FRAME bounds a frame)
NONCE_SIZE = 32
AUTH_TIMEOUT = 10.0  # seconds a peer has to authenticate


MigrationError = WireError  # a migration could not be done: the peer, the network, or what was sent
__all__ = ["Channel", "MigrationError", "PeerGone", "authenticate_as_client", "authenticate_as_server", "connect",
           "parse_address", "read_token"]


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


def authenticate_as_server(ch: Channel, token: bytes, hello: dict[str, Any] | None = None) -> None:
    """The daemon's side; raises MigrationError (after telling the peer) on a bad peer.
    ``hello``: the peer's first message, if the caller already read it."""
    msg = hello if hello is not None else ch.recv(AUTH_TIMEOUT, expect=("hello",))
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


def connect(spec: str, token: bytes, timeout: float = 10.0, what: str = "target") -> Channel:
    """An authenticated connection to the daemon (or gateway) at ``spec``."""
    ch = open_channel(spec, what, timeout)
    try:
        authenticate_as_client(ch, token)
    except BaseException:
        ch.close()
        raise
    return ch
