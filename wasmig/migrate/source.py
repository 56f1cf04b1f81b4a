"""Moving a running program to a target daemon: the source's side (docs/migration.md).

:func:`migrate` runs in a thread of its own beside the session that runs the guest. Pre-copy
rounds send the pages that changed since the last round while the guest keeps running; when a
round has little left (or the rounds stop shrinking), the guest is stopped through the
session's :class:`~wasmig.session.loop.StopHandoff`, the last changed pages go with the
frames, globals and WASI state, and the target restores it all and resumes it, held before its
first host call (``prepared``: on wasmtime the rewind reached the innermost frame). Only then
does the source commit; it ends only when the target confirms the commit, and the target lets
the guest act only after it. Any failure before the commit leaves the guest running here; a
commit whose answer was lost is resolved by asking the daemon (see :meth:`_Source._await_commit`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zstandard

from wasmig.errors import WasmError
from wasmig.migrate.pages import ChangedPage, PageTracker
from wasmig.migrate.protocol import PAGE_BATCH, Channel, Identity, MigrationError, PeerGone, connect
from wasmig.session.loop import Session, StopHandoff
from wasmig.snapshot.state import PAGE_SIZE, SnapshotError, to_plain

#: stop pre-copy when a round has at most this many bytes of changed pages left
STOP_COPY_BYTES = 1 << 20
MAX_ROUNDS = 12
PREPARE_TIMEOUT = 240.0  # the target restores a large guest and waits for it to resume before it answers
RESOLVE_TIMEOUT = 10.0  # how long a source that lost the commit's answer keeps asking the daemon


@dataclass
class Progress:
    """What a progress display shows; passed to the ``progress`` callback after every step."""

    phase: str = "connecting"  # connecting, pre-copy, stop-and-copy, restoring, committing, done, aborted
    round: int = 0
    pages_total: int = 0
    pages_sent: int = 0  # pages whose contents went over the wire
    pages_known: int = 0  # changed pages the target already held (same contents): not resent
    bytes_sent: int = 0
    round_pages: int = 0  # changed pages in the current round
    round_done: int = 0


@dataclass
class MigrationResult:
    target: str
    migration_id: str
    total_s: float
    downtime_s: float  # the guest's last instruction here -> the target's confirmation of its start
    bytes_sent: int
    rounds: int
    pages_sent: int
    pages_known: int
    target_pid: int | None = None
    log: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"migrated to {self.target} in {self.total_s:.2f} s: downtime {self.downtime_s * 1000:.1f} ms, "
                f"{self.bytes_sent / 1e6:.2f} MB sent, {self.rounds} rounds, {self.pages_sent} pages sent, "
                f"{self.pages_known} already on the target")


def migrate(session: Session, target: str, identity: Identity, *,
            progress: Callable[[Progress], None] | None = None,
            on_done: Callable[[MigrationResult], None] | None = None, stop_copy_bytes: int = STOP_COPY_BYTES,
            max_rounds: int = MAX_ROUNDS, precopy: bool = True, stop_timeout: float = 30.0,
            page_sink: Callable[[list[list[Any]]], int] | None = None) -> MigrationResult:
    """Move the program ``session`` runs to the daemon at ``target``. On success the session's
    run ends with :class:`~wasmig.session.loop.MigratedAway` (``on_done`` is called first,
    while this process surely still runs); on any failure before the target committed, the
    program goes on here and :class:`MigrationError` says why. ``precopy=False``: stop-and-copy
    only (the guest stops at once and everything goes while it is stopped). ``identity``: this
    source's key, pinning the target's (:meth:`Identity.pinning`). ``page_sink``: the pages' bytes
    go another way than the channel (a fleet's object store): it takes a batch of ``[position,
    zstd bytes]`` and returns the token the target fetches it by (a ``page_ref`` message); the
    target still checks every page against its id, which the channel carries."""
    source = _Source(session, target, identity, progress or (lambda p: None), stop_copy_bytes, max_rounds, precopy,
                     stop_timeout)
    source.on_done = on_done
    source.page_sink = page_sink
    return source.run()


class _Source:
    def __init__(self, session: Session, target: str, identity: Identity, progress: Callable[[Progress], None],
                 stop_copy_bytes: int, max_rounds: int, precopy: bool, stop_timeout: float) -> None:
        self.session = session
        self.target = target
        self.identity = identity
        self.report = progress
        self.p = Progress()
        self.stop_copy_bytes = stop_copy_bytes
        self.max_rounds = max_rounds if precopy else 0
        self.stop_timeout = stop_timeout
        self.id = secrets.token_hex(8)
        self.tracker = PageTracker()
        self.cctx = zstandard.ZstdCompressor(level=1)
        self.ch: Channel | None = None
        self.on_done: Callable[[MigrationResult], None] | None = None
        self.page_sink: Callable[[list[list[Any]]], int] | None = None  # see migrate()
        self.ended_early = False  # the program ended before it stopped for the migration

    def _warm_up(self) -> None:
        """Compute now, while the program runs, what capturing it stopped would otherwise compute
        in the downtime: on wasmtime, the tables its element segments make (a scan of every
        instruction, remembered per module: 0.23 s for CPython's 26 MB, the first time)."""
        self.session.program.warm_up()

    def _program_ended(self) -> None:
        """The program ended before the stop (called from its run's thread): wake this migration
        from whatever network wait it is in, so that it gives up at once."""
        self.ended_early = True
        ch = self.ch
        if ch is not None:
            try:
                ch.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> MigrationResult:
        t0 = time.perf_counter()
        handoff = StopHandoff()
        if self.session.handoff is not None:
            raise MigrationError("a migration of this program is already running")
        self.session.handoff = handoff
        handoff.on_end = self._program_ended
        stopped = committed = False
        try:
            self.ch = ch = connect(self.target, self.identity)
            if self.ended_early:
                raise MigrationError("the program ended before it could move")
            self._warm_up()
            module = self.session.module
            ch.send("offer", id=self.id, module_sha256=module.sha256, module_size=len(module.data or b""))
            if ch.recv(expect=("offer_ok",)).get("need_module"):
                ch.send("module", data=module.data)
            ch.recv(PREPARE_TIMEOUT, expect=("module_ok",))
            self.p.phase = "pre-copy"
            last = None
            for _ in range(self.max_rounds):
                changed = self._round(self.session.guest_memories(), final=False)
                size = sum(len(c.data) for c in changed if c.id is not None)
                if size <= self.stop_copy_bytes or (last is not None and size >= last):
                    break  # little left, or the guest dirties as fast as the rounds go
                last = size
            self.p.phase = "stop-and-copy"
            self.report(self.p)
            # the gateways (if any) may let the target take the program's connections over
            self.session.wasi.gateway_handover = next(iter(self.identity.trusted))
            snap = handoff.stop(self.session.request, self.stop_timeout)
            stopped = True
            t_stop = handoff.stopped_at or time.perf_counter()  # the program's last instruction here
            memories = self.session.guest_memories()
            self._round(memories, final=True)
            plain = to_plain(snap, lambda i, _data: None)
            for i, (size, _page) in enumerate(memories):
                plain["memories"][i]["size_pages"] = size // PAGE_SIZE
            plain["meta"] = {**snap.meta, "migrated_from": _host()}
            ch.send("state", snapshot=plain)
            self.p.phase = "restoring"
            self.report(self.p)
            if ch.recv(PREPARE_TIMEOUT, expect=("prepared",)).get("resumed") is not True:
                raise MigrationError(f"{ch.peer}: the target did not say the program resumed there")
            self.p.phase = "committing"
            self.report(self.p)
            ch.send("commit")
            committed = True
            msg = self._await_commit(ch)
            downtime = time.perf_counter() - t_stop
            self.p.phase = "done"
            self.report(self.p)
            result = MigrationResult(self.target, self.id, time.perf_counter() - t0, downtime,
                                     ch.bytes_sent, self.p.round, self.p.pages_sent, self.p.pages_known,
                                     msg.get("pid") if isinstance(msg.get("pid"), int) else None)
            if self.on_done is not None:
                self.on_done(result)
            handoff.decide(True)
            return result
        except InDoubt as e:
            self.p.phase = "in doubt"
            self.report(self.p)
            saved = self._keep_in_doubt(handoff, snap, str(e))
            e.args = (f"{e} -- its state is saved in {saved}: restore it with `wasmig restore --module "
                      f"PROGRAM.wasm {saved}` if it does not run on the target",)
            raise
        except (MigrationError, SnapshotError, OSError) as e:
            self.p.phase = "aborted"
            self.report(self.p)
            if self.ch is not None and not committed:
                self.ch.error(f"the source aborted: {e}")
            self.session.wasi.gateway_handover = None
            if stopped:
                handoff.decide(False)  # the guest goes on here, as if nothing happened
            if self.ended_early and not stopped:
                raise MigrationError("the program ended before it could move") from None
            if isinstance(e, MigrationError):
                raise
            raise MigrationError(str(e)) from None
        except BaseException:  # a bug or an interrupt: never leave the stopped program waiting
            if stopped and not committed:
                handoff.decide(False)
            elif committed:
                self._keep_in_doubt(handoff, snap, "the migration failed unexpectedly after its commit")
            raise
        finally:
            handoff.on_end = None
            if not stopped:
                self.session.handoff = None
                handoff.ended("the migration gave up")
            elif not committed:
                self.session.handoff = None
            if self.ch is not None:
                self.ch.close()

    def _await_commit(self, ch: Channel) -> dict[str, Any]:
        """The target's confirmation. Without one (the connection broke), the daemon is asked
        what it decided: a commit that never arrived is aborted by the asking, so the answer is
        final; a commit it recorded comes with what became of the program there (docs/migration.md):
        running or ended there -- it moved; its process died before the program started -- it never
        ran there and never will, so it goes on here; its process died after it started -- it is
        lost there and may have acted, so this copy stays stopped and is saved (:class:`InDoubt`).
        Only if the daemon cannot be asked is the migration in doubt as well: the source never
        resumes once it sent ``commit`` unless the target says it will never run it."""
        try:
            return ch.recv(30.0, expect=("committed",))
        except PeerGone as e:
            lost = e
        deadline = time.monotonic() + RESOLVE_TIMEOUT
        while True:
            try:
                probe = connect(self.target, self.identity, timeout=2.0)
                try:
                    probe.send("status", id=self.id)
                    reply = probe.recv(10.0, expect=("status",))
                finally:
                    probe.close()
            except MigrationError:
                if time.monotonic() >= deadline:
                    raise InDoubt(f"the target did not confirm the commit ({lost}) and cannot be asked: it may be "
                                  "running the program, so this copy stays stopped") from None
                time.sleep(0.2)
                continue
            decision, program = reply.get("decision"), reply.get("program")
            if decision != "committed":
                raise MigrationError(f"the connection broke before the target got the commit ({lost}); it will not "
                                     "run the program")
            if program in ("running", "ended"):
                return {}
            if program == "lost":
                raise MigrationError(f"the target recorded the commit but its process died before the program "
                                     f"started there ({lost}); it will never run there")
            if program == "died":
                raise InDoubt(f"the target started the program, then its process died ({lost}): the program is lost "
                              "there and may have acted, so this copy stays stopped")
            if time.monotonic() >= deadline:  # "pending" for that long: committed, alive, never started
                raise InDoubt(f"the target recorded the commit but did not start the program within "
                              f"{RESOLVE_TIMEOUT:g} s ({lost}), so this copy stays stopped")
            time.sleep(0.1)

    def _keep_in_doubt(self, handoff: StopHandoff, snap: Any, why: str) -> str:
        """The commit went out and the target may run the program: never resume it here; save
        it and end the run (:class:`~wasmig.session.policy.MigrationInDoubt`). Where it is saved."""
        try:
            saved = self._save_in_doubt(snap)
        except (WasmError, OSError) as save_error:
            saved = f"(not saved: {save_error})"
        handoff.in_doubt = (saved, why)
        handoff.decide(True)
        return saved

    def _save_in_doubt(self, snap: Any) -> str:
        """The stopped program's whole state, as a single-file snapshot in the runtime directory."""
        from dataclasses import replace

        from wasmig.runtime_dir import runtime_dir
        from wasmig.snapshot.state import MemoryState
        from wasmig.snapshot.store import write_single_file

        memories = []
        for (size, page), m in zip(self.session.guest_memories(), snap.memories, strict=True):
            data = b"".join(bytes(page(i)) for i in range(size // PAGE_SIZE))
            memories.append(MemoryState(m.min, m.max, data))
        path = runtime_dir() / f"in-doubt-{self.id}.snap"
        write_single_file(replace(snap, memories=memories), path)
        return str(path)

    def _round(self, memories: list[tuple[int, Any]], *, final: bool) -> list[ChangedPage]:
        """Send the pages of ``memories`` (the session's :meth:`guest_memories`) changed since the
        last round: their ids first; the target copies those it already holds and asks for the rest."""
        assert self.ch is not None
        ch = self.ch
        self.p.pages_total = sum(size // PAGE_SIZE for size, _ in memories)
        changed = self.tracker.changed(memories)
        self.p.round += 1
        self.p.round_pages, self.p.round_done = len(changed), 0
        self.report(self.p)
        ch.send("pages", round=self.p.round, final=final,
                entries=[[c.memory, c.index, c.id] for c in changed])
        need = ch.recv(expect=("need",)).get("positions")
        if not isinstance(need, list) or any(not isinstance(k, int) or not 0 <= k < len(changed) for k in need):
            raise MigrationError(f"{ch.peer}: malformed need message")
        self.p.pages_known += sum(1 for c in changed if c.id is not None) - len(need)
        batch: list[list[Any]] = []
        size = 0

        def flush() -> None:
            if self.page_sink is not None:
                ch.send("page_ref", token=self.page_sink(batch), count=len(batch))
            else:
                ch.send("page_data", pages=batch)
            self.p.pages_sent += len(batch)
            self.p.round_done += len(batch)
            self.p.bytes_sent = ch.bytes_sent
            self.report(self.p)

        for k in need:
            data = self.cctx.compress(changed[k].data)
            batch.append([k, data])
            size += len(data)
            if size >= PAGE_BATCH:
                flush()
                batch, size = [], 0
        if batch:
            flush()
        ch.send("pages_end")
        ch.recv(expect=("pages_ok",))
        self.p.round_done = self.p.round_pages
        self.p.bytes_sent = ch.bytes_sent
        self.report(self.p)
        return changed


class InDoubt(MigrationError):
    """``commit`` was sent but not confirmed: the program may run on the target, so it must not
    resume here."""


def _host() -> str:
    return os.uname().nodename
