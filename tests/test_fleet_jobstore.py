"""A fleet job's log and fence in an object store (wasmig/ray/jobstore.py), without Ray: the
object layout on a directory (``file://``), the same code as on S3 (tests/test_ray_controller_table.py
runs it on S3 in a cluster)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.mortal import Killed, Mortal
from wasmig.errors import SnapshotError
from wasmig.ray.joblog import META_KEY, JobLog
from wasmig.ray.jobstore import Lease, SegmentLog, read_log
from wasmig.ray.spec import JobSpec
from wasmig.snapshot.stores.fsobjects import FsObjects

PERIOD = 0.6  # a short lease: these tests wait out a few of them
# A lease that must *not* be taken: its holder's beats (an fsynced file each, every period / 4)
# may stall for most of a second on a CI disk busy with other tests' snapshots, and a 0.6 s
# lease then looks dead to its contender (CI, 2026-12-06). Two seconds is four missed beats.
HELD_PERIOD = 2.0


def backend(tmp_path: Path) -> FsObjects:
    (tmp_path / "store" / ".wasmig").mkdir(parents=True, exist_ok=True)  # the root: jobs' keys are j/...
    return FsObjects.from_url(f"file://{tmp_path}/store")


def test_a_lease_is_held_by_one_runner_and_passed_on_release(tmp_path: Path) -> None:
    b = backend(tmp_path)
    first = Lease(b, "j/lease/", "first", HELD_PERIOD)
    first.acquire(5.0)
    first.check()
    second = Lease(b, "j/lease/", "second", HELD_PERIOD)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="another runner still holds it"):
        second.acquire(1.5 * HELD_PERIOD)  # past the period: first renews all along, never taken
    assert time.monotonic() - t0 >= 1.5 * HELD_PERIOD
    first.release()
    t0 = time.monotonic()
    second.acquire(5.0)
    assert time.monotonic() - t0 < HELD_PERIOD, "a released lease is taken at once"
    assert second.generation == 2
    second.release()


def test_a_dead_holders_lease_is_taken_after_the_period_and_it_is_fenced(tmp_path: Path) -> None:
    b = backend(tmp_path)
    dead = Lease(b, "j/lease/", "dead", PERIOD)
    dead.acquire(5.0)
    dead._done.set()  # its process is gone: no more renewals, no release
    assert dead._beats is not None
    dead._beats.join()
    t0 = time.monotonic()
    heir = Lease(b, "j/lease/", "heir", PERIOD)
    heir.acquire(10 * PERIOD)
    waited = time.monotonic() - t0
    assert PERIOD <= waited < 5 * PERIOD, waited
    with pytest.raises(SnapshotError, match="lost the job's lease"):
        dead.check()  # unrenewed for more than half a period: it may not write
    heir.check()
    heir.release()


def test_two_contenders_for_a_free_lease_one_wins(tmp_path: Path) -> None:
    b = backend(tmp_path)
    a, c = Lease(b, "j/lease/", "a", PERIOD), Lease(b, "j/lease/", "c", PERIOD)
    assert a._claim(1)
    assert not c._claim(1), "the conditional put refuses the second"
    a.release()


def test_the_log_goes_up_in_segments_and_a_restore_cuts_it_back(tmp_path: Path) -> None:
    b = backend(tmp_path)
    log = SegmentLog(b, "j/log/", "j")
    log.open(None)
    log.streams["stdout"].write(b"one\n")
    first = log.annotation()[META_KEY]  # a checkpoint: its counts, the bytes sent before the snapshot
    log.streams["stdout"].write(b"two\n")
    log.streams["stderr"].write(b"err\n")
    log.annotation()  # a later checkpoint, say one whose snapshot never published
    log.streams["stdout"].write(b"three\n")
    log.close()  # the end: the rest is sent too
    spec = JobSpec(module=b"", module_name="x", store=f"file://{tmp_path}/store")
    assert first == {"stdout": 4, "stderr": 0}
    assert sorted(i.key for i in b.listing("j/log/")) == [
        "j/log/stderr/0000000000000000", "j/log/stdout/0000000000000000", "j/log/stdout/0000000000000004",
        "j/log/stdout/0000000000000008"]
    assert read_log(spec, "j", "stdout") == b"one\ntwo\nthree\n"  # what `wasmig cluster logs` shows
    assert read_log(spec, "j", "stderr") == b"err\n"
    # a runner restoring the first checkpoint: the log as it counted, the later segments gone
    again = SegmentLog(b, "j/log/", "j")
    again.open(first)
    assert (again.directory / "stdout").read_bytes() == b"one\n"
    assert sorted(i.key for i in b.listing("j/log/")) == ["j/log/stdout/0000000000000000"]
    again.streams["stdout"].write(b"two\n")
    again.close()
    segments = sorted(i.key for i in b.listing("j/log/stdout/"))
    assert [b.get(k, 100) for k in segments] == [b"one\n", b"two\n"]
    assert not again.directory.exists(), "the node's spool is removed"


def test_a_log_shorter_than_the_checkpoint_counted_is_refused(tmp_path: Path) -> None:
    b = backend(tmp_path)
    log = SegmentLog(b, "j/log/", "j")
    with pytest.raises(ValueError, match="the checkpoint counted 10"):
        log.open({"stdout": 10, "stderr": 0})


def test_a_fenced_runner_sends_no_log(tmp_path: Path) -> None:
    b = backend(tmp_path)

    def fenced() -> None:
        raise SnapshotError("lost the job's lease")

    log = SegmentLog(b, "j/log/", "j", check=fenced)
    log.open(None)
    log.streams["stdout"].write(b"late\n")
    with pytest.raises(SnapshotError, match="lost the job's lease"):
        log.annotation()
    log.close()
    assert not list(b.listing("j/log/"))


def test_a_restore_merges_the_segments_it_read_into_one(tmp_path: Path) -> None:
    """One segment a checkpoint would make every restore read one object a checkpoint: the
    restoring runner leaves one in their place (and a merge cut short reads the same)."""
    b = backend(tmp_path)
    log = SegmentLog(b, "j/log/", "j")
    log.open(None)
    counts = {}
    for word in (b"a\n", b"bb\n", b"ccc\n"):
        log.streams["stdout"].write(word)
        counts = log.annotation()[META_KEY]
    log.close()
    assert len(list(b.listing("j/log/stdout/"))) == 3
    again = SegmentLog(b, "j/log/", "j")
    again.open(counts)
    assert [i.key for i in b.listing("j/log/stdout/")] == ["j/log/stdout/0000000000000000"]
    assert (again.directory / "stdout").read_bytes() == b"a\nbb\nccc\n"
    again.close()
    b.put("j/log/stdout/0000000000000002", b"bb\n")  # as if the merge's deletes had not all happened
    third = SegmentLog(b, "j/log/", "j")
    third.open(counts)
    assert (third.directory / "stdout").read_bytes() == b"a\nbb\nccc\n"
    third.close()


def test_a_restore_below_a_live_moves_counts_cuts_back_the_segment_that_reaches_past_them(tmp_path: Path) -> None:
    """A live move's target opens the log at the move's counts (beyond the job's last snapshot) and
    merges the segments up to them into one; it dies before its first checkpoint (its node lost),
    and the job restarts from the source's last snapshot, below those counts. The merged segment
    must not keep the lost run's bytes past the snapshot: the restarted run's first segment would
    start inside it, and a reader stops there (tests/test_ray_fleet.py saw the pinned job's log end
    at the move's counts, 3,965 of 9,890 bytes, the restarted run's segments unread)."""
    b = backend(tmp_path)
    spec = JobSpec(module=b"", module_name="x", store=f"file://{tmp_path}/store")
    source = SegmentLog(b, "j/log/", "j")
    source.open(None)
    for line in (b"one\n", b"two\n"):
        source.streams["stdout"].write(line)
        snapshot = source.annotation()[META_KEY]  # the last one the job's store holds
    source.streams["stdout"].write(b"three (lost)\n")
    moved = source.annotation()[META_KEY]  # the live move's state, sent while the program is stopped
    source.close()
    target = SegmentLog(b, "j/log/", "j", held=False)
    target.open(moved)
    target.tidy_held()  # it holds the job: merged, one segment of the three lines
    assert [i.key for i in b.listing("j/log/stdout/")] == ["j/log/stdout/0000000000000000"]
    target.streams["stdout"].write(b"four (lost)\n")
    JobLog.close(target)  # its node dies: no segment sent, no snapshot
    again = SegmentLog(b, "j/log/", "j")
    again.open(snapshot)
    assert read_log(spec, "j", "stdout") == b"one\ntwo\n"
    again.streams["stdout"].write(b"three\n")
    again.annotation()
    again.streams["stdout"].write(b"four\n")
    again.close()
    assert read_log(spec, "j", "stdout") == b"one\ntwo\nthree\nfour\n"


STEPS, EVERY, MOVE = 9, 2, 5  # the model job's steps, a checkpoint every EVERY steps, a live move at MOVE


def run_model_job(b: FsObjects, kill_at: list[int]) -> int:
    """A fleet job's log through the runner's order of store calls: each step prints a line; a
    checkpoint sends the log's segments (the snapshot's annotation) and then publishes the snapshot
    (``snap/NNNNNN``, its counts and step, through the same store); the first run moves live at
    step MOVE (the source sends up to the state's counts, its run ends; the target opens the log at
    them and runs on); the end sends the rest. Runner *i* dies at its ``kill_at[i]``-th write
    (every runner after the list lives), and the next restores the job's latest snapshot, as the
    controller's restart does. Returns how many writes the first runner made."""
    import json

    life, first_writes = 0, 0
    while True:
        store = Mortal(b, kill_at[life] if life < len(kill_at) else None)
        logs: list[SegmentLog] = []
        try:
            snaps = sorted(i.key for i in b.listing("j/snap/"))
            latest = json.loads(b.get(snaps[-1], 1 << 10) or b"{}") if snaps else None
            step = latest["step"] if latest else 0
            log = SegmentLog(store, "j/log/", "j")  # type: ignore[arg-type]
            logs.append(log)
            log.open(latest["counts"] if latest else None)
            while step < STEPS:
                if life == 0 and step == MOVE:
                    moved = log.annotation()[META_KEY]
                    log.close()
                    log = SegmentLog(store, "j/log/", "j", held=False)  # type: ignore[arg-type]
                    logs.append(log)
                    log.open(moved)  # before the commit: it only reads the store
                    log.tidy_held()  # it holds the job (fence_log): the store tidied, then it sends
                log.streams["stdout"].write(f"step {step}\n".encode())
                step += 1
                if step % EVERY == 0:
                    counts = log.annotation()[META_KEY]
                    store.put(f"j/snap/{len(snaps) + step:06d}", json.dumps({"counts": counts, "step": step}).encode())
            log.close()
            return first_writes if life else store.writes
        except Killed:
            for dead in logs:  # its node's spool and files go with it
                JobLog.close(dead)
                shutil.rmtree(dead.directory, ignore_errors=True)
            if life == 0:
                first_writes = store.writes
            life += 1


def test_the_log_is_one_runs_whatever_write_a_runner_dies_at(tmp_path: Path) -> None:
    """The job's log after restarts holds exactly the output of one uninterrupted run, wherever
    its runners die: the first runner (the source and the target of a live move) at each of its
    writes to the store in turn, and the runner restarted after it at each of its own."""
    expected = "".join(f"step {i}\n" for i in range(STEPS)).encode()
    spec = JobSpec(module=b"", module_name="x", store=f"file://{tmp_path}/store")
    whole = run_model_job(backend(tmp_path / "whole"), [])
    assert read_log(JobSpec(module=b"", module_name="x", store=f"file://{tmp_path}/whole/store"), "j",
                    "stdout") == expected
    cases = 0
    for first in range(whole):
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
        assert run_model_job(backend(tmp_path), [first]) == first
        assert read_log(spec, "j", "stdout") == expected, f"the first runner died at its write {first}"
        for second in range(8):  # the restarted runner dies too, at one of its first writes
            shutil.rmtree(tmp_path / "store", ignore_errors=True)
            run_model_job(backend(tmp_path), [first, second])
            assert read_log(spec, "j", "stdout") == expected, f"died at writes {first} and {second}"
            cases += 1
    assert whole >= 12 and cases == 8 * whole


@pytest.mark.parametrize("fence", ["held", "lost"])
@pytest.mark.parametrize("kind", ["path", "object"])
def test_a_live_targets_log_is_fenced_only_once_it_holds_the_job(tmp_path: Path, kind: str, fence: str) -> None:
    """A live move's target opens the log before the commit (no fence yet) at the source's counts,
    and writes to the store only under the fence it takes after the commit (live.FleetTarget): its
    open only reads the store (the source's two segments stay as they are, where a restore merges
    them), and the merge happens under the fence, before it sends anything -- or, the fence lost
    already, neither the merge nor any segment."""
    from wasmig.ray.jobstore import Fence, fence_log, log_counts, open_log

    if kind == "object":
        backend(tmp_path)
    spec = JobSpec(module=b"", module_name="x",
                   store=f"file://{tmp_path}/store" if kind == "object" else str(tmp_path / "store"))
    source = open_log(spec, "j", Fence(lambda: None))
    source.open(None)
    source.streams["stdout"].write(b"before ")
    source.annotation()  # a checkpoint: one segment
    source.streams["stdout"].write(b"the move\n")
    counts = source.annotation()[META_KEY]  # the migrated state's counts (sent while stopped): a second
    source.close()
    assert log_counts(spec, "j") == counts == {"stdout": 16, "stderr": 0}

    def segments() -> list[str]:
        return sorted(i.key for i in FsObjects(tmp_path / "store").listing("j/log/")) if kind == "object" else []

    before = segments()
    assert kind == "path" or len(before) == 2
    target = open_log(spec, "j", None)
    target.open(counts)
    assert segments() == before, "the target wrote to the store before it held the job"

    def lost() -> None:
        raise SnapshotError("lost the job's lease")

    if fence == "held":
        fence_log(target, Fence(lambda: None, lambda: None))
        assert kind == "path" or segments() == ["j/log/stdout/0000000000000000"], "merged under the fence"
    else:
        if kind == "object":
            with pytest.raises(SnapshotError, match="lost the job's lease"):
                fence_log(target, Fence(lambda: None, lost))
            assert segments() == before, "nothing tidied once the fence was lost"
        else:
            fence_log(target, Fence(lambda: None, lost))
    target.streams["stdout"].write(b"after\n")
    if kind == "object" and fence == "lost":  # the fence guards what the target sends
        with pytest.raises(SnapshotError, match="lost the job's lease"):
            target.annotation()
    target.close()
    sent = kind == "path" or fence == "held"
    assert read_log(spec, "j", "stdout") == b"before the move\n" + (b"after\n" if sent else b"")


# --- one runner at a time: a runner that lost the job stops acting (wasmig/ray/actor.py) -----------
PROGRAMS = Path(__file__).parent / "programs"


def fleet_work_spec(tmp_path: Path, name: str, store: str, **more: object) -> JobSpec:
    """A job of fleet_work.c stepping (20 ms apart) until data/NAME.stop appears."""
    from wasmig.toolchain import compile_c

    (tmp_path / "data").mkdir(exist_ok=True)
    return JobSpec(module=compile_c(PROGRAMS / "fleet_work.c").read_bytes(), module_name="fleet_work.wasm",
                   args=(name, "0", "20"), dirs=((str(tmp_path / "data"), "data"),), store=store, prewarm=False,
                   **more)  # type: ignore[arg-type]


def expected_steps(name: str, steps: int) -> bytes:
    """fleet_work.c's stdout (and data file) for ``steps`` steps, computed here."""
    h, out = 2166136261, []
    for i in range(steps):
        for k in range(20000):
            h = ((h ^ ((i * 31 + k) & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
        out.append(f"{name} step {i} {h:08x}\n")
    return "".join(out).encode()


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_a_runner_whose_lease_lapsed_stops_its_program_before_the_job_is_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    """A runner that cannot renew its lease (its beats fail: the store unreachable from it, or the
    process paused) lets its program make no more host calls once it is fenced (half the period),
    and its run ends ``fenced`` -- before a contender may take the job (a whole period). It used to
    refuse only its checkpoints and log segments: the program ran on, writing the job's files beside
    the runner that took the job."""
    import threading

    from wasmig.ray import jobstore
    from wasmig.ray.actor import JobRunner

    if engine == "wasmtime":
        pytest.importorskip("wasmtime")
    monkeypatch.setattr(jobstore, "LEASE_S", HELD_PERIOD)
    cut = threading.Event()
    beat = Lease._beat

    def failing_beat(self: Lease, n: int) -> None:
        if cut.is_set() and self.generation == 1:
            raise OSError("the store is unreachable from this runner")
        beat(self, n)

    monkeypatch.setattr(Lease, "_beat", failing_beat)
    backend(tmp_path)
    spec = fleet_work_spec(tmp_path, "lapse", f"file://{tmp_path}/store", checkpoint_every=0.3)
    out = tmp_path / "data" / "lapse.out"
    results: dict[str, dict[str, object]] = {}
    first = JobRunner("j-lapse", spec, engine)
    a = threading.Thread(target=lambda: results.update(first=first.run(restore=False)))
    a.start()
    deadline = time.monotonic() + 60
    while not (first.status()["checkpoints"] >= 1 and out.exists() and out.read_bytes().count(b"\n") >= 3):
        assert time.monotonic() < deadline and a.is_alive(), results
        time.sleep(0.02)
    cut.set()
    second = JobRunner("j-lapse", spec, engine)
    b = threading.Thread(target=lambda: results.update(second=second.run(restore=True, on_file_change="ignore")))
    b.start()
    try:
        resumed, _ = second.resumed_at(60.0)
        assert resumed is not None, results
        # the second runner holds the job and its program runs: the first's had ended already
        assert not a.is_alive(), "the runner that lost the lease still runs its program"
        assert results["first"]["outcome"] == "fenced", results
        assert "lost the job's lease" in str(results["first"]["error"])
        assert first.fenced and not second.fenced
    finally:
        (tmp_path / "data" / "lapse.stop").touch()
        a.join(60)
        b.join(120)
    assert results["second"] == {"outcome": "exited", "code": 0}, results
    log = read_log(spec, "j-lapse", "stdout")
    assert log == expected_steps("lapse", log.count(b"\n"))
    assert out.read_bytes() == expected_steps("lapse", out.read_bytes().count(b"\n"))


ORPHAN_SCRIPT = """
import os, subprocess, sys
if sys.argv[1] == "raylet":  # stands for the raylet: starts the worker, with Ray's environment variable
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[2], "worker", *sys.argv[3:]],
                              env={**os.environ, "RAY_RAYLET_PID": str(os.getpid())})
    print(worker.pid, flush=True)
    worker.wait()
    sys.exit(0)
from wasmig.ray.actor import JobRunner
from wasmig.ray.spec import JobSpec
spec = JobSpec(module=open(sys.argv[2], "rb").read(), module_name="fleet_work.wasm", args=("orphan", "0", "20"),
               dirs=((sys.argv[3], "data"),), store=sys.argv[4], checkpoint_every=0.3, prewarm=False)
print(JobRunner("j-orphan", spec, "interp").run(restore=False), flush=True)
"""


def test_a_runner_whose_raylet_died_ends_its_process(tmp_path: Path) -> None:
    """A Ray worker outlives its raylet (reparented, it went on running the job's program for as
    long as it lived: tests/test_ray_node_loss.py), while Ray counts its actor dead and the
    controller restarts the job elsewhere. A runner started by a raylet (RAY_RAYLET_PID its parent)
    ends its own process once that parent is gone."""
    import os
    import signal
    import subprocess
    import sys

    from wasmig.toolchain import compile_c

    (tmp_path / "data").mkdir()
    out = tmp_path / "data" / "orphan.out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    raylet = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, "raylet", ORPHAN_SCRIPT,
                               str(compile_c(PROGRAMS / "fleet_work.c")), str(tmp_path / "data"),
                               str(tmp_path / "store")], stdout=subprocess.PIPE, text=True, env=env)
    assert raylet.stdout is not None
    worker = int(raylet.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_bytes().count(b"\n") >= 3):
            assert time.monotonic() < deadline and raylet.poll() is None, "the job did not start"
            time.sleep(0.02)
        raylet.kill()
        raylet.wait()
        deadline = time.monotonic() + 10
        while _running(worker):
            assert time.monotonic() < deadline, "the worker runs on without its raylet"
            time.sleep(0.02)
        written = out.read_bytes()
        assert written == expected_steps("orphan", written.count(b"\n"))
    finally:
        if _running(worker):
            os.kill(worker, signal.SIGKILL)
        raylet.stdout.close()


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("taken", [True, False])
def test_a_live_target_tidies_the_log_once_it_holds_the_job_or_gives_up_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: bool) -> None:
    """live.FleetTarget, after the commit: with the job's fence taken, the log is tidied under it
    (fence_log) and the program guarded; if the fence cannot be taken in time, the program goes on
    without it (committed: the source's is stopped) and its log is tidied all the same, as before
    a target only read the store, so that its segments go after the move's counts."""
    from types import SimpleNamespace

    from wasmig.ray import live
    from wasmig.ray.jobstore import Fence

    b = backend(tmp_path)
    source = SegmentLog(b, "j/log/", "j")
    source.open(None)
    for part in (b"before ", b"the move\n"):
        source.streams["stdout"].write(part)
        counts = source.annotation()[META_KEY]
    source.close()
    target = SegmentLog(b, "j/log/", "j", held=False)
    target.open(counts)
    assert len(list(b.listing("j/log/stdout/"))) == 2
    fence = Fence(lambda: None, lambda: None)

    def take(spec: object, job_id: str, timeout: float) -> Fence:
        if not taken:
            raise TimeoutError("another runner still holds it")
        return fence

    monkeypatch.setattr(live, "take_fence", take)
    guarded = []
    me = SimpleNamespace(runner=SimpleNamespace(spec=None, job_id="j", guard=lambda f: guarded.append(f) or f),
                         log=target, id="m1", fence=None)
    program = SimpleNamespace(wasi=SimpleNamespace(fence=None))
    live.FleetTarget._before_start(me, program)  # type: ignore[arg-type]
    assert [i.key for i in b.listing("j/log/stdout/")] == ["j/log/stdout/0000000000000000"], "tidied"
    assert target.held and (guarded == [fence]) is taken and (target.check == fence.check) is taken
    target.streams["stdout"].write(b"after\n")
    target.close()
    spec = JobSpec(module=b"", module_name="x", store=f"file://{tmp_path}/store")
    assert read_log(spec, "j", "stdout") == b"before the move\nafter\n"
