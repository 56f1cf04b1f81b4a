"""Clients of tests/programs/kv_server.c for the tests that move a TCP server through its gateway."""

from __future__ import annotations

import socket
import threading
import time


class Client(threading.Thread):
    """Sends numbered requests (INCR of its own counter) until told to stop, checking that the
    n-th reply is n: a lost or repeated request, or any error, fails it."""

    def __init__(self, address: str, name: str, minimum: int) -> None:
        super().__init__(daemon=True)
        self.address, self.name, self.minimum = address, name, minimum
        self.stop = threading.Event()
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        host, port = self.address.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=60) as s, s.makefile("rb") as f:
                while not self.stop.is_set() or self.sent < self.minimum:
                    s.sendall(f"INCR {self.name}\n".encode())
                    self.sent += 1
                    reply = f.readline().decode()
                    if reply != f"{self.name} {self.sent}\n":
                        self.error = f"request {self.sent}: got {reply!r}"
                        return
                    time.sleep(0.005)
                s.shutdown(socket.SHUT_WR)
                if f.read():
                    self.error = "bytes after the last reply"
        except OSError as e:
            self.error = f"after {self.sent} requests: {e!r}"
