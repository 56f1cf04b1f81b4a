"""A job's stdout and stderr, kept as files in its job directory, that survive moves and restarts.

The log is part of the checkpointed state: each snapshot records how many bytes of each stream the
log held when the program stopped for it (:meth:`JobLog.counts`), and a restore truncates the log to
those counts before the program goes on (:meth:`JobLog.open`), so the program regenerates what came
after the checkpoint. A deterministic program thus leaves exactly the bytes of an uninterrupted run,
none lost and none doubled, however often it moved or its node died (docs/fleet.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STREAMS = ("stdout", "stderr")
#: the snapshot's metadata key holding the byte counts
META_KEY = "fleet_output"


class CountingLog:
    """One stream's file, written through unbuffered (every guest ``fd_write`` is on disk before
    the call returns, so a count taken while the guest is stopped is what the file holds)."""

    def __init__(self, path: Path, keep: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < keep:
                raise ValueError(f"{path}: holds {os.fstat(fd).st_size} bytes, the checkpoint counted {keep}")
            os.ftruncate(fd, keep)
            os.lseek(fd, keep, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.written = keep

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self.written += n
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered (the WASI layer flushes after each write)."""

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class JobLog:
    """The job's two streams in ``directory`` (``stdout``, ``stderr``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.streams: dict[str, CountingLog] = {}

    def open(self, counts: dict[str, int] | None) -> None:
        """Open both streams, truncated to ``counts`` (a snapshot's, or None for a fresh start: empty)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in STREAMS:
            self.streams[name] = CountingLog(self.directory / name, (counts or {}).get(name, 0))

    def counts(self) -> dict[str, int]:
        """Bytes written to each stream so far: recorded with a snapshot."""
        return {name: log.written for name, log in self.streams.items()}

    def annotation(self) -> dict[str, Any]:
        """The snapshot metadata the session records (:attr:`wasmig.session.loop.Session.annotate`)."""
        return {META_KEY: self.counts()}

    def close(self) -> None:
        for log in self.streams.values():
            log.close()


def recorded_counts(meta: dict[str, Any]) -> dict[str, int] | None:
    """The byte counts a snapshot's metadata holds (None: a snapshot not taken by a fleet job)."""
    counts = meta.get(META_KEY)
    if not isinstance(counts, dict):
        return None
    return {name: int(counts.get(name, 0)) for name in STREAMS}


def read_stream(directory: Path, name: str) -> bytes:
    """What the job's ``name`` stream holds now (empty before it started)."""
    try:
        return (directory / name).read_bytes()
    except FileNotFoundError:
        return b""
