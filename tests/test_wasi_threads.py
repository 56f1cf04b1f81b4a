"""wasi-threads on both engines (issue 20 step 2): the WASI testsuite's wasi-threads proposal tests
and a C program of our own, run by each engine's ``run_threaded_command`` (the interpreter's
scheduler, seeded; wasmtime's one OS thread per wasm thread).

The proposal tests (``../shared/wasi-testsuite/tests/proposals/wasi-threads/*.wat``, assembled with
``wat2wasm --enable-threads``) check that ``proc_exit`` from any thread ends every thread — one
busy, one blocked in ``memory.atomic.wait32``, one blocked in a host call (``poll_oneoff``'s sleep,
``fd_read`` on a stdin pipe nobody writes) — and that the main thread returning ends the program.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import wasmig
from tests.threaded_programs import ENGINES, compile_threaded, run_threaded, threaded_module
from tests.wat import threads_module
from wasmig import engines
from wasmig.engines.interp.wasi_threads import is_threaded
from wasmig.wasi.preview1 import Wasi

SUITE = Path(os.environ.get("WASMIG_WASI_TESTSUITE", Path(__file__).resolve().parents[2] / "shared" / "wasi-testsuite"))
PROPOSAL = SUITE / "tests" / "proposals" / "wasi-threads"


def _proposal_tests() -> list[Path]:
    return sorted(PROPOSAL.glob("*.wat")) if PROPOSAL.is_dir() else []


@pytest.mark.skipif(not PROPOSAL.is_dir(), reason=f"wasi-threads tests not found at {PROPOSAL}")
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("wat", _proposal_tests(), ids=lambda p: p.stem)
def test_wasi_threads_proposal(wat: Path, engine: str) -> None:
    spec = wat.with_suffix(".json")
    expected = json.loads(spec.read_text()).get("exit_code", 0) if spec.exists() else 0
    module = threads_module(wat.read_text())
    assert is_threaded(module) or wat.stem == "wasi_threads_noop"
    code, _ = run_threaded(module, engine=engine)
    assert code == expected


def _threads_program() -> wasmig.Module:
    return threaded_module("threads_spawn")


def test_c_program_with_four_threads_is_deterministic_by_seed() -> None:
    module = _threads_program()
    assert is_threaded(module)
    results = {seed: run_threaded(module, seed) for seed in (0, 0, 7)}
    for code, out in results.values():
        assert code == 0, out
        assert out == b"counter 4000 wide 42949672960000\n"


def test_c_program_with_four_threads_on_wasmtime() -> None:
    """Threads in parallel on wasmtime: the atomic sums come out exact, run after run."""
    module = _threads_program()
    for _ in range(3):
        assert run_threaded(module, engine="wasmtime") == (0, b"counter 4000 wide 42949672960000\n")


@pytest.mark.parametrize("engine", ENGINES)
def test_every_thread_waiting_forever_is_a_deadlock_trap(engine: str) -> None:
    module = threads_module("""
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
      (func (export "wasi_thread_start") (param i32 i32)
        (drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const -1))))
      (func (export "_start")
        (drop (call $spawn (i32.const 0)))
        (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))""")
    with pytest.raises(wasmig.Trap, match="deadlock"):
        run_threaded(module, engine=engine)


#: a spawned thread traps while the main thread waits forever
TRAP_IN_A_THREAD = """
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
      (func (export "wasi_thread_start") (param i32 i32) unreachable)
      (func (export "_start")
        (drop (call $spawn (i32.const 0)))
        (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_trap_in_any_thread_ends_the_program(engine: str) -> None:
    module = threads_module(TRAP_IN_A_THREAD)
    with pytest.raises(wasmig.Trap, match="unreachable"):
        run_threaded(module, engine=engine)


#: run in a process of its own: TRAP_IN_A_THREAD's module, given on stdin, run N times on
#: wasmtime; prints each outcome that is not the spawned thread's trap
_REPEATED_TRAPS = """
import collections, io, os, sys
import wasmig
from wasmig import engines
from wasmig.wasi.preview1 import Wasi
module = wasmig.Module.from_bytes(sys.stdin.buffer.read(), features={"threads"})
wrong = collections.Counter()
for _ in range(int(sys.argv[1])):
    try:
        engines.get("wasmtime").run_threaded_command(module, Wasi(["prog"], stdout=io.BytesIO()))
    except wasmig.Trap as e:
        if "unreachable" not in str(e):
            wrong[f"Trap({str(e)[:60]})"] += 1
    except BaseException as e:
        wrong[type(e).__name__] += 1
    else:
        wrong["no trap"] += 1
print(dict(wrong))
"""


def test_a_trap_in_a_thread_ends_the_program_every_time_on_wasmtime() -> None:
    """Issue 20's intermittent failure, repeated in a process of its own (so that a native
    crash fails this test instead of killing the pytest worker): a spawned thread traps while
    the main thread waits forever, 400 times. Before the fix, about 1 run in 200 ended with the
    main thread's ``ProgramEnded`` instead of the trap: wasmtime-py hands a host function's
    exception to the trap in one process-wide variable, which another thread's trap could take
    (host functions now keep theirs per instance), and the run returned while threads were
    still unwinding in their stores (it now waits for them)."""
    import sys

    module = threads_module(TRAP_IN_A_THREAD)
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _REPEATED_TRAPS, "400"], input=module.data,
                          capture_output=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert done.stdout.strip() == b"{}", done.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_imports_beyond_wasi_threads_are_refused(engine: str) -> None:
    module = threads_module("""
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func (import "env" "anything"))
      (func (export "_start")))""")
    with pytest.raises(wasmig.LinkError, match="env.anything"):
        run_threaded(module, engine=engine)



def _wasmig(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    import sys

    return subprocess.run([sys.executable, "-m", "wasmig", *args], input=stdin, capture_output=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])


def test_wasmig_run_refuses_what_threads_lack_yet_in_one_line(tmp_path: Path) -> None:
    """What threads lack yet is a one-line error, never a traceback, and nothing runs: a step
    count with ``--engine wasmtime`` (counted on the interpreter), an instruction-count trigger."""
    wasm = compile_threaded("threads_spawn")
    for options, message in ((["--engine", "wasmtime", "--checkpoint-dir", str(tmp_path / "ck"),
                               "--checkpoint-at-step", "100"], b"counts steps on the interpreter only"),
                             (["--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-at-instruction", "5"],
                              b"cannot be run with --checkpoint-at-instruction")):
        refused = _wasmig("run", *options, str(wasm))
        assert refused.returncode == 1 and b"Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.startswith(b"wasmig: error: ") and message in refused.stderr, refused.stderr
    assert not list((tmp_path / "ck").rglob("*.snap"))  # refused before anything ran


def test_wasmig_run_runs_a_threaded_program_on_either_engine() -> None:
    """`wasmig run` tells a wasi-threads program from its imports and runs it on the engine asked
    for, by default wasmtime (in parallel), without a note."""
    wasm = compile_threaded("threads_spawn")
    for options in ([], ["--engine", "wasmtime"], ["--engine", "interp"]):
        done = _wasmig("run", *options, str(wasm))
        assert done.returncode == 0 and done.stdout == b"counter 4000 wide 42949672960000\n", (options, done.stderr)
        assert done.stderr == b"", (options, done.stderr)


def test_wasmig_run_exit_code_and_trap_of_a_threaded_program_on_wasmtime(tmp_path: Path) -> None:
    """proc_exit from a spawned thread is the process's exit code; a trap in one is reported as
    a trap (one line and the trap exit code), not a traceback."""
    exits = tmp_path / "exits.wasm"
    exits.write_bytes(threads_module("""
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
      (func $exit (import "wasi_snapshot_preview1" "proc_exit") (param i32))
      (func (export "wasi_thread_start") (param i32 i32) (call $exit (i32.const 7)))
      (func (export "_start")
        (drop (call $spawn (i32.const 0)))
        (loop $busy (br $busy))))""").data or b"")
    done = _wasmig("run", "--engine", "wasmtime", str(exits))
    assert done.returncode == 7, done.stderr
    traps = tmp_path / "traps.wasm"
    traps.write_bytes(threads_module(TRAP_IN_A_THREAD).data or b"")
    done = _wasmig("run", "--engine", "wasmtime", str(traps))
    assert done.returncode != 0 and b"unreachable" in done.stderr and b"Traceback" not in done.stderr, done.stderr


SPAWN_LIMIT = """
(module
  (memory (import "env" "memory") 1 1 shared)
  (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
  (func $exit (import "wasi_snapshot_preview1" "proc_exit") (param i32))
  ;; each thread counts itself in and waits on address 0 until main lets everyone go
  (func (export "wasi_thread_start") (param i32 i32)
    (drop (i32.atomic.rmw.add (i32.const 4) (i32.const 1)))
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1))))
  (func (export "_start") (local $made i32)
    (block $full
      (loop $more
        (br_if $full (i32.le_s (call $spawn (i32.const 0)) (i32.const 0)))
        (local.set $made (i32.add (local.get $made) (i32.const 1)))
        (br_if $more (i32.lt_u (local.get $made) (i32.const 200)))))
    ;; all in waiting (or about to): release them
    (block $in (loop $wait_in
      (br_if $in (i32.eq (i32.atomic.load (i32.const 4)) (local.get $made)))
      (drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const 1000000)))
      (br $wait_in)))
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (drop (memory.atomic.notify (i32.const 0) (i32.const -1)))
    (call $exit (local.get $made))))
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_at_most_128_live_threads(engine: str) -> None:
    """A spawn beyond 128 live threads (the main one's included) fails with a negative result on
    both engines (the threads then are woken and end, so nothing is left behind)."""
    assert run_threaded(threads_module(SPAWN_LIMIT), engine=engine)[0] == 127


GROWS = """
(module
  (memory (import "env" "memory") 1 4 shared)
  (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
  (func $write (import "wasi_snapshot_preview1" "fd_write") (param i32 i32 i32 i32) (result i32))
  ;; the spawned thread grows the shared memory by 2 pages and puts a message at its new end
  (func (export "wasi_thread_start") (param i32 i32)
    (drop (memory.grow (i32.const 2)))
    (i32.store (i32.const 196600) (i32.const 0x0a6b6f))   ;; "ok\\n" at 3 pages - 8
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
  (func (export "_start")
    (drop (call $spawn (i32.const 0)))
    (block $done (loop $wait
      (br_if $done (i32.atomic.load (i32.const 0)))
      (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
      (br $wait)))
    ;; the main thread's WASI writes from the grown part: the host sees the new size
    (i32.store (i32.const 16) (i32.const 196600))
    (i32.store (i32.const 20) (i32.const 3))
    (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_memory_grown_by_one_thread_is_seen_by_the_others_and_by_wasi(engine: str) -> None:
    assert run_threaded(threads_module(GROWS), engine=engine) == (0, b"ok\n")


def _wasmtime_run(text: str) -> Any:
    from wasmig.engines.wasmtime.threads import ThreadedRun

    return ThreadedRun(threads_module(text), Wasi(["prog"], stdout=io.BytesIO()))


def _two_threads_then_exit(thread: str, main: str) -> str:
    """A program whose main thread spawns two threads running ``thread``, then runs ``main``."""
    return f"""
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
      (func $exit (import "wasi_snapshot_preview1" "proc_exit") (param i32))
      (func (export "wasi_thread_start") (param i32 i32) {thread})
      (func (export "_start") (drop (call $spawn (i32.const 0))) (drop (call $spawn (i32.const 0))) {main}))"""


def _ends_leaving_no_thread(run: Any, code: int) -> None:
    """``run`` exits with ``code`` and every OS thread it started has ended (30 s each at most)."""
    assert run.run() == code
    for thread in run.python_threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), thread.name


def test_wasmtime_stops_threads_still_computing_when_the_program_ends() -> None:
    """The run's epoch: a thread spinning in wasm when another exits traps at its next loop head,
    so its OS thread ends instead of spinning on after the run."""
    run = _wasmtime_run(_two_threads_then_exit(
        thread="(i32.atomic.store (i32.const 0) (i32.const 1)) (loop $spin (br $spin))",
        main="(loop $started (br_if $started (i32.eqz (i32.atomic.load (i32.const 0))))) (call $exit (i32.const 3))"))
    _ends_leaving_no_thread(run, 3)


def test_wasmtime_runs_wasm_without_holding_the_gil() -> None:
    """While the main wasm thread spins (no host call), Python code runs: here it sets the flag the
    guest spins on. Were the GIL held while wasm runs, the flag would never be set."""
    run = _wasmtime_run("""
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func $exit (import "wasi_snapshot_preview1" "proc_exit") (param i32))
      (func (export "_start")
        (i32.atomic.store (i32.const 4) (i32.const 1))
        (loop $spin (br_if $spin (i32.eqz (i32.atomic.load (i32.const 0)))))
        (call $exit (i32.const 5))))""")
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(run.run()), daemon=True)
    runner.start()
    memory = run.wasi.mem
    deadline = time.monotonic() + 30
    while memory.u32(4) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = sum(i * i for i in range(100_000))  # Python work while the guest spins
    memory.set_u32(0, busy & 0xFFFF or 1)
    runner.join(timeout=30)
    assert outcome == [5]


def test_ctrl_c_ends_a_threaded_run_on_wasmtime(tmp_path: Path) -> None:
    """SIGINT reaches the Python thread waiting for the program's end while every wasm thread
    spins: the run ends (the epoch stops the spinning threads) with the shell's 130."""
    import signal
    import sys

    from tests.test_engine_wasmtime import SAYS_GO, wait_for_go

    spin = tmp_path / "spin.wasm"
    spin.write_bytes(threads_module("""
    (module
      (memory (import "env" "memory") 1 1 shared)
      (func $spawn (import "wasi" "thread-spawn") (param i32) (result i32))
      """ + SAYS_GO + """
      (func (export "wasi_thread_start") (param i32 i32) (loop $spin (br $spin)))
      (func (export "_start")
        (drop (call $spawn (i32.const 0)))
        (call $go)
        (loop $spin (br $spin))))""").data or b"")
    # SIGINT's default restored in the child: a pytest started as a background job of a
    # non-interactive shell ignores SIGINT, and a child that inherits that never sees the Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", "wasmtime", str(spin)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_go(proc)  # both threads spin (the main one from its next instruction on)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
        proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()


def test_wasmtime_wakes_threads_waiting_forever_when_the_program_ends() -> None:
    """Waits are the host's on wasmtime (wasmig/engines/wasmtime/host_waits.py): a thread waiting
    without a timeout when another exits returns from its wait and ends, none is left behind."""
    run = _wasmtime_run(_two_threads_then_exit(
        thread="(drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const -1)))",
        main="(drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 100000000)))"
             " (call $exit (i32.const 4))"))
    _ends_leaving_no_thread(run, 4)


def test_host_waits_wake_in_arrival_order_and_compare_under_the_lock() -> None:
    """The host's wait queues: 1 when the cell differs, 2 on timeout, and notify(addr, 1) wakes
    the thread that came first."""
    import ctypes

    from wasmig.engines.wasmtime.host_waits import HostWaits

    cells = (ctypes.c_uint32 * 16)()
    lock = threading.RLock()
    waits = HostWaits(lock, lambda: (ctypes.addressof(cells), 64), lambda: (4, 0), lambda exc: None,
                      lambda: False)
    assert waits.wait(waits.waiter(), 8, 5, 1000, 0, 4) == 1  # the cell holds 0, not 5
    assert waits.wait(waits.waiter(), 4, 0, 1_000_000, 4, 4) == 2  # 8 = 4 + offset 4, nobody notifies
    with pytest.raises(wasmig.Trap, match="unaligned atomic"):
        waits.wait(waits.waiter(), 2, 0, 0, 0, 4)
    with pytest.raises(wasmig.Trap, match="out of bounds"):
        waits.notify(64, 1, 0)
    order: list[str] = []
    threads = []
    for name in ("first", "second", "third"):
        waiter = waits.waiter()
        thread = threading.Thread(target=lambda n=name, w=waiter: (waits.wait(w, 16, 0, -1 & (2**64 - 1), 0, 4),
                                                                   order.append(n)))
        thread.start()
        threads.append(thread)
        while len(waits.queues.queues.get(16, ())) < len(threads):  # queued before the next one comes
            time.sleep(0.001)
    assert waits.notify(16, 1, 0) == 1
    threads[0].join(timeout=30)
    assert order == ["first"]
    assert waits.notify(16, 5, 0) == 2
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(order[1:]) == ["second", "third"] and not waits.queues.queues


def test_wasmtime_gives_a_threaded_command_as_a_program() -> None:
    """``WasmtimeEngine.program`` of a wasi-threads command: a Program a run loop runs to its end
    (proc_exit's code as ProcExit); asked for checkpoints, one that stops on request; asked to
    count steps, a one-line SnapshotError."""
    from wasmig.errors import SnapshotError
    from wasmig.wasi.preview1 import ProcExit

    module = threaded_module("threads_spawn")
    out = io.BytesIO()
    program = engines.get("wasmtime").program(module, Wasi(["prog"], stdout=out), checkpoints=False)
    assert "_start" in program.export_names() and program.steps is None
    assert program.start() is False and out.getvalue() == b"counter 4000 wide 42949672960000\n"
    exiting = threads_module(_two_threads_then_exit(thread="", main="(call $exit (i32.const 9))"))
    exits = engines.get("wasmtime").program(exiting, Wasi(["prog"]), checkpoints=False)
    with pytest.raises(ProcExit) as exited:
        exits.start()
    assert exited.value.code == 9
    checkpointable = engines.get("wasmtime").program(module, Wasi(["prog"], stdout=io.BytesIO()), checkpoints=True)
    assert checkpointable.steps is None and not checkpointable.start()  # stops on request only (none here)
    with pytest.raises(SnapshotError, match="not at a step"):
        engines.get("wasmtime").program(module, Wasi(["prog"]), checkpoints=True, count_steps=True)
