"""Live migration of a multi-threaded program between `wasmig serve` daemons (issue 20;
docs/migration.md, "Threads"): ``tests/programs/threads_migrate.c`` -- eight workers under a
mutex, two condition variables and a barrier, the main thread sleeping between rounds -- moved
mid-run through the same protocol and code paths as a single-threaded program. The output of the
processes that ran it, put together, must be the uninterrupted run's, each line exactly once; a
migration that cannot happen (an engine that cannot take threads, a daemon that does not trust
the source, a daemon killed mid-way) leaves the program running at the source, unharmed."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack
import pytest

from tests.migration_gate import Gate
from tests.migration_keys import Keys
from tests.test_migrate import (
    Daemon,
    assert_ran_exactly_once,
    daemon,
    lines_of,
    migrate,
    rounds_in,
    source,
    wait_for,
    wasmig,
)
from tests.threaded_programs import compile_threaded

if TYPE_CHECKING:
    from wasmig.interp.threads import ThreadScheduler
    from wasmig.session.loop import Session, StopHandoff

#: rounds (at least), ms the main thread sleeps before each (the workers wait on a condition
#: variable meanwhile), KiB of the shared buffer the workers rewrite, the gate (it goes on until the
#: test opens it: tests/migration_gate.py)
ARGS = ["10", "100", "64", "/g/open"]


@pytest.fixture(scope="module")
def program() -> Path:
    return compile_threaded("threads_migrate")


def reference_of(program: Path, args: list[str]) -> list[str]:
    """The lines of an uninterrupted run (on the interpreter, without sleeping: the same lines)."""
    out = subprocess.run(wasmig("run", "--engine", "interp", str(program), *args[:1], "0", *args[2:]),
                         capture_output=True, check=True).stdout.decode()
    return out.splitlines()


def reference_for(program: Path, *outputs: Path) -> list[str]:
    """The uninterrupted run (ARGS, no gate) of as many rounds as the gated run made in ``outputs``."""
    rounds = rounds_in(*outputs)
    assert rounds >= int(ARGS[0]), f"only {rounds} rounds"
    lines = reference_of(program, [str(rounds), "0", ARGS[2]])
    assert len(lines) == rounds + 1 and lines[-1].startswith("done ")
    return lines


@contextmanager
def threaded_source(tmp_path: Path, program: Path, args: list[str] = ARGS, started: str = "round 2 ",
                    options: list[str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``wasmig run --migratable [OPTIONS] PROGRAM ARGS`` (no engine asked: the default one, which
    captures threads), once its output holds ``started``."""
    with source(tmp_path, program, None, args, started, options) as running:
        yield running


def _summary(stdout: str) -> re.Match[str]:
    found = re.search(r"migrated to 127\.0\.0\.1:\d+ in [\d.]+ s: downtime ([\d.]+) ms, [\d.]+ MB sent, (\d+) rounds",
                      stdout)
    assert found, stdout
    return found


def test_an_eight_thread_program_moves_between_two_daemons_and_back(tmp_path: Path, program: Path, gate: Gate,
                                                                    keys: Keys) -> None:
    """Three hops (a wasmtime source -> a -> b -> a, interpreter daemons), each while the workers
    wait on their condition variable or compute: every round's log comes out once, in order, as in
    an uninterrupted run; the pages a kept from the first hop are not resent on the third."""
    args = ["10", "300", "64", "/g/open"]  # on until the three hops are done (not 40 rounds, 12 s)
    with daemon(tmp_path, "a", "interp", keys, extra=gate.mapped) as a, \
            daemon(tmp_path, "b", "interp", keys, extra=gate.mapped) as b, \
            threaded_source(tmp_path, program, args, options=gate.mapped) as (proc, out):
        done = migrate(proc.pid, a)
        assert done.returncode == 0, done.stderr
        _summary(done.stdout)
        assert proc.wait(30) == 0
        first = a.pid_of(1)
        wait_for(lambda: len(lines_of(a.out)) >= 3, f"no progress on a: {a.log()}")
        hop = migrate(first, b)
        assert hop.returncode == 0, hop.stderr
        second = b.pid_of(1)
        wait_for(lambda: len(lines_of(b.out)) >= 3, f"no progress on b: {b.log()}")
        hop = migrate(second, a)
        assert hop.returncode == 0, hop.stderr
        known = re.search(r"(\d+) pages sent, (\d+) already on the target", hop.stdout)
        assert known and int(known.group(2)) > 0, hop.stdout
        a.pid_of(2)
        gate.open()
        wait_for(lambda: "program exited with code 0" in a.log(), f"not finished: {a.log()}")
        assert a.log().count("program migrated away") == 1 and b.log().count("program migrated away") == 1
        assert_ran_exactly_once(reference_for(program, out, a.out, b.out), out, a.out, b.out)


@pytest.mark.parametrize(("source_engine", "target_engine"),
                         [("interp", "interp"), ("wasmtime", "interp"), ("interp", "wasmtime"),
                          ("wasmtime", "wasmtime")])
def test_a_threaded_program_moves_while_its_workers_wait_on_a_condition_variable(
        tmp_path: Path, program: Path, gate: Gate, keys: Keys, source_engine: str, target_engine: str) -> None:
    """A long sleep between rounds: the stop finds the main thread in its sleep (a blocking host
    call, re-issued at the target) and all eight workers waiting on the condition variable. The
    state the target kept says so; the program finishes there with the uninterrupted output --
    on a wasmtime daemon too, each thread rewinding its frames and the waiters queued in order."""
    # rounds of little work (the stop finds them in the sleep, not computing), on until the move is
    # over (not 6 rounds, 9 s)
    args = ["3", "1500", "8", "/g/open"]
    with daemon(tmp_path, "target", target_engine, keys, extra=gate.mapped) as d, \
            threaded_source(tmp_path, program, args, started="round 1 ",
                            options=["--engine", source_engine, *gate.mapped]) as (proc, out):
        _moves_and_finishes_there(proc, out, d, lambda: reference_of(program, [str(rounds_in(out, d.out)), "0", "8"]),
                                  gate)
    threads = re.search(r"restored (\d+) threads: (\d+) waiting, (\d+) in a host call", d.log())
    assert threads and threads.groups() == ("9", "8", "1"), d.log()


def _moves_and_finishes_there(proc: subprocess.Popen[bytes], out: Path, d: Daemon,
                              reference: Callable[[], list[str]], gate: Gate | None = None) -> None:
    """Migrate the running source to daemon ``d`` (then open ``gate``, if the program has one): the
    source exits 0 and the program ends there, its output the uninterrupted run's exactly once
    (``reference()``, asked once the program ended), some of it printed at the target."""
    done = migrate(proc.pid, d)
    assert done.returncode == 0, done.stderr
    assert proc.wait(30) == 0
    if gate is not None:
        gate.open()
    wait_for(lambda: "program exited with code 0" in d.log(), f"not finished: {d.log()}")
    assert_ran_exactly_once(reference(), out, d.out)
    assert lines_of(d.out), "it moved only after the end"


def _stays_at_the_source(failed: subprocess.CompletedProcess[str], proc: subprocess.Popen[bytes], out: Path,
                         program: Path, gate: Gate, why: str) -> None:
    """The migration failed in one line naming ``why``; the program went on at the source and,
    its gate opened, finished there with the uninterrupted output."""
    assert failed.returncode == 1, failed.stdout
    assert "the program goes on" in failed.stderr and why in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    gate.open()
    assert proc.wait(60) == 0
    assert_ran_exactly_once(reference_for(program, out), out)


def test_a_daemon_whose_engine_cannot_take_threads_refuses_the_module_in_one_line(
        program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both engines land threads (a daemon on either takes the program: the tests above); one that
    did not would refuse the module when it arrives, naming the engines that can."""
    from wasmig import engines
    from wasmig.migrate.protocol import MigrationError
    from wasmig.migrate.target import Target

    assert all(engines.get(name).lands_threads for name in engines.NAMES)
    monkeypatch.setattr(engines.get("wasmtime"), "lands_threads", False)
    target = object.__new__(Target)  # only what the module's arrival reads
    target.engine, target.runs_on = "wasmtime", engines.get("wasmtime")
    with pytest.raises(MigrationError, match=r"^this daemon's engine \(wasmtime\) cannot take a multi-threaded "
                                             r"program yet \(a daemon started with --engine interp can"):
        target._decoded(program.read_bytes())


def test_an_untrusted_source_is_refused_and_the_program_goes_on(tmp_path: Path, program: Path, gate: Gate,
                                                                keys: Keys) -> None:
    with daemon(tmp_path, "target", "interp", keys, trust=["--trust-peer", keys.pub("a")], extra=gate.mapped) as d, \
            threaded_source(tmp_path, program, options=gate.mapped) as (proc, out):
        _stays_at_the_source(migrate(proc.pid, d), proc, out, program, gate, "migration failed")
        assert "none of the trusted keys" in d.log() and d.out.read_text() == ""


def test_a_peer_of_another_protocol_version_is_refused_and_the_program_goes_on(
        tmp_path: Path, program: Path, gate: Gate, keys: Keys) -> None:
    """A daemon of an older wasmig (protocol 2) answers ``hello`` with its version: refused at once."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def old_daemon() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                hello = msgpack.packb({"t": "hello", "protocol": "wasmig-migrate", "version": 2})
                conn.sendall(len(hello).to_bytes(4, "big") + hello)
                conn.recv(4096)

        answering = threading.Thread(target=old_daemon, daemon=True)
        answering.start()
        with threaded_source(tmp_path, program, options=gate.mapped) as (proc, out):
            failed = subprocess.run(wasmig("migrate", str(proc.pid), "--to", f"127.0.0.1:{port}", "--peer-fingerprint",
                                           keys.fingerprint("target"), "--quiet"),
                                    capture_output=True, text=True, timeout=120)
            _stays_at_the_source(failed, proc, out, program, gate, "version")


@pytest.mark.parametrize("step", ["state", "prepared"])
def test_killing_the_target_mid_migration_leaves_the_threads_running_at_the_source(
        tmp_path: Path, program: Path, gate: Gate, keys: Keys, step: str) -> None:
    """After the state went (every thread stopped at the source) and after the target said
    ``prepared``: the source's threads go on from where they stopped, nothing ran on the target."""
    with daemon(tmp_path, "target", "interp", keys, fault=step, extra=gate.mapped) as d, \
            threaded_source(tmp_path, program, options=gate.mapped) as (proc, out):
        _stays_at_the_source(migrate(proc.pid, d), proc, out, program, gate, "")
        assert f"killed after {step}" in d.log() and d.out.read_text() == ""


@pytest.mark.parametrize("target_engine", ["interp", "wasmtime"])
def test_a_threaded_program_moves_while_its_workers_compute(tmp_path: Path, program: Path, gate: Gate, keys: Keys,
                                                            target_engine: str) -> None:
    """No sleeping: the stop finds the workers computing and taking turns (no thread in a host
    call); pre-copy resends the pages the workers rewrite while it runs. The program goes on
    until the migration is over (its gate): 40 rounds ended before it, twice of two at load 2."""
    kib = "1024"
    with daemon(tmp_path, "target", target_engine, keys, extra=gate.mapped) as d, \
            threaded_source(tmp_path, program, ["10", "0", kib, "/g/open"],
                            options=["--engine", "interp", *gate.mapped]) as (proc, out):
        _moves_and_finishes_there(proc, out, d, lambda: reference_of(program, [str(rounds_in(out, d.out)), "0", kib]),
                                  gate)
    threads = re.search(r"restored (\d+) threads: (\d+) waiting, (\d+) in a host call, (\d+) runnable", d.log())
    assert threads and threads.group(1) == "9" and threads.group(3) == "0" and int(threads.group(4)) >= 1, d.log()


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_the_landing_refuses_pages_beyond_the_shared_memory_before_making_room(engine: str) -> None:
    """A source that names a page past the shared memory's declared maximum (or another memory)
    is refused before the daemon allocates anything for it."""
    from tests.threaded_programs import threaded_module
    from wasmig import engines
    from wasmig.snapshot.state import PAGE_SIZE, SnapshotError

    module = threaded_module("threads_migrate")
    landing = engines.get(engine).landing(module)
    top = module.ir.all_mems()[0].limits.max
    assert top is not None
    landing.write(0, top - 1, b"\1" * PAGE_SIZE)  # the last page it may have
    for m, i in ((0, top), (0, 65535), (1, 0)):
        with pytest.raises(SnapshotError, match="beyond the shared memory"):
            landing.write(m, i, b"\1" * PAGE_SIZE)
    with pytest.raises(SnapshotError, match="beyond the shared memory"):
        landing.memory(0, None, top + 1)
    assert landing.pages(0) == top


def test_a_daemon_gone_after_the_commit_leaves_every_thread_stopped_and_saved(
        tmp_path: Path, program: Path, gate: Gate, keys: Keys) -> None:
    """In doubt (the commit sent, never confirmed, nobody left to ask): the source keeps every
    thread stopped, saves the program (a format-version-2 single file) and exits 75; `wasmig
    restore` of that file finishes it, the output the uninterrupted run's."""
    with daemon(tmp_path, "target", "interp", keys, fault="daemon", extra=gate.mapped) as d, \
            threaded_source(tmp_path, program, options=gate.mapped) as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1 and "did not confirm" in failed.stderr, failed.stderr
        assert proc.wait(60) == 75
        err = (tmp_path / "source.err").read_text()
        saved = re.search(r"its state is in (\S+\.snap)", err)
        assert saved, err
        assert "whole daemon killed" in d.log() and d.out.read_text() == ""
        gate.open()  # the restore finishes the round it stopped in, and ends
        restored = subprocess.run(wasmig("restore", "--module", str(program), *gate.mapped, saved.group(1)),
                                  capture_output=True, text=True, timeout=120)
        Path(saved.group(1)).unlink()
        assert restored.returncode == 0, restored.stderr
        (tmp_path / "restored.out").write_text(restored.stdout)
        assert_ran_exactly_once(reference_for(program, out, tmp_path / "restored.out"), out, tmp_path / "restored.out")


def _asked_to_stop_in_the_sleep(scheduler: ThreadScheduler, session: Session, handoff: StopHandoff) -> bool:
    """Whether the main thread is in a blocking host call (its sleep between rounds) and the eight
    workers wait (on the condition variable): if so, the stop is asked at once, the scheduler's
    lock held, so no thread moves on before the pause (a fixed 0.1 s pause into a 300 ms sleep
    missed it when the test thread stalled 0.2 s: the stop found the workers computing)."""
    with scheduler.cond:
        main, workers = scheduler.main, [t for t in scheduler.threads if t is not scheduler.main]
        if main is None or main.state != "host" or len(workers) != 8 or \
                any(t.state != "waiting" for t in workers):
            return False
        handoff.want_stop = True  # as StopHandoff.stop does, before the request the run loop answers
        session.request()  # flags only (the scheduler's request)
        return True


@pytest.mark.parametrize("target_engine", ["interp", "wasmtime"])
def test_the_landed_program_is_the_stopped_one_wait_queues_in_order(target_engine: str) -> None:
    """In process: the eight-thread program stopped for a migration (the session's StopHandoff),
    its state sent as the protocol sends it (msgpack, memories as sizes only) and its pages landed
    in the daemon engine's landing: the program the landing prepares captures to the very state
    the source stopped in -- every thread, each wait queue in its order, the scheduler (on
    wasmtime, stopped again before any thread ran: no scheduler, no step counts, the memory the
    pages written in place)."""
    import io
    import threading

    from tests.threaded_programs import threaded_module
    from wasmig import engines
    from wasmig.grants import resolve
    from wasmig.session.loop import Session, StopHandoff
    from wasmig.session.policy import CheckpointPolicy
    from wasmig.snapshot.inspect import diff
    from wasmig.snapshot.state import PAGE_SIZE, from_plain, to_plain
    from wasmig.wasi.preview1 import Wasi

    module = threaded_module("threads_migrate")
    interp = engines.get("interp")
    out = io.BytesIO()
    program = interp.program(module, Wasi(["prog", "1000", "300", "64"], stdout=out), checkpoints=True)
    session = Session(program, CheckpointPolicy(migratable=True))
    session.handoff = handoff = StopHandoff()
    threading.Thread(target=lambda: session.run(resume=False), daemon=True).start()
    wait_for(lambda: b"round 1 " in out.getvalue(), "the program did not start")
    wait_for(lambda: _asked_to_stop_in_the_sleep(program.scheduler, session, handoff),
             "the main thread never slept with its eight workers waiting")
    stopped = handoff.stop(session.request)
    try:
        memories = session.guest_memories()
        plain = to_plain(stopped, lambda _i, _data: None)
        plain["memories"][0]["size_pages"] = memories[0][0] // PAGE_SIZE
        landing = engines.get(target_engine).landing(module)
        for i in range(memories[0][0] // PAGE_SIZE):
            landing.write(0, i, bytes(memories[0][1](i)))
        snap = from_plain(msgpack.unpackb(msgpack.packb(plain, use_bin_type=True), raw=False), landing.memory)
        assert snap.wasi is not None
        landed = landing.prepare(snap, resolve(snap.wasi, dirs={}, listens=(), gateways=(), where="migration"))
        if target_engine == "wasmtime":
            landed.request()
            assert landed.start(), "the restored threads did not stop"
            assert not landed.resumed(), "no thread rewound its frames yet: the target must not answer"
        again = landed.capture()
        source_state = program.capture()
        assert stopped.threads is not None and again.threads is not None
        assert [(a, tids) for _m, a, tids in again.threads.wait_queues] == \
            [(a, tids) for _m, a, tids in stopped.threads.wait_queues]
        assert sum(len(tids) for _m, _a, tids in stopped.threads.wait_queues) == 8, "the workers were not waiting"
        # what wasmtime's threads, running freely, do not have: the interpreter's scheduler and step counts
        unscheduled = re.compile(r"engine: interp -> wasmtime|steps: \d+ -> None|thread \d+: steps \d+ -> None|"
                                 r"thread \d+: quantum_end \d+ -> None|scheduler: interpreter -> none")
        assert [line for line in diff(source_state, again) if "clock" not in line and
                (target_engine == "interp" or not unscheduled.fullmatch(line))] == []
    finally:
        handoff.decide(False)


def test_run_migrate_to_moves_a_threaded_program_by_itself(tmp_path: Path, program: Path, gate: Gate,
                                                          keys: Keys) -> None:
    """``wasmig run --migrate-to`` of a threaded program (on the default engine): it moves after
    the given time, the summary on the source's stderr."""
    with daemon(tmp_path, "target", "interp", keys, extra=gate.mapped) as d:
        out, err = tmp_path / "source.out", tmp_path / "source.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(wasmig("run", "--migrate-to", d.address, "--migrate-peer-fingerprint",
                                           d.fingerprint, "--migrate-after", "1", *gate.mapped, str(program), *ARGS),
                                    stdout=o, stderr=e)
        try:
            assert proc.wait(120) == 0, err.read_text()
        finally:
            if proc.poll() is None:  # not moved: it would go on until the gate opens
                proc.kill()
        _summary(err.read_text())
        gate.open()
        wait_for(lambda: "program exited with code 0" in d.log(), f"the program did not finish: {d.log()}")
        assert_ran_exactly_once(reference_for(program, out, d.out), out, d.out)
        assert lines_of(out) and lines_of(d.out), "it did not move mid-run"
