"""Connecting to a Ray cluster and to the fleet's controller, for ``wasmig cluster`` and the tests.

Where the cluster is: ``--address``, else ``RAY_ADDRESS``, else the address the newest local cluster
recorded (``/tmp/ray/ray_current_cluster``, as ``ray.init("auto")`` reads it). Its GCS port is
tried first (2 s), so no cluster is one line at once, not Ray's minutes of retries.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from wasmig.ray.spec import FleetError

T = TypeVar("T")
RAY_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: the resource Ray gives the head node only (its documented way to place work there)
HEAD_RESOURCE = "node:__internal_head__"


def resolve_address(address: str | None) -> str:
    """``HOST:PORT`` of the cluster's GCS (see the module docstring); a FleetError if none is known."""
    if address in (None, "", "auto"):
        address = os.environ.get("RAY_ADDRESS") or None
    if address in (None, "", "auto"):
        try:
            address = RAY_ADDRESS_FILE.read_text().strip() or None
        except OSError:
            address = None
    if address is None:
        raise FleetError("no Ray cluster found: start one (`ray start --head`) or give --address HOST:PORT")
    address = address.removeprefix("ray://") if address.startswith("ray://") else address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FleetError(f"bad Ray address {address!r}: expected HOST:PORT")
    return address


def probe(address: str, timeout: float = 2.0) -> None:
    """A FleetError unless something listens at ``address``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise FleetError(f"no Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: str | None) -> None:
    """Join the cluster (namespace ``wasmig``) as a driver, quietly."""
    resolved = resolve_address(address)
    probe(resolved)
    loopback = resolved.rpartition(":")[0].strip("[]") in LOOPBACK
    if loopback:
        # Ray turns a loopback address into the machine's own address before it connects, unless
        # "clusters" are disabled (its switch for one-machine use); a cluster bound to 127.0.0.1
        # listens on no other address, so keep the loopback one. Ray reads the switch when it is
        # imported (and its workers inherit it from here)...
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import logging

    try:
        import ray
    except ImportError:
        raise FleetError("Ray is not installed here: pip install 'wasmig[ray]'") from None

    from ray._private import ray_constants

    if loopback:
        # ...and looks it up in its constants at each address lookup: when Ray was imported before
        # (by the caller), set it there, or Ray would retry the wrong address for minutes
        ray_constants.ENABLE_RAY_CLUSTER = False
    # A driver would install Ray's crash reporter (absl's failure signal handler) for SIGSEGV,
    # SIGILL and SIGFPE over wasmtime's, which turns those faults in wasm code into wasm traps:
    # once this process had made a wasmtime engine, any such trap (`unreachable`, an access out of
    # bounds) would kill it instead (issue 20's crash of a pytest worker; engines/trap_signals.py).
    # Ray's own switch for the JVM's handlers, read when the driver connects.
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True

    from wasmig.ray.controller import NAMESPACE

    if not ray.is_initialized():
        ray.init(address=resolved, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)
        # The driver also enables faulthandler when it is off, which replaces wasmtime's handlers
        # just the same: put them back (if this process made a wasmtime engine before).
        from wasmig.engines import trap_signals as signals

        signals.restore()
    check_cluster_encrypted(ray.nodes(), os.environ)


def check_cluster_encrypted(nodes: list[dict[str, Any]], environ: Mapping[str, str]) -> None:
    """Nothing crosses a network in clear: jobs' modules, arguments and logs travel in Ray's own
    messages, which Ray encrypts only with its TLS on (``RAY_USE_TLS=1`` and its certificates on
    every node). A cluster of more than this machine's loopback without it is refused, in one line."""
    if environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    for node in nodes:
        address = str(node.get("NodeManagerAddress", ""))
        if address.strip("[]") not in LOOPBACK:
            raise FleetError(f"the cluster has a node at {address} and Ray's TLS is off: jobs would cross the "
                             "network in clear; start every node with RAY_USE_TLS=1 and its certificates "
                             "(docs/fleet.md, Security)")


def controller(create: bool = True) -> Any:
    """The controller actor's handle; made (detached, pinned to the head node) if ``create``
    and there is none yet. The head, because the cluster does not outlive it anyway (it holds the
    GCS): a worker node's loss must not take the job table with it. (Not "this driver's node": a
    driver on a machine with several nodes attaches to any of them.)"""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from wasmig.ray import table
    from wasmig.ray.controller import CONTROLLER_NAME, NAMESPACE, Controller

    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:  # none yet, or it died: one that saved a table is made again, and reads it
        if not create and not table.saved():
            raise FleetError("no wasmig jobs on this cluster yet (nothing was submitted)") from None
    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in (n.get("Resources") or {})]
    # strictly the head (a soft choice was seen landing on a worker of a loaded machine); a cluster
    # whose head is not known (never so far) gets this driver's node, softly
    home = NodeAffinitySchedulingStrategy(heads[0], soft=False) if heads else \
        NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(Controller).options(
        # max_restarts: Ray makes it again if its process dies (it reads the saved table back)
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_concurrency=64,
        max_restarts=-1,
        num_cpus=0, scheduling_strategy=home,
    ).remote()


def call(method: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """``ray.get(method.remote(*args))``, the controller's refusals as a FleetError of one line."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    try:
        return ray.get(method.remote(*args), timeout=timeout)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, FleetError):
            raise FleetError(str(cause)) from None
        raise FleetError(f"the fleet controller failed: {str(cause or e).strip().splitlines()[-1]}") from None
    except RayActorError as e:
        raise FleetError(f"the fleet controller is gone: {str(e).strip().splitlines()[0]}") from None
    except GetTimeoutError:
        raise FleetError(f"no answer from the fleet controller within {timeout:g} s") from None
