"""The fleet's state beyond the runners: the controller's job table survives the controller
(wasmig/ray/table.py: killed, it is made again by the next ``wasmig cluster`` command, which still
lists every job; the jobs whose runners died with it run again from their latest checkpoints, end
with the bytes an uninterrupted run prints, and can still be moved), and a job whose store is
``s3://`` keeps its snapshots, log and fence there (wasmig/ray/jobstore.py), no shared path used.

The cluster of tests/test_ray_fleet.py (every address 127.0.0.1), started for this module, and
moto's S3 server on 127.0.0.1; the scenario of tests/test_ray_fleet.py is not repeated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ray_cluster import wait_for
from tests.test_ray_fleet import cluster, expected_run  # noqa: F401 - cluster: the fixture

PROGRAMS = Path(__file__).parent / "programs"
REPO = Path(__file__).resolve().parent.parent
#: steps until the test creates data/NAME.stop (fleet_work's STEPS 0): alive however long the
#: controller takes to be killed and made again, or a move to come (a fixed 120 steps, ~7 s, had to
#: outlast those), 60 ms apart
STEPS, MS = 0, 60


def steps_in(stdout: bytes) -> int:
    """How many steps a job made, from its whole stdout: the uninterrupted run to compare with."""
    return stdout.count(b"\n")


@pytest.fixture(scope="module")
def s3_endpoint(cluster: Any) -> str:  # noqa: F811 - cluster: the imported fixture
    """moto's S3 server on loopback that the cluster fixture started before the cluster (the
    nodes' workers inherit its endpoint and the test credentials)."""
    return os.environ["WASMIG_TEST_S3"]


@pytest.mark.slow
def test_the_job_table_survives_the_controller(cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    import ray

    from wasmig.ray import client
    from wasmig.ray.controller import GATEWAY_LOST
    from wasmig.ray.joblog import read_stream
    from wasmig.ray.spec import GatewaySpec, JobSpec, Placement
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
    # a TCP server behind a gateway: the gateway actor dies with the controller (its owner)
    server = JobSpec(module=compile_c(PROGRAMS / "kv_server.c").read_bytes(), module_name="kv_server.wasm",
                     args=("8",), store=str(store), checkpoint_every=1.0, placement=Placement(), num_cpus=0.25,
                     engine="wasmtime", gateway=GatewaySpec("127.0.0.1:0"))
    served = client.call(ctl.submit, server)
    wait_for("the server running", lambda: client.call(ctl.job, served)["state"] == "running")
    before = {r["job"]: r for r in client.call(ctl.ps) if r["job"] != served}

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
    assert set(rows) == set(before) | {served} and set(before) == set(jobs.values()), ps.stdout
    for job in before:  # restarted once each: their runners went with the controller
        cells = rows[job]
        assert cells[-1] == "fleet_work.wasm" and int(cells[5]) == before[job]["restarts"] + 1, ps.stdout
    assert rows[served][3] == "failed", ps.stdout  # not restarted: its gateway and clients are gone
    ctl = client.controller(create=False)
    assert client.call(ctl.job, served)["error"] == GATEWAY_LOST

    # the runners died with the old controller: each job runs again from its checkpoint, then moves
    wait_for("both jobs running again",
             lambda: all(r["state"] == "running" for r in client.call(ctl.ps) if r["job"] in before))
    row = client.call(ctl.job, jobs["a"])
    move = client.call(ctl.migrate, jobs["a"])
    assert move["to"] != row["node"] and move.get("source_outcome") in ("moved", "stopped", "exited"), move
    for name in jobs:
        (data / f"{name}.stop").touch()
    for name, job in jobs.items():
        end = client.call(ctl.wait, job, 300.0)
        assert end["state"] == "exited" and end["code"] == 0, end
        out, err = expected_run(name, steps_in(read_stream(store / job / "log", "stdout")))
        assert read_stream(store / job / "log", "stdout") == out
        assert read_stream(store / job / "log", "stderr") == err


@pytest.mark.slow
def test_a_job_in_s3_keeps_snapshots_log_and_fence_there(
        cluster: Any, s3_endpoint: str, tmp_path: Path) -> None:  # noqa: F811 - cluster: the imported fixture
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
    # live: the source sends its log segments while stopped for the state, the target takes the
    # lease the source released after the commit
    move = client.call(ctl.migrate, job)
    assert move.get("mode") == "pre-copy" and move.get("source_outcome") == "moved", move

    def segments() -> list[str]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"fleet/{job}/log/stdout/")
        return [o["Key"] for o in listed.get("Contents", [])]

    # sent at checkpoints, not once at the end: a second segment comes while the job still runs
    wait_for("a second log segment, from a checkpoint", lambda: len(segments()) >= 2)
    (data / "s3job.stop").touch()
    end = client.call(ctl.wait, job, 300.0)
    assert end["state"] == "exited" and end["code"] == 0, end
    out, err = expected_run("s3job", steps_in(client.call(ctl.logs, job)))
    assert client.call(ctl.logs, job) == out
    assert client.call(ctl.logs, job, "stderr") == err
    assert len(segments()) >= 2, "sent at checkpoints, not once at the end"
    assert not any(tmp_path.glob(f"**/{job}")), "no job directory on a filesystem"


def _gone(ray: Any) -> bool:
    try:
        ray.get_actor("wasmig-controller", namespace="wasmig")
    except ValueError:
        return True
    return False


@pytest.mark.slow
def test_a_move_before_the_program_runs_stops_and_copies(cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    """A job asked to move while its runner has not started the program yet (here: it waits for
    the job's fence, as a restarted job waits for its old runner, or restores its snapshot) cannot
    move live: the move falls back to stop-and-copy with the target it started — that target must
    not be the one killed for the refused live move (the controller then failed with "the actor is
    dead because it was killed by ray.kill", seen after a controller's recovery)."""
    import threading

    from wasmig.ray import client
    from wasmig.ray.jobstore import take_fence
    from wasmig.ray.spec import JobSpec, Placement
    from wasmig.toolchain import compile_c

    hold_s = 8.0
    spec = JobSpec(module=compile_c(PROGRAMS / "fleet_work.c").read_bytes(), module_name="fleet_work.wasm",
                   args=("early", "40", "20"), store=str(tmp_path / "store"), checkpoint_every=0.5,
                   placement=Placement(), num_cpus=0.25)
    ctl = client.controller()
    job = client.call(ctl.submit, spec)
    fence = take_fence(spec, job, 5.0)  # before the runner's worker has started: it waits for this
    threading.Timer(hold_s, fence.release).start()
    move = client.call(ctl.migrate, job)
    assert "error" not in move, move
    if move["target_ready_s"] < hold_s - 3.0:  # decided while the fence was surely held
        assert move["mode"] == "stop-and-copy" and move["source_outcome"] == "stopped", move
        assert "not running" in move["why_not_live"], move
    end = client.call(ctl.wait, job, 300.0)
    assert end["state"] == "exited" and end["code"] == 0 and end["restarts"] == 0, end
    out, err = expected_run("early", 40)
    assert client.call(ctl.logs, job) == out
    assert client.call(ctl.logs, job, "stderr") == err
