"""One runner per job through a node's loss (docs/fleet.md, "One runner at a time"): the runner on
a lost node must be gone, or fenced, before the job's restarted runner writes anything.

Seen by /proc: the processes holding the job's data file (data/NAME.out) open, and their file
positions, polled while the node's raylet is killed and the job restarts elsewhere.

On the code before session 13 both tests failed: the lost node's runner (a Ray worker, which
outlives its raylet, reparented to init) was still alive and writing 90 s after the raylet's
SIGKILL, holding the job's fence, so the restarted runner waited; and a runner paused across the
loss, resumed once its S3 lease had lapsed and the job had been taken, wrote the data file beside
the restarted runner (a lapsed lease refused only checkpoints and log segments).

The cluster of tests/test_ray_fleet.py (every address 127.0.0.1) and moto's S3 server on
127.0.0.1, started for this module."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.ray_cluster import wait_for
from tests.test_ray_fleet import FleetJobs, cluster, expected_run  # noqa: F401 - cluster: the fixture

#: gated: the jobs step until the test creates data/NAME.stop (fleet_work's STEPS 0), 60 ms apart
STEPS, MS = 0, 60


def holders(path: Path) -> dict[int, int]:
    """pid -> file position, for every process that has ``path`` open (a zombie has no fds)."""
    target = str(path)
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    found[int(proc.name)] = int((proc / "fdinfo" / fd.name).read_text().split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return found


def state(pid: int) -> str | None:
    """The process's state letter (R, S, T stopped, Z zombie...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    return state(pid) not in (None, "Z")


class Watch:
    """A thread polling who holds each data file open, until stopped: every sample kept."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.samples: list[tuple[float, str, dict[int, int]]] = []
        self._done = threading.Event()
        self._sample()  # the holders as they are before the test acts
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for name, path in self.files.items():
            self.samples.append((time.monotonic(), name, holders(path)))

    def _run(self) -> None:
        while not self._done.is_set():
            self._sample()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def pids(self, name: str) -> list[int]:
        """Every process seen holding ``name``'s file, in the order first seen."""
        seen: list[int] = []
        for _, n, held in self.samples:
            for pid in held:
                if n == name and pid not in seen:
                    seen.append(pid)
        return seen

    def together(self, name: str) -> list[dict[int, int]]:
        """Samples where two processes held ``name``'s file at once."""
        return [held for _, n, held in self.samples if n == name and len(held) > 1]

    def moved(self, name: str, pid: int, after: float) -> list[tuple[float, int]]:
        """(time, position) samples after ``after`` where ``pid``'s position differed from its
        position at ``after``: ``pid`` wrote then."""
        positions = [(t, held[pid]) for t, n, held in self.samples if n == name and pid in held]
        before = [p for t, p in positions if t <= after]
        if not before:
            return []
        return [(t, p) for t, p in positions if t > after and p != before[-1]]


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_a_lost_nodes_runner_is_gone_before_the_restarted_one_writes(cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    from wasmig.ray import client
    from wasmig.ray.spec import Placement

    fleet = FleetJobs(cluster, tmp_path)
    data, plain, ctl = fleet.data, fleet.plain, fleet.ctl
    # on the plain worker: one job fenced by flock (a path store), one by a lease (S3)
    jobs = {name: fleet.submit(name, STEPS, MS, s3, placement=Placement(node=plain[:12]))
            for name, s3 in (("flocked", False), ("leased", True))}
    files = {name: data / f"{name}.out" for name in jobs}
    wait_for("a checkpoint of each job and its runner writing", lambda: all(
        client.call(ctl.job, job)["checkpoint_age_s"] is not None and len(holders(files[name])) == 1
        for name, job in jobs.items()))
    old = {name: next(iter(holders(files[name]))) for name in jobs}
    watch = Watch(files)
    raylet = next(n for n in cluster.worker_nodes if n.node_id == plain)
    killed_at = time.monotonic()
    os.kill(raylet.all_processes["raylet"][0].process.pid, signal.SIGKILL)
    gone_at = {}
    for name in jobs:
        wait_for(f"{name}'s old runner gone", lambda name=name: not alive(old[name]), timeout=30)
        gone_at[name] = time.monotonic()
    for name, job in jobs.items():
        wait_for(f"{name} restarted and writing", lambda name=name, job=job: (
            client.call(ctl.job, job)["restarts"] >= 1 and set(holders(files[name])) - {old[name]}), timeout=120)
    for name in jobs:
        (data / f"{name}.stop").touch()
    ends = {name: client.call(ctl.wait, job, 180.0) for name, job in jobs.items()}
    watch.stop()
    for name, job in jobs.items():
        print(name, "old runner gone", round(gone_at[name] - killed_at, 2), "s after the raylet's kill;",
              "pids", watch.pids(name), "data lines", lines(files[name]), "log lines",
              client.call(ctl.logs, job).count(b"\n"))
        assert ends[name]["state"] == "exited" and ends[name]["code"] == 0, ends[name]
        assert not watch.together(name), f"{name}: two runners held its file at once: {watch.together(name)[:3]}"
        pids = watch.pids(name)
        assert pids[0] == old[name] and len(pids) >= 2, pids
        # the old runner wrote nothing once the new one had the file open
        first_new = min(t for t, n, held in watch.samples if n == name and set(held) - {old[name]})
        assert not watch.moved(name, old[name], first_new), name
        # every step once, in order: the data file is the steps of the run that went furthest
        # (not rolled back: the lost run's lines after the checkpoint stay where the restarted run
        # stopped before them), the log the steps of the restarted run
        log = client.call(ctl.logs, job)
        assert log == expected_run(name, log.count(b"\n"))[0], name
        assert files[name].read_bytes() == expected_run(name, lines(files[name]))[0], name
        assert lines(files[name]) >= log.count(b"\n"), name


@pytest.mark.slow
def test_a_paused_runner_of_a_lost_node_writes_nothing_after_the_restart(cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    """The lost node's runner paused (SIGSTOP, just after its raylet's death: a stalled machine,
    a long pause) and resumed once the job restarted elsewhere. A path store's lock stays with the
    paused process: the restart waits for it. An S3 lease lapses (10 s without a beat): the
    restarted runner takes the job, and the old one, resumed, must not write the job's files.
    (Paused *before* the raylet's death, the kernel ends it: its process group is orphaned with a
    stopped member, which gets SIGHUP.)"""
    from wasmig.ray import client
    from wasmig.ray.spec import Placement

    fleet = FleetJobs(cluster, tmp_path)
    data, interp, ctl = fleet.data, fleet.interp, fleet.ctl
    jobs = {name: fleet.submit(name, STEPS, 20, s3, placement=Placement(node=interp[:12]))
            for name, s3 in (("pflocked", False), ("pleased", True))}
    files = {name: data / f"{name}.out" for name in jobs}
    wait_for("a checkpoint of each job and its runner writing", lambda: all(
        client.call(ctl.job, job)["checkpoint_age_s"] is not None and len(holders(files[name])) == 1
        for name, job in jobs.items()), timeout=180)
    old = {name: next(iter(holders(files[name]))) for name in jobs}
    watch = Watch(files)
    raylet = next(n for n in cluster.worker_nodes if n.node_id == interp)
    os.kill(raylet.all_processes["raylet"][0].process.pid, signal.SIGKILL)
    stopped, paused = [], []
    for name, pid in old.items():
        try:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(name)
        except ProcessLookupError:
            pass  # already gone: nothing of it can write
    try:
        for name in stopped:  # the signal lands, or its node watch's SIGKILL had come first
            wait_for(f"{name}'s old runner stopped or gone", lambda name=name: state(old[name]) in ("T", "Z", None),
                     timeout=30)
        paused = [name for name in stopped if state(old[name]) == "T"]
        wait_for("pleased restarted and writing", lambda: (
            client.call(ctl.job, jobs["pleased"])["restarts"] >= 1
            and any(pos > 0 for pid, pos in holders(files["pleased"]).items() if pid != old["pleased"])), timeout=120)
        new_writing = time.monotonic()
        if "pflocked" in paused and alive(old["pflocked"]):  # the lock is the paused process's: the restart waits
            assert set(holders(files["pflocked"])) == {old["pflocked"]}
    finally:
        for name in stopped:
            try:
                os.kill(old[name], signal.SIGCONT)
            except ProcessLookupError:
                pass
    # resumed: it writes (the bug), or it is gone without writing
    wait_for("pleased's old runner gone or writing", lambda: (
        not alive(old["pleased"]) or watch.moved("pleased", old["pleased"], new_writing)), timeout=60)
    assert not watch.moved("pleased", old["pleased"], new_writing), "the paused runner wrote after the restart"
    for name in jobs:
        wait_for(f"{name}'s old runner gone", lambda name=name: not alive(old[name]), timeout=60)
    for name, job in jobs.items():
        wait_for(f"{name} restarted and writing", lambda name=name, job=job: (
            set(holders(files[name])) - {old[name]}), timeout=120)
    for name in jobs:
        (data / f"{name}.stop").touch()
    ends = {name: client.call(ctl.wait, job, 180.0) for name, job in jobs.items()}
    watch.stop()
    for name in jobs:
        print(name, "paused" if name in paused else "gone before the pause", "pids", watch.pids(name))
        assert ends[name]["state"] == "exited" and ends[name]["code"] == 0, ends[name]
    # the lock file keeps the restarted runner out while the paused one lives; the lease lapses, so
    # the restarted one may open the file beside the paused one (asserted above: it wrote nothing)
    assert not watch.together("pflocked"), f"two runners held its file at once: {watch.together('pflocked')[:3]}"
    for name, job in jobs.items():
        log = client.call(ctl.logs, job)
        assert log == expected_run(name, log.count(b"\n"))[0], name
        assert files[name].read_bytes() == expected_run(name, lines(files[name]))[0], name
