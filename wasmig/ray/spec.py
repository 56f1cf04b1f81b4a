"""What a fleet job is: the program, its arguments and directories, where its state lives, where it
may run. Plain data (pickled by Ray between the CLI, the controller and the actors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class FleetError(Exception):
    """A request the fleet refuses (unknown job or node, no node fits): one line for the user."""


@dataclass(frozen=True)
class Placement:
    """Where a job may run: a node (id or unique id prefix), nodes carrying all ``labels``, nodes
    offering all ``resources`` (custom Ray resources, which the job then also holds)."""

    node: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewaySpec:
    """A TCP server job's gateway (:mod:`wasmig.ray.gateway`): clients connect to ``public``;
    the job's runners register and attach at ``control``, pinning the gateway's ``fingerprint``.
    At submit only ``listen`` is given (the public address asked for); the controller fills in the rest."""

    listen: str
    public: str = ""
    control: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class JobSpec:
    """A WASI command to run as a fleet job. ``module`` holds the .wasm's bytes (nodes need not
    see the file); ``dirs`` are (host, guest) preopens, host paths every node can reach (a shared
    filesystem); ``store`` is the job's state location: snapshots and the output log
    (``<store>/<job id>/``)."""

    module: bytes
    module_name: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    dirs: tuple[tuple[str, str], ...] = ()
    engine: str | None = None
    checkpoint_every: float | None = None
    store: str = ""
    placement: Placement = field(default_factory=Placement)
    num_cpus: float = 1.0
    #: a runner made for a move or a restart loads its engine and builds the program once before
    #: the source stops (imports, the compiled module), so the downtime holds only the restore
    prewarm: bool = True
    #: a move is live (pre-copy, the source running until the target committed) where it can be;
    #: False: always checkpoint-stop-restore
    live: bool = True
    #: how a live move's pages travel: "ray" (the source's runner holds them for the target's to
    #: take: Ray's object transfer) or "channel" (inline in the migration protocol's TLS channel)
    pages: str = "ray"
    #: a TCP server behind a gateway: its clients keep their connections through moves
    gateway: GatewaySpec | None = None


def job_directory(spec: JobSpec, job_id: str) -> Path:
    """``<store>/<job id>``: ``snapshots/`` (a checkpoint directory) and ``log/`` (stdout, stderr)."""
    return Path(spec.store) / job_id
