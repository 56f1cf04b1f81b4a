"""The guest's side of the socket gateway (``wasmig gateway``, docs/migration.md).

A program run behind a gateway does not listen itself: its listening fd is a *control
connection* to the gateway, which accepts the clients and announces each one there
(``conn {id}``); ``sock_accept`` reads one announcement and opens a *data connection* for it
(``attach {id}``), over which the gateway relays the client's bytes both ways.

Every connection to the gateway is the migration protocol's TLS with pinned keys
(:mod:`wasmig.migrate.protocol`): this process proves its key (:func:`use_key`: the user's, or a
daemon's), and pins the gateway's, whose sha256 digest the fd keeps (``gateway_key``: no secret,
it travels in snapshots so that a restored or migrated program re-attaches its listener and
every open connection by itself, under the same fd numbers). The gateway serves only the key
that registered the program -- and, after a migration's :func:`quiesce` named it, the target's.
A data connection is TLS until ``attached``, then both sides end TLS and the client's bytes go
as they came from the client (the gateway's public side is plain TCP too).

Before a migration stops for good, :func:`quiesce` asks the gateway to stop relaying the client's
bytes and to end each data connection's stream; what was still in flight is then read to the
end into the fd's pending bytes, which the snapshot keeps and the target's reads return first.
The client sees a pause, never a reset.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from wasmig.wire import Channel, WireError

if TYPE_CHECKING:  # every WASI program imports this module; few talk to a gateway (no TLS, no keys loaded)
    from wasmig.keys import KeyPair

TIMEOUT = 10.0
_key: KeyPair | None = None


def use_key(pair: KeyPair) -> None:
    """The key this process shows the gateway (a daemon's own; by default the user's)."""
    global _key
    _key = pair


def current_key() -> KeyPair | None:
    """The key :func:`use_key` set in this process, if any."""
    return _key


def _identity(gateway_key: bytes) -> object:
    from wasmig.keys import KeyFileError, load_key_pair
    from wasmig.migrate.channel import Identity

    global _key
    if _key is None:
        try:
            _key = load_key_pair()
        except KeyFileError as e:
            raise WireError(f"no key to show the gateway: {e}") from None
    if len(gateway_key) != 32:
        raise WireError("the gateway's key is unknown (a snapshot from before pinned gateways)")
    return Identity(_key, frozenset({fingerprint_of_digest(gateway_key)}))


def fingerprint_of_digest(digest: bytes) -> str:
    """``sha256:<hex>`` of a fingerprint kept as its 32 raw digest bytes."""
    return "sha256:" + digest.hex()


def digest_of_fingerprint(fingerprint: str) -> bytes:
    """The inverse of :func:`fingerprint_of_digest`."""
    return bytes.fromhex(fingerprint.removeprefix("sha256:"))


def _request(address: str, gateway_key: bytes, first: str, reply: str, **fields: object) -> Channel:
    """A new authenticated connection to the gateway: ``first`` sent, ``reply`` received (closed on failure)."""
    from wasmig.migrate.protocol import connect

    ch = connect(address, _identity(gateway_key), TIMEOUT, what="gateway")  # type: ignore[arg-type]
    try:
        ch.send(first, **fields)
        ch.recv(TIMEOUT, expect=(reply,))
    except WireError:
        ch.close()
        raise
    ch.sock.settimeout(None)
    return ch


def register(address: str, gateway_fingerprint: str) -> bytes:
    """Register this program with the gateway at ``address`` (its control address), pinned to
    ``gateway_fingerprint``; what its fds keep (the gateway key's digest)."""
    key = digest_of_fingerprint(gateway_fingerprint)
    _request(address, key, "register", "registered").close()
    return key


def connect_listener(address: str, gateway_key: bytes) -> socket.socket:
    """The listening fd's control connection: announcements of new clients arrive on it (TLS:
    one frame per record, and no read-ahead, so the socket's readiness is the frames')."""
    return _request(address, gateway_key, "backend", "backend_ok").sock


def next_connection(listener: socket.socket, address: str) -> int:
    """Read the next announcement (the control connection is readable); its connection id."""
    msg = Channel(listener, f"gateway {address}").recv(TIMEOUT, expect=("conn",))
    listener.settimeout(None)
    conn = msg.get("id")
    if not isinstance(conn, int):
        raise WireError(f"gateway {address}: malformed announcement")
    return conn


def attach(address: str, gateway_key: bytes, conn: int) -> socket.socket:
    """A data connection for client connection ``conn``: the client's bytes from here on."""
    tls = _request(address, gateway_key, "attach", "attached", id=conn).sock
    return end_tls(tls, address)


def end_tls(tls: socket.socket, address: str) -> socket.socket:
    """The plain socket under an authenticated TLS connection (both sides end TLS in turn)."""
    import ssl

    try:
        tls.settimeout(TIMEOUT)
        raw = tls.unwrap() if isinstance(tls, ssl.SSLSocket) else tls
    except (ssl.SSLError, OSError) as e:
        tls.close()
        raise WireError(f"gateway {address}: the data connection broke ({e})") from None
    raw.settimeout(None)
    return raw


def quiesce(address: str, gateway_key: bytes, conns: list[int], handover: str | None = None) -> None:
    """Ask the gateway to stop relaying these connections' client bytes and end their data
    streams (the caller then reads each to its end); ``handover``: the fingerprint of the
    migration's target, which may take the program's connections over from then on."""
    _request(address, gateway_key, "quiesce", "quiesced", ids=conns, handover=handover).close()


def drain(sock: socket.socket) -> bytes:
    """Everything still in flight on a quiesced data connection, up to the gateway's end of stream."""
    sock.settimeout(TIMEOUT)
    chunks = []
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        raise WireError("the gateway did not end a quiesced connection") from None
    return b"".join(chunks)


