"""One fleet job's program, run with wasmig inside a Ray actor (the controller wraps this class
with ``ray.remote``; it is plain Python, so it is also usable and testable without Ray).

The program runs in :meth:`JobRunner.run`, which blocks until it ends, stops, or fails; the
actor is a threaded one, so :meth:`checkpoint`, :meth:`stop` and :meth:`status` reach it meanwhile.
Its standard streams go to the job log (:mod:`wasmig.ray.joblog`), whose byte counts each snapshot
records. Checkpoints go to the job's store (:mod:`wasmig.ray.jobstore`: a path, or ``s3://``) every
``checkpoint_every`` seconds, on
:meth:`checkpoint`, and on :meth:`stop` (then the run ends: what a move and a drain use), and on
SIGTERM when the worker gets one (Ray's notice before it ends a worker), in the actor's main thread.

One runner at a time (docs/fleet.md): a runner holds the job's fence for its run; a runner whose
lease lapsed (an object store's fence) lets its program make no more host calls (the run ends
``fenced``: the controller restarts the job), and a runner whose node's raylet is gone ends its
own process at once (Ray counts its actor dead and restarts the job elsewhere; a Ray worker
outlives its raylet, and its program would go on running and writing unseen).

A live move (:mod:`wasmig.ray.live`) runs between two runners: the source's :meth:`migrate_to`
streams the running program to a target runner's :meth:`receive`, which then runs it as
:meth:`run` would. Each runner holds the key pair the controller made for it (its migration
channel's and its gateway connections' identity).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from wasmig.ray.joblog import JobLog, recorded_counts
from wasmig.ray.jobstore import FenceLost, latest_checkpoint, open_log, snapshots_location, take_fence, warm_store
from wasmig.ray.spec import JobSpec

#: how long a runner waits for an earlier runner of its job to be gone (see jobstore.take_fence)
FENCE_TIMEOUT_S = 60.0
#: how often a runner in a Ray worker looks whether its node's raylet (the worker's parent) is still there
NODE_WATCH_S = 0.1
#: after SIGTERM stopped the program, how long the process lives on before the signal ends it (if
#: the answer of run() has not reached the controller by then, it sees the actor die: the same restart)
SIGTERM_GRACE_S = 1.0

if TYPE_CHECKING:
    from wasmig.engines.base import Engine, Program
    from wasmig.keys import KeyPair
    from wasmig.migrate.target import HeldProgram
    from wasmig.module import Module
    from wasmig.ray.jobstore import Fence
    from wasmig.session.loop import Session


__all__ = ["JobRunner", "latest_checkpoint"]


class JobRunner:
    """Runs one job's program, fresh or from its latest snapshot, on the engine it was given."""

    def __init__(self, job_id: str, spec: JobSpec, engine: str | None, key_pem: bytes | None = None) -> None:
        from wasmig import engines
        from wasmig.module import Module
        from wasmig.ray.live import key_pair, new_key_pem
        from wasmig.wasi.gateway import use_key

        self.job_id = job_id
        self.spec = spec
        self.engine: Engine = engines.get(engine or engines.default()[0])
        # the module is decoded now, before a move stops the source (wasmtime compiles it itself)
        self.module: Module = Module.from_bytes(spec.module, decode=self.engine.needs_ir,
                                                validate=self.engine.needs_ir)
        self._session: Session | None = None
        self._stop_wanted = False
        self._started = threading.Event()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self.restored_from: str | None = None
        self._resumed_wall: float | None = None  # time.time() when the program (re)started running
        #: from run() called to the program running: the fence, the snapshot read, the restore
        self.prepare_s: float | None = None
        #: this runner's identity on a live move's channel and towards the job's gateway
        self.key: KeyPair = key_pair(key_pem or new_key_pem())
        use_key(self.key)  # one runner per worker process: its gateway connections show this key
        self._listener: Any = None  # a live move's target: where its source connects
        self._shelf: Any = None  # a live move's source: pages waiting for the target (live.PageShelf)
        self._held: HeldProgram | None = None  # a live move's target: the program that arrived
        self.arrival: dict[str, float] | None = None  # a live move's target: its part of the downtime
        #: set once this runner's program was refused a host call because its fence lapsed
        self.fenced = False
        self._install_sigterm()
        self._watch_node()
        if spec.prewarm:
            self._warm_up()

    # --- what the controller asks ------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        """Where this runner is: its node, engine, process and key (the controller waits for it)."""
        return {"engine": self.engine.name, "pid": os.getpid(), "node": _node_id(),
                "fingerprint": self.key.fingerprint}

    def run(self, restore: bool, on_file_change: str = "fail") -> dict[str, Any]:
        """Run the program to its end, or until :meth:`stop`; ``restore``: from the job's latest
        snapshot (if it has none yet, from the start). The outcome: ``exited`` (``code``),
        ``stopped`` (checkpointed for a move), ``trapped`` or ``failed`` (``error``), ``busy``
        (an earlier runner of the job still holds it: try again), ``fenced`` (this runner lost the
        job's lease: its program stopped at its next host call; the job goes on from its latest
        checkpoint, elsewhere)."""
        from wasmig.errors import Trap, WasmError
        from wasmig.session.loop import Session
        from wasmig.session.policy import CheckpointExit, CheckpointPolicy, MigratedAway, MigrationInDoubt

        entered = time.time()
        log: JobLog | None = None
        wasi = None
        timer: threading.Thread | None = None
        fence = None
        try:
            try:
                fence = take_fence(self.spec, self.job_id, FENCE_TIMEOUT_S)
            except TimeoutError as e:
                return {"outcome": "busy", "error": str(e)}
            log = open_log(self.spec, self.job_id, fence)
            latest = latest_checkpoint(self.spec, self.job_id) if restore else None
            if latest is not None:
                program, wasi = self._restored(latest, log, on_file_change)
            else:
                program, wasi = self._fresh(log)
            wasi.fence = self.guard(fence)
            policy = CheckpointPolicy(directory=snapshots_location(self.spec, self.job_id))
            session = Session(program, policy, self.spec.module_name)
            session.annotate = log.annotation
            with self._lock:
                self._session = session
                stop_now = self._stop_wanted
            self._resumed_wall = time.time()
            self.prepare_s = self._resumed_wall - entered
            self._started.set()
            if stop_now:
                self._request_stop()
            if self.spec.checkpoint_every:
                timer = threading.Thread(target=self._tick, args=(session, self.spec.checkpoint_every),
                                         name="wasmig-fleet-timer", daemon=True)
                timer.start()
            started = time.perf_counter()
            try:
                code = session.run(resume=latest is not None)
            except CheckpointExit:
                return {"outcome": "stopped", "snapshot": str(latest_checkpoint(self.spec, self.job_id)),
                        "stopped_at": time.time(), "ran_s": time.perf_counter() - started}
            except MigrationInDoubt as e:  # committed, unconfirmed: it must not go on here (saved)
                return {"outcome": "in-doubt", "error": str(e)}
            except MigratedAway:
                return {"outcome": "moved"}
            return {"outcome": "exited", "code": code}
        except FenceLost as e:  # raised in a host call: the program did nothing after it
            return {"outcome": "fenced", "error": str(e)}
        except Trap as e:
            return {"outcome": "trapped", "error": str(e)}
        except (WasmError, OSError, ValueError) as e:
            return {"outcome": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            self._ended.set()
            self._started.set()
            if wasi is not None:
                wasi.close()
            if log is not None:
                log.close()
            if fence is not None:
                fence.release()  # the next runner of this job may start

    def checkpoint(self) -> bool:
        """Take a checkpoint at the program's next stable point (it goes on); False if not running."""
        session = self._session
        if session is None or self._ended.is_set():
            return False
        session.request()
        return True

    # --- a live move: the source's side ----------------------------------------------------------
    def precopy_refusal(self) -> str | None:
        """Why this runner's program cannot move live now (None: it can)."""
        session = self._session
        if session is None or not self._started.is_set() or self._ended.is_set():
            return "the program is not running here"
        if self._stop_wanted:
            return "the program is stopping"
        from wasmig.wasi.threads_abi import imports_thread_spawn

        if imports_thread_spawn(self.module.interface.imports):
            return "a wasi-threads program (a migration target restores single-threaded programs)"
        return None

    def migrate_to(self, address: str, target_fingerprint: str, pages_via_ray: bool = False) -> dict[str, Any]:
        """Move the running program live to the target runner at ``address`` (pinned to
        ``target_fingerprint``): pre-copy while it runs, then the stop, the last pages and the
        state, the commit once the target says it resumed there. ``pages_via_ray``: the pages'
        bytes wait in this runner for the target to take them (:meth:`take_pages`, Ray's object
        transfer) instead of going over the channel. ``ok`` True: it moved (``run`` returns
        ``moved``); else it goes on here (``refused``: nothing was tried; ``error``: why it
        failed), except ``in_doubt`` (committed, unconfirmed: saved, stopped here)."""
        from wasmig.migrate.channel import Identity
        from wasmig.migrate.protocol import MigrationError
        from wasmig.migrate.source import InDoubt, migrate
        from wasmig.ray.live import PageShelf

        refusal = self.precopy_refusal()
        if refusal is not None:
            return {"ok": False, "refused": refusal}
        session = self._session
        assert session is not None
        self._shelf = PageShelf() if pages_via_ray else None
        try:
            result = migrate(session, address, Identity(self.key, frozenset({target_fingerprint})),
                             page_sink=self._shelf.put if self._shelf is not None else None)
        except InDoubt as e:
            return {"ok": False, "error": str(e), "in_doubt": True}
        except MigrationError as e:
            return {"ok": False, "error": str(e)}
        finally:
            if self._shelf is not None:
                self._shelf.clear()
        return {"ok": True, "downtime_s": result.downtime_s, "total_s": result.total_s,
                "bytes_sent": result.bytes_sent + (self._shelf.bytes if self._shelf is not None else 0),
                "rounds": result.rounds, "pages_sent": result.pages_sent,
                "pages_known": result.pages_known}

    def take_pages(self, token: int) -> list[list[Any]]:
        """A batch of pages a live move's target asks for (``pages_via_ray``)."""
        if self._shelf is None:
            from wasmig.migrate.protocol import MigrationError

            raise MigrationError("no live move with pages through Ray runs here")
        return self._shelf.take(token)

    # --- a live move: the target's side ----------------------------------------------------------
    def listen(self) -> str:
        """Open this target runner's listener on its node's address; ``HOST:PORT`` for the source."""
        from wasmig.ray.live import listen

        if self._listener is None:
            self._listener = listen()
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def receive(self, source_fingerprint: str, fault: str | None = None, source: Any = None) -> dict[str, Any]:
        """Receive the job live from the source runner holding ``source_fingerprint`` (after
        :meth:`listen`), then run it here as :meth:`run` does; its outcome as :meth:`run`'s, or
        ``failed`` with ``arrived`` False when the migration failed before its commit (the source
        still runs it). ``source``: the source runner's actor handle, when the pages come through
        Ray (its :meth:`take_pages`). ``fault``: for the tests, a step of ``wasmig serve``'s fault injection
        (``WASMIG_SERVE_FAULT``) at which this process kills itself."""
        import shutil

        from wasmig.ray import live

        if self._listener is None:
            self.listen()
        if fault is not None:
            from wasmig.migrate.target import FAULT_ENV

            os.environ[FAULT_ENV] = fault
        log = open_log(self.spec, self.job_id, None)  # fenced once the target holds the job (live.FleetTarget)
        state_dir = live.private_state_dir()
        target = None
        try:
            live.prune_page_caches()
            live.seed_module_cache(state_dir, self.module.sha256, self.spec.module)
            target, why = live.receive(self._listener, self, source_fingerprint, log, state_dir,
                                       live.pages_from(source) if source is not None else None)
            if target is None or self._held is None:
                return {"outcome": "failed", "arrived": False, "error": why}
            kind, detail = self._held.outcome
            if self.fenced:
                return {"outcome": "fenced", "error": str(detail)}
            if kind == "exit":
                return {"outcome": "exited", "code": detail}
            if kind == "stopped":
                return {"outcome": "stopped", "snapshot": str(latest_checkpoint(self.spec, self.job_id)),
                        "stopped_at": time.time()}
            if kind == "moved":
                return {"outcome": "moved"}
            return {"outcome": "trapped" if kind == "trap" else "failed", "error": str(detail)}
        finally:
            self._ended.set()
            self._started.set()
            self._listener.close()
            log.close()
            if target is not None and target.fence is not None:
                target.fence.release()  # the next runner of this job may start
            shutil.rmtree(state_dir, ignore_errors=True)

    def guard(self, fence: Fence) -> Any:
        """What the program's WASI layer calls before each host call (:attr:`Wasi.fence`): nothing
        for a fence that holds as long as this process (a lock file); for a lease, its check,
        which raises FenceLost once this runner may no longer act (and records it)."""
        if not fence.can_lapse:
            return None

        def check() -> None:
            try:
                fence.check()
            except FenceLost:
                self.fenced = True
                raise

        return check

    def adopt_arrival(self, program: HeldProgram, log: JobLog) -> None:
        """The program that arrived, before it runs: its checkpoints go to the job's store and
        record the log's counts, as a fresh run's do."""
        from wasmig.session.policy import CheckpointPolicy

        session = program.session
        session.policy = CheckpointPolicy(directory=snapshots_location(self.spec, self.job_id))
        session.module_path = self.spec.module_name
        session.annotate = log.annotation
        self._held = program

    def arrived(self, session: Session, timing: dict[str, float]) -> None:
        """The commit is done and the gate open: the program runs here (checkpoints, stops and
        moves reach it from now on). ``timing``: the target's part of the downtime."""
        with self._lock:
            self._session = session
            stop_now = self._stop_wanted
        self.arrival = timing
        self._resumed_wall = time.time()
        self._started.set()
        if stop_now:
            self._request_stop()
        if self.spec.checkpoint_every:
            threading.Thread(target=self._tick, args=(session, self.spec.checkpoint_every),
                             name="wasmig-fleet-timer", daemon=True).start()

    def arrival_report(self, timeout: float = 120.0) -> dict[str, float] | None:
        """Once the program that arrived runs here: the target's part of the downtime (None if
        it never did)."""
        self._started.wait(timeout)
        return self.arrival

    def stop(self) -> None:
        """Checkpoint at the next stable point, then end the run (``run`` returns ``stopped``).
        Asked before the program started, it stops at its first stable point."""
        with self._lock:
            self._stop_wanted = True
            if self._session is None:
                return
        self._request_stop()

    def resumed_at(self, timeout: float = 120.0) -> tuple[float | None, float | None]:
        """When the program started running here (wall clock; a move's downtime ends there), once it
        did, and how long preparing it took; (None, None) if it failed first."""
        self._started.wait(timeout)
        return self._resumed_wall, self.prepare_s

    def status(self) -> dict[str, Any]:
        session = self._session
        return {"running": self._started.is_set() and not self._ended.is_set(),
                "steps": None if session is None else session.steps,
                "checkpoints": 0 if session is None else len(session.policy.written)}

    # --- the program ---------------------------------------------------------------------------
    def _fresh(self, log: JobLog) -> tuple[Program, Any]:
        from wasmig.wasi.preview1 import Wasi

        log.open(None)
        listeners = []
        if self.spec.gateway is not None:  # a TCP server: its listening socket is the gateway's
            from wasmig.wasi.gateway import register

            gateway = self.spec.gateway
            listeners.append((gateway.control, register(gateway.control, gateway.fingerprint)))
        wasi = Wasi([self.spec.module_name, *self.spec.args], self.spec.env, preopens=list(self.spec.dirs),
                    stdin=b"", stdout=log.streams["stdout"], stderr=log.streams["stderr"],
                    gateway_listeners=listeners)
        try:
            return self.engine.program(self.module, wasi, checkpoints=True, announce=self.spec.module_name), wasi
        except BaseException:
            wasi.close()
            raise

    def _restored(self, latest: str, log: JobLog, on_file_change: str) -> tuple[Program, Any]:
        """The job's program from its snapshot ``latest``, cleared as ``wasmig restore`` clears one
        (:func:`wasmig.session.clearance.clear`): sealed by this user's key (the nodes of one
        fleet share it: docs/fleet.md), granted only the job's own ``--dir`` mappings."""
        from wasmig.errors import SnapshotError
        from wasmig.session.clearance import Requested, clear
        from wasmig.snapshot.admission import trust_from_options
        from wasmig.wasi.snapshot import restore_wasi

        gateways = (self.spec.gateway.control,) if self.spec.gateway is not None else ()
        cleared = clear(str(latest), Requested({guest: host for host, guest in self.spec.dirs}, gateways=gateways),
                        trust=trust_from_options((), False), where=f"job {self.job_id}")
        snap, pages = cleared.snap, cleared.pages
        if snap.wasi is None:
            raise SnapshotError(f"{latest}: not a snapshot of a WASI program")
        if snap.module_sha256 != self.module.sha256:
            raise SnapshotError(f"{latest}: taken of another module than the job's")
        log.open(recorded_counts(snap.meta))
        wasi = restore_wasi(snap.wasi, granted=cleared.granted, on_file_change=on_file_change, stdin=b"",
                            stdout=log.streams["stdout"], stderr=log.streams["stderr"])
        try:
            program = self.engine.restore(self.module, snap, wasi, pages=pages, announce=self.spec.module_name)
        except BaseException:
            wasi.close()
            raise
        self.restored_from = str(latest)
        return program, wasi

    def _warm_up(self) -> None:
        """Build the program once and drop it: the engine's imports, its compiled (on wasmtime,
        instrumented) module and the snapshot code are then loaded before :meth:`run` restores."""
        import io

        import wasmig.snapshot.store  # noqa: F401 - what a restore reads the snapshot with
        import wasmig.wasi.snapshot  # noqa: F401 - and restores the WASI state with
        from wasmig.wasi.preview1 import Wasi

        wasi = Wasi([self.spec.module_name], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        try:
            self.engine.program(self.module, wasi, checkpoints=True)
        finally:
            wasi.close()
        warm_store(self.spec, self.job_id)  # an S3 client made (and boto3 loaded) before the move

    def _request_stop(self) -> None:
        session = self._session
        if session is not None:
            session.policy.then = "exit"  # the next checkpoint is the last: then run() returns "stopped"
            session.request()

    def _tick(self, session: Session, every: float) -> None:
        """The periodic checkpoint (the session's own timer needs the main thread, which Ray keeps)."""
        while not self._ended.wait(every):
            session.request()

    def _watch_node(self) -> None:
        """In a Ray worker (its parent the raylet that started it): end this process as soon as the
        raylet is gone. Its node is then lost to Ray, which restarts the job elsewhere; the worker
        itself lives on (reparented), and so would the program, running and writing the job's files
        unseen, holding the job's fence (the restarted runner waiting for it) or, paused past a
        lease, beside the restarted one. SIGKILL: no more writes, no cleanup that could write; the
        kernel lets go of a lock file."""
        raylet = os.environ.get("RAY_RAYLET_PID", "")
        parent = os.getppid()
        if not raylet.isdigit() or int(raylet) != parent:
            return  # not a worker of a raylet (a test, a plain process)

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(NODE_WATCH_S)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="wasmig-fleet-node-watch", daemon=True).start()

    def _install_sigterm(self) -> None:
        """On SIGTERM (a node being drained or shut down), checkpoint and stop before the worker
        goes, then let the previous handler end it. Only where signals can be set (the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self.stop()
            # the next SIGTERM is the previous handler's (here, in the main thread, where it may be
            # set): the one re-sent once the program stopped, or a second one from outside (now)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

            def then_exit() -> None:
                self._ended.wait(30.0)
                time.sleep(SIGTERM_GRACE_S)  # run()'s answer on its way to the controller first
                os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=then_exit, name="wasmig-fleet-sigterm", daemon=True).start()

        signal.signal(signal.SIGTERM, on_sigterm)


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()
