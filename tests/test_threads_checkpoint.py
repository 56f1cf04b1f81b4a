"""Checkpoint and restore of every thread of a wasi-threads program on the interpreter (issue 20
step 3; docs/threads.md, "Snapshot of a multi-threaded program").

Each program runs once uninterrupted (seed and quantum fixed: a small quantum interleaves the
threads often), then again stopped at many steps — threads waiting on futex-style locks, condition
variables and barriers among them — and every snapshot, through its on-disk plain form, is restored
and run to the end: the output must be the uninterrupted run's, and so must the stopped run's own.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import wasmig
from tests.proc_waits import wait_blocked
from tests.threaded_programs import compile_threaded, threaded_module
from wasmig.engines.base import Program
from wasmig.engines.interp.threaded import restore_threaded, threaded_program
from wasmig.snapshot.inspect import diff
from wasmig.snapshot.state import THREADS_FORMAT_VERSION, Snapshot, SnapshotError, from_plain, to_plain
from wasmig.snapshot.store import CheckpointDir, load_snapshot
from wasmig.wasi.preview1 import ProcExit, Wasi
from wasmig.wasi.snapshot import restore_wasi

SEED = 3
QUANTUM = 7
#: the programs (tests/programs/*.c, with the pthread layer) and the steps to stop at in each
PROGRAMS = ("threads_spawn", "threads_wait_order", "threads_many", "pthread_mutex", "pthread_condvar",
            "pthread_barrier", "pthread_workqueue", "pthread_rwlock")
STOPS = 9


def _finish(program: Program, *, first: bool) -> int:
    """Run ``program`` to its end, through any stop; its exit code."""
    program.arm(at_step=None)
    try:
        while program.start() if first else program.resume():
            first = False
            program.arm(at_step=None)
    except ProcExit as e:
        return e.code
    return 0


def _uninterrupted(module: wasmig.Module, args: tuple[str, ...] = ()) -> tuple[int, bytes, int]:
    out = io.BytesIO()
    program = threaded_program(module, Wasi(["prog", *args], stdout=out), seed=SEED, quantum=QUANTUM)
    code = _finish(program, first=True)
    steps = program.steps
    assert steps is not None
    return code, out.getvalue(), steps


def _stopped_at(module: wasmig.Module, steps: list[int],
                args: tuple[str, ...] = ()) -> tuple[list[tuple[Snapshot, int]], int, bytes]:
    """A run stopped at each of ``steps`` (captured, then going on): the snapshots with how much
    output there was at each, its exit code and output."""
    out = io.BytesIO()
    program = threaded_program(module, Wasi(["prog", *args], stdout=out), seed=SEED, quantum=QUANTUM)
    snaps = []
    first = True
    try:
        for step in steps:
            program.arm(at_step=step)
            stopped = program.start() if first else program.resume()
            first = False
            assert stopped, f"the program ended before step {step}"
            assert program.steps == step
            snaps.append((program.capture(), len(out.getvalue())))
        code = _finish(program, first=False)
    except ProcExit as e:
        code = e.code
    return snaps, code, out.getvalue()


def _through_plain(snap: Snapshot) -> Snapshot:
    """The snapshot as a manifest stores it, and read back (every field validated)."""
    return from_plain(msgpack.unpackb(msgpack.packb(to_plain(snap), use_bin_type=True), raw=False))


def _restored_run(module: wasmig.Module, snap: Snapshot) -> tuple[int, bytes]:
    out = io.BytesIO()
    assert snap.wasi is not None
    program = restore_threaded(module, snap, restore_wasi(snap.wasi, stdout=out))
    return _finish(program, first=False), out.getvalue()


def _spread(total: int, count: int) -> list[int]:
    return sorted({max(1, total * (i + 1) // (count + 1)) for i in range(count)})


@pytest.mark.parametrize("name", PROGRAMS)
def test_restores_from_many_points_give_the_uninterrupted_output(name: str) -> None:
    module = threaded_module(name)
    code, expected, total = _uninterrupted(module)
    assert code == 0, expected
    stops = _spread(total, STOPS)
    snaps, stopped_code, stopped_out = _stopped_at(module, stops)
    assert (stopped_code, stopped_out) == (code, expected), "stopping and capturing changed the run"
    waiting = 0
    for (snap, printed), step in zip(snaps, stops, strict=True):
        assert snap.format_version == THREADS_FORMAT_VERSION and snap.threads is not None and snap.steps == step
        waiting += sum(t.state == "waiting" for t in snap.threads.threads)
        restored_code, rest = _restored_run(module, _through_plain(snap))
        assert restored_code == code
        assert expected[:printed] + rest == expected, f"restored from step {step}"
    if name != "threads_spawn":  # the lock, condition variable and barrier programs wait often
        assert waiting, "no snapshot caught a thread waiting: the test would not test waits"


def test_the_most_threads_a_snapshot_holds_restore() -> None:
    """127 spawned threads and the main one (the limit, 128) waiting at one futex word."""
    module = threaded_module("threads_many")
    args = ("127", "4000")  # the main thread spins while all 127 wait
    code, expected, _ = _uninterrupted(module, args)
    assert code == 0 and expected.startswith(b"threads 127 released 127"), expected
    snap, out = _first_stop_where(module, lambda s: sum(len(q) for _, _, q in s.threads.wait_queues) == 127, args,
                                  stride=50)
    assert out == expected and snap.threads is not None and len(snap.threads.threads) == 128
    assert _restored_run(module, _through_plain(snap)) == (0, expected)


def test_a_snapshot_after_a_restore_equals_the_uninterrupted_runs() -> None:
    """Equal programs at equal points give equal snapshots: the run restored from step a, stopped at
    step b, holds exactly the state the uninterrupted run held at b (scheduler included)."""
    module = threaded_module("pthread_condvar")
    _, _, total = _uninterrupted(module)
    a, b = total // 3, 2 * total // 3
    (first, _), (straight, _) = _stopped_at(module, [a, b])[0]
    assert first.wasi is not None
    program = restore_threaded(module, _through_plain(first), restore_wasi(first.wasi, stdout=io.BytesIO()))
    program.arm(at_step=b)
    assert program.resume()
    again = program.capture()

    def canonical(s: Snapshot) -> dict[str, Any]:
        plain = to_plain(s)
        for key in ("created_ns", "meta"):
            plain.pop(key)
        for key in ("monotonic_ns", "cputime_ns"):
            plain["wasi"].pop(key)
        return plain

    assert canonical(again) == canonical(straight)
    assert [line for line in diff(straight, again) if "clock" not in line] == []  # the host's time differs


def _first_stop_where(module: wasmig.Module, holds: Any, args: tuple[str, ...] = (),
                      stride: int = 1) -> tuple[Snapshot, bytes]:
    """The program stopped every ``stride`` steps until its state (captured without memory)
    ``holds``: that snapshot, with memory, and the whole run's output."""
    out = io.BytesIO()
    program = threaded_program(module, Wasi(["prog", *args], stdout=out), seed=SEED, quantum=QUANTUM)
    first = True
    for _ in range(20000):  # (a spawn adds the steps of the new instance's start function at once)
        program.arm(at_step=(program.steps or 0) + stride)
        assert program.start() if first else program.resume(), "the program ended first"
        first = False
        if holds(program.capture(with_memory=False)):
            snap = program.capture()
            _finish(program, first=False)
            return snap, out.getvalue()
    raise AssertionError("the state never came")


def _all_waiting_at_the_gate(module: wasmig.Module) -> tuple[Snapshot, bytes]:
    """threads_wait_order.c stopped at the first step where its three threads wait on the gate."""
    return _first_stop_where(module, lambda s: any(len(tids) == 3 for _, _, tids in s.threads.wait_queues))


def test_the_wait_queue_order_is_restored_so_notify_wakes_the_same_thread() -> None:
    module = threaded_module("threads_wait_order")
    snap, expected = _all_waiting_at_the_gate(module)
    assert snap.threads is not None
    (memory, addr, queued), = [q for q in snap.threads.wait_queues if len(q[2]) == 3]
    assert expected == b"woken in order: " + b" ".join(b"%d0" % tid for tid in queued) + b"\n"
    assert _restored_run(module, _through_plain(snap)) == (0, expected)
    # the restore follows the recorded order, not the tids': a queue reordered in the snapshot
    # (still a valid one) wakes in its new order
    reordered = [queued[2], queued[0], queued[1]]
    snap.threads.wait_queues = [(m, a, reordered if (m, a) == (memory, addr) else tids)
                                for m, a, tids in snap.threads.wait_queues]
    assert _restored_run(module, _through_plain(snap)) == (
        0, b"woken in order: " + b" ".join(b"%d0" % tid for tid in reordered) + b"\n")


def test_requests_from_another_thread_stop_every_thread_without_changing_the_run() -> None:
    """Asynchronous requests (a timer's, a signal's) stop the program at whatever step it is at; the
    turn holder keeps its quantum, so the run goes on exactly as without them, and the last
    snapshot restores to the same output."""
    module = threaded_module("pthread_workqueue")
    code, expected, _ = _uninterrupted(module)
    out = io.BytesIO()
    program = threaded_program(module, Wasi(["prog"], stdout=out), seed=SEED, quantum=QUANTUM)
    program.arm(at_step=None)
    done = threading.Event()

    def keep_asking() -> None:
        while not done.wait(0.01):
            program.request()

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    snaps: list[tuple[Snapshot, int]] = []
    try:
        first = True
        while program.start() if first else program.resume():
            first = False
            if len(snaps) < 3:
                snaps.append((program.capture(), len(out.getvalue())))
            program.arm(at_step=None)
        final = 0
    except ProcExit as e:
        final = e.code
    finally:
        done.set()
        asker.join()
    assert (final, out.getvalue()) == (code, expected)
    assert snaps, "no request arrived while the program ran"
    for snap, printed in snaps:
        assert expected[:printed] + _restored_run(module, _through_plain(snap))[1] == expected


def test_a_single_threaded_snapshot_is_still_format_version_1(tmp_path: Path) -> None:
    """A program without threads is captured and stored as before: version 1, no threads key."""
    from wasmig.snapshot.container import MAGIC

    plain = wasmig.Module.from_bytes(bytes.fromhex("0061736d01000000"))
    snap = wasmig.Instance(plain, {}).checkpoint()
    assert snap.format_version == 1 and "threads" not in to_plain(snap)
    path = CheckpointDir(tmp_path).write(snap)
    assert path.read_bytes()[len(MAGIC):len(MAGIC) + 4] == (1).to_bytes(4, "little")
    assert load_snapshot(path).threads is None


# --- the command line ------------------------------------------------------------------------------------
def _wasmig(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "WASMIG_LOG"}
    return subprocess.run([sys.executable, "-m", "wasmig", *map(str, args)], input=stdin, capture_output=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1], env=env)


def test_wasmig_run_checkpoints_a_threaded_program_and_restore_continues_it(tmp_path: Path) -> None:
    wasm = compile_threaded("pthread_barrier")
    whole = _wasmig("run", "--engine", "interp", wasm)
    assert whole.returncode == 0, whole.stderr
    for step in (40, 400):
        ck = tmp_path / f"ck{step}"
        stopped = _wasmig("run", "--engine", "interp", "--checkpoint-dir", ck, "--checkpoint-at-step", step,
                          "--checkpoint-then", "exit", wasm)
        assert stopped.returncode == 0 and b"checkpoint written" in stopped.stderr, stopped.stderr
        shown = _wasmig("inspect", ck)
        assert shown.returncode == 0 and b"snapshot format 2" in shown.stdout, shown.stderr
        assert b"threads (" in shown.stdout and b"scheduler: seed 0" in shown.stdout, shown.stdout
        restored = _wasmig("restore", ck)
        assert restored.returncode == 0, restored.stderr
        assert stopped.stdout + restored.stdout == whole.stdout
    compared = _wasmig("diff", next((tmp_path / "ck40" / "snapshots").iterdir()),
                       next((tmp_path / "ck400" / "snapshots").iterdir()))
    assert compared.returncode == 1 and b"steps: 40 -> 400" in compared.stdout, compared.stdout
    assert b"thread 1: steps" in compared.stdout, compared.stdout
    on_wasmtime = _wasmig("restore", "--engine", "wasmtime", tmp_path / "ck40")  # across engines
    assert on_wasmtime.returncode == 0, on_wasmtime.stderr
    assert _wasmig("run", "--engine", "interp", "--checkpoint-dir", tmp_path / "ck40b", "--checkpoint-at-step", 40,
                   "--checkpoint-then", "exit", wasm).stdout + on_wasmtime.stdout == whole.stdout
    counting = _wasmig("restore", "--engine", "wasmtime", "--checkpoint-dir", tmp_path / "more",
                       "--checkpoint-at-step", 500, tmp_path / "ck40")
    assert counting.returncode == 1 and b"Traceback" not in counting.stderr
    assert counting.stderr.startswith(b"wasmig: error: ") and b"does not count steps" in counting.stderr


def test_wasmig_run_checkpoints_a_threaded_program_on_a_timer(tmp_path: Path) -> None:
    wasm = compile_threaded("pthread_rwlock")
    whole = _wasmig("run", "--engine", "interp", wasm)
    ck = tmp_path / "ck"
    # every 0.01 s: the guest runs for well under 0.1 s on a quiet machine, and at 0.05 s a run
    # sometimes ended before its first checkpoint (1 snapshot a run at 0.05 s, 6-8 at 0.01 s)
    timed = _wasmig("run", "--engine", "interp", "--checkpoint-dir", ck, "--checkpoint-every", "0.01", wasm)
    assert timed.returncode == 0 and timed.stdout == whole.stdout, timed.stderr
    snapshots = sorted((ck / "snapshots").iterdir())
    assert snapshots, "no timer checkpoint during the run"
    restored = _wasmig("restore", snapshots[0])
    assert restored.returncode == 0 and restored.stdout == whole.stdout, restored.stderr


@pytest.mark.parametrize("engine", ("interp", "wasmtime"))
def test_a_thread_blocked_reading_stdin_is_re_issued_on_restore(tmp_path: Path, engine: str) -> None:
    """A thread blocked in fd_read (the process's stdin, a pipe) when `wasmig checkpoint PID`'s
    signal arrives is interrupted at its import call (state ``host``) and the other threads are
    captured where they wait; the run goes on and reads what comes, and so does a restore, from
    the restoring process's stdin."""
    wasm = compile_threaded("threads_stdin_reader")
    ck = tmp_path / "ck"
    env = {k: v for k, v in os.environ.items() if k != "WASMIG_LOG"}
    run = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", engine, "--checkpoint-dir", str(ck),
                            str(wasm)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           cwd=Path(__file__).resolve().parents[1], env=env)
    try:
        from wasmig.session.status import status_path

        started = time.monotonic()  # the run's loop is up (on wasmtime, after its instrumented module is ready)
        while not status_path(run.pid, create=False).exists() and time.monotonic() - started < 120:
            time.sleep(0.05)
        wait_blocked(run.pid)  # the reader in its read (main sums first, then joins it: not a fixed pause)
        asked = _wasmig("checkpoint", str(run.pid))
        assert asked.returncode == 0, asked.stderr
        snapshots = sorted((ck / "snapshots").iterdir())
        assert len(snapshots) == 1
        out, err = run.communicate(b"hello\n", timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0 and out == b"read 'hello' sum 499500\n", err
    snap = load_snapshot(snapshots[0])
    assert snap.threads is not None
    (reader,) = [t for t in snap.threads.threads if t.tid != 0]
    assert reader.state == "host" and reader.own is not None and reader.own.point == "import_call"
    assert snap.threads.threads[0].state == "waiting"  # the main thread, joining the reader
    for on in ("interp", "wasmtime"):  # the call re-issued on either engine
        restored = _wasmig("restore", "--engine", on, ck, stdin=b"again\n")
        assert restored.returncode == 0 and restored.stdout == b"read 'again' sum 499500\n", (on, restored.stderr)


def test_wasmig_restore_gives_the_threaded_program_from_a_checkpoint_directory(tmp_path: Path) -> None:
    """The Python API: a snapshot written to a checkpoint directory (the on-disk format, pages and
    all) and ``wasmig.restore`` of it give a program that finishes the run."""
    wasm = compile_threaded("pthread_barrier")
    module = wasmig.Module.from_file(wasm, features={"threads"})
    code, expected, total = _uninterrupted(module)
    (snap, printed), = _stopped_at(module, [total // 2])[0]
    CheckpointDir(tmp_path).write(snap)
    out = io.BytesIO()
    program = wasmig.restore(tmp_path, module=wasm, stdout=out)
    assert isinstance(program, Program)
    assert _finish(program, first=False) == code
    assert expected[:printed] + out.getvalue() == expected
    out = io.BytesIO()
    on_wasmtime = wasmig.restore(tmp_path, "wasmtime", module=wasm, stdout=out)  # every thread, on wasmtime
    assert isinstance(on_wasmtime, Program)
    assert _finish(on_wasmtime, first=False) == code
    assert expected[:printed] + out.getvalue() == expected
    with pytest.raises(SnapshotError, match="not at a step"):
        wasmig.restore(tmp_path, "wasmtime", module=wasm, count_steps=True)
