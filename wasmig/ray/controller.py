"""The fleet's control plane: one detached, named Ray actor (``wasmig-controller`` in the namespace
``wasmig``) holding the job table, starting each job as a :class:`~wasmig.ray.actor.JobRunner`
actor, moving jobs (``migrate``, ``drain``) and restarting those whose actor died (a node lost)
from their latest checkpoint. No daemon of its own: it lives as long as the Ray cluster.

A move is checkpoint-and-stop on the source, restore on the target, with the target actor started
and its module loaded *before* the source stops (the worker start is not part of the downtime).
A restart after a loss takes the latest periodic checkpoint: the work and the output after it are
done again (at-least-once; the output log is truncated to the checkpoint, docs/fleet.md).
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wasmig import engines
from wasmig.ray import table
from wasmig.ray.actor import JobRunner
from wasmig.ray.joblog import STREAMS
from wasmig.ray.jobstore import checkpoint_age, read_log
from wasmig.ray.placement import choose_node, node_engine, resolve_node
from wasmig.ray.spec import FleetError, JobSpec

CONTROLLER_NAME = "wasmig-controller"
NAMESPACE = "wasmig"
#: how long a new actor may take to start (a worker process, the module decoded) before a move gives up
ACTOR_START_TIMEOUT_S = 120.0
#: how long a source may take to reach its stable point and write the last checkpoint
STOP_TIMEOUT_S = 120.0
FINAL_STATES = ("exited", "trapped", "failed", "cancelled")

RemoteRunner = ray.remote(JobRunner)


@dataclass
class Job:
    """One row of the job table."""

    id: str
    spec: JobSpec
    state: str = "pending"  # pending, running, moving, restarting, exited, trapped, failed, cancelled
    node: str | None = None
    engine: str | None = None
    actor: Any = None
    run_ref: Any = None
    restarts: int = 0
    moves: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)
    avoid: set[str] = field(default_factory=set)  # nodes a pending restart must not use


class Controller:
    """The job table and what changes it (wrapped by ``ray.remote``: a threaded actor, the monitor
    in a thread of its own)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._draining: set[str] = set()
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._saved: bytes | None = None  # the table as last saved (wasmig/ray/table.py)
        self._recover()
        self._monitor = threading.Thread(target=self._watch, name="wasmig-fleet-monitor", daemon=True)
        self._monitor.start()

    # --- requests ------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> str:
        """Start a job on a node its placement allows; its id."""
        job = Job(id=f"j-{secrets.token_hex(4)}", spec=spec)
        with self._lock:
            node = self._choose(spec, avoid=self._draining)
            table.save_spec(job.id, spec)
            self._jobs[job.id] = job
            self._start(job, node, restore=False)
            self._persist()
        return job.id

    # --- the table kept in the GCS (wasmig/ray/table.py) ----------------------------------------
    def _recover(self) -> None:
        """The jobs a previous controller saved. Their runners were this actor's predecessor's
        and died with it (Ray ends an actor with its owner): each job not ended runs again from
        its latest checkpoint (a restart, as after a lost node: docs/fleet.md)."""
        for row, spec in table.load():
            job = Job(id=row["id"], spec=spec, state=row["state"], node=row.get("node"), engine=row.get("engine"),
                      restarts=int(row.get("restarts", 0)), moves=list(row.get("moves", [])),
                      outcome=dict(row.get("outcome", {})), avoid=set(row.get("avoid", [])))
            if job.state not in FINAL_STATES:
                job.state = "restarting"
                job.restarts += 1
            self._jobs[job.id] = job

    def _persist(self) -> None:
        """Save the table if it changed since it was last saved (the lock held, or the monitor's)."""
        with self._lock:
            rows = [{name: getattr(job, name) for name in table.ROW_FIELDS} for job in self._jobs.values()]
        data = table.encode_rows(rows)
        if data != self._saved:
            table.save_rows(data)
            self._saved = data

    def ps(self) -> list[dict[str, Any]]:
        """The job table: job, node, engine, state, last checkpoint's age, restarts, moves, exit."""
        with self._lock:
            jobs = list(self._jobs.values())
        rows = []
        for job in jobs:
            rows.append({"job": job.id, "node": job.node, "engine": job.engine, "state": job.state,
                         "checkpoint_age_s": checkpoint_age(job.spec, job.id),
                         "restarts": job.restarts, "moves": len(job.moves), "program": job.spec.module_name,
                         "code": job.outcome.get("code"), "error": job.outcome.get("error")})
        return rows

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's row, with its moves (downtimes) and outcome."""
        job = self._get(job_id)
        row = next(r for r in self.ps() if r["job"] == job.id)
        row["move_records"] = list(job.moves)
        return row

    def logs(self, job_id: str, stream: str = "stdout") -> bytes:
        if stream not in STREAMS:
            raise FleetError(f"no stream {stream!r} (stdout or stderr)")
        job = self._get(job_id)
        return read_log(job.spec, job.id, stream)

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """The job's row once it ended (or at ``timeout``, as it is then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._get(job_id).state not in FINAL_STATES:
            time.sleep(0.1)
        return self.job(job_id)

    def migrate(self, job_id: str, to: str | None = None) -> dict[str, Any]:
        """Move a running job to node ``to`` (id or prefix; None: the best other node)."""
        job = self._get(job_id)
        with self._lock:
            if job.state != "running":
                raise FleetError(f"job {job.id} is {job.state}: only a running job moves")
            if to is not None:
                target = resolve_node(ray.nodes(), to)
                if target == job.node:
                    raise FleetError(f"job {job.id} already runs on node {target[:12]}")
            else:
                target = self._choose(job.spec, avoid=self._draining | {job.node}, pinned=False)
            job.state = "moving"
        return self._move(job, target)

    def drain(self, node: str) -> list[dict[str, Any]]:
        """Take no more jobs on ``node`` and move every job off it (in parallel); the moves."""
        node_id = resolve_node(ray.nodes(), node)
        with self._lock:
            self._draining.add(node_id)
            leaving = [j for j in self._jobs.values() if j.node == node_id and j.state == "running"]
            plans = []
            for job in leaving:
                plans.append((job, self._choose(job.spec, avoid=self._draining | {node_id}, pinned=False)))
                job.state = "moving"
        if not plans:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(plans))) as pool:
            return list(pool.map(lambda plan: self._move(*plan), plans))

    def undrain(self, node: str) -> None:
        with self._lock:
            self._draining.discard(resolve_node(ray.nodes(), node))

    def cancel(self, job_id: str) -> None:
        job = self._get(job_id)
        with self._lock:
            if job.state in FINAL_STATES:
                raise FleetError(f"job {job.id} already {job.state}")
            job.state = "cancelled"
            actor, job.actor, job.run_ref = job.actor, None, None
        if actor is not None:
            ray.kill(actor)

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes: id, labels, jobs running there, draining or not."""
        with self._lock:
            load = self._load()
            draining = set(self._draining)
        return [{"node": n["NodeID"], "labels": {k: v for k, v in (n.get("Labels") or {}).items()
                                                 if not k.startswith("ray.io/")},
                 "jobs": load.get(n["NodeID"], 0), "draining": n["NodeID"] in draining}
                for n in ray.nodes() if n.get("Alive")]

    def home(self) -> str:
        """The node the controller runs on (the head: wasmig/ray/client.py)."""
        return ray.get_runtime_context().get_node_id()

    def shutdown(self) -> None:
        """Stop watching, end every job's runner (before the controller itself is killed), and
        forget the saved table: a fleet shut down on purpose does not come back."""
        self._closed.set()
        table.forget_all()
        with self._lock:
            actors = [j.actor for j in self._jobs.values() if j.actor is not None]
        for actor in actors:
            ray.kill(actor)

    # --- starting and moving -------------------------------------------------------------------
    def _get(self, job_id: str) -> Job:
        with self._lock:
            matches = [j for j in self._jobs.values() if j.id == job_id or j.id.startswith(job_id)]
        if len(matches) != 1:
            raise FleetError(f"no job {job_id!r}" if not matches else f"job {job_id!r} is ambiguous")
        return matches[0]

    def _load(self) -> dict[str, int]:
        load: dict[str, int] = {}
        for job in self._jobs.values():
            if job.node is not None and job.state not in FINAL_STATES:
                load[job.node] = load.get(job.node, 0) + 1
        return load

    def _choose(self, spec: JobSpec, avoid: set[str], *, pinned: bool = True) -> str:
        """A node for ``spec``; ``pinned=False`` (a move, a restart) lets a job pinned to a node go
        elsewhere, with the same labels and resources."""
        placement = spec.placement if pinned else replace(spec.placement, node=None)
        return choose_node(ray.nodes(), placement, self._load(), avoid=avoid, cpus=spec.num_cpus)

    def _new_actor(self, job: Job, node: str) -> tuple[Any, str | None]:
        # every node runs this same installation (one machine, or one image): its default engine is ours
        engine = node_engine(ray.nodes(), node, job.spec.engine) or engines.default()[0]
        actor = RemoteRunner.options(
            num_cpus=job.spec.num_cpus, resources=dict(job.spec.placement.resources), max_concurrency=4,
            max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(job.id, job.spec, engine)
        return actor, engine

    def _start(self, job: Job, node: str, *, restore: bool, on_file_change: str = "fail") -> None:
        """Start (or restart) ``job`` on ``node`` (the lock held)."""
        actor, engine = self._new_actor(job, node)
        job.actor, job.node, job.engine = actor, node, engine
        job.run_ref = actor.run.remote(restore, on_file_change)
        job.state = "running"

    def _move(self, job: Job, target: str) -> dict[str, Any]:
        """Checkpoint-and-stop ``job`` (state ``moving``) where it runs, restore it on ``target``."""
        record: dict[str, Any] = {"job": job.id, "from": job.node, "to": target}
        started = time.perf_counter()
        new, engine = self._new_actor(job, target)
        try:
            ray.get(new.ready.remote(), timeout=ACTOR_START_TIMEOUT_S)
        except RayError as e:
            ray.kill(new)
            with self._lock:
                job.state = "running"
            raise FleetError(f"job {job.id}: the target actor on {target[:12]} did not start: {e}") from None
        record["target_ready_s"] = time.perf_counter() - started
        stop_at = time.time()
        job.actor.stop.remote()
        try:
            result = ray.get(job.run_ref, timeout=STOP_TIMEOUT_S)
        except RayError as e:  # the source died (or hung) meanwhile: restore anyway
            result = {"outcome": "lost", "error": str(e).splitlines()[0]}
        record["source_outcome"] = result["outcome"]
        old = job.actor
        if result["outcome"] in ("exited", "trapped", "failed"):  # it ended before it could stop
            ray.kill(new)
            with self._lock:
                self._finish(job, result)
            return record
        run_ref = new.run.remote(True, "fail" if result["outcome"] == "stopped" else "ignore")
        resumed_at, restore_s = ray.get(new.resumed_at.remote(), timeout=STOP_TIMEOUT_S)
        ray.kill(old)
        record.update(stopped_s=(result.get("stopped_at") or stop_at) - stop_at, restore_s=restore_s,
                      downtime_s=(resumed_at - stop_at) if resumed_at else None, engine=engine,
                      total_s=time.perf_counter() - started)
        with self._lock:
            job.moves.append(record)
            if job.state == "cancelled":  # cancelled while it moved: the new runner goes too
                ray.kill(new)
                return record
            job.actor, job.run_ref, job.node, job.engine = new, run_ref, target, engine
            job.state = "running"
        return record

    def _finish(self, job: Job, result: dict[str, Any]) -> None:
        job.outcome = result
        job.state = result["outcome"]
        if job.actor is not None:
            ray.kill(job.actor)
        job.actor, job.run_ref = None, None

    # --- the monitor: ends and losses ---------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed.is_set():
            try:  # every change of the table (moves, ends, restarts) is saved within a round
                self._persist()
            except Exception as e:  # noqa: BLE001 - the jobs matter more than their row's copy
                print(f"wasmig fleet: cannot save the job table: {type(e).__name__}: {e}", file=sys.stderr)
            with self._lock:
                watched = {j.run_ref: j for j in self._jobs.values() if j.state == "running" and j.run_ref is not None}
                waiting = [j for j in self._jobs.values() if j.state == "restarting"]
            for job in waiting:
                self._restart(job)
            if not watched:
                time.sleep(0.2)
                continue
            ready, _ = ray.wait(list(watched), num_returns=len(watched), timeout=0.5)
            for ref in ready:
                try:
                    self._ended(watched[ref], ref)
                except Exception as e:  # noqa: BLE001 - the monitor must outlive any one job's trouble
                    print(f"wasmig fleet: job {watched[ref].id}: {type(e).__name__}: {e}", file=sys.stderr)

    def _ended(self, job: Job, ref: Any) -> None:
        try:
            result = ray.get(ref)
        except RayError:  # the actor died (its node or worker lost) or could not be placed
            result = None
        with self._lock:
            if job.run_ref is not ref or job.state != "running":
                return  # a move or a cancel owns it now
            if result is not None and result["outcome"] not in ("stopped", "busy"):
                self._finish(job, result)
                return
            # lost with its node or worker (or stopped by SIGTERM, or its old runner was still there):
            # again from its latest checkpoint
            job.restarts += 1
            if job.node is not None and not any(n["NodeID"] == job.node and n.get("Alive") for n in ray.nodes()):
                job.avoid.add(job.node)
            job.actor, job.run_ref, job.state = None, None, "restarting"
        self._restart(job)

    def _restart(self, job: Job) -> None:
        with self._lock:
            if job.state != "restarting":
                return
            try:
                node = self._choose(job.spec, avoid=self._draining | job.avoid, pinned=False)
            except FleetError:
                return  # no node fits now: tried again by the monitor
            # files written after the checkpoint are not rolled back (docs/fleet.md): reopen them as they are
            self._start(job, node, restore=True, on_file_change="ignore")
