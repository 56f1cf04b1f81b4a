"""Live migration of a fleet job between two runners: pre-copy over wasmig's migration protocol
(:mod:`wasmig.migrate`: TLS 1.3, both keys pinned), from the source runner's session to a target
runner on another node (docs/fleet.md, "Live moves").

The target runner listens on its node's address (the one Ray reports for it; 127.0.0.1 on a
one-machine cluster) and receives exactly as ``wasmig serve`` does (:class:`FleetTarget` is its
:class:`~wasmig.migrate.target.Target`): the module, the page rounds while the program still runs
at the source, the last dirty pages and the state once it stopped, then a restore behind the WASI
gate and ``prepared`` once the program surely resumed. The source commits only then, and keeps
the program until the target confirmed the commit: a target that dies or fails before leaves the
job running where it was. What differs from the daemon: the program's stdout and stderr are the
job's log (opened at the byte counts the migrated state records), it gets the job's own
directories and gateway only, its checkpoints go to the job's store, and before the gate opens
the target takes the job's fence (the source's run has then ended: one runner at a time).

Keys: the controller makes a key pair for every runner and hands it over in the runner's
arguments (Ray's messages: loopback, or Ray's TLS, which ``wasmig cluster`` insists on beyond it);
a migration pins the target runner's fingerprint on the source and the source's on the target, so
each move's channel admits exactly those two processes.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError
from wasmig.keys import KeyPair, PublicKey
from wasmig.migrate.page_cache import PAGE_CACHE_DAYS, PAGE_CACHE_MB, PageCache
from wasmig.migrate.protocol import Identity, MigrationError, accept
from wasmig.migrate.target import HeldProgram, Target, log
from wasmig.ray.joblog import JobLog, recorded_counts
from wasmig.ray.jobstore import Fence, fence_log, log_counts, take_fence

if TYPE_CHECKING:
    from wasmig.ray.actor import JobRunner

#: how long a target runner waits for its source to connect
CONNECT_TIMEOUT_S = 60.0


def new_key_pem() -> bytes:
    """A fresh runner key (PKCS#8 PEM): what the controller hands a runner it creates."""
    return KeyPair.generate(comment="wasmig fleet runner").private_pem()


def key_pair(pem: bytes) -> KeyPair:
    """The key pair of a runner from its PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("a fleet runner's key must be Ed25519")
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPair(private, PublicKey(raw, "wasmig fleet runner"))


def fingerprint(pem: bytes) -> str:
    return key_pair(pem).fingerprint


def node_address() -> str:
    """The address this node is known to Ray by (where a target runner listens)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


class FleetTarget(Target):
    """The receiving side of a live move, in a target runner (see the module docstring)."""

    def __init__(self, conn: socket.socket, peer: str, identity: Identity, runner: JobRunner, log: JobLog,
                 state_dir: Path) -> None:
        spec = runner.spec
        gateways = (spec.gateway.control,) if spec.gateway is not None else ()
        super().__init__(conn, peer, identity, runner.engine.name, {guest: host for host, guest in spec.dirs},
                         state_dir, None, gateways=gateways)
        self.cache = PageCache(page_cache_directory())  # this node's, shared by its runners
        self.runner = runner
        self.log = log
        self.fence: Fence | None = None
        self.fence_wait_s = 0.0

    def _streams(self, snap: Any) -> dict[str, Any]:
        # the source stopped writing at these counts: nothing is cut (a path store's log is the same
        # file; to an object store the source sent its segments up to them while it was stopped, in
        # the state's annotation); a state without counts: the log's sizes now, nothing cut back
        spec = self.runner.spec
        self.log.open(recorded_counts(snap.meta) or log_counts(spec, self.runner.job_id))
        return {"stdout": self.log.streams["stdout"], "stderr": self.log.streams["stderr"]}

    def _run_held(self, program: HeldProgram) -> int:
        self.runner.adopt_arrival(program, self.log)  # its checkpoints: the job's, in the job's store
        return super()._run_held(program)

    def _commit(self, program: HeldProgram) -> None:
        super()._commit(program)  # returns only committed, the gate open (else this process ended)
        assert self.committed_at is not None and self.opened_at is not None
        self.runner.arrived(program.session, {"gate_s": self.opened_at - self.committed_at,
                                              "fence_wait_s": self.fence_wait_s})

    def _before_answer(self, program: HeldProgram) -> None:
        """No control socket: a fleet's job moves through its controller (docs/fleet.md)."""

    def _before_start(self, program: HeldProgram) -> None:
        """The commit is recorded and the source told: wait until the source's run released the
        job (its last writes are on disk), then this runner holds it and the gate may open."""
        from wasmig.ray.actor import FENCE_TIMEOUT_S

        started = time.perf_counter()
        try:
            self.fence = take_fence(self.runner.spec, self.runner.job_id, FENCE_TIMEOUT_S)
            program.wasi.fence = self.runner.guard(self.fence)  # its program acts only while it holds the job
        except TimeoutError as e:  # committed: the program runs here all the same (the source's is stopped)
            log(f"migration {self.id}: {e}; the program goes on without the job's fence")
        try:  # its log goes to an object store only while it holds the job (if it does), tidied there first
            fence_log(self.log, self.fence)
        except (SnapshotError, OSError) as e:  # each tidying step is safe cut short: a restore redoes it
            log(f"migration {self.id}: the job's log was not tidied in its store ({e}); the program goes on")
        self.fence_wait_s = time.perf_counter() - started


class PageShelf:
    """The source's pages on their way through Ray's object store instead of the channel (the
    faster of the two between nodes: docs/fleet.md, "Pages"): each batch waits here, under a
    token the channel carries, until the target's actor takes it with a Ray call (the batch then
    goes as that call's return value: Ray's object transfer). At most ``depth`` batches wait at
    once (as the channel's backpressure bounds what the inline pages hold)."""

    def __init__(self, depth: int = 4, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self._batches: dict[int, list[list[Any]]] = {}
        self._next = 0
        self.bytes = 0  # of the compressed pages put here
        self._depth = depth
        self._timeout = timeout  # how long a full shelf waits for the target before the move fails
        self._cond = threading.Condition()

    def put(self, batch: list[list[Any]]) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._batches) < self._depth, timeout=self._timeout):
                raise MigrationError(f"the target took no pages for {self._timeout:g} s")
            token, self._next = self._next, self._next + 1
            self._batches[token] = batch
            self.bytes += sum(len(data) for _, data in batch)
            return token

    def take(self, token: int) -> list[list[Any]]:
        with self._cond:
            batch = self._batches.pop(token, None)
            self._cond.notify_all()
        if batch is None:
            raise MigrationError(f"no batch of pages {token} waits here")
        return batch

    def clear(self) -> None:
        """The migration ended: what was not taken goes."""
        with self._cond:
            self._batches.clear()
            self._cond.notify_all()


def listen() -> socket.socket:
    """The target runner's listener, on its node's address, any free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((node_address(), 0))
    sock.listen(4)
    return sock


def receive(listener: socket.socket, runner: JobRunner, source_fingerprint: str, log: JobLog,
            state_dir: Path, page_source: Callable[[int], Any] | None = None) -> tuple[FleetTarget | None, str | None]:
    """Receive the job from the source that holds ``source_fingerprint`` on ``listener``, and run
    it to its end here (or until it moves on); the target (its ``program`` outcome is the run's),
    or None and why the migration failed before its commit. ``page_source``: where the pages of a
    ``page_ref`` come from (:func:`pages_from`). Later connections (a source that lost
    the commit's answer asks what became of it) are answered from a thread."""
    identity = Identity(runner.key, frozenset({source_fingerprint}))
    listener.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn, addr = listener.accept()
    except OSError as e:
        return None, f"the source did not connect within {CONNECT_TIMEOUT_S:g} s ({e})"
    listener.settimeout(None)
    target = FleetTarget(conn, f"{addr[0]}:{addr[1]}", identity, runner, log, state_dir)
    target.page_source = page_source
    threading.Thread(target=_answer_status, args=(listener, identity, state_dir), name="wasmig-fleet-status",
                     daemon=True).start()
    code = target.run()
    if target.committed_at is None:
        return None, f"the migration failed on the target before its commit (exit status {code})"
    return target, None


def pages_from(source: Any) -> Callable[[int], Any]:
    """Batches of pages taken from the source runner's :class:`PageShelf` by a Ray call."""
    import ray
    from ray.exceptions import RayError

    def take(token: int) -> Any:
        try:
            return ray.get(source.take_pages.remote(token), timeout=CONNECT_TIMEOUT_S)
        except RayError as e:
            raise MigrationError(f"the source's pages could not be fetched: {str(e).splitlines()[0]}") from None

    return take


def _answer_status(listener: socket.socket, identity: Identity, state_dir: Path) -> None:
    """``status`` questions on the same listener, until it is closed (never another ``offer``)."""
    while True:
        try:
            conn, addr = listener.accept()
        except OSError:
            return
        try:
            helper = Target(conn, f"{addr[0]}:{addr[1]}", identity, "interp", {}, state_dir, None)
            helper.ch = accept(conn, identity, helper.peer)
            helper._status(helper.ch.recv(10.0, expect=("status",)))
        except (MigrationError, OSError):
            conn.close()


def seed_module_cache(state_dir: Path, module_sha256: str, data: bytes) -> None:
    """Put the job's module where the target looks for it, so it does not travel again."""
    from wasmig.files import write_atomically

    path = state_dir / "modules" / f"{module_sha256}.wasm"
    if not path.exists():
        write_atomically(path, data)


def node_directory() -> Path:
    """This user's fleet directory on this machine, in the user's private runtime directory
    (:mod:`wasmig.runtime_dir`: 0700, refused if another user made it): ``pages-<node>/``, the page
    cache every live move's target on a Ray node shares (as ``wasmig serve``'s), and ``moves/``."""
    from wasmig.files import make_private_dir
    from wasmig.runtime_dir import runtime_dir

    directory = runtime_dir(True) / "fleet"
    make_private_dir(directory)
    return directory


def page_cache_directory() -> Path:
    """This Ray node's page cache: one per node, as each has its own on separate machines (the
    nodes of a one-machine cluster, too, so that it behaves as a real one)."""
    node = "local"
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()[:16]
    except ImportError:
        pass
    return node_directory() / f"pages-{node}"


def prune_page_caches() -> int:
    """Drop cached pages unused for a week, then the oldest beyond 2 GiB, in each node's cache on
    this machine (``wasmig serve``'s limits; a gone node's empties within the week); how many went."""
    return sum(PageCache(d).prune(PAGE_CACHE_DAYS * 86400, PAGE_CACHE_MB << 20)
               for d in node_directory().glob("pages-*"))


def private_state_dir() -> Path:
    """A directory of one move's own for its decisions (node-local, 0700)."""
    import tempfile

    parent = node_directory() / "moves"
    parent.mkdir(mode=0o700, exist_ok=True)
    _remove_orphans(parent)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))


def _remove_orphans(parent: Path) -> None:
    """The directories of moves whose runner process is gone without removing its own (a target
    that ended itself before the commit)."""
    import shutil

    for entry in parent.iterdir():
        pid = entry.name.split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:  # alive (another user's process reused the pid): not ours to judge
            continue
