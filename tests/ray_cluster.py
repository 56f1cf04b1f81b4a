"""A Ray cluster on this machine for the fleet tests, every address 127.0.0.1: a head and two
workers, the second labelled ``wasmig-engine=interp``; connected as this process's driver."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def loopback_cluster() -> Iterator[Any]:
    # Ray replaces a loopback address by the machine's own unless this is set (client.connect says
    # why); the nodes started here, and their workers, inherit it
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # no Ray OOM killer: it kills workers when the *machine* is 95% full, which other programs on a
    # shared test machine cause (the kernel's stays, for a real shortage)
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    pytest.importorskip("ray")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case another test imported Ray before
    import ray
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024, "num_cpus": 6}

    def start() -> Cluster:
        c = Cluster(initialize_head=True, connect=False, head_node_args={
            **common, "include_dashboard": False, "ray_client_server_port": None,
            # a lost node is noticed within ~2 s (the default takes ~30 s)
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
        try:
            c.add_node(**common)
            c.add_node(**common, labels={"wasmig-engine": "interp"})
            c.wait_for_nodes()
        except BaseException:
            c.shutdown()
            raise
        return c

    try:
        c = start()
    except Exception as e:  # noqa: BLE001 - Ray gives a node 30 s (fixed) to register: a loaded machine may miss it
        if "timed out during startup" not in str(e):
            raise
        c = start()
    from wasmig.ray import client

    client.connect(c.address)
    try:
        yield c
    finally:
        try:
            ctl = ray.get_actor("wasmig-controller", namespace="wasmig")
            ray.get(ctl.shutdown.remote(), timeout=60)
            ray.kill(ctl)
        except ValueError:
            pass
        ray.shutdown()
        c.shutdown()


def listening_addresses(roots: set[int]) -> set[str]:
    """The local addresses of the listening TCP sockets of processes ``roots`` and their
    descendants (read from /proc: the raylets' workers are their children)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family = set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        if not more:
            break
        family |= more
    inodes: set[str] = set()
    for pid in family:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, width // 2, 4))  # per-32-bit little-endian
                address = ipaddress.ip_address(words)
                mapped = getattr(address, "ipv4_mapped", None)
                found.add(str(mapped or address))
    return found


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
