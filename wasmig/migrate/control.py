"""The control socket of a migratable run: how ``wasmig migrate PID --to HOST:PORT`` reaches it.

A run that can migrate listens on the Unix socket ``<runtime dir>/<pid>.sock`` (mode 0600, in the
user's private runtime directory: :mod:`wasmig.runtime_dir`). Both ends check who the other is
before anything is said: the run accepts only a client of its own uid (``SO_PEERCRED``), and the
client talks only to a socket file of its own uid whose server runs as its uid. A client sends one
JSON line ``{"migrate": {"to": "HOST:PORT", "peer": "sha256:...", "key_dir": ..., "token_file":
...}}`` -- the target's pinned fingerprint and where this user's key (and, if any, the shared
token's file) lie, never a secret: the run reads them itself -- and reads JSON lines back:
``{"progress": {...}}`` while it runs, then ``{"done": {...}}`` (the program has moved; this
process ends) or ``{"error": "..."}`` (it goes on here; with ``"stopped": true`` it does not: the
migration is in doubt, the program is saved and this process ends).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig.errors import WasmError
from wasmig.runtime_dir import check_socket_owner, peer_uid, runtime_dir

if TYPE_CHECKING:
    from wasmig.session.loop import Session

# The migration code (TLS, keys: ``cryptography``) is imported when a migration is asked for, not
# by serving the socket: every run but a --plain one serves it, and its start-up must stay small.


def socket_path(pid: int, create: bool = False) -> Path:
    return runtime_dir(create) / f"{pid}.sock"


def source_identity(peer: str, key_dir: str | None, token_file: str | None) -> Any:
    """This user's identity for a migration to the target whose fingerprint is ``peer``."""
    from wasmig.keys import load_key_pair, parse_fingerprint
    from wasmig.migrate.channel import Identity, own_key
    from wasmig.migrate.protocol import MigrationError, read_token
    from wasmig.wasi.gateway import current_key

    try:  # the key asked for, else this process's (a daemon's, for the programs it runs), else the user's
        pair = load_key_pair(Path(key_dir)) if key_dir else current_key() or own_key(None)
        token = read_token(token_file) if token_file else None
        return Identity(pair, frozenset({parse_fingerprint(peer)}), token)
    except WasmError as e:
        raise MigrationError(str(e)) from None


class ControlServer:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.path = socket_path(os.getpid(), create=True)
        self.sock = listening_unix_socket(self.path)
        self._busy = threading.Lock()
        threading.Thread(target=self._accept, name="wasmig-control", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if peer_uid(conn) != os.getuid():  # only its own user may move a program
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), name="wasmig-migrate", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        from dataclasses import asdict

        from wasmig.migrate.protocol import MigrationError
        from wasmig.migrate.source import InDoubt, migrate

        def send(obj: dict[str, Any]) -> None:
            try:
                conn.sendall(json.dumps(obj).encode() + b"\n")
            except OSError:
                pass  # the client went away; the migration goes on

        try:
            with conn, conn.makefile("rb") as f:
                line = f.readline(65536)
                try:
                    req = json.loads(line)["migrate"]
                    to, peer = str(req["to"]), str(req["peer"])
                    key_dir, token_file = req.get("key_dir"), req.get("token_file")
                    precopy = bool(req.get("precopy", True))
                    if not all(v is None or isinstance(v, str) for v in (key_dir, token_file)):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    send({"error": "malformed request"})
                    return
                if not self._busy.acquire(blocking=False):
                    send({"error": "a migration of this program is already running"})
                    return
                try:
                    identity = source_identity(peer, key_dir, token_file)
                    migrate(self.session, to, identity, precopy=precopy,
                            progress=lambda p: send({"progress": asdict(p)}),
                            on_done=lambda r: send({"done": {**asdict(r), "summary": r.summary()}}))
                except InDoubt as e:
                    send({"error": str(e), "stopped": True})
                except MigrationError as e:
                    send({"error": str(e)})
                finally:
                    self._busy.release()
        except OSError:  # pragma: no cover - the client vanished mid-request
            pass

    def close(self) -> None:
        """Stop listening; a migration still running (the program just ended under it) gets a
        moment to tell its client why it failed."""
        try:
            self.sock.close()
        finally:
            self.path.unlink(missing_ok=True)
        if self._busy.acquire(timeout=5.0):
            self._busy.release()


def listening_unix_socket(path: Path) -> socket.socket:
    """A Unix socket (mode 0600) that already listens when ``path`` appears: bound under a
    temporary name, then renamed. Bound at ``path`` itself, the file would exist before
    ``listen()``, and a ``wasmig migrate PID`` started as soon as it sees the file (a script, a
    test) could be refused in between -- ECONNREFUSED, "not a migratable wasmig run" -- whenever
    the run is descheduled there on a loaded machine. A stale file at ``path`` is replaced."""
    pending = path.with_name(f".{path.stem}.new")  # no longer than ``path``: AF_UNIX paths are short
    pending.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(pending))
        sock.listen(4)
        os.replace(pending, path)
    except OSError:
        sock.close()
        pending.unlink(missing_ok=True)
        raise
    finally:
        os.umask(old)
    return sock


def serve_control(session: Session) -> ControlServer:
    return ControlServer(session)


def request_migration(pid: int, to: str, peer: str, *, key_dir: str | None = None, token_file: str | None = None,
                      precopy: bool = True) -> Iterator[Any]:
    """For ``wasmig migrate PID``: connect to the run's control socket (raising at once if there
    is none, or if it is not this user's) and return an iterator over its messages."""
    from wasmig.migrate.protocol import MigrationError

    try:
        path = socket_path(pid)
        check_socket_owner(path)
    except WasmError as e:
        raise MigrationError(str(e)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise MigrationError(f"process {pid} is not a migratable wasmig run (no control socket {path}: "
                             f"{e.strerror or e})") from None
    uid = peer_uid(sock)
    if uid != os.getuid():
        sock.close()
        raise MigrationError(f"the control socket {path} is served by uid {uid}, not by you: refusing to talk to it")
    request = {"to": to, "peer": peer, "precopy": precopy,
               "key_dir": str(Path(key_dir).resolve()) if key_dir else None,
               "token_file": str(Path(token_file).resolve()) if token_file else None}
    return _messages(pid, sock, request)


def _messages(pid: int, sock: socket.socket, request: dict[str, Any]) -> Iterator[Any]:
    from wasmig.migrate.protocol import MigrationError

    with sock, sock.makefile("rb") as f:
        try:
            sock.sendall(json.dumps({"migrate": request}).encode() + b"\n")
            for line in f:
                try:
                    message = json.loads(line)
                except ValueError:
                    raise MigrationError(f"process {pid}: malformed reply") from None
                yield message
        except OSError as e:  # the run ended (or died) mid-request: its end may reset the socket
            raise MigrationError(f"process {pid} ended the request without an answer (its control connection "
                                 f"broke: {e.strerror or e})") from None
