"""A TCP server job's socket gateway (:class:`wasmig.migrate.gateway.Gateway`), run as a Ray actor
on the head node, so that the job's clients keep their connections through its moves.

Why an actor on the head rather than a process beside the cluster: the controller starts it with
the job and ends it with the job (nothing for the user to run or to clean up), and the head is the
one node whose loss ends the cluster anyway (it holds the GCS and the controller), so the address
clients connect to lives exactly as long as the fleet. Its public address is the head's (or the
one ``--gateway HOST:PORT`` names); its control address, where the job's runners register and
attach, is on the head's Ray address.

The gateway accepts only runner keys the controller told it to trust (:meth:`GatewayActor.trust`),
each made for one runner (:mod:`wasmig.ray.live`); of those it serves the program's connections
to the key that registered it, or to the target of a move its owner named (the gateway's rule).
"""

from __future__ import annotations

import socket
import threading

from wasmig.migrate.channel import Identity
from wasmig.migrate.gateway import Gateway
from wasmig.ray.live import key_pair, node_address
from wasmig.ray.spec import FleetError


def _bind(address: str) -> socket.socket:
    """A listening socket at ``HOST:PORT`` (an empty HOST: this node's address; port 0: any)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise FleetError(f"bad gateway address {address!r}: expected HOST:PORT")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or node_address(), int(port)))
    except OSError as e:
        sock.close()
        raise FleetError(f"the gateway cannot listen on {address}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


class GatewayActor:
    """One job's gateway: clients on ``listen``, runners on a control port of this node."""

    def __init__(self, listen: str, key_pem: bytes) -> None:
        self._pair = key_pair(key_pem)
        public = _bind(listen)
        try:
            control = _bind(f"{node_address()}:0")
        except BaseException:
            public.close()
            raise
        self._lock = threading.Lock()
        self._gateway = Gateway(public, control, Identity(self._pair, frozenset()))
        self._public, self._control = (":".join(map(str, s.getsockname()[:2])) for s in (public, control))
        threading.Thread(target=self._gateway.serve, name="wasmig-fleet-gateway", daemon=True).start()

    def addresses(self) -> dict[str, str]:
        """Where clients connect (``public``), where runners do (``control``), the key they pin."""
        return {"public": self._public, "control": self._control, "fingerprint": self._pair.fingerprint}

    def trust(self, fingerprint: str) -> None:
        """Accept the runner holding this key (a new runner of the job, before it starts)."""
        self._retrust(lambda keys: keys | {fingerprint})

    def forget(self, fingerprint: str) -> None:
        """No longer accept this key (its runner is gone)."""
        self._retrust(lambda keys: keys - {fingerprint})

    def _retrust(self, change: object) -> None:
        with self._lock:
            old = self._gateway.identity
            # the TLS contexts depend on the key only: kept (a context costs a key file write)
            self._gateway.identity = Identity(old.pair, frozenset(change(old.trusted)),  # type: ignore[operator]
                                              old.token, old._contexts)
