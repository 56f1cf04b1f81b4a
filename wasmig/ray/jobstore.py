"""Where a fleet job's state lives: its snapshots, its output log and the fence that keeps two
runners of the job apart, in the job's ``--store`` (docs/fleet.md, "Where a job's state lives").

- A **path** (a shared filesystem every node mounts): ``<store>/<job>/snapshots`` (a checkpoint
  directory), ``<store>/<job>/log/{stdout,stderr}`` written in place, and ``<store>/<job>/lock``
  held with ``flock`` for the whole run (the kernel releases it when the process ends).
- An **object store** (``s3://bucket/prefix``, or ``file://``): nodes share nothing but the
  bucket. Snapshots go to the store ``<store>/<job>``; the log is written to a file on the node
  and sent, at each checkpoint and at the end of the run, as *segments* (objects named by their
  first byte's offset, :class:`SegmentLog`); the fence is a *lease* (:class:`Lease`).

A segment is uploaded while the program is stopped for the checkpoint that counts its bytes, so
a published snapshot's log is always in the store; a restore reads the segments up to the
snapshot's counts, removes the ones after (a later runner's, whose checkpoint never published),
and goes on from there, as with a log file cut back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmig.errors import SnapshotError
from wasmig.ray.joblog import META_KEY, STREAMS, JobLog, read_stream
from wasmig.ray.spec import JobSpec, job_directory
from wasmig.snapshot.stores.backend import ObjectBackend

#: a lease holder renews its lease this often (seconds); a contender takes the job once it saw no
#: renewal for LEASE_S, and the holder stops checkpointing once it could not renew for LEASE_S / 2
LEASE_S = 10.0
#: how often a runner waiting for a path store's lock file tries again (a live move's target waits
#: there in the downtime, for the source's run to end)
FLOCK_POLL_S = 0.005
#: the largest log segment read back (one checkpoint's output)
MAX_SEGMENT = 1 << 30
_SEGMENT_RE = re.compile(r"\d{16}")
_GEN_RE = re.compile(r"(\d{8})(?:\.(beat|released))?")


def is_object_store(spec: JobSpec) -> bool:
    from wasmig.snapshot.stores import is_store_url

    return is_store_url(spec.store)


def snapshots_location(spec: JobSpec, job_id: str) -> str:
    """What the job's session checkpoints into: a checkpoint directory, or a store URL."""
    if is_object_store(spec):
        return f"{spec.store.rstrip('/')}/{job_id}"
    return str(job_directory(spec, job_id) / "snapshots")


def _objects(spec: JobSpec, job_id: str) -> tuple[ObjectBackend, str]:
    """The job's object backend and the key prefix of its own objects (``<prefix><job>/``). The
    store is kept per URL (:func:`~wasmig.snapshot.stores.reader_for`): ``ps`` asks for every job's
    checkpoint age, and an S3 client costs ~50 ms (much more on a loaded machine) to make."""
    from wasmig.snapshot.stores import reader_for

    store, _ = reader_for(snapshots_location(spec, job_id))
    backend: ObjectBackend = store.backend  # type: ignore[attr-defined]
    return backend, backend.prefix


def warm_store(spec: JobSpec, job_id: str) -> None:
    """Make the job's store client now (a runner's warm-up, before a move stops the source): an
    S3 client costs boto3's import and its service model, seconds on a loaded machine."""
    if is_object_store(spec):
        _objects(spec, job_id)


def latest_checkpoint(spec: JobSpec, job_id: str) -> str | None:
    """The job's newest snapshot (a path or URL), or None before its first."""
    from wasmig.snapshot.stores import open_store, reader_for

    where = snapshots_location(spec, job_id)
    if not is_object_store(spec):
        return open_store(where).latest() if Path(where).is_dir() else None
    return reader_for(where)[0].latest()


def checkpoint_age(spec: JobSpec, job_id: str) -> float | None:
    """Seconds since the job's newest snapshot was written, None before its first."""
    latest = latest_checkpoint(spec, job_id)
    if latest is None:
        return None
    if not is_object_store(spec):
        return max(0.0, time.time() - Path(latest).stat().st_mtime)
    backend, _ = _objects(spec, job_id)
    info = backend.head(backend.key_of(latest) or "")
    return None if info is None else max(0.0, time.time() - info.modified)


def read_log(spec: JobSpec, job_id: str, stream: str) -> bytes:
    """What the job's ``stream`` holds (with an object store: up to its last checkpoint or end)."""
    if not is_object_store(spec):
        return read_stream(job_directory(spec, job_id) / "log", stream)
    backend, prefix = _objects(spec, job_id)
    return _segments(backend, f"{prefix}log/{stream}/", None)[0]


def open_log(spec: JobSpec, job_id: str, fence: Fence | None) -> JobLog:
    """The job's log, to :meth:`~JobLog.open` for a run held by ``fence``. None: a live move's
    target, which opens the log before the commit but holds the job only after it (then
    :func:`fence_log`)."""
    if not is_object_store(spec):
        return JobLog(job_directory(spec, job_id) / "log")
    backend, prefix = _objects(spec, job_id)
    return SegmentLog(backend, f"{prefix}log/", job_id, check=None if fence is None else fence.check,
                      held=fence is not None)


def fence_log(log: JobLog, fence: Fence | None) -> None:
    """From now on ``log`` writes to the store only while ``fence`` holds, the store tidied first
    (:meth:`SegmentLog.tidy_held`; a path store's log needs nothing: the lock file keeps other
    runners out). None: a live move's target that gave up waiting for the job's fence, whose
    program goes on after the commit all the same, and so does its log, tidied first unfenced."""
    if isinstance(log, SegmentLog):
        if fence is not None:
            log.check = fence.check
        log.tidy_held()


def log_counts(spec: JobSpec, job_id: str) -> dict[str, int]:
    """How many bytes each stream of the job's log holds now (where a live move's target goes on
    when the state it received records no counts: nothing is cut back)."""
    if not is_object_store(spec):
        directory = job_directory(spec, job_id) / "log"
        return {name: (directory / name).stat().st_size if (directory / name).exists() else 0 for name in STREAMS}
    return {name: len(read_log(spec, job_id, name)) for name in STREAMS}


class FenceLost(SnapshotError):
    """This runner no longer holds its job (a lease it could not renew): it must not act any more."""


class Fence:
    """What :func:`take_fence` holds: :meth:`check` before writing (raises :class:`FenceLost` once
    the hold is lost), :meth:`release` at the end of the run. ``can_lapse``: the hold can be lost
    while this process lives (a lease; a lock file is held until the process ends)."""

    def __init__(self, release: Callable[[], None], check: Callable[[], None] | None = None) -> None:
        self.release = release
        self._check = check

    @property
    def can_lapse(self) -> bool:
        return self._check is not None

    def check(self) -> None:
        if self._check is not None:
            self._check()


def take_fence(spec: JobSpec, job_id: str, timeout: float) -> Fence:
    """Hold the job for this run, so two runners of one job never write its log, files or
    snapshots at once (a restart after a lost node waits here for the old runner to be gone).
    A TimeoutError after ``timeout`` seconds."""
    if is_object_store(spec):
        backend, prefix = _objects(spec, job_id)
        lease = Lease(backend, f"{prefix}lease/", f"{os.uname().nodename}:{os.getpid()}", LEASE_S)
        lease.acquire(timeout, what=f"job {job_id}")
        return Fence(lease.release, lease.check)
    return _flock(job_directory(spec, job_id), job_id, timeout)


def _flock(directory: Path, job_id: str, timeout: float) -> Fence:
    """The job directory's ``lock`` file held with ``flock`` (the kernel lets it go with the process)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return Fence(lambda: os.close(fd))
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"job {job_id}: another runner still holds it after {timeout:g} s") from None
            time.sleep(FLOCK_POLL_S)


# --- the log as segments --------------------------------------------------------------------------
def _segments(backend: ObjectBackend, prefix: str, upto: int | None) -> tuple[bytes, list[tuple[int, str]], int]:
    """The stream's bytes from its segments under ``prefix``, contiguous from 0 (up to ``upto``
    bytes: None, all), every segment found (offset, key), in order, and how far the segments read
    reach (past ``upto`` when one of them holds bytes beyond it). The segments are fetched in
    parallel (a job checkpointing every second leaves one a second); one that starts inside bytes
    already read (left by a merge cut short, see :meth:`SegmentLog.open`) is skipped."""
    from concurrent.futures import ThreadPoolExecutor

    found = sorted((int(i.key[len(prefix):]), i.key) for i in backend.listing(prefix)
                   if _SEGMENT_RE.fullmatch(i.key[len(prefix):]))
    wanted = [(start, key) for start, key in found if upto is None or start < upto]
    with ThreadPoolExecutor(max(1, min(16, len(wanted))), thread_name_prefix="wasmig-log") as pool:
        bodies = list(pool.map(lambda item: backend.get(item[1], MAX_SEGMENT), wanted))
    parts: list[bytes] = []
    size = 0
    for (start, _), data in zip(wanted, bodies, strict=True):
        if start < size and data is not None and start + len(data) <= size:
            continue  # within what an earlier (merged) segment holds
        if start != size or data is None:
            break
        parts.append(data)
        size += len(data)
    data = b"".join(parts)
    return (data if upto is None else data[:upto]), found, size


class SegmentLog(JobLog):
    """A job log on the node (a spool directory) whose bytes go to the object store as segments:
    at each checkpoint (:meth:`annotation`, the program stopped) and at the end (:meth:`close`)."""

    def __init__(self, backend: ObjectBackend, prefix: str, job_id: str,
                 check: Callable[[], None] | None = None, *, held: bool = True) -> None:
        from wasmig.runtime_dir import runtime_dir

        # the node's own copy of the log, written through as the program writes (CountingLog)
        super().__init__(Path(tempfile.mkdtemp(prefix=f"wasmig-{job_id}-log-", dir=runtime_dir())))
        self._backend, self._prefix = backend, prefix
        self._sent: dict[str, int] = {}
        #: whether this runner holds the job: False for a live move's target until :func:`fence_log`
        #: (:meth:`open` then only reads the store, and :meth:`tidy_held` does the rest)
        self.held = held
        #: the streams :meth:`open` only read: their counts, for :meth:`tidy_held`
        self._untidy: dict[str, int] = {}
        #: called before segments are sent (the lease's check: a fenced runner sends nothing)
        self.check = check

    def open(self, counts: dict[str, int] | None) -> None:
        """The spool filled with the store's segments up to ``counts``, and the store left holding
        exactly those bytes before this run sends any (:meth:`_tidy`). A log whose runner does not
        hold the job yet (a live move's target: ``held`` False) only reads the store: it tidies once
        :func:`fence_log` gives it the job's fence, before it sends anything."""
        self._untidy = {}
        for name in STREAMS:
            keep = (counts or {}).get(name, 0)
            if not self.held:
                data, _, _ = _segments(self._backend, f"{self._prefix}{name}/", keep)
                self._untidy[name] = keep
            else:
                data = self._tidy(name, keep)
            if len(data) < keep:
                raise ValueError(f"{self._backend.location(self._prefix + name)}: the log holds {len(data)} bytes, "
                                 f"the checkpoint counted {keep}")
            (self.directory / name).write_bytes(data)
            self._sent[name] = keep
        super().open(counts)

    def _tidy(self, name: str, keep: int) -> bytes:
        """Leave stream ``name`` in the store holding exactly its first ``keep`` bytes (returned):
        the later segments removed, and no segment reaching past ``keep``. Each step is safe to be
        cut short by the runner's death: the next restore does what is left."""
        data, found, reached = _segments(self._backend, f"{self._prefix}{name}/", keep)
        if len(data) < keep:
            return data  # the caller refuses it; nothing is changed
        for start, key in found:
            if start >= keep:
                self._backend.delete(key)  # after the checkpoint: regenerated by this run
        if reached > keep or sum(1 for start, _ in found if start < keep) > 1:
            # the segments up to the checkpoint as one (at offset 0, replacing the first), so the
            # next restore reads one object, not one a checkpoint; the others go after it. Also
            # when a segment holds bytes past the checkpoint: a live move's target merged them up
            # to the move's counts and died before its first checkpoint, so this restore's counts
            # are below them; left so, this run's next segment would start inside that one's
            # bytes, and a reader (which stops there) would lose the rest of the log
            self._backend.put(f"{self._prefix}{name}/{0:016d}", data)
            for start, key in found:
                if 0 < start < keep:
                    self._backend.delete(key)
        return data

    def tidy_held(self) -> None:
        """What :meth:`open` left untidied, done now that this runner holds the job (a live move's
        target: before its first segment goes up)."""
        self.held = True
        untidy, self._untidy = self._untidy, {}
        if untidy and self.check is not None:
            self.check()
        for name, keep in untidy.items():
            data = self._tidy(name, keep)
            if len(data) < keep:
                raise SnapshotError(f"{self._backend.location(self._prefix + name)}: the log holds {len(data)} "
                                    f"bytes now, {keep} when this run opened it")

    def send(self) -> dict[str, int]:
        """Upload what the streams hold beyond what was sent; the counts sent up to."""
        if self.check is not None:
            self.check()
        counts = self.counts()
        for name, end in counts.items():
            start = self._sent.get(name, 0)
            if end > start:
                with open(self.directory / name, "rb") as f:  # written through: all of it is in the file
                    data = os.pread(f.fileno(), end - start, start)
                self._backend.put(f"{self._prefix}{name}/{start:016d}", data)
                self._sent[name] = start + len(data)
        return counts

    def annotation(self) -> dict[str, Any]:
        return {META_KEY: self.send()}

    def close(self) -> None:
        try:
            if self.streams and all(s.fileno() >= 0 for s in self.streams.values()):
                self.send()  # the output after the last checkpoint, for `wasmig cluster logs`
        except (SnapshotError, OSError):
            pass  # not part of any snapshot: a restore regenerates it
        finally:
            super().close()
            shutil.rmtree(self.directory, ignore_errors=True)


# --- the fence as a lease ---------------------------------------------------------------------------
class Lease:
    """A job held by one runner at a time through objects alone (no lock service, no clocks
    compared between machines; docs/fleet.md, "The fence in an object store").

    Holders take increasing *generations*: ``lease/NNNNNNNN`` is created with a conditional put
    (If-None-Match), so of two contenders for the same generation one wins. The holder rewrites
    ``NNNNNNNN.beat`` (a counter) every ``period / 4`` and writes ``NNNNNNNN.released`` when done.
    A contender takes the next generation at once if the highest is released, or once it has
    watched the highest's beat stay unchanged for ``period`` of its own clock. A holder that could
    not renew for ``period / 2`` is *fenced* (:meth:`check` raises :class:`FenceLost`): it sends no
    more log, publishes no more snapshots, and its program makes no more host calls (the runner
    checks before each: :attr:`wasmig.wasi.preview1.Wasi.fence`), so it has stopped writing well
    before anyone else may start. Once fenced it stays so (a late beat does not undo it: the job
    may have been taken meanwhile)."""

    def __init__(self, backend: ObjectBackend, prefix: str, holder: str, period: float = LEASE_S) -> None:
        self._backend, self._prefix, self._holder, self.period = backend, prefix, holder, period
        self.generation: int | None = None
        self._renewed = 0.0  # monotonic time of the last successful beat
        self._lost = False  # once fenced, for good
        self._done = threading.Event()
        self._beats: threading.Thread | None = None

    def _generations(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for info in self._backend.listing(self._prefix):
            m = _GEN_RE.fullmatch(info.key[len(self._prefix):])
            if m:
                out.setdefault(int(m.group(1)), set()).add(m.group(2) or "claim")
        return out

    def acquire(self, timeout: float, what: str = "the job") -> None:
        started = time.monotonic()
        deadline = started + timeout
        watched: tuple[int, bytes | None, float] | None = None  # generation, its beat, since when
        while True:
            gens = self._generations()
            top = max(gens, default=0)
            free = top == 0 or "released" in gens[top]
            if not free:
                beat = self._backend.get(f"{self._prefix}{top:08d}.beat", 64)
                now = time.monotonic()
                if watched is None or watched[:2] != (top, beat):
                    watched = (top, beat, now)
                free = now - watched[2] > self.period
            if free and self._claim(top + 1):
                for old in (g for g in gens if g < top):  # leases long given up
                    for kind in gens[old]:
                        self._backend.delete(f"{self._prefix}{old:08d}" + ("" if kind == "claim" else f".{kind}"))
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: another runner still holds it after {timeout:g} s")
            # a move's target finds the source's release within 50 ms; a wait for a lost holder's
            # lease to run out asks less often
            time.sleep(0.05 if time.monotonic() - started < 1.0 else min(0.5, self.period / 20))

    def _claim(self, generation: int) -> bool:
        body = json.dumps({"holder": self._holder}).encode()
        if not self._backend.put_new(f"{self._prefix}{generation:08d}", body):
            return False  # another contender took it: watch that one
        self.generation = generation
        self._beat(0)
        self._beats = threading.Thread(target=self._beating, name="wasmig-fleet-lease", daemon=True)
        self._beats.start()
        return True

    def _beat(self, n: int) -> None:
        self._backend.put(f"{self._prefix}{self.generation:08d}.beat", str(n).encode())
        self._renewed = time.monotonic()

    def _beating(self) -> None:
        n = 1
        while not self._done.wait(self.period / 4):
            try:
                self._beat(n)
            except (SnapshotError, OSError):
                pass  # check() fences this holder if it goes on
            n += 1

    def check(self) -> None:
        """Raise a one-line FenceLost if this holder may no longer write (see the class)."""
        if self._lost or self.generation is None or time.monotonic() - self._renewed > self.period / 2:
            self._lost = True
            raise FenceLost(f"{self._backend.location(self._prefix)}: this runner lost the job's lease "
                            "(could not renew it): not writing")

    def release(self) -> None:
        self._done.set()
        if self._beats is not None:
            self._beats.join()
        if self.generation is not None:
            try:
                self._backend.put(f"{self._prefix}{self.generation:08d}.released", b"")
            except SnapshotError:
                pass  # the next runner waits out the lease instead
            self.generation = None
