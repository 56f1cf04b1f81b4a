"""``wasmig gateway``: fronts a program's listening socket so its TCP connections survive a migration.

Clients connect to the gateway's public address. The program (its *backend*) holds a control
connection to the gateway's control address; each client is announced there and the program
opens a data connection for it, over which the gateway relays bytes both ways. When the program
moves, the source asks the gateway to *quiesce* its connections: the gateway stops relaying the
clients' bytes (leaving them in the clients' sockets), waits for any send in progress, and ends
each data stream; the source reads every in-flight byte into its snapshot. The target
re-registers as the backend (``backend``) and re-attaches each connection by id (``attach``);
the gateway relays again. Clients see a pause, never a reset. Clients that connect meanwhile
wait, announced to the next backend. See docs/migration.md for the messages.

Every control connection is the migration protocol's TLS with pinned keys: the gateway accepts
only the keys it trusts (``--trust-peer``), and of those it serves the program's connections only
to the key that registered it -- its *owner* -- or, once the owner's ``quiesce`` named a migration
target (``handover``), to that target's key, which becomes the owner when it takes them over. No
bearer key travels. Bounds: a few connections at most in their handshake, a cap on clients, and
no buffering: a client's bytes stay in its socket while nobody relays them (TCP's backpressure),
at most one read (64 KiB) per client is held by the gateway.
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

from wasmig import fdwait
from wasmig.migrate.channel import Identity, peer_fingerprint
from wasmig.migrate.protocol import accept
from wasmig.wasi.gateway import end_tls
from wasmig.wire import Channel, WireError

#: control connections at most still in their handshake; more are closed at once
MAX_UNAUTHENTICATED = 16
MAX_CLIENTS = 1024  # client connections at most; more are closed at once
RELAY_CHUNK = 1 << 16  # the most of a client's bytes the gateway holds at a time


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
        self.buffer = bytearray()  # client bytes read as a quiesce began (one read at most), not yet relayed
        self.client_eof = False
        self.cond = threading.Condition()


class Gateway:
    def __init__(self, public: socket.socket, control: socket.socket, identity: Identity,
                 max_clients: int = MAX_CLIENTS, max_unauthenticated: int = MAX_UNAUTHENTICATED) -> None:
        self.public = public
        self.control = control
        self.identity = identity
        self.conns: dict[int, _Conn] = {}
        self.next_id = 1
        self.backend: Channel | None = None
        self.owner: str | None = None  # the key the program's connections belong to
        self.next_owner: str | None = None  # a migration's target, named by the owner's quiesce
        self.lock = threading.Lock()
        self.announcing = threading.Lock()
        self.max_clients = max_clients
        self.handshakes = threading.BoundedSemaphore(max_unauthenticated)
        identity.context(server=True)  # made once, before any connection

    def serve(self) -> None:
        threading.Thread(target=self._accept_clients, name="gateway-clients", daemon=True).start()
        while True:
            conn, addr = self.control.accept()
            peer = f"{addr[0]}:{addr[1]}"
            if not self.handshakes.acquire(blocking=False):
                log(f"{peer}: refused: too many control connections are still authenticating")
                conn.close()
                continue
            threading.Thread(target=self._control, args=(conn, peer), daemon=True).start()

    # --- clients ------------------------------------------------------------------------------
    def _accept_clients(self) -> None:
        while True:
            client, _ = self.public.accept()
            with self.lock:
                live = sum(1 for c in self.conns.values() if c.state != "closed")
            if live >= self.max_clients:
                client.close()  # a flood of clients costs a file descriptor each, briefly
                continue
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
        with self.announcing:  # one TLS writer at a time
            _send_conns(backend, conns)

    def _client_to_program(self, c: _Conn) -> None:
        while True:
            with c.cond:
                while (c.paused or c.data is None) and c.state != "closed":
                    c.cond.wait()  # leave the client's bytes in its socket until someone relays them
                if c.state == "closed":
                    return
            try:
                data = c.client.recv(RELAY_CHUNK)
            except OSError:
                data = b""
            with c.cond:
                if not data:
                    c.client_eof = True
                    if c.data is not None and not c.paused:
                        _shutdown(c.data, socket.SHUT_WR)
                    return
                if c.data is None or c.paused:  # a quiesce began while it read: hold this one read
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
        try:
            ch = accept(sock, self.identity, f"backend {peer}")
        except WireError as e:
            log(f"rejected {e}")
            return
        finally:
            self.handshakes.release()
        key = peer_fingerprint(ch.sock)  # type: ignore[arg-type]
        try:
            msg = ch.recv(10.0, expect=("register", "backend", "attach", "quiesce"))
            if msg["t"] == "register":
                self._register(ch, key, peer)
            elif not self._may_serve(key, take_over=msg["t"] != "quiesce"):
                ch.error("this key does not own the program behind this gateway")
                log(f"rejected {peer}: key {key} does not own the program")
            elif msg["t"] == "backend":
                self._backend(ch)
            elif msg["t"] == "attach":
                self._attach(ch, msg, peer)
                return  # the socket is the connection's now
            else:
                self._quiesce(ch, msg)
        except WireError as e:
            log(f"{peer}: {e}")
        ch.close()

    def _register(self, ch: Channel, key: str, peer: str) -> None:
        """The program starts here: its key owns its connections. Another key's program, still
        connected as the backend, is not taken over."""
        with self.lock:
            if self.owner not in (None, key) and self.backend is not None:
                ch.error("another program is registered with this gateway and still runs")
                log(f"rejected {peer}: a program of key {self.owner} still runs behind this gateway")
                return
            self.owner, self.next_owner = key, None
        ch.send("registered")
        log(f"program registered from {peer} (key {key})")

    def _may_serve(self, key: str, *, take_over: bool) -> bool:
        """Whether ``key`` may act on the program's connections: its owner, or the migration
        target the owner named (which then becomes the owner, when ``take_over``)."""
        with self.lock:
            if key == self.owner:
                return True
            if key == self.next_owner and take_over:
                self.owner, self.next_owner = key, None
                return True
            return False

    def _backend(self, ch: Channel) -> None:
        try:
            # ``backend_ok`` goes first, then the clients that waited: a client accepted meanwhile
            # sees the new backend at once, and its announcement waits for ``announcing`` -- sent
            # before ``backend_ok``, it failed the program's start ("expected backend_ok, got 'conn'")
            with self.announcing:
                with self.lock:
                    self.backend = ch
                    waiting = [c for c in self.conns.values() if c.state == "new"]
                ch.send("backend_ok")
                _send_conns(ch, sorted(waiting, key=lambda c: c.id))
            # nothing is expected from it: readable means it went away (its TLS close, or the TCP end);
            # never a TLS read here, which would race the announcements' writes on the same TLS state
            try:
                fdwait.wait([ch.sock], [], None)
            except (OSError, ValueError):
                pass
        finally:
            with self.lock:
                if self.backend is ch:
                    self.backend = None

    def _attach(self, ch: Channel, msg: dict[str, Any], peer: str) -> None:
        with self.lock:
            c = self.conns.get(msg.get("id")) if isinstance(msg.get("id"), int) else None
        if c is None or c.state == "closed":
            ch.error("no such connection")
            ch.close()
            return
        ch.send("attached")
        try:
            data = end_tls(ch.sock, peer)  # authenticated: the client's bytes go as they came
        except WireError as e:
            log(f"{peer}: {e}")
            return
        with c.cond:
            if c.data is not None:
                _shutdown(c.data, socket.SHUT_RDWR)
            c.data, c.state, c.paused = data, "attached", False
            pending, c.buffer = bytes(c.buffer), bytearray()
            try:
                if pending:
                    data.sendall(pending)
                if c.client_eof:
                    _shutdown(data, socket.SHUT_WR)
            except OSError:
                pass
            c.cond.notify_all()
        threading.Thread(target=self._program_to_client, args=(c, data), daemon=True).start()

    def _quiesce(self, ch: Channel, msg: dict[str, Any]) -> None:
        ids, handover = msg.get("ids"), msg.get("handover")
        if not isinstance(ids, list) or not (handover is None or isinstance(handover, str)):
            raise WireError("malformed quiesce request")
        if handover is not None and handover not in self.identity.trusted:
            ch.error(f"the migration's target key {handover} is not one this gateway trusts (--trust-peer)")
            raise WireError(f"a handover to the untrusted key {handover} refused")
        with self.lock:
            self.next_owner = handover
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


def _send_conns(backend: Channel, conns: list[_Conn]) -> None:
    """Announce ``conns`` to the program (the caller holds ``Gateway.announcing``)."""
    try:
        for c in conns:
            backend.send("conn", id=c.id)
    except WireError:
        pass  # the backend is gone: the next one gets them
