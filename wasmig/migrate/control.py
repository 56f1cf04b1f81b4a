"""The control socket of a migratable run: how ``wasmig migrate PID --to HOST:PORT`` reaches it.

A run that can migrate listens on the Unix socket ``<runtime dir>/<pid>.sock`` (mode 0600: only
its user can connect). A client sends one JSON line ``{"migrate": {"to": "HOST:PORT", "token":
"<hex>"}}`` and reads JSON lines back: ``{"progress": {...}}`` while it runs, then ``{"done":
{...}}`` (the program has moved; this process ends) or ``{"error": "..."}`` (it goes on here; with
``"stopped": true`` it does not: the migration is in doubt, the program is saved and this process ends).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wasmig.migrate.protocol import MigrationError
from wasmig.session.loop import Session
from wasmig.session.status import RUNTIME_DIR


def socket_path(pid: int) -> Path:
    return RUNTIME_DIR / f"{pid}.sock"


class ControlServer:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.path = socket_path(os.getpid())
        RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(4)
        self._busy = threading.Lock()
        threading.Thread(target=self._accept, name="wasmig-control", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), name="wasmig-migrate", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
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
                    to, token = str(req["to"]), bytes.fromhex(req["token"])
                    precopy = bool(req.get("precopy", True))
                except (ValueError, KeyError, TypeError):
                    send({"error": "malformed request"})
                    return
                if not self._busy.acquire(blocking=False):
                    send({"error": "a migration of this program is already running"})
                    return
                try:
                    migrate(self.session, to, token, precopy=precopy, progress=lambda p: send({"progress": asdict(p)}),
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


def serve_control(session: Session) -> ControlServer:
    return ControlServer(session)


def request_migration(pid: int, to: str, token: bytes, *, precopy: bool = True) -> Iterator[Any]:
    """For ``wasmig migrate PID``: connect to the run's control socket (raising at once if there
    is none) and return an iterator over its messages."""
    path = socket_path(pid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise MigrationError(f"process {pid} is not a migratable wasmig run (no control socket {path}: "
                             f"{e.strerror or e})") from None
    return _messages(pid, sock, to, token, precopy)


def _messages(pid: int, sock: socket.socket, to: str, token: bytes, precopy: bool) -> Iterator[Any]:
    with sock, sock.makefile("rb") as f:
        sock.sendall(json.dumps({"migrate": {"to": to, "token": token.hex(), "precopy": precopy}}).encode() + b"\n")
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                raise MigrationError(f"process {pid}: malformed reply") from None
