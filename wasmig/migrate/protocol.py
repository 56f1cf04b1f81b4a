"""The migration wire protocol: messages and mutual authentication (docs/migration.md), over
the frames of :mod:`wasmig.wire`, inside TLS 1.3 with pinned keys (:mod:`wasmig.migrate.channel`).

A connection opens with one small plaintext frame each way (``hello``: protocol and version, so
that a peer of another version, or not wasmig at all, is named as such), then TLS: both sides
present a certificate for their Ed25519 key and each checks the other's key fingerprint against
the ones it trusts. Inside TLS, the server's ``challenge`` and the client's ``auth`` carry fresh
nonces; with a shared token (optional, a second factor) both prove they hold it by an HMAC over
both keys' fingerprints and both nonces -- never the token itself, and bound to this TLS session's
two keys, so it cannot be relayed to another peer. Before authentication a frame is at most
:data:`~wasmig.wire.PREAUTH_FRAME` bytes and the whole handshake has :data:`HANDSHAKE_TIMEOUT`
seconds (not per read): an unauthenticated peer gets one ``error`` frame and is disconnected.
"""

from __future__ import annotations

import hmac
import secrets
import socket
from hashlib import sha256
from pathlib import Path
from typing import Any

from wasmig.migrate.channel import ChannelError, Identity, Watchdog, peer_fingerprint, secure
from wasmig.wire import MAX_FRAME, PREAUTH_FRAME, Channel, PeerGone, WireError, open_channel, parse_address

PROTOCOL = "wasmig-migrate"
#: 2: ``prepared`` means the program resumed on the target (held until the commit), and ``status``
#: says what became of a committed program; 3: TLS 1.3 with pinned keys, the token optional and
#: bound to both keys
VERSION = 3
PAGE_BATCH = 4 << 20  # bytes of pages per frame (wire.MAX_FRAME bounds a frame)
NONCE_SIZE = 32
HANDSHAKE_TIMEOUT = 10.0  # seconds a peer has for the whole handshake, TLS included


MigrationError = WireError  # a migration could not be done: the peer, the network, or what was sent
__all__ = ["Channel", "ChannelError", "Identity", "MigrationError", "PeerGone", "accept", "authenticate_as_client",
           "connect",
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


def _mac(token: bytes, role: bytes, binding: bytes) -> bytes:
    return hmac.new(token, b"wasmig-migrate-v3 " + role + b" " + binding, sha256).digest()


def _binding(server_fp: str, client_fp: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the token's HMACs cover: both TLS keys and both fresh nonces (``ssl`` of Python 3.11
    has no TLS exporter, so this stands in for a channel binding: a MAC made for one pair of keys
    is worthless on a connection between any other two)."""
    return f"{server_fp} {client_fp} ".encode() + server_nonce + client_nonce


def _field(msg: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = msg.get(name)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise MigrationError(f"malformed {msg.get('t')} message: bad {name}")
    return value


def connect(spec: str, identity: Identity, timeout: float = 10.0, what: str = "target") -> Channel:
    """An authenticated connection to the daemon (or gateway) at ``spec``, whose key must be one
    ``identity`` trusts (the client pins its server)."""
    ch = open_channel(spec, what, timeout)
    try:
        authenticate_as_client(ch, identity, timeout)
    except BaseException:
        ch.close()
        raise
    return ch


def authenticate_as_client(ch: Channel, identity: Identity, timeout: float = 10.0) -> None:
    """The client's side of the handshake on a connected channel (its socket becomes the TLS one)."""
    ch.max_frame = PREAUTH_FRAME  # the server is a stranger until it proved its key
    ch.send("hello", protocol=PROTOCOL, version=VERSION)
    hello = ch.recv(timeout, expect=("hello",))  # a refusal (another version) arrives as its error
    if hello.get("protocol") != PROTOCOL or hello.get("version") != VERSION:  # a peer that did not refuse
        raise MigrationError(f"{ch.peer}: unsupported protocol version {hello.get('version')!r} (this wasmig "
                             f"speaks {VERSION})")
    ch.sock = secure(ch.sock, identity, server=False, peer=ch.peer, timeout=timeout)
    msg = ch.recv(timeout, expect=("challenge",))
    server_nonce, wants_token = _field(msg, "nonce", NONCE_SIZE), msg.get("token") is True
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    binding = _binding(peer_fingerprint(ch.sock), identity.fingerprint, server_nonce, client_nonce)
    if wants_token and identity.token is None:
        raise MigrationError(f"{ch.peer}: it also requires the shared token (give its --token-file)")
    if identity.token is not None and not wants_token:
        raise MigrationError(f"{ch.peer}: it does not use a shared token, but one was given (drop the token "
                             "file, or give the peer the same one)")
    mac = _mac(identity.token, b"client", binding) if identity.token is not None else None
    ch.send("auth", nonce=client_nonce, mac=mac)
    msg = ch.recv(timeout, expect=("welcome",))
    if identity.token is not None and not hmac.compare_digest(_field(msg, "mac"),
                                                              _mac(identity.token, b"server", binding)):
        raise MigrationError(f"{ch.peer}: it does not know the token")
    ch.max_frame = MAX_FRAME


def accept(sock: socket.socket, identity: Identity, peer: str) -> Channel:
    """The server's side of the handshake on an accepted connection; the authenticated channel.
    Raises MigrationError (after telling the peer, as far as it can) on a bad peer, and on one
    that has not finished within :data:`HANDSHAKE_TIMEOUT` seconds in all."""
    ch = Channel(sock, peer)
    ch.max_frame = PREAUTH_FRAME
    watchdog = Watchdog(sock, HANDSHAKE_TIMEOUT)
    try:
        _server_handshake(ch, identity)
    except WireError as e:
        ch.close()
        if watchdog.expired:
            raise MigrationError(f"{peer}: did not authenticate within {HANDSHAKE_TIMEOUT:g} s") from None
        raise MigrationError(str(e)) from None
    finally:
        watchdog.cancel()
    if watchdog.expired:  # it expired just as the handshake ended: the socket is shut down
        ch.close()
        raise MigrationError(f"{peer}: did not authenticate within {HANDSHAKE_TIMEOUT:g} s")
    ch.max_frame = MAX_FRAME
    return ch


def _server_handshake(ch: Channel, identity: Identity) -> None:
    msg = ch.recv(HANDSHAKE_TIMEOUT, expect=("hello",))
    if msg.get("protocol") != PROTOCOL or msg.get("version") != VERSION:
        ch.error(f"unsupported protocol {msg.get('protocol')!r} version {msg.get('version')!r} "
                 f"(this peer speaks {PROTOCOL} {VERSION})")
        raise MigrationError(f"{ch.peer}: unsupported protocol version {msg.get('version')!r}")
    ch.send("hello", protocol=PROTOCOL, version=VERSION)
    ch.sock = secure(ch.sock, identity, server=True, peer=ch.peer, timeout=HANDSHAKE_TIMEOUT)
    server_nonce = secrets.token_bytes(NONCE_SIZE)
    ch.send("challenge", nonce=server_nonce, token=identity.token is not None)
    msg = ch.recv(HANDSHAKE_TIMEOUT, expect=("auth",))
    binding = _binding(identity.fingerprint, peer_fingerprint(ch.sock), server_nonce,
                       _field(msg, "nonce", NONCE_SIZE))
    if identity.token is not None:
        mac = msg.get("mac")
        if not isinstance(mac, bytes) or not hmac.compare_digest(mac, _mac(identity.token, b"client", binding)):
            ch.error("authentication failed")
            raise MigrationError(f"{ch.peer}: authentication failed (wrong or no token)")
    ch.send("welcome", mac=_mac(identity.token, b"server", binding) if identity.token is not None else None)
