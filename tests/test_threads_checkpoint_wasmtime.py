"""Checkpoint and restore of every thread of a wasi-threads program on wasmtime, and across
engines (issue 20; docs/threads.md, "Capture on wasmtime").

wasmtime's threads run freely, so its stops come at nondeterministic moments: each program runs on
wasmtime with requests from another thread every few milliseconds, and every snapshot (through
its on-disk plain form) is restored on wasmtime and on the interpreter and run to the end. The
programs print results that do not depend on the interleaving, so every continuation must give
the uninterrupted run's output. The interpreter's snapshots (at steps, threads waiting on locks,
condition variables and barriers among them) restore on wasmtime the same way, and three waiters
wake in their recorded order on either engine.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import wasmig
from tests.test_threads_checkpoint import (
    _all_waiting_at_the_gate,
    _spread,
    _stopped_at,
    _through_plain,
    _uninterrupted,
)
from tests.threaded_programs import compile_threaded, threaded_module
from wasmig.engines.base import Program
from wasmig.engines.interp.threaded import restore_threaded
from wasmig.engines.wasmtime.threads_checkpoint import restore_threaded_wasmtime, threaded_checkpoint_program
from wasmig.snapshot.state import THREADS_FORMAT_VERSION, Snapshot, SnapshotError
from wasmig.wasi.preview1 import ProcExit, Wasi
from wasmig.wasi.snapshot import restore_wasi

#: the programs whose output does not depend on the interleaving. (threads_wait_order.c's does: its
#: main thread notifies the gate once each waiter has *arrived*, not once it waits, which only the
#: interpreter's schedule makes the same thing; it is restored on wasmtime from the interpreter's
#: snapshots below.)
PROGRAMS = ("threads_spawn", "pthread_mutex", "pthread_condvar", "pthread_barrier", "pthread_workqueue",
            "pthread_rwlock")
#: snapshots taken per wasmtime run (at most), and the pause between requests
SNAPSHOTS = 6
INTERVAL_S = 0.004


def _finish(program: Program, *, first: bool) -> int:
    """Run ``program`` to its end (a restored one: it never stops, nobody requests); its exit code."""
    try:
        assert not (program.start() if first else program.resume())
    except ProcExit as e:
        return e.code
    return 0


def _restored(module: wasmig.Module, snap: Snapshot, engine: str) -> tuple[int, bytes]:
    out = io.BytesIO()
    assert snap.wasi is not None
    wasi = restore_wasi(snap.wasi, stdout=out)
    program = restore_threaded_wasmtime(module, snap, wasi) if engine == "wasmtime" else \
        restore_threaded(module, snap, wasi)
    return _finish(program, first=False), out.getvalue()


def _stopped_on_wasmtime(module: wasmig.Module, interval: float = INTERVAL_S,
                         count: int = SNAPSHOTS) -> tuple[list[tuple[Snapshot, int]], int, bytes]:
    """The program on wasmtime, asked to stop every ``interval`` seconds from another thread,
    captured and going on at each stop (``count`` at most): the snapshots (through their plain
    form) with how much output there was at each, its exit code and output."""
    out = io.BytesIO()
    program = threaded_checkpoint_program(module, Wasi(["prog"], stdout=out))
    done = threading.Event()

    def requester() -> None:
        while not done.wait(interval):
            program.request()

    asker = threading.Thread(target=requester, daemon=True)
    asker.start()
    snaps: list[tuple[Snapshot, int]] = []
    code = 0
    try:
        stopped = program.start()
        while stopped:
            snap = program.capture()
            snaps.append((_through_plain(snap), len(out.getvalue())))
            if len(snaps) >= count:
                done.set()
            stopped = program.resume()
    except ProcExit as e:
        code = e.code
    finally:
        done.set()
        asker.join()
    return snaps, code, out.getvalue()


@pytest.mark.parametrize("name", PROGRAMS)
def test_wasmtime_snapshots_restore_on_both_engines_with_the_uninterrupted_output(name: str) -> None:
    module = threaded_module(name)
    code, expected, _ = _uninterrupted(module)
    assert code == 0, expected
    snaps: list[tuple[Snapshot, int]] = []
    for interval in (INTERVAL_S, INTERVAL_S / 4, INTERVAL_S * 4):  # a run too short for a stop: requests come sooner
        snaps, stopped_code, stopped_out = _stopped_on_wasmtime(module, interval)
        assert (stopped_code, stopped_out) == (code, expected), "stopping and capturing changed the run"
        if snaps:
            break
    assert snaps, "no request stopped the program"
    for snap, printed in snaps:
        assert snap.format_version == THREADS_FORMAT_VERSION and snap.threads is not None
        assert snap.engine == "wasmtime" and snap.steps is None and snap.threads.scheduler is None
        for engine in ("wasmtime", "interp"):
            restored_code, rest = _restored(module, snap, engine)
            assert restored_code == code, engine
            assert expected[:printed] + rest == expected, f"restored on {engine}"


@pytest.mark.parametrize("name", ("pthread_mutex_held", "pthread_condvar", "pthread_barrier"))
def test_wasmtime_stops_threads_waiting_on_locks_and_restores_them_on_both_engines(name: str) -> None:
    """Threads waiting in the rerouted waits (on a mutex, a condition variable, a barrier) are
    captured at a ``wait`` point, in their queues in order; their snapshots restore on both engines.
    The mutex case holds its mutex 300 ms while its workers start (pthread_mutex.c's contention is
    too brief to be caught reliably on a loaded machine: its threads may run one after another)."""
    module = threaded_module(name)
    code, expected, _ = _uninterrupted(module)
    waiting: list[tuple[Snapshot, int]] = []
    for _ in range(10):
        snaps, stopped_code, stopped_out = _stopped_on_wasmtime(module, INTERVAL_S / 2, count=20)
        assert (stopped_code, stopped_out) == (code, expected)
        waiting += [(s, p) for s, p in snaps if s.threads is not None and s.threads.wait_queues]
        if len(waiting) >= 3:
            break
    assert waiting, "no stop caught a thread waiting"
    for snap, printed in waiting[:3]:
        assert snap.threads is not None
        for _memory, addr, tids in snap.threads.wait_queues:
            for tid in tids:
                entry = next(t for t in snap.threads.threads if t.tid == tid)
                assert entry.state == "waiting" and entry.wait is not None and entry.wait.addr == addr
                assert (snap.point if tid == 0 else entry.own.point) == "wait"  # type: ignore[union-attr]
        for engine in ("wasmtime", "interp"):
            assert _restored(module, snap, engine)[0] == code
            assert expected[:printed] + _restored(module, snap, engine)[1] == expected


@pytest.mark.parametrize("name", PROGRAMS)
def test_interpreter_snapshots_restore_on_wasmtime(name: str) -> None:
    """The interpreter's snapshots at several steps (its threads waiting on a mutex, a condition
    variable, a barrier among them) go on on wasmtime with the uninterrupted run's output."""
    module = threaded_module(name)
    code, expected, total = _uninterrupted(module)
    snaps, _, _ = _stopped_at(module, _spread(total, 5))
    for snap, printed in snaps:
        restored_code, rest = _restored(module, _through_plain(snap), "wasmtime")
        assert restored_code == code
        assert expected[:printed] + rest == expected


def test_the_recorded_wait_order_wakes_on_wasmtime() -> None:
    """Three threads waiting on one address, restored on wasmtime: notify(addr, 1) wakes them in
    the recorded order, and in the new order when the snapshot's queue is reordered."""
    module = threaded_module("threads_wait_order")
    snap, expected = _all_waiting_at_the_gate(module)
    assert snap.threads is not None
    (memory, addr, queued), = [q for q in snap.threads.wait_queues if len(q[2]) == 3]
    assert _restored(module, _through_plain(snap), "wasmtime") == (0, expected)
    reordered = [queued[1], queued[2], queued[0]]
    snap.threads.wait_queues = [(m, a, reordered if (m, a) == (memory, addr) else tids)
                                for m, a, tids in snap.threads.wait_queues]
    assert _restored(module, _through_plain(snap), "wasmtime") == (
        0, b"woken in order: " + b" ".join(b"%d0" % tid for tid in reordered) + b"\n")


def test_a_wasmtime_restore_is_checkpointed_again() -> None:
    """wasmtime -> wasmtime -> interpreter: a restored run stops on request again, and that
    snapshot restores with the uninterrupted output."""
    module = threaded_module("pthread_workqueue")
    code, expected, _ = _uninterrupted(module)
    snaps, _, _ = _stopped_on_wasmtime(module, count=1)
    assert snaps
    first, printed = snaps[0]
    assert first.wasi is not None
    out = io.BytesIO()
    program = restore_threaded_wasmtime(module, first, restore_wasi(first.wasi, stdout=out))
    timer = threading.Timer(0.002, program.request)
    timer.start()
    try:
        stopped = program.resume()
    except ProcExit as e:
        stopped = False
        assert e.code == code
    timer.join()
    if not stopped:  # the rest of the run was shorter than the timer
        assert expected[:printed] + out.getvalue() == expected
        return
    second = _through_plain(program.capture())
    printed_second = printed + len(out.getvalue())
    assert _finish(program, first=False) == code and expected[:printed] + out.getvalue() == expected
    assert _restored(module, second, "interp") == (code, expected[printed_second:])


def test_wasmtime_refuses_a_step_count_for_threads_in_one_line() -> None:
    program = threaded_checkpoint_program(threaded_module("threads_spawn"), Wasi(["prog"], stdout=io.BytesIO()))
    with pytest.raises(SnapshotError, match="not at a step"):
        program.arm(at_step=10)


def test_cli_checkpoints_threads_on_wasmtime_and_restores_them_on_either_engine(tmp_path: Path) -> None:
    """``wasmig run --engine wasmtime --checkpoint-every``: the threaded program stays on wasmtime
    (no note), its output is the uninterrupted one, and every snapshot restores on both engines
    (``wasmig restore --engine ...``) with output the uninterrupted run ends with."""
    wasm = compile_threaded("pthread_condvar")
    repo = Path(__file__).resolve().parents[1]
    plain = subprocess.run([sys.executable, "-m", "wasmig", "run", "--engine", "interp", str(wasm)],
                           capture_output=True, cwd=repo, timeout=300)
    assert plain.returncode == 0, plain.stderr
    ck = tmp_path / "ck"
    run = subprocess.run([sys.executable, "-m", "wasmig", "run", "--engine", "wasmtime", "--checkpoint-dir", str(ck),
                          "--checkpoint-every", "0.02", "--checkpoint-then", "continue", str(wasm)],
                         capture_output=True, cwd=repo, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == plain.stdout and b"note" not in run.stderr
    snaps = sorted((ck / "snapshots").glob("*.snap"))
    for snap in snaps[-2:]:
        for engine in ("wasmtime", "interp"):
            again = subprocess.run([sys.executable, "-m", "wasmig", "restore", "--engine", engine, str(snap)],
                                   capture_output=True, cwd=repo, timeout=300)
            assert again.returncode == 0, again.stderr
            assert plain.stdout.endswith(again.stdout), (engine, snap)
    steps = subprocess.run([sys.executable, "-m", "wasmig", "run", "--engine", "wasmtime", "--checkpoint-dir",
                            str(tmp_path / "ck2"), "--checkpoint-at-step", "100", str(wasm)],
                           capture_output=True, cwd=repo, timeout=300)
    assert steps.returncode != 0 and b"Traceback" not in steps.stderr
    assert b"interpreter" in steps.stderr and len(steps.stderr.strip().splitlines()) == 1

