"""The fleet's state beyond the runners: the controller's job table survives the controller
(wasmig/ray/table.py: killed, it is made again by the next ``wasmig cluster`` command, which still
lists every job; the jobs whose runners died with it run again from their latest checkpoints, end
with the bytes an uninterrupted run prints, and can still be moved), and a job whose store is
``s3://`` keeps its snapshots, log and fence there (wasmig/ray/jobstore.py), no shared path used.

A cluster of its own (a head and a worker, every address 127.0.0.1) and moto's S3 server on
127.0.0.1, both started here; small: the scenario of tests/test_ray_fleet.py is not repeated."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROGRAMS = Path(__file__).parent / "programs"
REPO = Path(__file__).resolve().parent.parent
STEPS, MS = 120, 60  # ~7 s of sleeping and more: alive while the controller is killed and made again


def expected_run(name: str, steps: int = STEPS) -> tuple[bytes, bytes]:
    """What fleet_work.c prints on stdout and stderr, computed here (not by wasmig)."""
    h, lines = 2166136261, []
    for i in range(steps):
        for k in range(20000):
            h = ((h ^ ((i * 31 + k) & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
        lines.append(f"{name} step {i} {h:08x}\n")
    return "".join(lines).encode(), f"{name} start\n{name} end {h:08x}\n".encode()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on loopback, in the environment before the cluster starts (its workers
    inherit the endpoint and the test credentials from the nodes started here)."""
    import logging
    import socket

    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = tmp_path_factory.mktemp("aws")
    names = ("WASMIG_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(WASMIG_S3_ENDPOINT=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_CONFIG_FILE=str(aws / "config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"), AWS_DEFAULT_REGION="us-east-1")
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(k, None)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[Any]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback stays loopback (client.connect)
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    pytest.importorskip("ray")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    import ray
    from ray.cluster_utils import Cluster

    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024, "num_cpus": 4}
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        **common, "include_dashboard": False, "ray_client_server_port": None})
    try:
        c.add_node(**common)
        c.wait_for_nodes()
        from wasmig.ray import client

        client.connect(c.address)
        yield c
    finally:
        try:
            ctl = ray.get_actor("wasmig-controller", namespace="wasmig")
            ray.get(ctl.shutdown.remote(), timeout=60)
            ray.kill(ctl)
        except Exception:  # noqa: BLE001, S110 - no controller, or one already gone
            pass
        ray.shutdown()
        c.shutdown()


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_the_job_table_survives_the_controller(cluster: Any, tmp_path: Path) -> None:
    import ray

    from wasmig.ray import client
    from wasmig.ray.joblog import read_stream
    from wasmig.ray.spec import JobSpec, Placement
    from wasmig.toolchain import compile_c

    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    wasm = compile_c(PROGRAMS / "fleet_work.c").read_bytes()
    data = tmp_path / "data"
    data.mkdir()
    store = tmp_path / "store"
    ctl = client.controller()
    jobs = {}
    for name in ("a", "b"):
        spec = JobSpec(module=wasm, module_name="fleet_work.wasm", args=(name, str(STEPS), str(MS)),
                       dirs=((str(data), "data"),), store=str(store), checkpoint_every=0.3,
                       placement=Placement(), num_cpus=0.25)
        jobs[name] = client.call(ctl.submit, spec)
    wait_for("a checkpoint of each job", lambda: all(r["checkpoint_age_s"] is not None for r in client.call(ctl.ps)))
    before = {r["job"]: r for r in client.call(ctl.ps)}

    ray.kill(ctl)  # no_restart: gone for good, as if its node's worker had died and Ray given up
    wait_for("the controller to be gone", lambda: _gone(ray))
    # `wasmig cluster ps`, a new process: it makes the controller again, which reads the table back
    ps = subprocess.run([sys.executable, "-m", "wasmig", "cluster", "ps", "--address", cluster.address],
                        capture_output=True, timeout=180, env=dict(os.environ, PYTHONPATH=str(REPO)),
                        stdin=subprocess.DEVNULL)
    assert ps.returncode == 0, ps.stderr
    header, *lines = ps.stdout.decode().splitlines()
    assert header.split()[0] == "JOB" and header.split()[5] == "RESTARTS", header
    rows = {line.split()[0]: line.split() for line in lines}
    assert set(rows) == set(before) == set(jobs.values()), ps.stdout
    for job, cells in rows.items():  # restarted once each: their runners went with the controller
        assert cells[-1] == "fleet_work.wasm" and int(cells[5]) == before[job]["restarts"] + 1, ps.stdout
    ctl = client.controller(create=False)

    # the runners died with the old controller: each job runs again from its checkpoint, then moves
    wait_for("both jobs running again", lambda: all(r["state"] == "running" for r in client.call(ctl.ps)))
    row = client.call(ctl.job, jobs["a"])
    move = client.call(ctl.migrate, jobs["a"])
    assert move["to"] != row["node"] and move.get("source_outcome") in ("stopped", "exited"), move
    for name, job in jobs.items():
        end = client.call(ctl.wait, job, 300.0)
        assert end["state"] == "exited" and end["code"] == 0, end
        out, err = expected_run(name)
        assert read_stream(store / job / "log", "stdout") == out
        assert read_stream(store / job / "log", "stderr") == err


@pytest.mark.slow
def test_a_job_in_s3_keeps_snapshots_log_and_fence_there(cluster: Any, s3_endpoint: str, tmp_path: Path) -> None:
    import uuid

    import boto3

    from wasmig.ray import client
    from wasmig.ray.spec import JobSpec, Placement
    from wasmig.toolchain import compile_c

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"wasmig-fleet-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    wasm = compile_c(PROGRAMS / "fleet_work.c").read_bytes()
    data = tmp_path / "data"
    data.mkdir()
    ctl = client.controller()
    spec = JobSpec(module=wasm, module_name="fleet_work.wasm", args=("s3job", str(STEPS), str(MS)),
                   dirs=((str(data), "data"),), store=f"s3://{bucket}/fleet", checkpoint_every=0.3,
                   placement=Placement(), num_cpus=0.25)
    job = client.call(ctl.submit, spec)
    wait_for("a checkpoint", lambda: client.call(ctl.job, job)["checkpoint_age_s"] is not None)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"fleet/{job}/").get("Contents", [])}
    assert any(k.startswith(f"fleet/{job}/snapshots/") for k in keys), keys
    assert any(k.startswith(f"fleet/{job}/lease/") for k in keys), keys
    assert client.call(ctl.logs, job).startswith(b"s3job step 0 "), "the log so far, from its segments"
    move = client.call(ctl.migrate, job)  # the new runner takes the lease the old one released
    assert move.get("source_outcome") in ("stopped", "exited"), move
    end = client.call(ctl.wait, job, 300.0)
    assert end["state"] == "exited" and end["code"] == 0, end
    out, err = expected_run("s3job")
    assert client.call(ctl.logs, job) == out
    assert client.call(ctl.logs, job, "stderr") == err
    segments = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"fleet/{job}/log/stdout/")["Contents"]]
    assert len(segments) >= 2, "sent at checkpoints, not once at the end"
    assert not any(tmp_path.glob(f"**/{job}")), "no job directory on a filesystem"


def _gone(ray: Any) -> bool:
    try:
        ray.get_actor("wasmig-controller", namespace="wasmig")
    except ValueError:
        return True
    return False
