"""``wasmig serve``: the daemon that receives migrations, restores them and runs them.

Every accepted connection is handled by a child process of its own (``fork`` right after
``accept``, before anything is read): it authenticates the peer, receives the module (unless
its cache has it) and the pages, restores the program on this daemon's engine and *resumes* it
behind its WASI gate (:class:`~wasmig.wasi.blocking.Gate`: it computes, but every host call
waits), and tells the source ``prepared`` only once it surely resumed -- on wasmtime, once the
rewind reached the snapshot's innermost frame and the program runs on from there; on the
interpreter, once its frames loaded. A restore that traps or fails before that, or a program
that traps before the commit, is reported to the source, which keeps the program. Only after
the source's ``commit`` is recorded does the gate open: the program then runs in that child
(its stdio: the daemon's). A peer that fails authentication is logged and dropped before it
can send anything else, so it never makes the daemon run anything; a connection that ends
before the commit leaves nothing running (docs/migration.md).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import zstandard

from wasmig import engines, fdwait
from wasmig.engines.base import Landing, Program
from wasmig.errors import Trap, WasmError
from wasmig.files import write_atomically
from wasmig.grants import Granted, GrantError, needed, resolve
from wasmig.migrate.arrival import Arrival, data_segment_pages
from wasmig.migrate.page_cache import PAGE_CACHE_DAYS, PAGE_CACHE_MB, PageCache
from wasmig.migrate.pages import ZERO_PAGE, page_id
from wasmig.migrate.protocol import Channel, Identity, MigrationError, accept
from wasmig.module import Module
from wasmig.snapshot.state import PAGE_SIZE, SnapshotError, from_plain

#: for the tests that kill the target at each protocol step: the step after which a child kills
#: itself (SIGKILL), named by this environment variable ("resumed": the program resumed, before
#: ``prepared``; "decided": the commit recorded, before ``committed`` and before the program
#: started); "started" loses the ``committed`` answer and dies once the program counts as
#: started (the source can only save it); "daemon" kills the whole daemon (its process group)
#: when the commit arrives, so nobody can tell the source what became of it
FAULT_ENV = "WASMIG_SERVE_FAULT"
FAULT_STEPS = ("auth", "offer", "module", "pages", "state", "resumed", "prepared", "commit", "decided")
_ID_CHARS = frozenset("0123456789abcdef")
#: how long a restored program has to resume (its rewind to reach the innermost frame)
RESUME_TIMEOUT = 120.0
COMMIT_TIMEOUT = 60.0  # how long a prepared program waits for the source's commit


def log(message: str) -> None:
    print(f"wasmig serve[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _fault(step: str) -> None:
    fault = os.environ.get(FAULT_ENV)
    if fault == step:
        log(f"fault injection: killed after {step}")
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "daemon" and step == "commit":
        log("fault injection: the whole daemon killed after commit")
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _migration_id(msg: dict[str, Any]) -> str:
    mid = msg.get("id")
    if not isinstance(mid, str) or not 1 <= len(mid) <= 32 or not set(mid) <= _ID_CHARS:
        raise MigrationError(f"malformed {msg.get('t')} message: bad id")
    return mid


def decide(state_dir: Path, migration_id: str, decision: str) -> str:
    """Record the fate of a migration, once: the first of the child that got the commit
    ("committed") and a source asking after a lost connection ("aborted") wins, and both then
    act on what was recorded (``O_EXCL``: atomic on the daemon's own filesystem). "committed"
    is recorded with the pid (and start time) of the process that holds the program, so that a
    later question can tell whether it still runs."""
    path = state_dir / "decisions" / migration_id
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return (path.read_text().split() or ["aborted"])[0]
    with os.fdopen(fd, "w") as f:
        f.write(decision if decision != "committed" else f"committed {os.getpid()} {_start_time(os.getpid())}")
        f.flush()
        os.fsync(f.fileno())
    return decision


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), to tell it from a later process
    with the same pid; "?" if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _mark(state_dir: Path, migration_id: str, what: str, text: str = "") -> None:
    """Record a step of a committed program's life beside its decision: ``started`` (the gate
    opened: it may have acted on the world) and ``ended`` (how its run here ended)."""
    try:
        write_atomically(state_dir / "decisions" / f"{migration_id}.{what}", text.encode())
    except OSError as e:
        log(f"migration {migration_id}: cannot record that the program {what}: {e.strerror or e}")


def program_state(state_dir: Path, migration_id: str) -> str:
    """What became of a committed migration's program here: "running" (started, its process
    alive), "pending" (its process alive, not started yet), "ended" (its run here ended: exit,
    trap, or it moved on), "lost" (its process died before it started: it never ran and never
    will) or "died" (it started, then its process died without recording an end)."""
    folder = state_dir / "decisions"
    if (folder / f"{migration_id}.ended").exists():
        return "ended"
    try:
        _, pid, started_at = (folder / migration_id).read_text().split()
        alive = _start_time(int(pid)) == started_at != "?"
    except (OSError, ValueError):
        alive = False
    started = (folder / f"{migration_id}.started").exists()
    if (folder / f"{migration_id}.ended").exists():  # it ended while we looked
        return "ended"
    if alive:
        return "running" if started else "pending"
    return "died" if started else "lost"


#: connections at most that have not authenticated yet; more are closed at once (a flood of
#: strangers costs a few processes, and cannot starve the machine)
MAX_UNAUTHENTICATED = 16


def serve(listener: socket.socket, identity: Identity, *, engine: str, dirs: Mapping[str, str], state_dir: Path,
          page_cache_mb: int = PAGE_CACHE_MB, max_unauthenticated: int = MAX_UNAUTHENTICATED,
          listens: Sequence[str] = (), gateways: Sequence[str] = ()) -> None:
    """Accept migrations forever (until SIGINT/SIGTERM) from the sources ``identity`` trusts.

    A child per connection, but at most ``max_unauthenticated`` of them still in their handshake:
    each holds the write end of a pipe it closes once its peer authenticated (or it ends), so the
    daemon sees, without any bookkeeping by the child, which ones are still strangers. A program
    gets only the host resources the daemon grants (:mod:`wasmig.grants`): ``dirs`` (guest -> host
    directory), ``listens`` (addresses for its listening sockets, in fd order) and ``gateways``
    (control addresses it may re-attach to), never one its state merely names."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    removed = PageCache(state_dir / "pages").prune(PAGE_CACHE_DAYS * 86400, page_cache_mb << 20)
    if removed:
        log(f"removed {removed} cached pages (unused for {PAGE_CACHE_DAYS} days, or beyond {page_cache_mb} MB)")
    host, port = listener.getsockname()[:2]
    log(f"listening on {host}:{port} (engine {engine}, key {identity.fingerprint}, "
        f"{len(identity.trusted)} trusted source key{'s' if len(identity.trusted) != 1 else ''})")
    identity.context(server=True)  # made once here, not in every child (a certificate and a key load: ~10 ms)
    strangers: set[int] = set()  # read ends of the pipes of children still authenticating
    while True:
        try:
            ready = fdwait.wait([listener, *strangers], [], None)[0]
        except InterruptedError:  # pragma: no cover
            continue
        for fd in ready:
            if fd is not listener:
                os.close(fd)  # that child authenticated its peer, or ended
                strangers.discard(fd)
        if listener not in ready:
            continue
        try:
            conn, addr = listener.accept()
        except (InterruptedError, ConnectionAbortedError):  # pragma: no cover
            continue
        peer = f"{addr[0]}:{addr[1]}"
        if len(strangers) >= max_unauthenticated:
            log(f"{peer}: refused: {len(strangers)} connections are still authenticating")
            conn.close()
            continue
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: this migration, then the program it brings
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            listener.close()
            os.close(done_r)
            for fd in strangers:
                os.close(fd)
            code = 1
            try:
                code = Target(conn, peer, identity, engine, dirs, state_dir, done_w, listens, gateways).run()
            except BaseException as e:  # noqa: BLE001 - a child must never return into the accept loop
                log(f"{peer}: internal error: {e!r}")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code & 0xFF)
        os.close(done_w)
        strangers.add(done_r)
        conn.close()


class Target:
    def __init__(self, conn: socket.socket, peer: str, identity: Identity, engine: str, dirs: Mapping[str, str],
                 state_dir: Path, authenticated_fd: int | None, listens: Sequence[str] = (),
                 gateways: Sequence[str] = ()) -> None:
        self.conn = conn
        self.peer = f"source {peer}"
        self.identity = identity
        #: closed once the peer authenticated (see serve(); None: no daemon counts its strangers)
        self.authenticated_fd = authenticated_fd
        self.ch: Channel = None  # type: ignore[assignment] # set by run(), once authenticated
        self.engine = engine
        self.runs_on = engines.get(engine)
        self.dirs = dirs
        self.listens, self.gateways = tuple(listens), tuple(gateways)
        self.state_dir = state_dir
        self.landing: Landing | None = None
        self.held: dict[bytes, tuple[int, int]] = {}  # page id -> (memory, page) where it was last put
        self.cache = PageCache(state_dir / "pages")
        self.dctx = zstandard.ZstdDecompressor()
        self.id = "?"
        self.module: Module | None = None
        self.arrival = Arrival()  # kept in case the program fails after the commit
        #: time.perf_counter() when ``committed`` was sent, and when the gate opened after it
        self.committed_at: float | None = None
        self.opened_at: float | None = None
        self.program_class: type[HeldProgram] = HeldProgram  # what runs the restored program here
        #: where a ``page_ref``'s batch of pages is fetched from by its token (None: not taken)
        self.page_source: Callable[[int], Any] | None = None

    def run(self) -> int:
        try:
            self.ch = ch = accept(self.conn, self.identity, self.peer)
        except MigrationError as e:
            log(f"rejected {e}")
            return 1
        finally:
            if self.authenticated_fd is not None:
                os.close(self.authenticated_fd)
        _fault("auth")
        try:
            first = ch.recv(expect=("offer", "status"))
            if first["t"] == "status":
                return self._status(first)
            module = self._receive_module(first)
            program = self._receive_state(module)
        except (MigrationError, SnapshotError, WasmError, OSError) as e:
            return self._abort(str(e))
        except Exception as e:  # noqa: BLE001 - a bug here: the source must still hear why (it keeps the program)
            return self._abort(f"internal error on the target: {e!r}")
        return self._run_held(program)

    def _abort(self, why: str) -> int:
        log(f"migration {self.id} from {self.ch.peer} aborted, nothing runs: {why}")
        self.ch.error(why)
        self.ch.close()
        return 1

    # --- resumed, held, committed -----------------------------------------------------------------
    def _run_held(self, program: HeldProgram) -> int:
        """Run the restored program on this (main) thread behind its closed gate, while a thread
        of its own finishes the protocol: ``prepared`` once the program resumed, then the commit,
        which opens the gate. Any failure before the commit ends this process (the program with
        it: it never acted on the world) after telling the source, which keeps the program."""
        program.wasi.gate.close()
        committer = threading.Thread(target=self._commit, args=(program,), name="wasmig-commit", daemon=True)
        committer.start()
        kind, detail = program.run()
        if not program.started.is_set():
            committer.join()  # it ended before the commit: the committer commits, or ends this process
        program.close()
        _mark(self.state_dir, self.id, "ended", f"{kind} {detail}")
        if kind == "exit":
            log(f"program exited with code {detail}")
            return int(detail)
        if kind in ("moved", "stopped"):
            log("program migrated away" if kind == "moved" else "program stopped at a checkpoint")
            return 0
        log(f"program {'trapped' if kind == 'trap' else 'failed'}: {detail}"
            + "".join(f"\n    at {frame}" for frame in program.backtrace[:16]))
        self._keep_arrival()
        return 134 if kind == "trap" else 1

    def _keep_arrival(self) -> None:
        """The program failed here after the commit: write the state it arrived in, so that it is
        not lost (the source is gone), and say where."""
        path = self.state_dir / "kept" / f"{self.id}.snap"
        module_file = self.state_dir / "modules" / f"{self.module.sha256 if self.module else '?'}.wasm"
        try:
            self.arrival.write(path, self.cache.get, lambda: data_segment_pages(self.module))
        except (SnapshotError, WasmError, OSError) as e:
            log(f"migration {self.id}: the state it arrived in could not be kept: {e}")
            return
        log(f"migration {self.id}: the state the program arrived in is kept in {path}: `wasmig restore --module "
            f"{module_file} {path}` continues it from the migration (doing again what it did here; the "
            f"interpreter is the reference engine: --engine interp)")

    def _commit(self, program: HeldProgram) -> None:
        """The committer thread: wait until the program resumed, answer ``prepared``, wait for the
        commit, record it and open the gate."""
        ch = self.ch
        try:
            self._await_resumed(program)
            _fault("resumed")
            ch.send("prepared", resumed=True)
            _fault("prepared")
            self._await_commit(program)
            _fault("commit")
            if decide(self.state_dir, self.id, "committed") != "committed":
                raise MigrationError("the source gave the migration up before its commit arrived")
        except (MigrationError, WasmError, OSError) as e:
            self._give_up(str(e))
        except BaseException as e:  # noqa: BLE001 - a bug: still never a half-started program
            self._give_up(f"internal error on the target: {e!r}")
        _fault("decided")
        # committed: from here on the program runs here, whatever happens to the connection. Its
        # control socket and the log line come before the answer: the source's `wasmig migrate`
        # returns on it, and whoever acts next (`wasmig migrate PID` on to another daemon, the
        # demo reading the pid from this log) found neither there yet on a loaded machine
        self._before_answer(program)
        log(f"migration {self.id} committed: running as pid {os.getpid()}")
        try:
            if os.environ.get(FAULT_ENV) != "started":  # that fault loses the answer, then dies
                ch.send("committed", pid=os.getpid())
        except MigrationError:
            pass
        self.committed_at = time.perf_counter()
        ch.close()
        _mark(self.state_dir, self.id, "started")
        _fault("started")
        self._before_start(program)
        program.started.set()
        try:
            program.wasi.gate.open()  # re-attaches its gateway connections, then lets its host calls go
        except (OSError, WasmError) as e:
            log(f"migration {self.id}: cannot re-attach the program's gateway connections: {e}")
        self.opened_at = time.perf_counter()

    def _before_start(self, program: HeldProgram) -> None:
        """Committed and the source told (it may wait for nothing of this): what must hold
        before the gate opens. Nothing here; a fleet's runner takes the job's fence
        (:class:`wasmig.ray.live.LiveTarget`), which the source releases once it has the answer."""

    def _before_answer(self, program: HeldProgram) -> None:
        """Committed, the source not yet told: what this daemon's program needs to move on (its
        control socket, for ``wasmig migrate PID``) -- before the answer, on which the source's
        ``wasmig migrate`` returns and whoever acts next may look for it."""
        try:
            program.control = _serve_control(program.session)
        except OSError as e:  # the program runs all the same, only it cannot move on
            log(f"migration {self.id}: no control socket, the program cannot migrate again: {e.strerror or e}")

    def _give_up(self, why: str) -> None:
        """Before the commit was recorded: make sure it never will be, tell the source, and end
        this process, the held program with it (nothing of it reached the world)."""
        try:
            decide(self.state_dir, self.id, "aborted")
        except OSError:  # whatever was recorded: this process never opens the gate, so it never ran here
            pass
        log(f"migration {self.id} from {self.ch.peer} aborted, nothing runs: {why}")
        self.ch.error(why)
        self.ch.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def _await_resumed(self, program: HeldProgram) -> None:
        """Until the program resumed: its rewind ended (wasmtime), or it made a host call (held
        at the gate), or it ended before making any. A trap or failure first is an error."""
        deadline = time.monotonic() + RESUME_TIMEOUT
        while not program.has_resumed() and not program.ended.is_set():
            if time.monotonic() > deadline:
                raise MigrationError(f"the restored program did not resume within {RESUME_TIMEOUT:g} s")
            program.ended.wait(0.001)
        program.check("after it resumed" if program.has_resumed() else "before it resumed (in its rewind)")

    def _await_commit(self, program: HeldProgram) -> None:
        """The source's ``commit``, while watching the held program: one that traps meanwhile is
        reported instead (the source keeps its copy)."""
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            program.check("after it resumed, before the commit")
            if self.ch.readable(0.02):
                self.ch.recv(COMMIT_TIMEOUT, expect=("commit",))
                return
            if time.monotonic() > deadline:
                raise MigrationError(f"no commit within {COMMIT_TIMEOUT:g} s")

    def _status(self, msg: dict[str, Any]) -> int:
        """A source that lost its connection after sending the commit asks what became of it:
        committed (and what became of the program: see :func:`program_state`) or, if not yet,
        never (it is aborted now)."""
        mid = _migration_id(msg)
        decision = decide(self.state_dir, mid, "aborted")
        state = program_state(self.state_dir, mid) if decision == "committed" else None
        log(f"migration {mid}: asked after it by {self.ch.peer}: {decision}" + (f", program {state}" if state else ""))
        self.ch.send("status", decision=decision, program=state)
        self.ch.close()
        return 0

    # --- the module -----------------------------------------------------------------------------
    def _receive_module(self, offer: dict[str, Any]) -> Module:
        ch = self.ch
        sha = offer.get("module_sha256")
        self.id = _migration_id(offer)
        if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _ID_CHARS:
            raise MigrationError("malformed offer: bad module_sha256")
        cached = self.state_dir / "modules" / f"{sha}.wasm"
        have = cached.is_file()
        ch.send("offer_ok", need_module=not have)
        _fault("offer")
        if have:
            data = cached.read_bytes()
        else:
            data = ch.recv(expect=("module",)).get("data")
            if not isinstance(data, bytes):
                raise MigrationError("malformed module message")
        if hashlib.sha256(data).hexdigest() != sha:
            raise MigrationError("the module's bytes do not match its sha256")
        # on wasmtime, wasmtime validates the (instrumented) module and the pass validates it when
        # its cache misses: decoding and validating 26 MB of CPython in Python here cost ~20 s; the
        # interpreter needs the validation (it compiles from it): now, while the program still
        # runs at the source, rather than in the downtime
        module = self.module = self._decoded(data)
        _ = module.sha256  # the restore checks it (67 ms for CPython): not in the downtime
        if self.runs_on.needs_ir:
            _ = module.validation
        if not have:
            write_atomically(cached, data)
        self.landing = self.runs_on.landing(module)
        for i in range(self.landing.pages(0)):  # the module's data segments: in place already
            pid = page_id(self.landing.read(0, i))
            if pid is not None:
                self.held[pid] = (0, i)
        ch.send("module_ok")
        _fault("module")
        return module

    def _decoded(self, data: bytes) -> Module:
        """The arrived module, decoded as far as this daemon's engine needs: a wasi-threads program
        (told from its imports, before its code: its shared memory is a proposal the default
        decoder refuses) with the threads feature, and only if the engine's landing takes one
        (``Engine.lands_threads``: a migration of one is every thread's state: docs/threads.md)."""
        from wasmig.wasi.threads_abi import imports_thread_spawn

        probe = Module.from_bytes(data, decode=False, validate=False)
        if not imports_thread_spawn(probe.interface.imports):
            return Module.from_bytes(data, decode=self.runs_on.needs_ir)
        if not self.runs_on.lands_threads:
            able = " or ".join(f"--engine {name}" for name in engines.NAMES if engines.get(name).lands_threads)
            raise MigrationError(f"this daemon's engine ({self.engine}) cannot take a multi-threaded program yet "
                                 f"(a daemon started with {able} can: docs/threads.md)")
        return Module.from_bytes(data, decode=self.runs_on.needs_ir, features={"threads"})

    # --- pages and state ------------------------------------------------------------------------
    def _receive_state(self, module: Module) -> Any:
        """Page rounds until the state arrives; restore it; return the program, ready to run."""
        ch = self.ch
        first = True
        while True:
            msg = ch.recv(expect=("pages", "state"))
            if msg["t"] == "state":
                _fault("state")
                return self.program_class(self._restore(module, msg.get("snapshot")))
            self._pages(msg)
            if first:
                _fault("pages")
                first = False

    def _pages(self, msg: dict[str, Any]) -> None:
        ch = self.ch
        entries = msg.get("entries")
        final = msg.get("final") is True
        if not isinstance(entries, list):
            raise MigrationError("malformed pages message")
        need: list[int] = []
        wanted: dict[int, tuple[int, int, bytes]] = {}
        landing = self.landing
        assert landing is not None
        for pos, e in enumerate(entries):
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int) and isinstance(e[1], int)
                    and 0 <= e[0] < 16 and 0 <= e[1] < 65536 and (e[2] is None or isinstance(e[2], bytes)
                                                                   and len(e[2]) == 32)):
                raise MigrationError("malformed pages message: bad entry")
            m, i, pid = e
            self.arrival.page(m, i, pid)
            if pid is None:
                landing.write(m, i, ZERO_PAGE)
                continue
            where = self.held.get(pid)
            data = self._held(pid)
            if data is None:
                need.append(pos)
                wanted[pos] = (m, i, pid)
            elif where != (m, i) or pid not in self.held:  # unless it is in place already
                landing.write(m, i, data)
                self.held[pid] = (m, i)
        ch.send("need", positions=need)
        while True:
            msg = ch.recv(expect=("page_data", "page_ref", "pages_end"))
            if msg["t"] == "pages_end":
                break
            pages = msg.get("pages") if msg["t"] == "page_data" else self._fetch_pages(msg)
            if not isinstance(pages, list):
                raise MigrationError("malformed page_data message")
            for item in pages:
                if not (isinstance(item, list) and len(item) == 2 and item[0] in wanted and isinstance(item[1], bytes)):
                    raise MigrationError("malformed page_data message: a page that was not asked for")
                m, i, pid = wanted.pop(item[0])
                try:
                    data = self.dctx.decompress(item[1], max_output_size=PAGE_SIZE)
                except zstandard.ZstdError as e:
                    raise MigrationError(f"a page does not decompress: {e}") from None
                if len(data) != PAGE_SIZE or page_id(data) != pid:
                    raise MigrationError("a page does not match its id")
                landing.write(m, i, data)
                self.held[pid] = (m, i)
                if not final:  # the last round's few pages would lengthen the stop
                    self.cache.put(pid, item[1])
                self.arrival.received(pid, item[1], final)
        if wanted:
            raise MigrationError(f"{len(wanted)} pages asked for were not sent")
        ch.send("pages_ok")

    def _fetch_pages(self, msg: dict[str, Any]) -> Any:
        """A ``page_ref``'s batch, from where the source put it (:attr:`page_source`; a daemon
        has none: the source must send its pages over the channel)."""
        token = msg.get("token")
        if self.page_source is None or not isinstance(token, int):
            raise MigrationError("malformed page_ref message (this target takes pages over the channel only)")
        return self.page_source(token)

    def _held(self, pid: bytes) -> bytes | None:
        """The contents of page ``pid`` if this daemon has them: where it last put them (checked:
        a later page may have overwritten them), else in its cache of earlier migrations."""
        where = self.held.get(pid)
        if where is not None:
            data = self.landing.read(*where)  # type: ignore[union-attr]
            if page_id(data) == pid:
                return data
            del self.held[pid]  # overwritten since
        return self.cache.get(pid)

    def _restore(self, module: Module, plain: Any) -> Program:
        """Restore on this daemon's engine (:meth:`Landing.prepare`), without running anything yet."""
        landing = self.landing
        assert landing is not None
        try:
            snap = from_plain(plain, landing.memory)
        except SnapshotError as e:
            raise MigrationError(f"malformed state: {e}") from None
        if snap.module_sha256 != module.sha256:
            raise MigrationError("the state is of another module than the one offered")
        self.arrival.state = plain
        if snap.wasi is None:
            raise MigrationError("the state has no WASI state: only WASI programs migrate")
        # a program sees only the directories and sockets this daemon grants: never a host path or
        # address the source names (a preopen the program closed, with files still open beneath it, too)
        granted = self._grant(snap.wasi)
        snap.meta = {**snap.meta, "migration": self.id, "migrated_at_ns": time.time_ns()}
        program = landing.prepare(snap, granted, **self._streams(snap))
        if snap.threads is not None:  # what every thread was doing when it stopped at the source
            states = [t.state for t in snap.threads.threads]
            log(f"migration {self.id}: restored {len(states)} threads: {states.count('waiting')} waiting, "
                f"{states.count('host')} in a host call, {states.count('runnable')} runnable")
        return program

    def _streams(self, snap: Any) -> dict[str, Any]:
        """Where the program's stdout and stderr go (``Landing.prepare``'s keywords): this
        daemon's own."""
        return {}

    def _grant(self, ws: Any) -> Granted:
        # the daemon's grants are an offer to every program: each takes the directories it has and
        # as many of the listening addresses as it has listening sockets
        mapped = {guest: host for guest, host in self.dirs.items()
                  if guest in ws.closed_preopens or any(fd.preopen == guest for fd in ws.fds)}
        listeners = sum(1 for need in needed(ws) if need.kind == "listening socket")
        try:
            return resolve(ws, dirs=mapped, listens=self.listens[:listeners], gateways=self.gateways,
                           where="migration")
        except GrantError as e:
            if not e.missing:
                raise MigrationError(str(e)) from None
            raise MigrationError(f"the program has {', '.join(f'{m.kind} {m.guest}' for m in e.missing)}, which "
                                 f"this daemon does not map (start it with "
                                 f"{', '.join(m.option for m in e.missing)})") from None




class HeldProgram:
    """A restored program on this daemon, run on the main thread behind its WASI gate until the
    commit (see :meth:`Target._run_held`)."""

    def __init__(self, program: Program) -> None:
        from wasmig.session.loop import Session
        from wasmig.session.policy import CheckpointPolicy

        self.program = program
        self.session = Session(program, CheckpointPolicy(), None)
        self.wasi = program.wasi
        self._resumed = False
        self.started = threading.Event()  # the commit was recorded and the gate opened
        self.ended = threading.Event()
        self.outcome: tuple[str, Any] = ("exit", 0)
        self.backtrace: list[str] = []  # of a trap
        self.control: Any = None

    def body(self) -> int:
        """Run it on from its snapshot to its end; its exit code."""
        return self.session.run(resume=True)

    def has_resumed(self) -> bool:
        self._resumed = self._resumed or self.program.resumed() or self.wasi.gate.touched.is_set()
        return self._resumed

    def check(self, when: str) -> None:
        """Raise MigrationError if the program trapped or failed (``when``: what it had done)."""
        if not self.ended.is_set():
            return
        kind, detail = self.outcome
        if kind == "trap":
            raise MigrationError(f"the restored program trapped on this daemon's engine {when}: {detail}")
        if kind == "error":
            raise MigrationError(f"the restored program failed on this daemon's engine {when}: {detail}")

    def run(self) -> tuple[str, Any]:
        """Run it to its end: ("exit", code), ("moved", None), ("stopped", None), ("trap", reason) or
        ("error", why)."""
        from wasmig.session.policy import CheckpointExit, MigratedAway

        try:
            outcome: tuple[str, Any] = ("exit", self.body())
        except MigratedAway:
            outcome = ("moved", None)
        except CheckpointExit:  # its policy stops it after a checkpoint (a fleet job moved by stop-and-copy)
            outcome = ("stopped", None)
        except Trap as trap:
            outcome = ("trap", trap.reason)
            self.backtrace = list(trap.backtrace)
        except Exception as e:  # noqa: BLE001 - reported (to the source, if before the commit), never raised
            outcome = ("error", str(e) or repr(e))
        self.outcome = outcome
        self.ended.set()
        return outcome

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        self.wasi.close()


def _serve_control(session: Any) -> Any:
    from wasmig.migrate.control import serve_control

    return serve_control(session)
