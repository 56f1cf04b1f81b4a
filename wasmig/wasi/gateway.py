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

from wasmig.wire import Channel, WireError, open_channel

TIMEOUT = 10.0


def _request(address: str, first: str, reply: str, **fields: object) -> Channel:
    """A new connection to the gateway: ``first`` sent, ``reply`` received (closed on failure)."""
    ch = open_channel(address, "gateway", TIMEOUT)
    try:
        ch.send(first, **fields)
        ch.recv(TIMEOUT, expect=(reply,))
    except WireError:
        ch.close()
        raise
    ch.sock.settimeout(None)
    return ch


def connect_listener(address: str, key: bytes) -> socket.socket:
    """The listening fd's control connection: announcements of new clients arrive on it."""
    return _request(address, "backend", "backend_ok", key=key).sock


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
    return _request(address, "attach", "attached", key=key, id=conn).sock


def quiesce(address: str, key: bytes, conns: list[int]) -> None:
    """Ask the gateway to stop relaying these connections' client bytes and end their data
    streams (the caller then reads each to its end)."""
    _request(address, "quiesce", "quiesced", key=key, ids=conns).close()


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
