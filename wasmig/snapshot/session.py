"""Run (or continue) a WASI program with checkpoints: the engine-side loop behind
``wasmig run --checkpoint-...`` and ``wasmig restore``.

Triggers, any combination:
- ``at_step=N``: at the N-th stable point (function entries + loop entries), deterministic and
  engine-neutral; ``at_instruction=N``: after exactly N instructions (interpreter only);
- ``every=S`` seconds (a timer) and on demand (``SIGUSR1``, e.g. from ``wasmig checkpoint PID``):
  at the next stable point, or at once if the program is blocked in a host call.
Then ``then="continue"`` or ``"exit"``. With ``stable_only`` an instruction-precise stop first
advances to the next stable point, so the snapshot is portable to the compiled engine.

Requests arrive asynchronously (signal handlers run in the main thread between bytecodes); they
only set flags: the machine stops at its next stable point, and a blocked WASI wait gives up via
the :class:`~wasmig.wasi.blocking.Waiter` pipe, so no host call is ever half done.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError
from wasmig.files import make_private_dir, open_private
from wasmig.runtime_dir import RuntimeDirError, runtime_dir
from wasmig.snapshot.policy import (  # noqa: F401 - re-exported: the run loops' names for them
    CheckpointExit,
    CheckpointPolicy,
    MigratedAway,
    MigrationInDoubt,
    ignore_checkpoint_request,
)
from wasmig.wasi.preview1 import ProcExit, Wasi

if TYPE_CHECKING:  # the interpreter is imported by the code that runs on it: a run on wasmtime never pays for it
    from wasmig.instance import Instance
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot  # (and the snapshot classes by the code that captures one)

MODULE_FILE_PREFIX = "module-"


class StopHandoff:
    """Where a live migration (in a thread of its own) and the run loop that owns the guest meet.

    The migration calls :meth:`stop`: the run loop stops the guest at its next stable point,
    captures its state without the memory (which the migration reads page by page, in place)
    and hands it over in :meth:`take`, then waits, the guest still stopped, for
    :meth:`decide`: ``True`` ends the run (:class:`MigratedAway`), ``False`` lets it go on as if
    nothing happened. If the program ends or fails first, :meth:`stop` raises."""

    def __init__(self) -> None:
        self.want_stop = False
        self._stopped = threading.Event()
        self._decided = threading.Event()
        self._snapshot: Snapshot | None = None
        self._failure: str | None = None
        self._commit = False
        #: set with decide(True) when the program did not surely move: (where it is saved, why)
        self.in_doubt: tuple[str, str] | None = None
        self.stopped_at: float | None = None  # time.perf_counter() when the program had stopped
        #: called (from the run's thread) when the program ends before it stopped: the migration,
        #: perhaps blocked on the network, gives up at once
        self.on_end: Callable[[], None] | None = None

    # the migration's side
    def stop(self, request: Callable[[], None], timeout: float = 30.0) -> Snapshot:
        self.want_stop = True
        request()
        if not self._stopped.wait(timeout):
            self.want_stop = False
            raise SnapshotError(f"the program did not stop within {timeout:g} s")
        if self._snapshot is None:
            raise SnapshotError(self._failure or "the program ended before it could stop")
        return self._snapshot

    def decide(self, commit: bool) -> None:
        self._commit = commit
        self._decided.set()

    # the run loop's side
    def take(self, capture: Callable[[], Snapshot]) -> bool:
        """The guest stopped for the migration: hand over its state, wait for the decision."""
        from wasmig.errors import WasmError

        self.want_stop = False
        self.stopped_at = time.perf_counter()
        try:
            self._snapshot = capture()
        except (SnapshotError, OSError, WasmError) as e:
            self._failure = f"cannot capture the program's state: {e}"
            self._stopped.set()
            return False
        self._stopped.set()
        self._decided.wait()
        if self._commit and self.in_doubt is not None:
            raise MigrationInDoubt(*self.in_doubt)
        return self._commit

    def ended(self, why: str = "the program ended before it could stop") -> None:
        """The run is over: a migration still waiting for the stop gives up."""
        if not self._stopped.is_set():
            self._failure = why
            self._stopped.set()
            if self.on_end is not None:
                self.on_end()


def store_module(directory: Path, module: Module) -> Path:
    """Keep the module's bytes beside its snapshots (once, atomically), so a restore — possibly on
    another machine — finds exactly the module the snapshot belongs to."""
    from wasmig.errors import WasmError

    make_private_dir(directory)
    try:  # a module not read at start is read now, unchanged since (else an error)
        path = directory / f"{MODULE_FILE_PREFIX}{module.sha256}.wasm"
        data = module.data if not path.exists() else None
    except WasmError as e:
        raise SnapshotError(f"cannot keep the module beside the snapshot: {e}") from None
    if data is not None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)  # left by a killed writer of this pid
        with open(open_private(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


class SessionBase:
    """What a checkpointing run does the same on every engine: the signal and timer triggers,
    the status file ``wasmig checkpoint PID`` reads, and writing snapshots."""

    def __init__(self, wasi: Wasi, policy: CheckpointPolicy, module: Module, module_path: str | None = None):
        self.wasi = wasi
        self.policy = policy
        self.module = module
        self.module_path = module_path
        self._store: Any = None
        self._committing: threading.Thread | None = None  # a checkpoint being made durable (_save)
        self._status_file: Path | None = None
        self._old_handlers: dict[int, Any] = {}
        self.handoff: StopHandoff | None = None  # set while a live migration runs

    def guest_memories(self) -> list[tuple[int, Callable[[int], bytes | memoryview]]]:  # pragma: no cover
        """Per memory: its size in bytes and a function reading page ``i`` as it is now."""
        raise NotImplementedError

    def _hand_over(self, capture: Callable[[], Snapshot]) -> bool:
        """At a stop: if a migration asked for it, hand the guest over; True if it moved away."""
        handoff = self.handoff
        if handoff is None or not handoff.want_stop:
            return False

        def detached() -> Snapshot:  # connections through a gateway are quiesced first
            self.wasi.detach_gateway()
            return capture()

        if handoff.take(detached):
            raise MigratedAway()
        self.wasi.reattach_gateway()  # the migration gave up: the connections come back here
        return True

    def request(self, *_: Any) -> None:  # pragma: no cover - each engine has its own
        raise NotImplementedError

    def _install(self) -> None:
        self.wasi.reattach_gateway()  # a restored program behind a gateway takes its connections back
        if threading_main():
            self._old_handlers[signal.SIGUSR1] = signal.signal(
                signal.SIGUSR1, self.request if self.policy.active else ignore_checkpoint_request)
            if self.policy.every:
                self._old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self.request)
                signal.setitimer(signal.ITIMER_REAL, self.policy.every, self.policy.every)
        if self.policy.active:
            self._status_file = runtime_dir() / f"{os.getpid()}.json"
            self._write_status()

    def _uninstall(self) -> None:
        self._wait_for_commit()  # before the status file goes: the commit would write it again
        if self.policy.every and threading_main():
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        if self._status_file is not None:
            self._status_file.unlink(missing_ok=True)

    def _write_status(self) -> None:
        if self._status_file is None:
            return
        status = {"pid": os.getpid(), "checkpoint_dir": str(self.policy.directory),
                  "snapshots": [str(p) for p in self.policy.written]}
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self._status_file)

    def _save(self, snap: Snapshot, capture_s: float | None = None) -> None:
        """Write ``snap`` (and the module beside it, once) into the checkpoint directory.
        ``capture_s``: how long capturing it took, for the log line.

        Only the part that reads the memory (:meth:`CheckpointDir.stage`) runs while the guest is
        stopped (its memory may be read in place); the fsyncs and the snapshot file
        (:meth:`StagedWrite.commit`) follow on a thread while the guest runs on, except when the
        run exits after this checkpoint. The next checkpoint, and the end of the run, wait for it."""
        directory = self.policy.directory
        if directory is None:
            return
        from wasmig.snapshot.store import CheckpointDir

        self._wait_for_commit()
        module_file = store_module(directory, self.module)
        snap.meta.update({"module_file": module_file.name, "module_path": self.module_path,
                          "host": os.uname().nodename, "pid": os.getpid()})
        if self._store is None:
            self._store = CheckpointDir(directory)
        staged = self._store.stage(snap)
        if self.policy.then == "exit":
            self._commit(staged, snap.steps, capture_s)
            return
        self._committing = threading.Thread(target=self._commit_in_background, args=(staged, snap.steps, capture_s),
                                            name="wasmig-checkpoint-commit")
        self._committing.start()

    def _commit(self, staged: Any, steps: int | None, capture_s: float | None) -> None:
        from wasmig import log

        path = staged.commit()
        self.policy.written.append(path)
        self._write_status()
        stats = staged.stats
        log.info(__name__, "checkpoint %s at step %s: capture %s, write %.3f s (guest stopped for %.3f s of it), "
                 "%d bytes written (%d pages, %d new)",
                 path, steps, "?" if capture_s is None else f"{capture_s:.3f} s", stats.seconds,
                 stats.pause_seconds, stats.bytes_written, stats.pages_total, stats.pages_new)

    def _commit_in_background(self, staged: Any, steps: int | None, capture_s: float | None) -> None:
        try:
            self._commit(staged, steps, capture_s)
        except (SnapshotError, OSError) as e:  # as a checkpoint that failed while the guest waited
            print(f"wasmig: warning: checkpoint failed, continuing: {e}", file=sys.stderr)

    def _wait_for_commit(self) -> None:
        if self._committing is not None:
            self._committing.join()
            self._committing = None


class Session(SessionBase):
    """One program run under a checkpoint policy, on one interpreter instance."""

    def __init__(self, instance: Instance, wasi: Wasi, policy: CheckpointPolicy, module_path: str | None = None):
        super().__init__(wasi, policy, instance.module, module_path)
        self.instance = instance
        self.machine = instance.machine
        self._instruction_done = False  # the instruction trigger fires once
        self._advancing = False  # between an instruction stop and the stable point it advances to

    @property
    def steps(self) -> int | None:
        """Stable points passed so far (None when this program's count is unknown)."""
        return self.machine.steps if self.machine.steps_counted else None

    # --- triggers -----------------------------------------------------------------------------
    def request(self, *_: Any) -> None:
        """Checkpoint as soon as possible (signal handler / timer)."""
        self.machine.stop_at_step = 0
        self.wasi.waiter.request()

    def _arm(self) -> None:
        from wasmig.interp.machine import NEVER

        p = self.policy
        m = self.machine
        if p.at_step is not None and not m.steps_counted:
            raise SnapshotError("cannot checkpoint at a step: this program's step count is unknown (its snapshot "
                                "was taken by a run that did not count steps)")
        m.stop_at_step = p.at_step if p.at_step is not None and p.at_step > m.steps else NEVER
        if p.at_instruction is not None and not self._instruction_done:
            if m.instructions is None:
                raise SnapshotError("cannot checkpoint at an instruction count: this program's instruction count is "
                                    "unknown (its snapshot was taken by a run that did not count instructions)")
            m.counting = True
            m.stop_at_instruction = p.at_instruction
        else:
            m.counting = False
            m.stop_at_instruction = NEVER
        self.wasi.waiter.clear()

    def guest_memories(self) -> list[tuple[int, Callable[[int], bytes | memoryview]]]:
        from wasmig.snapshot.state import PAGE_SIZE

        def reader(data: bytearray) -> Callable[[int], bytes]:
            return lambda i: bytes(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])  # a copy: the guest may grow it

        return [(len(m.data), reader(m.data)) for m in self.instance.store.mems]

    # --- the loop -------------------------------------------------------------------------------
    def run(self, *, resume: bool) -> int:
        """Run ``_start`` (or resume a restored machine) to the end; return the exit code."""
        self._install()
        try:
            return self._run(resume)
        finally:
            if self.handoff is not None:
                self.handoff.ended()

    def _run(self, resume: bool) -> int:
        from wasmig.interp.machine import Suspended
        from wasmig.snapshot.capture import capture

        try:
            self._arm()
            first = not resume
            while True:
                try:
                    if first:
                        first = False
                        self.instance.invoke("_start")
                    else:
                        self.machine.resume()
                    return 0
                except ProcExit as e:
                    return e.code
                except Suspended:
                    if self.machine.point == "instruction" or self._advancing:
                        self._instruction_done = True
                    if self._advance_to_stable():
                        continue
                    self._advancing = False
                    if self._hand_over(lambda: capture(self.instance, with_memory=False)):
                        self._arm()
                        continue
                    try:
                        self._checkpoint()
                    except (SnapshotError, OSError) as e:
                        # a checkpoint that cannot be taken is refused; the program itself goes on
                        print(f"wasmig: warning: checkpoint failed, continuing: {e}", file=sys.stderr)
                    else:
                        if self.policy.then == "exit":
                            raise CheckpointExit() from None
                    self._arm()  # triggers that fired stay off: _arm only re-arms those still ahead
        finally:
            self._uninstall()

    def _advance_to_stable(self) -> bool:
        """With stable_only, an instruction stop continues to the next stable point first."""
        from wasmig.interp.machine import NEVER

        m = self.machine
        if m.point == "instruction" and self.policy.stable_only:
            m.counting = True  # keep counting: the snapshot still knows its exact instruction count
            m.stop_at_instruction = NEVER
            m.stop_at_step = m.steps + 1
            self._advancing = True
            return True
        return False

    def checkpoint_now(self) -> Snapshot:
        from wasmig.snapshot.capture import capture

        return capture(self.instance)

    def _checkpoint(self) -> None:
        from wasmig.snapshot.capture import capture

        if self.policy.directory is not None:
            started = time.perf_counter()
            snap = capture(self.instance, memory_in_place=True)  # written before the machine resumes
            self._save(snap, time.perf_counter() - started)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def find_module_for(snapshot_path: Path, snap: Snapshot, explicit: str | None, *, validate: bool = True,
                    decode: bool = True) -> Module:
    """The module a snapshot belongs to: ``--module``, else the copy stored beside the snapshots,
    else the path recorded at checkpoint time. Always verified by sha256. ``validate=False``
    defers validation to first use, ``decode=False`` decoding too (see :class:`Module`): a
    restore on wasmtime needs neither when the module's instrumented variant is cached."""
    from wasmig.module import Module
    from wasmig.snapshot.wsnap import MAX_MODULE_BYTES  # refused before it is read: the largest a .wsnap holds

    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    else:
        from wasmig.snapshot import wsnap

        if wsnap.is_wsnap(snapshot_path):  # a single-file export carries its module (sha256 checked)
            return Module.from_bytes(wsnap.read_module(snapshot_path), validate=validate, decode=decode)
        base = snapshot_path if snapshot_path.is_dir() else snapshot_path.parent.parent
        candidates.append(base / f"{MODULE_FILE_PREFIX}{snap.module_sha256}.wasm")
        candidates.append(snapshot_path.parent / f"{MODULE_FILE_PREFIX}{snap.module_sha256}.wasm")
        recorded = snap.meta.get("module_path")
        if isinstance(recorded, str):
            candidates.append(Path(recorded))
    for path in candidates:
        if path.is_file():
            module = Module.from_file(path, validate=validate, decode=decode, max_bytes=MAX_MODULE_BYTES)
            if not decode:
                module.cached_facts()  # their sha256, when they are cached: the module is then not even read
            if module.sha256 != snap.module_sha256:
                if explicit:
                    raise SnapshotError(f"{path} is not the module this snapshot was taken of "
                                        f"(sha256 {module.sha256[:16]}..., expected {snap.module_sha256[:16]}...)")
                continue
            return module
    raise SnapshotError("cannot find the module this snapshot was taken of; give it with --module PATH")


def wait_for_snapshot(pid: int, timeout: float) -> Path:
    """For ``wasmig checkpoint PID``: signal a running ``wasmig run`` and wait for its new snapshot."""
    try:
        status_file = runtime_dir(create=False) / f"{pid}.json"
    except RuntimeDirError as e:
        raise SnapshotError(str(e)) from None
    try:
        before = json.loads(status_file.read_text())
    except (OSError, ValueError):
        if pid <= 0 or not _alive(pid):  # it exited (or never was)
            raise SnapshotError(f"no process {pid}") from None
        raise SnapshotError(f"process {pid} is not a wasmig run with --checkpoint-dir") from None
    count = len(before.get("snapshots", []))
    directory = Path(str(before.get("checkpoint_dir", "")))
    on_disk = _snapshot_files(directory)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        status_file.unlink(missing_ok=True)  # a stale status file of a process that is gone
        raise SnapshotError(f"no process {pid}") from None
    if b"wasmig" not in cmdline:  # the pid was reused: never signal an unrelated process
        status_file.unlink(missing_ok=True)
        raise SnapshotError(f"process {pid} is not a wasmig run")
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        raise SnapshotError(f"no process {pid}") from None
    except PermissionError:
        raise SnapshotError(f"not allowed to signal process {pid}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = None
        if status is not None and len(status.get("snapshots", [])) > count:
            return Path(status["snapshots"][-1])
        # the run may have exited right after its snapshot (--checkpoint-then exit): look on disk
        newer = [p for p in _snapshot_files(directory) if p not in on_disk]
        if newer:
            return newer[-1]
        if status is None and not _alive(pid):
            raise SnapshotError(f"process {pid} exited before writing a snapshot")
        time.sleep(0.02)
    raise SnapshotError(f"process {pid} wrote no snapshot within {timeout:g} s")


def _snapshot_files(directory: Path) -> list[Path]:
    try:
        return sorted((directory / "snapshots").glob("*.snap"))
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
