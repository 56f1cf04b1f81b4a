"""Run (or continue) a WASI program with checkpoints, on any engine: the loop behind ``wasmig run``
and ``wasmig restore``, which talks to the engine through :class:`~wasmig.engines.base.Program` only.

Triggers, any combination:
- ``at_step=N``: at the N-th stable point (function entries + loop entries), deterministic and
  engine-neutral; ``at_instruction=N``: after exactly N instructions (the interpreter only);
- ``every=S`` seconds (a timer) and on demand (``SIGUSR1``, e.g. from ``wasmig checkpoint PID``):
  at the next stable point, or at once if the program is blocked in a host call;
- a live migration (:class:`StopHandoff`), from the thread it runs in.
Then ``then="continue"`` or ``"exit"``. With ``stable_only`` an instruction-precise stop first
advances to the next stable point, so the snapshot is portable to the compiled engine.

Requests arrive asynchronously (signal handlers run in the main thread between bytecodes); they
only set flags (:meth:`Program.request`): the engine stops at its next stable point, and a blocked
WASI wait gives up via the :class:`~wasmig.wasi.blocking.Waiter` pipe, so no host call is ever
half done.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError
from wasmig.session.policy import (
    CheckpointExit,
    CheckpointPolicy,
    MigratedAway,
    MigrationInDoubt,
    ignore_checkpoint_request,
)
from wasmig.wasi.preview1 import ProcExit

if TYPE_CHECKING:  # the engine's code is imported by the engine: a run on one never pays for the other
    from wasmig.engines.base import MemoryReader, Program
    from wasmig.snapshot.state import Snapshot  # (and the snapshot classes by the code that captures one)


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


class Session:
    """One program run under a checkpoint policy: the signal and timer triggers, the status file
    ``wasmig checkpoint PID`` reads, the migration hand-off, and writing snapshots."""

    def __init__(self, program: Program, policy: CheckpointPolicy, module_path: str | None = None) -> None:
        self.program = program
        self.wasi = program.wasi
        self.module = program.module
        self.policy = policy
        self.module_path = module_path
        self._store: Any = None
        self._module_file: str | None = None  # where the store keeps the module (put once a run)
        self._committing: threading.Thread | None = None  # a checkpoint being made durable (_save)
        self._status_file: Path | None = None
        self._failures: list[str] = []  # why checkpoints failed (the status file's 'failures')
        self._old_handlers: dict[int, Any] = {}
        self.handoff: StopHandoff | None = None  # set while a live migration runs
        #: more metadata recorded with each snapshot, asked for while the program is stopped for it
        #: (a fleet job records how many bytes of output its log holds at that point)
        self.annotate: Callable[[], dict[str, Any]] | None = None

    @property
    def steps(self) -> int | None:
        """Stable points passed so far (None when this run does not count them)."""
        return self.program.steps

    def request(self, *_: Any) -> None:
        """Checkpoint as soon as possible (signal handler, timer, a migration's thread)."""
        self.program.request()

    def guest_memories(self) -> list[MemoryReader]:
        """Per memory: its size in bytes and a function reading page ``i`` as it is now."""
        return self.program.guest_memories()

    # --- the loop -------------------------------------------------------------------------------
    def run(self, *, resume: bool) -> int:
        """Run ``_start`` (or, with ``resume``, go on from the restored state) to the end; return
        the exit code."""
        try:
            return self._run(resume)
        finally:
            if self.handoff is not None:
                self.handoff.ended()

    def _arm(self) -> None:
        p = self.policy
        self.program.arm(at_step=p.at_step, at_instruction=p.at_instruction, stable_only=p.stable_only)

    def _run(self, resume: bool) -> int:
        program = self.program
        self._install()
        try:
            self._arm()
            first = not resume
            while True:
                try:
                    stopped = program.start() if first else program.resume()
                except ProcExit as e:
                    return e.code
                first = False
                if not stopped:
                    return 0
                if self._hand_over(lambda: program.capture(with_memory=False)):
                    self._arm()
                    continue
                try:
                    self._checkpoint()
                except (SnapshotError, OSError) as e:
                    # a checkpoint that cannot be taken is refused; the program itself goes on
                    self._checkpoint_failed(e)
                else:
                    if self.policy.then == "exit":
                        raise CheckpointExit() from None
                self._arm()  # triggers that fired stay off: arm sets only those still ahead
        finally:
            self._uninstall()

    def _hand_over(self, capture: Callable[[], Snapshot]) -> bool:
        """At a stop: if a migration asked for it, hand the guest over; True if it moved away."""
        handoff = self.handoff
        if handoff is None or not handoff.want_stop:
            return False

        def detached() -> Snapshot:  # connections through a gateway are quiesced first
            self.wasi.detach_gateway()
            snap = capture()
            if self.annotate is not None:  # what a checkpoint records, the migration's state records too
                snap.meta.update(self.annotate())
            return snap

        if handoff.take(detached):
            raise MigratedAway()
        self.wasi.reattach_gateway()  # the migration gave up: the connections come back here
        return True

    def _checkpoint(self) -> None:
        if self.policy.directory is not None:
            started = time.perf_counter()
            snap = self.program.capture(memory_in_place=True)  # written before the program goes on
            self._save(snap, time.perf_counter() - started)

    # --- triggers and the status file ---------------------------------------------------------
    def _install(self) -> None:
        self.wasi.reattach_gateway()  # a restored program behind a gateway takes its connections back
        if threading_main():
            self._old_handlers[signal.SIGUSR1] = signal.signal(
                signal.SIGUSR1, self.request if self.policy.active else ignore_checkpoint_request)
            if self.policy.every:
                self._old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self.request)
                signal.setitimer(signal.ITIMER_REAL, self.policy.every, self.policy.every)
            if not self.program.interruptible and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # see Program.interruptible
        if self.policy.active:
            # a run that checkpoints has a status file in the runtime directory (whose checks import
            # tempfile and its compression modules: ~10 ms a plain run does not pay)
            from wasmig.session.status import status_path

            self._status_file = status_path(os.getpid())
            self._write_status()
        prepare = self._prepare if self.policy.active else None
        if (self.policy.active or self.policy.migratable) and not self.policy.planned:
            self.program.ready_on_request(prepare)  # else (the interpreter) at the first checkpoint
        elif prepare is not None:
            # else (the interpreter) at the first checkpoint; a periodic one is prepared for by half its period
            self.program.when_under_way(prepare, by=self.policy.every / 2 if self.policy.every else None)

    def _uninstall(self) -> None:
        self._wait_for_commit()  # before the status file goes: the commit would write it again
        if self.policy.every and threading_main():
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        if self._status_file is not None:
            self._status_file.unlink(missing_ok=True)

    def _write_status(self) -> None:
        if self._status_file is not None:
            from wasmig.session.status import write_status

            write_status(self._status_file, self.policy.directory, self.policy.written, self._failures)

    def _checkpoint_failed(self, e: Exception) -> None:
        """Said on stderr, and in the status file: a ``wasmig checkpoint PID`` waiting for this
        snapshot reports why at once, instead of waiting out its timeout."""
        why = f"{e.strerror} ({e.filename})" if isinstance(e, OSError) and e.strerror and e.filename else (
            e.strerror if isinstance(e, OSError) and e.strerror else str(e))
        print(f"wasmig: warning: checkpoint failed, continuing: {why}", file=sys.stderr)
        self._failures.append(why)
        self._write_status()

    def _save(self, snap: Snapshot, capture_s: float | None = None) -> None:
        """Write ``snap`` (and the module beside it, once) into the checkpoint directory.
        ``capture_s``: how long capturing it took, for the log line.

        Only the part that reads the memory (:meth:`SnapshotStore.stage`) runs while the guest is
        stopped (its memory may be read in place); the fsyncs and the snapshot file
        (:meth:`StagedSnapshot.commit`) follow on a thread while the guest runs on, except when the
        run exits after this checkpoint. The next checkpoint, and the end of the run, wait for it."""
        directory = self.policy.directory
        if directory is None:
            return
        self._wait_for_commit()
        store = self._open_store()
        if self._module_file is None:
            # once per run, not at every checkpoint (an S3 HEAD while the guest waits): no gc
            # removes a kept module (docs/stores.md), so the copy made now is there for the run
            self._module_file = store.put_module(self.module)
        module_file = self._module_file
        snap.meta.update({"module_file": module_file.rsplit("/", 1)[-1], "module_path": self.module_path,
                          "host": os.uname().nodename, "pid": os.getpid()})
        if self.annotate is not None:
            snap.meta.update(self.annotate())
        staged = store.stage(snap)
        if self.policy.then == "exit":
            self._commit(staged, snap.steps, capture_s)
            return
        self._committing = threading.Thread(target=self._commit_in_background, args=(staged, snap.steps, capture_s),
                                            name="wasmig-checkpoint-commit")
        self._committing.start()

    def _open_store(self) -> Any:
        """The checkpoint directory's store, opened (importing the snapshot writer) once."""
        if self._store is None:
            from wasmig.snapshot.stores import open_store

            self._store = open_store(str(self.policy.directory))
        return self._store

    def _prepare(self) -> None:
        """What writing a snapshot needs besides the capture, made ready while the program runs
        (:attr:`CheckpointPolicy.active`: :meth:`Program.when_under_way`, or at the first request
        of a run stopped only on request: :meth:`Program.ready_on_request`) rather than at its
        start: the store opened and the user's signing key loaded (the snapshot writer's modules and
        the cryptography package, 40-50 ms of imports). A failure here is left for the checkpoint to
        meet and report; a key that cannot be used is reported here (once, as at any checkpoint)."""
        from wasmig.snapshot.signing import own_key_pair

        try:
            self._open_store().prepare_writes()
        except (SnapshotError, OSError):
            return
        own_key_pair()

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
            self._checkpoint_failed(e)

    def _wait_for_commit(self) -> None:
        if self._committing is not None:
            self._committing.join()
            self._committing = None


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()
