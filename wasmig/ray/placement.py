"""Which node a job goes to: plain functions over the node records ``ray.nodes()`` returns, so the
choice is testable without a cluster. The engine a node runs a job on is its ``wasmig-engine``
label when it has one (a node labelled ``wasmig-engine=interp`` restores every job on the
interpreter), else the job's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from wasmig.ray.spec import FleetError, Placement

ENGINE_LABEL = "wasmig-engine"


def alive(nodes: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [n for n in nodes if n.get("Alive")]


def resolve_node(nodes: Iterable[Mapping[str, Any]], name: str) -> str:
    """The id of the live node ``name`` names (its id or a unique prefix of it)."""
    matches = [n["NodeID"] for n in alive(nodes) if n["NodeID"].startswith(name)]
    if not matches:
        raise FleetError(f"no live node {name!r} (see `wasmig cluster ps` or `ray status`)")
    if len(matches) > 1:
        raise FleetError(f"node {name!r} is ambiguous: {len(matches)} live nodes start with it")
    return matches[0]


def fits(node: Mapping[str, Any], placement: Placement, cpus: float = 0.0) -> bool:
    """Whether ``node`` has the labels and resources asked for, and at least ``cpus`` CPUs at all
    (Ray refuses an actor pinned to a node that can never hold it)."""
    labels = node.get("Labels") or {}
    resources = node.get("Resources") or {}
    return (all(labels.get(k) == v for k, v in placement.labels.items())
            and all(resources.get(k, 0) >= v for k, v in placement.resources.items())
            and resources.get("CPU", 0) >= cpus)


def choose_node(nodes: Iterable[Mapping[str, Any]], placement: Placement, load: Mapping[str, int], *,
                avoid: Iterable[str] = (), cpus: float = 0.0) -> str:
    """The live node for a job: the one ``placement`` names, else among those that fit (with
    ``cpus`` CPUs) and are not in ``avoid`` (draining, or the node a job is leaving) the one with
    the fewest jobs (``load``)."""
    live = alive(nodes)
    if placement.node is not None:
        node_id = resolve_node(live, placement.node)
        if node_id in set(avoid):
            raise FleetError(f"node {placement.node!r} is draining or being left")
        return node_id
    avoided = set(avoid)
    candidates = [n for n in live if n["NodeID"] not in avoided and fits(n, placement, cpus)]
    if not candidates:
        wanted = ", ".join([*(f"{k}={v}" for k, v in placement.labels.items()),
                            *(f"{k}:{v:g}" for k, v in {**placement.resources, "CPU": cpus}.items())])
        raise FleetError(f"no live node fits the job (wants {wanted}; {len(live)} live, {len(avoided)} avoided)")
    return min(candidates, key=lambda n: (load.get(n["NodeID"], 0), n["NodeID"]))["NodeID"]


def node_engine(nodes: Iterable[Mapping[str, Any]], node_id: str, asked: str | None) -> str | None:
    """The engine a job runs on at ``node_id``: the node's ``wasmig-engine`` label, else ``asked``
    (None: the default engine of that node)."""
    for n in nodes:
        if n["NodeID"] == node_id:
            return (n.get("Labels") or {}).get(ENGINE_LABEL) or asked
    return asked
