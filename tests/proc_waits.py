"""Waiting until another process's thread is blocked in a host call, read from
``/proc/PID/task/*/syscall`` (docs/architecture.md, "Tests that wait on other processes"): a
fixed pause after the program's last output ("well inside the read by now") let a request that a
loaded machine delivered first find the guest still on its way to the call."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: x86-64 and aarch64 numbers of poll/ppoll: where the WASI layer waits (wasmig.wasi.blocking)
POLL_SYSCALLS = {"x86_64": {"7", "271"}, "aarch64": {"73"}}


def wait_blocked(pid: int, timeout: float = 60.0) -> None:
    """Until a thread of ``pid`` waits in ``poll`` (a blocked WASI call: a read, a sleep, an
    accept; the guest's thread on wasmtime, the main one on the interpreter). Where ``/proc``
    cannot say, the old pause."""
    calls = POLL_SYSCALLS.get(os.uname().machine)
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = [(task / "syscall").read_text().split()[:1] for task in Path(f"/proc/{pid}/task").iterdir()]
        except PermissionError:
            states = None
        except OSError:  # gone, or a thread ended while we looked
            states = [] if Path(f"/proc/{pid}").exists() else None
            assert states is not None, f"process {pid} ended before it blocked in a host call"
        if calls is None or states is None:
            time.sleep(0.3)
            return
        if any(state and state[0] in calls for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} never blocked in a host call ({states})"
        time.sleep(0.01)
