"""Live migration end to end, with real processes: `wasmig run --migratable` moved by `wasmig
migrate PID --to` to `wasmig serve` daemons, across engines, three hops in a row; an untrusted key;
and the target killed at every protocol step (the source must go on, the program must run
exactly once). The program prints a numbered line per round; the lines of every process that
ran it, put together, must be the uninterrupted run's lines, each exactly once."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.migration_gate import Gate
from tests.migration_keys import Keys, trust_all
from tests.tcp_clients import Client
from wasmig.migrate.target import FAULT_ENV, FAULT_STEPS
from wasmig.toolchain import compile_c

pytest.importorskip("wasmtime")

PROGRAMS = Path(__file__).parent / "programs"
#: rounds (at least), KiB of heap, ms of sleep per round, the gate (see Gate): moved mid-run at any load
ARGS = ["10", "256", "40", "/g/open"]


def wasmig(*args: str) -> list[str]:
    return [sys.executable, "-m", "wasmig", *args]


@pytest.fixture(scope="module")
def program() -> Path:
    return compile_c(PROGRAMS / "migrate_work.c")


def reference_of(program: Path, args: list[str]) -> list[str]:
    return reference_on("wasmtime", program, [*args[:2], "0"])


def reference_on(engine: str, program: Path, args: list[str]) -> list[str]:
    """The lines of an uninterrupted run."""
    out = subprocess.run(wasmig("run", "--engine", engine, str(program), *args), capture_output=True,
                         check=True).stdout.decode()
    return out.splitlines()


def rounds_in(*outputs: Path) -> int:
    """How many rounds a gated run made, in all the processes that ran it ("round N ..." lines)."""
    return 1 + max(int(line.split()[1]) for line in lines_of(*outputs) if line.startswith("round"))


def reference_for(program: Path, *outputs: Path) -> list[str]:
    """The uninterrupted run of as many rounds as the gated run made: the same lines, its last one
    the checksum of the whole heap after that many rounds."""
    rounds = rounds_in(*outputs)
    assert rounds >= int(ARGS[0]), f"only {rounds} rounds"
    return reference_of(program, [str(rounds), ARGS[1]])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    address: str
    fingerprint: str
    out: Path
    err: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.err.read_text()

    def pid_of(self, migration_number: int = 1, timeout: float = 30.0) -> int:
        """The pid of the process running the program of its n-th committed migration."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = re.findall(r"committed: running as pid (\d+)", self.log())
            if len(pids) >= migration_number:
                return int(pids[migration_number - 1])
            time.sleep(0.05)
        raise AssertionError(f"no committed migration #{migration_number}: {self.log()}")


@contextmanager
def daemon(tmp_path: Path, name: str, engine: str, keys: Keys, fault: str | None = None,
           extra: list[str] | None = None, trust: list[str] | None = None,
           command: list[str] | None = None) -> Iterator[Daemon]:
    """``wasmig serve`` (``command``: what runs ``wasmig serve ...``, default ``python -m wasmig``)."""
    address = f"127.0.0.1:{free_port()}"
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    env = {**os.environ, **({FAULT_ENV: fault} if fault else {})}
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([*(command or wasmig()), "serve", "--listen", address, "--key", str(keys.dir(name)),
                                 *(trust if trust is not None else trust_all(keys)), "--engine", engine,
                                 "--state-dir", str(tmp_path / f"{name}-state"), *(extra or [])],
                                stdout=o, stderr=e, env=env, start_new_session=True)
    d = Daemon(address, keys.fingerprint(name), out, err, proc)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in d.log():
            assert proc.poll() is None and time.monotonic() < deadline, d.log()
            time.sleep(0.05)
        yield d
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the daemon and the programs it runs
        proc.wait()


@contextmanager
def source(tmp_path: Path, program: Path, engine: str | None, args: list[str] = ARGS, started: str = "round 2 ",
           options: list[str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``wasmig run --migratable [--engine ENGINE] [OPTIONS] PROGRAM ARGS`` (engine None: the
    default one), once its output holds ``started``."""
    out, err = tmp_path / "source.out", tmp_path / "source.err"
    engine_option = ["--engine", engine] if engine is not None else []
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(wasmig("run", "--migratable", *engine_option, *(options or []), str(program),
                                       *args), stdout=o, stderr=e)
    try:
        wait_for(lambda: started in out.read_text(), f"the program did not start: {err.read_text()}")
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_for(cond: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def migrate(pid: int, to: Daemon, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(wasmig("migrate", str(pid), "--to", to.address, "--peer-fingerprint", to.fingerprint,
                                 "--quiet", *options), capture_output=True, text=True, timeout=120)


def lines_of(*files: Path) -> list[str]:
    return [line for f in files for line in f.read_text().splitlines()]


def assert_ran_exactly_once(reference: list[str], *outputs: Path) -> None:
    """Every line of the uninterrupted run, each once, and in order within each process (a
    daemon's output may hold two stretches, of its first and its third hop)."""
    got = lines_of(*outputs)
    assert sorted(got) == sorted(reference), f"lost or doubled lines:\n{got}"
    for f in outputs:
        rounds = [int(line.split()[1]) for line in lines_of(f) if line.startswith("round")]
        assert rounds == sorted(rounds), f"out of order in {f.name}: {rounds}"


@pytest.mark.parametrize("engines", [("wasmtime", "interp"), ("interp", "wasmtime")], ids=lambda e: "->".join(e))
def test_live_migration_across_engines(tmp_path: Path, program: Path, gate: Gate, keys: Keys,
                                       engines: tuple[str, str]) -> None:
    src, dst = engines
    with daemon(tmp_path, "target", dst, keys, extra=gate.mapped) as d, \
            source(tmp_path, program, src, options=gate.mapped) as (proc, out):
        done = migrate(proc.pid, d)
        assert done.returncode == 0, done.stderr
        assert re.search(r"migrated to 127\.0\.0\.1:\d+ in [\d.]+ s: downtime [\d.]+ ms, [\d.]+ MB sent", done.stdout)
        assert proc.wait(30) == 0
        pid = d.pid_of()
        gate.open()
        wait_for(lambda: "program exited with code 0" in d.log(), f"the program did not finish: {d.log()}")
        assert "moved to another machine" in (tmp_path / "source.err").read_text()
        assert_ran_exactly_once(reference_for(program, out, d.out), out, d.out)
        assert f"running as pid {pid}" in d.log()


def test_run_migrate_to_moves_the_program_after_a_while(tmp_path: Path, program: Path, gate: Gate,
                                                        keys: Keys) -> None:
    """``wasmig run --migrate-to`` (no `wasmig migrate` needed): the program moves after the
    given time, the summary goes to the source's stderr."""
    with daemon(tmp_path, "target", "interp", keys, extra=gate.mapped) as d:
        out, err = tmp_path / "source.out", tmp_path / "source.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(wasmig("run", "--engine", "wasmtime", "--migrate-to", d.address,
                                           "--migrate-peer-fingerprint", d.fingerprint, "--migrate-after", "0.3",
                                           *gate.mapped, str(program), *ARGS), stdout=o, stderr=e)
        try:
            assert proc.wait(60) == 0, err.read_text()
        finally:
            if proc.poll() is None:  # not moved: it would go on until the gate opens
                proc.kill()
        assert re.search(r"migrated to 127\.0\.0\.1:\d+ in [\d.]+ s: downtime", err.read_text())
        gate.open()
        wait_for(lambda: "program exited with code 0" in d.log(), f"the program did not finish: {d.log()}")
        assert_ran_exactly_once(reference_for(program, out, d.out), out, d.out)


def test_three_hops_between_two_daemons(tmp_path: Path, program: Path, gate: Gate, keys: Keys) -> None:
    """wasmtime -> interp -> wasmtime -> interp: each target's program is itself migratable. The
    program goes on until the test opens its gate (a file in a directory the source and both
    daemons map): a fixed 4 s run ended before the second hop once on a loaded CI machine."""
    with daemon(tmp_path, "a", "interp", keys, extra=gate.mapped) as a, \
            daemon(tmp_path, "b", "wasmtime", keys, extra=gate.mapped) as b, \
            source(tmp_path, program, "wasmtime", options=gate.mapped) as (proc, out):
        assert migrate(proc.pid, a).returncode == 0
        first = a.pid_of(1)
        wait_for(lambda: len(lines_of(a.out)) >= 3, "no progress on a")
        hop = migrate(first, b)
        assert hop.returncode == 0, hop.stderr
        second = b.pid_of(1)
        wait_for(lambda: len(lines_of(b.out)) >= 3, "no progress on b")
        hop = migrate(second, a)
        assert hop.returncode == 0, hop.stderr
        # back where it was: the pages a kept from the first hop (unchanged since) are not resent
        known = re.search(r"(\d+) pages sent, (\d+) already on the target", hop.stdout)
        assert known and int(known.group(2)) > 0, hop.stdout
        a.pid_of(2)
        gate.open()
        wait_for(lambda: a.log().count("program exited with code 0") == 1, f"not finished: {a.log()}")
        assert a.log().count("program migrated away") == 1 and b.log().count("program migrated away") == 1
        assert_ran_exactly_once(reference_for(program, out, a.out, b.out), out, a.out, b.out)


#: ``wasmig serve`` whose program's process is slow once it has answered the source's commit (as
#: a loaded machine may be): what the daemon does after that answer is not yet done when
#: `wasmig migrate` returns
SLOW_AFTER_THE_ANSWER = """
import time
from wasmig.migrate import target

mark = target._mark
def slow(state_dir, mid, what, *rest):
    if what == "started":
        time.sleep(3)
    mark(state_dir, mid, what, *rest)
target._mark = slow

from wasmig.cli import main
main()
"""


def test_the_moved_program_is_logged_and_migratable_when_migrate_returns(tmp_path: Path, program: Path,
                                                                          gate: Gate, keys: Keys) -> None:
    """The daemon logs the commit (with the pid) and serves the program's control socket before
    it answers the source: a script that reads the log or moves the program on as soon as
    `wasmig migrate` returns (the demo did) found neither there on a loaded machine."""
    slow = [sys.executable, "-c", SLOW_AFTER_THE_ANSWER]
    with daemon(tmp_path, "a", "wasmtime", keys, extra=gate.mapped, command=slow) as d, \
            source(tmp_path, program, "wasmtime", options=gate.mapped) as (proc, _):
        assert migrate(proc.pid, d).returncode == 0
        pids = re.findall(r"committed: running as pid (\d+)", d.log())  # at once: no waiting
        assert len(pids) == 1, d.log()
        from wasmig.migrate.control import socket_path

        assert socket_path(int(pids[0])).is_socket()
        gate.open()
        wait_for(lambda: "program exited with code 0" in d.log(), f"not finished: {d.log()}")


def test_an_untrusted_source_key_is_rejected_and_the_program_goes_on(tmp_path: Path, program: Path,
                                                                     gate: Gate, keys: Keys) -> None:
    trust_other = ["--trust-peer", keys.pub("a")]  # not the source's key
    with daemon(tmp_path, "target", "wasmtime", keys, trust=trust_other, extra=gate.mapped) as d, \
            source(tmp_path, program, "wasmtime", options=gate.mapped) as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1 and "migration failed, the program goes on" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        gate.open()
        assert proc.wait(60) == 0
        assert f"the client's key is {keys.fingerprint('source')}, none of the trusted keys" in d.log(), d.log()
        assert "committed" not in d.log()
        assert_ran_exactly_once(reference_for(program, out), out)
        assert d.out.read_text() == ""


@pytest.mark.parametrize("step", FAULT_STEPS)
def test_killing_the_target_at_a_step_leaves_the_source_running(tmp_path: Path, program: Path, gate: Gate,
                                                                keys: Keys, step: str) -> None:
    """Up to and including the commit's arrival (before the daemon records it): the source goes
    on (after "prepared" and "commit" it learns so by asking the daemon, whose asking aborts the
    migration for good), and the program never runs on the target. "resumed": the program had
    resumed there, held before its first host call. "decided": the daemon recorded the commit,
    then the process holding the program died before it started it; asked, the daemon says so,
    and the source goes on (nothing can start it there any more)."""
    with daemon(tmp_path, "target", "wasmtime", keys, fault=step, extra=gate.mapped) as d, \
            source(tmp_path, program, "wasmtime", options=gate.mapped) as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1, failed.stdout
        assert "the program goes on" in failed.stderr and "Traceback" not in failed.stderr
        gate.open()
        assert proc.wait(60) == 0  # it finished here
        assert f"killed after {step}" in d.log()
        if step in ("prepared", "commit"):
            assert "asked after it" in d.log() and ": aborted" in d.log()
        if step == "decided":
            assert "asked after it" in d.log() and ": committed, program lost" in d.log(), d.log()
            assert "never run there" in failed.stderr
        assert_ran_exactly_once(reference_for(program, out), out)
        assert d.out.read_text() == ""  # never ran there


def test_a_daemon_gone_after_the_commit_leaves_the_program_stopped_and_saved(
        tmp_path: Path, program: Path, gate: Gate, keys: Keys) -> None:
    """In doubt (commit sent, never confirmed, nobody left to ask): the program may run on the
    target, so the source must not resume it; it exits with 75 and keeps its state for a manual
    restore, which then finishes the program."""
    with daemon(tmp_path, "target", "wasmtime", keys, fault="daemon", extra=gate.mapped) as d, \
            source(tmp_path, program, "wasmtime", options=gate.mapped) as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1 and "did not confirm" in failed.stderr, failed.stderr
        assert proc.wait(60) == 75
        err = (tmp_path / "source.err").read_text()
        saved = re.search(r"its state is in (\S+\.snap)", err)
        assert saved, err
        assert "whole daemon killed" in d.log()
        gate.open()  # the restore finishes the round it stopped in, and ends
        restored = subprocess.run(wasmig("restore", "--module", str(program), *gate.mapped, saved.group(1)),
                                  capture_output=True, text=True, timeout=120)
        Path(saved.group(1)).unlink()
        assert restored.returncode == 0, restored.stderr
        (tmp_path / "restored.out").write_text(restored.stdout)
        assert_ran_exactly_once(reference_for(program, out, tmp_path / "restored.out"), out,
                                tmp_path / "restored.out")


def test_a_daemon_that_started_the_program_then_died_leaves_it_saved(
        tmp_path: Path, program: Path, gate: Gate, keys: Keys) -> None:
    """The commit recorded, the answer lost, and the process holding the program dies once the
    program counts as started: asked, the daemon says so ("died"), so the program may have acted
    there and must not go on at the source either: it is saved (exit 75, and `wasmig migrate`
    says it stopped). Here it really never ran, so the saved state finishes it exactly once."""
    with daemon(tmp_path, "target", "wasmtime", keys, fault="started", extra=gate.mapped) as d, \
            source(tmp_path, program, "wasmtime", options=gate.mapped) as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1 and "migration in doubt, the program stopped" in failed.stderr, failed.stderr
        assert "its process died" in failed.stderr and "Traceback" not in failed.stderr
        assert proc.wait(60) == 75
        assert "committed, program died" in d.log(), d.log()
        err = (tmp_path / "source.err").read_text()
        saved = re.search(r"its state is in (\S+\.snap)", err)
        assert saved and "the target started the program, then its process died" in err, err
        gate.open()  # the restore finishes the round it stopped in, and ends
        restored = subprocess.run(wasmig("restore", "--module", str(program), *gate.mapped, saved.group(1)),
                                  capture_output=True, text=True, timeout=120)
        Path(saved.group(1)).unlink()
        assert restored.returncode == 0, restored.stderr
        (tmp_path / "restored.out").write_text(restored.stdout)
        assert_ran_exactly_once(reference_for(program, out, tmp_path / "restored.out"), out,
                                tmp_path / "restored.out")
        assert d.out.read_text() == ""


def test_a_rewind_that_traps_on_the_target_leaves_the_program_at_the_source(tmp_path: Path, keys: Keys) -> None:
    """40,000 frames deep on the interpreter (which has room for 150,000), moved to a wasmtime
    daemon, whose stack does not hold them (plain wasmtime stops near 17,500 of these frames):
    the rewind traps before the program resumed there. The target says so before the commit, so
    the source keeps the program and finishes it; nothing ran on the target."""
    deep = compile_c(PROGRAMS / "deepwait.c")
    args = ["40000", "100", "50"]
    reference = reference_on("interp", deep, [*args[:2], "0"])
    with daemon(tmp_path, "target", "wasmtime", keys) as d, \
            source(tmp_path, deep, "interp", args, started="tick 2") as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1, failed.stdout
        assert "the program goes on" in failed.stderr and "Traceback" not in failed.stderr
        assert "trapped on this daemon's engine before it resumed (in its rewind)" in failed.stderr, failed.stderr
        assert "call stack exhausted" in failed.stderr
        assert proc.wait(60) == 0
        assert "aborted, nothing runs" in d.log() and "committed" not in d.log()
        assert out.read_text().splitlines() == reference
        assert d.out.read_text() == ""


def test_a_program_that_traps_after_the_commit_is_kept_by_the_target(tmp_path: Path, keys: Keys) -> None:
    """Moved from the interpreter to wasmtime while it ticks near the top of its stack, then it
    goes 40,000 frames deep, which wasmtime's stack does not hold: it traps there, after the
    commit, the source gone. The target keeps the state it arrived in and says where; restored
    (on the interpreter), it finishes: what it printed on the target comes again, nothing is lost."""
    deep = compile_c(PROGRAMS / "deepwait.c")
    args = ["40000", "0", "50", "60"]
    reference = reference_on("interp", deep, ["40000", "0", "0", "60"])
    with daemon(tmp_path, "target", "wasmtime", keys) as d, \
            source(tmp_path, deep, "interp", args, started="first 3") as (proc, out):
        moved = migrate(proc.pid, d)
        assert moved.returncode == 0, moved.stderr
        assert proc.wait(60) == 0
        wait_for(lambda: "program trapped" in d.log(), f"it did not trap on the target: {d.log()}")
        wait_for(lambda: "is kept in" in d.log() or "could not be kept" in d.log(), d.log())
        assert "program trapped: call stack exhausted" in d.log() and "\n    at " in d.log()
        kept = re.search(r"is kept in (\S+\.snap): `wasmig restore --module (\S+) ", d.log())
        assert kept, d.log()
        restored = subprocess.run(wasmig("restore", "--engine", "interp", "--module", kept.group(2), kept.group(1)),
                                  capture_output=True, text=True, timeout=300)
        assert restored.returncode == 0, restored.stderr
    on_target, again = d.out.read_text().splitlines(), restored.stdout.splitlines()
    assert again[:len(on_target)] == on_target  # done again from the migration's stop
    assert out.read_text().splitlines() + again == reference


#: a WASI command the compiled engine's instrumentation pass refuses (a funcref local), which the
#: interpreter runs: "tick NN" 40 times, 50 ms apart (poll_oneoff on a clock)
REFUSED_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "tick 00\n")
  (func (export "_start")
    (local $i i32) (local $f funcref)
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 8))
    (i32.store8 (i32.const 40) (i32.const 0))
    (i32.store (i32.const 48) (i32.const 1))
    (i64.store (i32.const 56) (i64.const 50000000))
    (loop $next
      (i32.store8 (i32.const 5) (i32.add (i32.const 48) (i32.div_u (local.get $i) (i32.const 10))))
      (i32.store8 (i32.const 6) (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
      (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 128)))
      (drop (call $poll (i32.const 32) (i32.const 96) (i32.const 1) (i32.const 128)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 40))))))
"""


def test_a_module_the_target_engine_refuses_stays_at_the_source(tmp_path: Path, keys: Keys) -> None:
    """The wasmtime daemon cannot make the module checkpointable (reference-typed locals): it
    says why when the module arrives, and the program goes on at the source, once."""
    if shutil.which("wat2wasm") is None:
        pytest.skip("wat2wasm missing")
    refused = tmp_path / "refused.wasm"
    subprocess.run(["wat2wasm", "-", "-o", str(refused)], input=REFUSED_WAT.encode(), check=True)
    with daemon(tmp_path, "target", "wasmtime", keys) as d, \
            source(tmp_path, refused, "interp", [], started="tick 02") as (proc, out):
        failed = migrate(proc.pid, d)
        assert failed.returncode == 1, failed.stdout
        assert "the program goes on" in failed.stderr and "reference-typed locals" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert proc.wait(60) == 0
        assert out.read_text().splitlines() == [f"tick {i:02d}" for i in range(40)]
        assert "aborted, nothing runs" in d.log() and d.out.read_text() == ""


def test_files_move_only_into_directories_the_daemon_maps(tmp_path: Path, keys: Keys) -> None:
    """A program with a preopened directory: a daemon that does not map it refuses (the program
    goes on at the source: never a host path the source names); one that maps it (--dir
    GUEST=HOST; here the same directory, as shared storage would give) re-opens the open files
    at their offsets and carries on, so they end byte for byte as the uninterrupted run's."""
    journal = compile_c(PROGRAMS / "journal.c")
    ref_dir, src_dir = tmp_path / "ref", tmp_path / "src"
    for d in (ref_dir, src_dir):
        d.mkdir()
    # 10 rounds at least, 30 ms apart, then on until /d/open exists: the test opens it once the
    # migration is over (a fixed 60 rounds, 1.8 s, had to outlast it)
    args = ["/d", "10", "30", "open"]

    def reference(*outputs: Path) -> list[str]:
        """The uninterrupted run of as many rounds as the gated one made (its files in ref_dir)."""
        return subprocess.run(wasmig("run", "--engine", "wasmtime", "--dir", f"{ref_dir}::/d", str(journal), "/d",
                                     str(rounds_in(*outputs))),
                              capture_output=True, check=True).stdout.decode().splitlines()

    @contextmanager
    def start(engine: str, out: Path) -> Iterator[subprocess.Popen[bytes]]:
        with open(out, "wb") as o:
            proc = subprocess.Popen(wasmig("run", "--migratable", "--engine", engine, "--dir", f"{src_dir}::/d",
                                           str(journal), *args), stdout=o, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: "round 3 " in out.read_text(), "the program did not start")
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    with daemon(tmp_path, "plain", "interp", keys) as unmapped:
        out = tmp_path / "first.out"
        with start("wasmtime", out) as proc:
            refused = migrate(proc.pid, unmapped)
            assert refused.returncode == 1 and "does not map" in refused.stderr and "'/d'" in refused.stderr, \
                refused.stderr
            (src_dir / "open").touch()
            assert proc.wait(60) == 0
        assert "does not map" in unmapped.log()
        assert_ran_exactly_once(reference(out), out)
    for f in src_dir.iterdir():
        f.unlink()
    daemon_dirs = ["--dir", f"{src_dir}::/d"]
    with daemon(tmp_path, "mapped", "wasmtime", keys, extra=daemon_dirs) as mapped:
        out = tmp_path / "second.out"
        with start("interp", out) as proc:
            moved = migrate(proc.pid, mapped)
            assert moved.returncode == 0, moved.stderr
            (src_dir / "open").touch()
            wait_for(lambda: "program exited with code 0" in mapped.log(), f"not finished: {mapped.log()}")
        assert_ran_exactly_once(reference(out, mapped.out), out, mapped.out)
    for name in ("journal.dat", "log.txt"):  # open, half written, when the program moved
        assert (src_dir / name).read_bytes() == (ref_dir / name).read_bytes(), name


# --- connections through the gateway ------------------------------------------------------------
@contextmanager
def gateway(tmp_path: Path, keys: Keys, command: list[str] | None = None) -> Iterator[tuple[str, str, Path]]:
    """(client address, control address, its log); ``command``: what runs ``wasmig gateway ...``
    (default ``python -m wasmig``)."""
    public, control = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    err = tmp_path / "gateway.err"
    with open(err, "wb") as e:
        proc = subprocess.Popen([*(command or wasmig()), "gateway", "--listen", public, "--control", control, "--key",
                                 str(keys.dir("gateway")), *trust_all(keys)],
                                stdout=subprocess.DEVNULL, stderr=e, start_new_session=True)
    try:
        wait_for(lambda: "programs on" in err.read_text(), f"the gateway did not start: {err.read_text()}")
        yield public, control, err
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_server_keeps_its_clients_through_three_migrations(tmp_path: Path, keys: Keys) -> None:
    """The key-value server behind the gateway, 8 clients sending numbered requests, moved three
    times between two daemons (wasmtime -> interp -> wasmtime -> interp): every request gets
    exactly one correct reply, in order, and no client sees an error."""
    server = compile_c(PROGRAMS / "kv_server.c")
    with gateway(tmp_path, keys) as (public, control, gw_log), \
            daemon(tmp_path, "a", "interp", keys, extra=["--gateway", control]) as a, \
            daemon(tmp_path, "b", "wasmtime", keys, extra=["--gateway", control]) as b:
        out = tmp_path / "source.out"
        with open(out, "wb") as o, open(tmp_path / "source.err", "wb") as e:
            proc = subprocess.Popen(wasmig("run", "--migratable", "--engine", "wasmtime", "--gateway", control,
                                           "--gateway-fingerprint", keys.pub("gateway"), str(server), "8"),
                                    stdout=o, stderr=e)
        try:
            wait_for(lambda: "program registered" in gw_log.read_text(), "the server did not register")
            clients = [Client(public, f"c{i}", 40) for i in range(8)]
            for c in clients:
                c.start()
            wait_for(lambda: all(c.sent >= 5 for c in clients), "the clients did not start")
            where = proc.pid  # the process the server runs in
            for target, nth in ((a, 1), (b, 1), (a, 2)):  # the n-th program that target received
                before = [c.sent for c in clients]
                done = migrate(where, target)
                assert done.returncode == 0, done.stderr
                where = target.pid_of(nth)
                wait_for(lambda b4=before: all(c.sent >= n + 5 for c, n in zip(clients, b4, strict=True)),
                         f"the clients made no progress after the move to {target.address}")
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(60)
            assert [c.error for c in clients] == [None] * 8
            wait_for(lambda: "program exited with code 0" in a.log(), f"the server did not finish: {a.log()}")
            assert proc.wait(30) == 0
            assert "served 8 clients, 8 keys" in a.out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
