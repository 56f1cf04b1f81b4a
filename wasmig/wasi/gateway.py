"""The guest's side of the socket gateway (``wasmig gateway``, docs/migration.md).

A program run behind a gateway does not listen itself: its listening fd is a *control
connection* to the gateway, which accepts the clients and announces each one there
(``conn {id}``); ``sock_accept`` reads one announcement and opens a *data connection* for it
(``attach {key, id}``), over which the gateway relays the client's bytes both ways. The key is
the capability the gateway issued when the program registered; it travels in snapshots, so a
restored or migrated program re-attaches its listener (``backend {key}``) and every open
connection by itself, under the same fd numbers.

Before a migration stops for good, :func:`quiesce` asks the gateway to stop relaying the client's
bytes and to end each data connection's stream; what was still in flight is then read to the
end into the fd's pending bytes, which the snapshot keeps and the target's reads return first.
The client sees a pause, never a reset.
"""

from __future__ import annotations

import socket

from wasmig.wire import Channel, WireError

TIMEOUT = 10.0


def parse(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise WireError(f"bad gateway address {address!r}")
    return host.strip("[]"), int(port)


def _open(address: str, first: str, **fields: object) -> Channel:
    try:
        sock = socket.create_connection(parse(address), timeout=TIMEOUT)
    except OSError as e:
        raise WireError(f"gateway {address}: cannot connect ({e.strerror or e})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ch = Channel(sock, f"gateway {address}")
    try:
        ch.send(first, **fields)
    except WireError:
        ch.close()
        raise
    return ch


def connect_listener(address: str, key: bytes) -> socket.socket:
    """The listening fd's control connection: announcements of new clients arrive on it."""
    ch = _open(address, "backend", key=key)
    try:
        ch.recv(TIMEOUT, expect=("backend_ok",))
    except WireError:
        ch.close()
        raise
    ch.sock.settimeout(None)
    return ch.sock


def next_connection(listener: socket.socket, address: str) -> int:
    """Read the next announcement (the control connection is readable); its connection id."""
    msg = Channel(listener, f"gateway {address}").recv(TIMEOUT, expect=("conn",))
    listener.settimeout(None)
    conn = msg.get("id")
    if not isinstance(conn, int):
        raise WireError(f"gateway {address}: malformed announcement")
    return conn


def attach(address: str, key: bytes, conn: int) -> socket.socket:
    """A data connection for client connection ``conn``: the client's bytes from here on."""
    ch = _open(address, "attach", key=key, id=conn)
    try:
        ch.recv(TIMEOUT, expect=("attached",))
    except WireError:
        ch.close()
        raise
    ch.sock.settimeout(None)
    return ch.sock


def quiesce(address: str, key: bytes, conns: list[int]) -> None:
    """Ask the gateway to stop relaying these connections' client bytes and end their data
    streams (the caller then reads each to its end)."""
    ch = _open(address, "quiesce", key=key, ids=conns)
    try:
        ch.recv(TIMEOUT, expect=("quiesced",))
    finally:
        ch.close()


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
