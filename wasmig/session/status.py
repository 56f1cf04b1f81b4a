"""The status file of a checkpointing run (its pid, checkpoint directory and snapshots so far),
and ``wasmig checkpoint PID``, which reads it, signals the run and waits for its new snapshot."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from wasmig.errors import SnapshotError
from wasmig.runtime_dir import RuntimeDirError, runtime_dir


def status_path(pid: int, *, create: bool = True) -> Path:
    """Where the run of process ``pid`` keeps its status (in this user's private runtime
    directory, :mod:`wasmig.runtime_dir`; made, and checked, when ``create``)."""
    return runtime_dir(create) / f"{pid}.json"


def write_status(path: Path, checkpoint_dir: Path | str | None, snapshots: list[str],
                 failures: Sequence[str] = ()) -> None:
    """Replace the status file ``path`` atomically (a reader sees the old or the new one).
    ``failures``: why checkpoints of the run failed, oldest first."""
    status = {"pid": os.getpid(), "checkpoint_dir": str(checkpoint_dir), "snapshots": [str(p) for p in snapshots],
              "failures": list(failures)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def wait_for_snapshot(pid: int, timeout: float) -> str:
    """For ``wasmig checkpoint PID``: signal a running ``wasmig run`` and wait for its new snapshot."""
    try:
        status_file = status_path(pid, create=False)
    except RuntimeDirError as e:
        raise SnapshotError(str(e)) from None
    try:
        before = json.loads(status_file.read_text())
    except (OSError, ValueError):
        if pid <= 0 or not _alive(pid):  # it exited (or never was)
            raise SnapshotError(f"no process {pid}") from None
        raise SnapshotError(f"process {pid} is not a checkpointable wasmig run (not wasmig, or started with "
                            "--plain)") from None
    count, failed = len(before.get("snapshots", [])), len(before.get("failures", []))
    directory = str(before.get("checkpoint_dir", ""))
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
            return str(status["snapshots"][-1])
        if status is not None and len(status.get("failures", [])) > failed:
            raise SnapshotError(f"process {pid} could not write the snapshot: {status['failures'][-1]} (it goes on)")
        # the run may have exited right after its snapshot (--checkpoint-then exit): look on disk
        newer = [p for p in _snapshot_files(directory) if p not in on_disk]
        if newer:
            return newer[-1]
        if status is None and not _alive(pid):
            raise SnapshotError(f"process {pid} exited before writing a snapshot")
        time.sleep(0.02)
    raise SnapshotError(f"process {pid} wrote no snapshot within {timeout:g} s")


def _snapshot_files(directory: str) -> list[str]:
    """The snapshots in the run's checkpoint directory or store (a store that cannot be listed: none)."""
    from wasmig.snapshot.stores import is_store_url, open_store

    if is_store_url(directory):
        try:
            return open_store(directory).snapshots()
        except SnapshotError:
            return []
    try:
        return [str(p) for p in sorted((Path(directory) / "snapshots").glob("*.snap"))]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
