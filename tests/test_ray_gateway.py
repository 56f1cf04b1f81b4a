"""Live moves on a Ray cluster (wasmig/ray/live.py, docs/fleet.md): a target runner that dies
before the commit loses nothing (the job goes on at its source and ends byte-identical), and a TCP
server job keeps its 8 clients through live moves across the three nodes via its gateway actor
(every request answered exactly once, in order per client). One test on one loopback cluster
(tests/ray_cluster.py): two loaded cores bear one cluster at a time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ray_cluster import listening_addresses, loopback_cluster, wait_for
from tests.tcp_clients import Client
from tests.test_ray_fleet import MS, PROGRAMS, expected_run

pytest.importorskip("wasmtime")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with loopback_cluster() as c:
        yield c


@pytest.mark.slow
def test_live_moves_lose_nothing_and_keep_a_servers_clients(cluster: Any, tmp_path: Path) -> None:
    import ray

    from wasmig.ray import client
    from wasmig.ray.spec import FleetError, GatewaySpec, JobSpec, Placement
    from wasmig.toolchain import compile_c

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    head = cluster.head_node.node_id
    interp = next(n["NodeID"] for n in nodes if n["Labels"].get("wasmig-engine") == "interp")
    plain = next(n["NodeID"] for n in nodes if n["NodeID"] not in (head, interp))
    store, data = tmp_path / "store", tmp_path / "data"
    data.mkdir()
    ctl = client.controller()

    # --- the target dies before the commit: in pre-copy, then with the program resumed there ---
    # (a job that steps until told to stop: under load these moves took longer than 150 steps, and
    # a move of a job that ended meanwhile is no failed move but a record of its end)
    work = JobSpec(module=compile_c(PROGRAMS / "fleet_work.c").read_bytes(), module_name="fleet_work.wasm",
                   args=("w", "0", str(MS)), dirs=((str(data), "data"),), store=str(store), checkpoint_every=0.5,
                   placement=Placement(node=head[:12]), num_cpus=0.25, engine="wasmtime")
    job = client.call(ctl.submit, work)
    wait_for("the job running", lambda: (data / "w.out").exists() and (data / "w.out").stat().st_size > 0)
    for fault in ("pages", "resumed"):
        with pytest.raises(FleetError, match=f"job {job}: the live move failed, the job goes on on {head[:12]}"):
            client.call(ctl.migrate, job, plain[:12], fault)
        row = client.call(ctl.job, job)
        assert row["state"] == "running" and row["node"] == head and row["restarts"] == 0, row
        assert row["move_records"][-1]["error"], row
    printed = len(client.call(ctl.logs, job, "stdout"))
    wait_for("the job going on at its source", lambda: len(client.call(ctl.logs, job, "stdout")) > printed)
    move = client.call(ctl.migrate, job, interp[:12])  # and then it moves, live, to the interpreter
    assert move["mode"] == "pre-copy" and move["source_outcome"] == "moved" and move["engine"] == "interp", move
    assert 0 < move["downtime_s"] < move["total_s"] and move["rounds"] >= 2, move
    printed = len(client.call(ctl.logs, job, "stdout"))
    wait_for("the job going on on the interpreter", lambda: len(client.call(ctl.logs, job, "stdout")) > printed)
    (data / "w.stop").touch()
    row = client.call(ctl.wait, job, 180.0)
    assert row["state"] == "exited" and row["code"] == 0 and row["restarts"] == 0, row
    stdout = client.call(ctl.logs, job, "stdout")
    assert (stdout, client.call(ctl.logs, job, "stderr")) == expected_run("w", stdout.count(b"\n"))
    assert (data / "w.out").read_bytes() == stdout

    # --- a TCP server with 8 clients, moved live around the three nodes --------------------------
    server = JobSpec(module=compile_c(PROGRAMS / "kv_server.c").read_bytes(), module_name="kv_server.wasm",
                     args=("8",), store=str(store), checkpoint_every=1.0, placement=Placement(node=head[:12]),
                     num_cpus=0.25, engine="wasmtime", gateway=GatewaySpec("127.0.0.1:0"))
    job = client.call(ctl.submit, server)
    public = client.call(ctl.job, job)["gateway"]
    assert public.startswith("127.0.0.1:") and not public.endswith(":0"), public
    clients = [Client(public, f"c{i}", 40) for i in range(8)]
    for c in clients:
        c.start()
    try:
        wait_for("the clients served", lambda: all(c.sent >= 5 for c in clients) or any(c.error for c in clients))
        pids = {proc.process.pid for node in [cluster.head_node, *cluster.worker_nodes]
                for procs in node.all_processes.values() for proc in procs}
        listening = listening_addresses(pids)  # the gateway actor's and the runners' sockets included
        assert listening <= {"127.0.0.1", "::1"}, f"a fleet process listens beyond loopback: {listening}"
        for target, engine in ((plain, "wasmtime"), (interp, "interp"), (head, "wasmtime")):
            before = [c.sent for c in clients]
            move = client.call(ctl.migrate, job, target[:12])
            assert move["mode"] == "pre-copy" and move["source_outcome"] == "moved", move
            assert move["engine"] == engine and move["downtime_s"] > 0, move
            wait_for(f"the clients going on after the move to {target[:12]}",
                     lambda b4=before: all(c.sent >= n + 5 for c, n in zip(clients, b4, strict=True))
                     or any(c.error for c in clients))
            assert [c.error for c in clients] == [None] * 8
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(60)
    assert [c.error for c in clients] == [None] * 8
    assert all(c.sent >= 40 for c in clients)
    row = client.call(ctl.wait, job, 120.0)
    assert row["state"] == "exited" and row["code"] == 0 and row["moves"] == 3, row
    assert row["last_downtime_s"] and row["last_move_mode"] == "pre-copy", row
    assert b"served 8 clients, 8 keys" in client.call(ctl.logs, job, "stdout")
    listed = subprocess.run([sys.executable, "-m", "wasmig", "cluster", "ps"], capture_output=True, text=True,
                            env={**os.environ, "RAY_ADDRESS": cluster.address}, timeout=120)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(job))
    assert re.search(rf"exited\(0\)\s.*\s\d+ms  kv_server.wasm \(clients: {re.escape(public)}\)$", line), line


def test_a_job_of_no_fixed_length_steps_until_told_to_stop(tmp_path: Path) -> None:
    """fleet_work.c with 0 steps (what the live-move test above runs, so that its moves never race
    the program's end): it steps until ``data/NAME.stop`` appears, and its output is then exactly
    that of a run of as many fixed steps."""
    from wasmig.toolchain import compile_c

    data = tmp_path / "data"
    data.mkdir()
    run = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--dir", f"{data}::data",
                            str(compile_c(PROGRAMS / "fleet_work.c")), "s", "0", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        wait_for("a few steps", lambda: run.poll() is not None
                 or (data / "s.out").exists() and (data / "s.out").read_bytes().count(b"\n") >= 3)
        (data / "s.stop").touch()
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, stderr
    steps = stdout.count(b"\n")
    assert steps >= 3 and (stdout, stderr) == expected_run("s", steps)
    assert (data / "s.out").read_bytes() == stdout


#: a driver that made a wasmtime engine before connecting: the handlers wasmtime installed for
#: SIGSEGV, SIGILL and SIGFPE that another library replaced since, then a trap through wasmtime-py
#: itself (which wasmig's own guard, engines/trap_signals.py, does not see); the same once the
#: driver disconnected
_DRIVER_KEEPS_HANDLERS = """
import sys, ray, wasmtime
from wasmig.engines import trap_signals as signals
from wasmig.engines.wasmtime import runtime
from wasmig.ray import client
engine = runtime.engine()
module = wasmtime.Module(engine, '(module (func (export "f") unreachable))')

def check():
    print(sorted(s.name for s in signals.replaced()), flush=True)
    store = wasmtime.Store(engine)
    try:
        wasmtime.Instance(store, module, []).exports(store)["f"](store)
    except wasmtime.Trap:
        print("trapped", flush=True)

client.connect(sys.argv[1])
check()
ray.shutdown()
check()
"""


def test_a_driver_keeps_wasmtimes_signal_handlers(cluster: Any) -> None:
    """Issue 20's crash of a pytest worker: Ray's driver installed absl's crash reporter over
    wasmtime's handlers, so a worker that had made a wasmtime engine and then connected died
    (SIGILL, no Python error) at its next ``unreachable`` in wasm — and ``ray.shutdown()`` then
    resets those signals to their default action, so the process died without even absl's
    message. wasmig's client connects with Ray's failure signal handler off (and puts wasmtime's
    handlers back if faulthandler, which the driver enables when it is off, replaced them). In a
    process of its own, so a crash fails this test."""
    done = subprocess.run([sys.executable, "-c", _DRIVER_KEEPS_HANDLERS, cluster.address], capture_output=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert done.stdout.decode().splitlines() == ["[]", "trapped"] * 2, done.stdout
