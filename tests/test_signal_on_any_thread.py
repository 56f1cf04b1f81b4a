"""A checkpoint request is a process-directed SIGUSR1 (``wasmig checkpoint PID``; ``--checkpoint-every``'s timer
is SIGALRM), which the kernel may hand to any thread of the run: after SIGSTOP/SIGCONT, whichever thread runs first
takes it. Python runs the handler only in the main thread, once that thread's wait returns. A threaded run on
wasmtime waited on its threads' condition with no timeout, and threads that compute never notify it: a request
that landed on a wasm thread waited for the program's end (session 12 saw one lost so, by hand). Here the signal
is sent with ``tgkill`` to a thread other than the main one, and the snapshot must come anyway."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_checkpoint_e2e import _env, program
from tests.threaded_programs import compile_threaded

pytest.importorskip("wasmtime")
_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)

pytestmark = pytest.mark.skipif(_SYS_TGKILL is None or sys.platform != "linux", reason="tgkill: Linux x86-64/arm64")

CASES = {
    # eight threads mixing integers (2**31 - 1 rounds each: a wasm32 long), never calling the host: no thread
    # notifies the main one until they end (the old code took the request ~15 s late, as 4 such threads ended)
    "threads on wasmtime": ("wasmtime", lambda: compile_threaded("pthread_compute"), ["8", "2147483647"]),
    "threads on the interpreter": ("interp", lambda: compile_threaded("pthread_compute"), ["2", "2147483647"]),
    # one guest thread beside the main one (its waits were timed already)
    "one thread on wasmtime": ("wasmtime", lambda: program("spin"), ["1000", "3000000000"]),
}


def _tgkill(pid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_TGKILL, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {sig})")


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_on_another_thread_than_the_main_one_is_taken(case: str, tmp_path: Path) -> None:
    engine, wasm, args = CASES[case]
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    ck = tmp_path / "ck"
    p = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", engine, "--checkpoint-dir", str(ck),
                          str(wasm()), *args], env=_env(runtime), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = runtime / f"{p.pid}.json"  # written once the request handler is in place
        deadline = time.monotonic() + 120
        while not status.exists() or len(os.listdir(f"/proc/{p.pid}/task")) < 2:
            assert p.poll() is None, p.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never got under way"
            time.sleep(0.05)
        time.sleep(0.5)  # its threads computing
        others = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid)
        _tgkill(p.pid, others[-1], signal.SIGUSR1)
        deadline = time.monotonic() + 8  # the run computes far longer; the fix takes the request in ~0.3 s
        while not list((ck / "snapshots").glob("*.snap")):
            assert p.poll() is None, p.communicate()[1][-2000:]
            assert time.monotonic() < deadline, (
                f"no snapshot 8 s after a SIGUSR1 delivered to thread {others[-1]} (not the main one) of {case}")
            time.sleep(0.05)
    finally:
        p.kill()
        p.communicate()
