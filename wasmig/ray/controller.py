"""The fleet's control plane: one detached, named Ray actor (``wasmig-controller`` in the namespace
``wasmig``) holding the job table, starting each job as a :class:`~wasmig.ray.actor.JobRunner`
actor, moving jobs (``migrate``, ``drain``) and restarting those whose actor died (a node lost)
from their latest checkpoint. No daemon of its own: it lives as long as the Ray cluster.

A move is live where it can be (:mod:`wasmig.ray.live`: pre-copy from the running source to a
target runner, which restores and resumes it before the source commits; a failure before the commit
leaves the job running where it was), else checkpoint-and-stop on the source, restore on the
target. Either way the target actor is started and its module loaded *before* the source stops
(the worker start is not part of the downtime). A TCP server job has a gateway actor
(:mod:`wasmig.ray.gateway`) its clients connect to, which keeps them through live moves.
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
from wasmig.ray.gateway import GatewayActor
from wasmig.ray.joblog import STREAMS
from wasmig.ray.jobstore import checkpoint_age, read_log
from wasmig.ray.live import fingerprint, new_key_pem
from wasmig.ray.placement import choose_node, node_engine, resolve_node
from wasmig.ray.spec import FleetError, GatewaySpec, JobSpec

CONTROLLER_NAME = "wasmig-controller"
NAMESPACE = "wasmig"
#: how long a new actor may take to start (a worker process, the module decoded) before a move gives up
ACTOR_START_TIMEOUT_S = 120.0
#: how long a source may take to reach its stable point and write the last checkpoint
STOP_TIMEOUT_S = 120.0
#: how long a live move may take from the source's first page to the target's commit
LIVE_MOVE_TIMEOUT_S = 600.0
FINAL_STATES = ("exited", "trapped", "failed", "cancelled")
#: why a TCP server job ends when a new controller takes over its table (see Controller._recover)
GATEWAY_LOST = ("its gateway ended with the controller that started it (clients' connections are gone): "
                "submit it again")

RemoteRunner = ray.remote(JobRunner)
RemoteGateway = ray.remote(GatewayActor)


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
    fingerprint: str | None = None  # the key of the runner it runs in (a live move's source pins it)
    gateway: Any = None  # its gateway actor (a TCP server job)


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
        if spec.gateway is not None:
            job.gateway, job.spec = self._start_gateway(job.id, spec)
        with self._lock:
            table.save_spec(job.id, job.spec)  # with its gateway's addresses (see _recover)
            self._jobs[job.id] = job
            self._start(job, node, restore=False)
            self._persist()
        return job.id

    def _start_gateway(self, job_id: str, spec: JobSpec) -> tuple[Any, JobSpec]:
        """The job's gateway actor, on this (the head) node; ``spec`` with its addresses."""
        assert spec.gateway is not None
        actor = RemoteGateway.options(
            name=f"wasmig-gateway-{job_id}", num_cpus=0, max_concurrency=4, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        ).remote(spec.gateway.listen, new_key_pem())
        try:
            where = ray.get(actor.addresses.remote(), timeout=ACTOR_START_TIMEOUT_S)
        except RayError as e:
            ray.kill(actor)
            cause = getattr(e, "cause", None)
            raise FleetError(str(cause) if isinstance(cause, FleetError) else f"the gateway did not start: {e}") \
                from None
        return actor, replace(spec, gateway=GatewaySpec(spec.gateway.listen, **where))

    # --- the table kept in the GCS (wasmig/ray/table.py) ----------------------------------------
    def _recover(self) -> None:
        """The jobs a previous controller saved. Their runners were this actor's predecessor's
        and died with it (Ray ends an actor with its owner): each job not ended runs again from
        its latest checkpoint (a restart, as after a lost node: docs/fleet.md), except a TCP server
        job: its gateway actor died with the previous controller too, and with it its clients'
        connections and the gateway address its snapshots name, so it ends ``failed`` (GATEWAY_LOST)."""
        for row, spec in table.load():
            job = Job(id=row["id"], spec=spec, state=row["state"], node=row.get("node"), engine=row.get("engine"),
                      restarts=int(row.get("restarts", 0)), moves=list(row.get("moves", [])),
                      outcome=dict(row.get("outcome", {})), avoid=set(row.get("avoid", [])))
            if job.state not in FINAL_STATES and spec.gateway is not None:
                job.outcome = {"outcome": "failed", "error": GATEWAY_LOST}
                job.state = "failed"
            elif job.state not in FINAL_STATES:
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
            last = job.moves[-1] if job.moves else {}
            rows.append({"job": job.id, "node": job.node, "engine": job.engine, "state": job.state,
                         "checkpoint_age_s": checkpoint_age(job.spec, job.id),
                         "restarts": job.restarts, "moves": len(job.moves), "program": job.spec.module_name,
                         "code": job.outcome.get("code"), "error": job.outcome.get("error"),
                         "last_downtime_s": last.get("downtime_s"), "last_move_mode": last.get("mode"),
                         "gateway": job.spec.gateway.public if job.spec.gateway is not None else None})
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

    def migrate(self, job_id: str, to: str | None = None, fault: str | None = None,
                pages: str | None = None) -> dict[str, Any]:
        """Move a running job to node ``to`` (id or prefix; None: the best other node). ``fault``:
        for the tests, the step of a live move at which the target runner kills itself
        (:meth:`JobRunner.receive`); ``pages``: how a live move's pages travel ("ray" or
        "channel"; None: the job's ``JobSpec.pages``)."""
        if pages not in (None, "ray", "channel"):
            raise FleetError(f"pages travel by 'ray' or 'channel', not {pages!r}")
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
        return self._move(job, target, fault, pages)

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
            return list(pool.map(lambda plan: self._move_or_say_why(*plan), plans))

    def _move_or_say_why(self, job: Job, target: str) -> dict[str, Any]:
        """A drain's move: one that fails (the job goes on where it was) is a record saying why."""
        try:
            return self._move(job, target)
        except FleetError as e:
            return {"job": job.id, "from": job.node, "to": target, "error": str(e)}

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
            gateway, job.gateway = job.gateway, None
        for it in (actor, gateway):
            if it is not None:
                ray.kill(it)

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

    def _new_actor(self, job: Job, node: str) -> tuple[Any, str | None, str]:
        """A runner for ``job`` on ``node``, with a key of its own (made here, handed over in the
        actor's arguments: docs/fleet.md, Security) that the job's gateway, if any, now trusts;
        the actor, its engine and its key's fingerprint."""
        # every node runs this same installation (one machine, or one image): its default engine is ours
        engine = node_engine(ray.nodes(), node, job.spec.engine) or engines.default()[0]
        key = new_key_pem()
        if job.gateway is not None:
            ray.get(job.gateway.trust.remote(fingerprint(key)), timeout=ACTOR_START_TIMEOUT_S)
        actor = RemoteRunner.options(
            num_cpus=job.spec.num_cpus, resources=dict(job.spec.placement.resources), max_concurrency=4,
            max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(job.id, job.spec, engine, key)
        return actor, engine, fingerprint(key)

    def _ready_actor(self, job: Job, node: str) -> tuple[Any, str | None, str]:
        """:meth:`_new_actor`, once it answered (its worker started, the module decoded); a
        FleetError if it did not, the job running where it was (state ``running`` again)."""
        new = None
        try:
            new, engine, key = self._new_actor(job, node)
            ray.get(new.ready.remote(), timeout=ACTOR_START_TIMEOUT_S)
        except RayError as e:
            if new is not None:
                ray.kill(new)
            with self._lock:
                job.state = "running"
            raise FleetError(f"job {job.id}: the target actor on {node[:12]} did not start: {e}") from None
        return new, engine, key

    def _start(self, job: Job, node: str, *, restore: bool, on_file_change: str = "fail") -> None:
        """Start (or restart) ``job`` on ``node`` (the lock held)."""
        actor, engine, key = self._new_actor(job, node)
        job.actor, job.node, job.engine, job.fingerprint = actor, node, engine, key
        job.run_ref = actor.run.remote(restore, on_file_change)
        job.state = "running"

    def _move(self, job: Job, target: str, fault: str | None = None, pages: str | None = None) -> dict[str, Any]:
        """Move ``job`` (state ``moving``) to ``target``: live where it can (pre-copy), else
        checkpoint-and-stop where it runs and restore on ``target``."""
        record: dict[str, Any] = {"job": job.id, "from": job.node, "to": target}
        started = time.perf_counter()
        new, engine, key = self._ready_actor(job, target)
        record["target_ready_s"] = time.perf_counter() - started
        if job.spec.live:
            record["pages_via"] = pages or job.spec.pages
            moved = self._move_live(job, target, new, engine, key, record, fault, started)
            if moved is not None:
                return moved
            del record["pages_via"]
        if job.gateway is not None:  # its connections would not survive a checkpoint-stop-restore
            ray.kill(new)
            with self._lock:
                job.state = "running"
            raise FleetError(f"job {job.id} is a TCP server behind a gateway and cannot move live now: "
                             f"{record.get('why_not_live')}")
        if record.pop("target_spent", False):  # it listened (and received) for the live move: killed,
            new, engine, key = self._ready_actor(job, target)  # a fresh one restores
        record["mode"] = "stop-and-copy"
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
        try:
            resumed_at, restore_s = ray.get(new.resumed_at.remote(), timeout=STOP_TIMEOUT_S)
        except RayError as e:  # the target died (or hung) restoring: the monitor restarts the job from
            resumed_at, restore_s = None, None  # the checkpoint the source wrote (its run_ref fails)
            record["error"] = f"the target runner was lost while it restored: {str(e).splitlines()[0]}"
        ray.kill(old)
        record.update(stopped_s=(result.get("stopped_at") or stop_at) - stop_at, restore_s=restore_s,
                      downtime_s=(resumed_at - stop_at) if resumed_at else None, engine=engine,
                      total_s=time.perf_counter() - started)
        with self._lock:
            job.moves.append(record)
            if job.state == "cancelled":  # cancelled while it moved: the new runner goes too
                ray.kill(new)
                return record
            job.actor, job.run_ref, job.node, job.engine, job.fingerprint = new, run_ref, target, engine, key
            job.state = "running"
        return record

    def _move_live(self, job: Job, target: str, new: Any, engine: str | None, key: str, record: dict[str, Any],
                   fault: str | None, started: float) -> dict[str, Any] | None:
        """The live move to the ready runner ``new`` (:mod:`wasmig.ray.live`); the record, or
        None when the source cannot move live (``record["why_not_live"]``: the caller falls back
        to stop-and-copy). A failure after it began leaves the job running at the source (or, if
        the program ended meanwhile, recorded as ended) and raises FleetError."""
        try:  # asked first: a source that cannot move live (its program not started yet, after a
            # restart; stopping; threaded) leaves the target untouched, for stop-and-copy
            refusal = ray.get(job.actor.precopy_refusal.remote(), timeout=STOP_TIMEOUT_S)
        except RayError as e:  # the source died (or hung): stop-and-copy says what became of it
            refusal = f"the source runner did not answer: {str(e).splitlines()[0]}"
        if refusal is not None:
            record["why_not_live"] = refusal
            return None
        try:
            address = ray.get(new.listen.remote(), timeout=ACTOR_START_TIMEOUT_S)
        except RayError as e:
            record["why_not_live"] = f"the target runner did not listen: {str(e).splitlines()[0]}"
            record["target_spent"] = True
            ray.kill(new)
            return None
        via_ray = record["pages_via"] == "ray"
        run_ref = new.receive.remote(job.fingerprint, fault, job.actor if via_ray else None)
        try:
            result = ray.get(job.actor.migrate_to.remote(address, key, via_ray), timeout=LIVE_MOVE_TIMEOUT_S)
        except RayError as e:  # the source's runner died (or hung): the monitor restarts the job
            result = {"ok": False, "error": f"the source runner was lost: {str(e).splitlines()[0]}"}
        if not result["ok"]:
            ray.kill(new)
            if job.gateway is not None:
                job.gateway.forget.remote(key)
            if "refused" in result:  # it stopped being movable since it was asked (its program ended)
                record["why_not_live"] = result["refused"]
                record["target_spent"] = True  # it listened and received: a fresh target for stop-and-copy
                return None
            return self._live_move_failed(job, record, result)
        try:
            arrival = ray.get(new.arrival_report.remote(), timeout=STOP_TIMEOUT_S) or {}
        except RayError:  # committed, then the target died: the monitor restarts it from its run_ref's loss
            arrival = {}
        try:
            source = ray.get(job.run_ref, timeout=STOP_TIMEOUT_S)
        except RayError as e:
            source = {"outcome": "lost", "error": str(e).splitlines()[0]}
        old, old_key = job.actor, job.fingerprint
        ray.kill(old)
        if job.gateway is not None and old_key is not None:
            job.gateway.forget.remote(old_key)
        record.update(mode="pre-copy", source_outcome=source["outcome"], engine=engine,
                      # the source's clock from its last instruction to the commit confirmed, then the
                      # target's from the confirmation to the gate open: no two machines' clocks mixed
                      downtime_s=result["downtime_s"] + arrival.get("gate_s", 0.0),
                      source_downtime_s=result["downtime_s"], gate_s=arrival.get("gate_s"),
                      fence_wait_s=arrival.get("fence_wait_s"), bytes_sent=result["bytes_sent"],
                      rounds=result["rounds"], pages_sent=result["pages_sent"], pages_known=result["pages_known"],
                      total_s=time.perf_counter() - started, migration_s=result["total_s"])
        with self._lock:
            job.moves.append(record)
            if job.state == "cancelled":
                ray.kill(new)
                return record
            job.actor, job.run_ref, job.node, job.engine, job.fingerprint = new, run_ref, target, engine, key
            job.state = "running"
        return record

    def _live_move_failed(self, job: Job, record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """The live move failed: the program ended meanwhile (recorded as such), or it goes on at
        the source (FleetError says why)."""
        ready, _ = ray.wait([job.run_ref], timeout=5.0 if "ended before" in result["error"] else 0.0)
        if ready:
            try:
                ended = ray.get(job.run_ref)
            except RayError:
                ended = None
            if ended is not None and ended["outcome"] in ("exited", "trapped", "failed"):
                record["source_outcome"] = ended["outcome"]
                with self._lock:
                    self._finish(job, ended)
                return record
        record.update(mode="pre-copy", error=result["error"])
        with self._lock:
            job.moves.append(record)
            if job.state == "moving":
                job.state = "running"  # the monitor watches its run again (and restarts it if lost)
        where = "stays stopped, saved" if result.get("in_doubt") else f"goes on on {str(job.node)[:12]}"
        raise FleetError(f"job {job.id}: the live move failed, the job {where}: {result['error']}")

    def _finish(self, job: Job, result: dict[str, Any]) -> None:
        job.outcome = result
        job.state = result["outcome"]
        for it in (job.actor, job.gateway):
            if it is not None:
                ray.kill(it)
        job.actor, job.run_ref, job.gateway = None, None, None

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
            if result is not None and result["outcome"] not in ("stopped", "busy", "fenced"):
                self._finish(job, result)
                return
            # lost with its node or worker (or stopped by SIGTERM, or its old runner was still there,
            # or it lost the job's lease): again from its latest checkpoint
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
