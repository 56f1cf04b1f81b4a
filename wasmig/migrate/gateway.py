"""``wasmig gateway``: fronts a program's listening socket so its TCP connections survive a migration.

Clients connect to the gateway's public address. The program (its *backend*) holds a control
connection to the gateway's control address; each client is announced there and the program
opens a data connection for it, over which the gateway relays bytes both ways. When the program
moves, the source asks the gateway to *quiesce* its connections: the gateway stops relaying the
clients' bytes (buffering what arrives, then leaving it in the clients' sockets), waits for any
send in progress, and ends each data stream; the source reads every in-flight byte into its
snapshot. The target re-registers with the capability key the gateway issued (``backend``) and
re-attaches each connection by id (``attach``); the gateway sends it the bytes it buffered and
relays again. Clients see a pause, never a reset. Clients that connect meanwhile wait, announced
to the next backend. See docs/migration.md for the messages.

Registration needs the shared token (the migration protocol's HMAC handshake, then
``register``); everything after it needs the key, which only the program (and its snapshots)
holds.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import sys
import threading
from typing import Any

from wasmig.migrate.protocol import authenticate_as_server
from wasmig.wire import Channel, WireError


def log(message: str) -> None:
    print(f"wasmig gateway: {message}", file=sys.stderr, flush=True)


class _Conn:
    """One client connection and the data connection it is relayed over (if attached)."""

    def __init__(self, conn_id: int, client: socket.socket) -> None:
        self.id = conn_id
        self.client = client
        self.data: socket.socket | None = None
        self.state = "new"  # new (never attached), attached, quiesced (waits for its program), closed
        self.paused = False
        self.sending = False
        self.buffer = bytearray()  # client bytes not yet relayed
        self.client_eof = False
        self.cond = threading.Condition()


class Gateway:
    def __init__(self, public: socket.socket, control: socket.socket, token: bytes) -> None:
        self.public = public
        self.control = control
        self.token = token
        self.key = secrets.token_bytes(32)
        self.conns: dict[int, _Conn] = {}
        self.next_id = 1
        self.backend: Channel | None = None
        self.lock = threading.Lock()

    def serve(self) -> None:
        threading.Thread(target=self._accept_clients, name="gateway-clients", daemon=True).start()
        while True:
            conn, addr = self.control.accept()
            threading.Thread(target=self._control, args=(conn, f"{addr[0]}:{addr[1]}"), daemon=True).start()

    # --- clients ------------------------------------------------------------------------------
    def _accept_clients(self) -> None:
        while True:
            client, _ = self.public.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                c = _Conn(self.next_id, client)
                self.next_id += 1
                self.conns[c.id] = c
                backend = self.backend
            threading.Thread(target=self._client_to_program, args=(c,), daemon=True).start()
            if backend is not None:
                self._announce(backend, [c])

    def _announce(self, backend: Channel, conns: list[_Conn]) -> None:
        try:
            for c in conns:
                backend.send("conn", id=c.id)
        except WireError:
            pass  # the backend is gone: the next one gets them

    def _client_to_program(self, c: _Conn) -> None:
        while True:
            with c.cond:
                while c.paused and c.state != "closed":
                    c.cond.wait()  # leave the client's bytes in its socket while the program moves
                if c.state == "closed":
                    return
            try:
                data = c.client.recv(1 << 16)
            except OSError:
                data = b""
            with c.cond:
                if not data:
                    c.client_eof = True
                    if c.data is not None and not c.paused:
                        _shutdown(c.data, socket.SHUT_WR)
                    return
                if c.data is None or c.paused:
                    c.buffer += data
                    continue
                c.sending = True
                target = c.data
            try:
                target.sendall(data)
            except OSError:
                pass
            with c.cond:
                c.sending = False
                c.cond.notify_all()

    def _program_to_client(self, c: _Conn, data_sock: socket.socket) -> None:
        while True:
            try:
                chunk = data_sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            try:
                c.client.sendall(chunk)
            except OSError:
                break
        with c.cond:
            if c.data is data_sock:
                c.data = None
                if c.paused:  # its program is moving: keep the client, wait for the re-attach
                    c.state = "quiesced"
                else:  # the program ended its side: so does the client's
                    _shutdown(c.client, socket.SHUT_WR)
                    if c.client_eof:
                        c.state = "closed"
                        c.client.close()
                    c.cond.notify_all()
        data_sock.close()

    # --- the program's side ---------------------------------------------------------------------
    def _control(self, sock: socket.socket, peer: str) -> None:
        ch = Channel(sock, f"backend {peer}")
        try:
            msg = ch.recv(10.0, expect=("hello", "backend", "attach", "quiesce"))
            if msg["t"] == "hello":
                authenticate_as_server(ch, self.token, hello=msg)
                ch.recv(10.0, expect=("register",))
                ch.send("registered", key=self.key)
                log(f"program registered from {peer}")
                return
            if not isinstance(msg.get("key"), bytes) or not hmac.compare_digest(msg["key"], self.key):
                ch.error("bad key")
                log(f"rejected {peer}: bad key")
                return
            if msg["t"] == "backend":
                self._backend(ch)
            elif msg["t"] == "attach":
                self._attach(ch, msg)
                return  # the socket is the connection's now
            else:
                self._quiesce(ch, msg)
        except WireError as e:
            log(f"{peer}: {e}")
        ch.close()

    def _backend(self, ch: Channel) -> None:
        with self.lock:
            self.backend = ch
            waiting = [c for c in self.conns.values() if c.state == "new"]
        ch.send("backend_ok")
        self._announce(ch, sorted(waiting, key=lambda c: c.id))
        try:
            while True:
                ch.recv(None)  # nothing is expected: this only notices the program going away
        except WireError:
            pass
        with self.lock:
            if self.backend is ch:
                self.backend = None

    def _attach(self, ch: Channel, msg: dict[str, Any]) -> None:
        with self.lock:
            c = self.conns.get(msg.get("id")) if isinstance(msg.get("id"), int) else None
        if c is None or c.state == "closed":
            ch.error("no such connection")
            ch.close()
            return
        with c.cond:
            if c.data is not None:
                _shutdown(c.data, socket.SHUT_RDWR)
            ch.send("attached")
            c.data, c.state, c.paused = ch.sock, "attached", False
            pending, c.buffer = bytes(c.buffer), bytearray()
            try:
                if pending:
                    ch.sock.sendall(pending)
                if c.client_eof:
                    _shutdown(ch.sock, socket.SHUT_WR)
            except OSError:
                pass
            c.cond.notify_all()
        threading.Thread(target=self._program_to_client, args=(c, ch.sock), daemon=True).start()

    def _quiesce(self, ch: Channel, msg: dict[str, Any]) -> None:
        ids = msg.get("ids")
        if not isinstance(ids, list):
            raise WireError("malformed quiesce request")
        for conn_id in ids:
            with self.lock:
                c = self.conns.get(conn_id) if isinstance(conn_id, int) else None
            if c is None:
                continue
            with c.cond:
                c.paused = True
                while c.sending:
                    c.cond.wait()
                if c.data is not None:
                    _shutdown(c.data, socket.SHUT_WR)
        ch.send("quiesced")


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def register(address: str, token: bytes) -> bytes:
    """Register a program with the gateway at ``address`` (its control address); the key."""
    from wasmig.migrate.protocol import connect

    ch = connect(address, token, what="gateway")
    try:
        ch.send("register")
        key = ch.recv(10.0, expect=("registered",)).get("key")
    finally:
        ch.close()
    if not isinstance(key, bytes):
        raise WireError(f"gateway {address}: malformed registration")
    return key
