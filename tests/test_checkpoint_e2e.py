"""Checkpoint and restore end to end, through the ``wasmig`` command line, in fresh processes.

The property every test here checks is the user's promise: a program checkpointed at any point
and restored in a new process behaves exactly like the uninterrupted run. Concretely, for the
deterministic C programs of ``tests/programs``: the checkpointing process's stdout followed by
the restored process's stdout (the same for stderr, minus wasmig's own "checkpoint written"
line) equals the uninterrupted run's, the final exit code is the same, and the files left in
the preopened directory are the same. stdin is one regular file shared by every process of a
run, so a restored program continues reading where the checkpointed one stopped, as it would in
``(wasmig run ... ; wasmig restore ...) < input``.

Where to stop is chosen by hypothesis: a step (stable point) or an instruction count in the
program's whole range (totals come from one in-process run through the Python API), single and
chained (a restored run checkpointed again). The examples are derandomized and never shrunk, so
CI is reproducible and bounded; every chosen k is printed (``pytest -s``) and named in failures.

Also here: checkpoints of a program blocked in a host call (stdin, half a line of stdin, sleep,
accept) via ``wasmig checkpoint PID``, and of a restored run; an open file re-opened at its
offset, under ``--dir`` and ``--on-file-change``; timer checkpoints; ``kill -9`` while snapshots
are being written; 1,000 corruptions of a snapshot, its pages and its module copy, each of which
must be a one-line error, and 200 crafted manifests with valid checksums; ``wasmig inspect`` and
``diff`` on real snapshots. Each bug these tests found was fixed and keeps its test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from tests.proc_waits import wait_blocked
from tests.test_wasi_programs import FILTER_INPUT, SANDBOX, data_tree, empty_sandbox, escape_tree
from tests.wasi_harness import REPO, DirSpec, program, snapshot
from wasmig import toolchain

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV),
    reason="ziglang is not installed (pip install ziglang)",
)

#: Every subprocess gets a hard limit; nothing here should take more than a few seconds.
TIMEOUT = 120.0
CHECKPOINT_LINE = re.compile(rb"wasmig: checkpoint written to (.+); exiting\n\Z")
TRAP_EXIT_CODE = 134

#: CI-friendly hypothesis settings: a fixed sequence of examples, no example database, and no
#: shrinking (each example costs a few subprocesses; a failure names its k values instead).
#: ``WASMIG_E2E_EXAMPLES=50`` for a longer hunt (other draws than CI's: the sequence depends on it).
E2E = settings(
    max_examples=int(os.environ.get("WASMIG_E2E_EXAMPLES", "4")),
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- running wasmig ------------------------------------------------------------------------------
_runtime_dirs: list[Path] = []


def _default_runtime_dir() -> Path:
    """Where runs of this test process announce themselves to ``wasmig checkpoint PID`` unless a
    test says otherwise: private, so killed runs leave no stale status files in the shared default."""
    if not _runtime_dirs:
        _runtime_dirs.append(Path(tempfile.mkdtemp(prefix="wasmig-e2e-run-")))
    return _runtime_dirs[0]


def _env(runtime_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["WASMIG_RUNTIME_DIR"] = str(runtime_dir or _default_runtime_dir())
    # where a run without --checkpoint-dir writes the checkpoints it is asked for: not the user's home
    env["XDG_STATE_HOME"] = str(Path(env["WASMIG_RUNTIME_DIR"]) / "state")
    return env


def wasmig(
    args: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    stdin: bytes | IO[bytes] = b"",
    timeout: float = TIMEOUT,
    runtime_dir: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m wasmig ARGS`` from this checkout. ``stdin`` is bytes, or an open file (shared offset)."""
    cmd = [sys.executable, "-m", "wasmig", *map(str, args)]
    extra: dict[str, Any] = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    return subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=cwd, env=_env(runtime_dir), **extra)


def split_checkpoint_line(stderr: bytes) -> tuple[bytes, Path | None]:
    """(the guest's stderr, the snapshot path) when a run ended with ``--checkpoint-then exit``."""
    m = CHECKPOINT_LINE.search(stderr)
    if m is None:
        return stderr, None
    return stderr[: m.start()], Path(m.group(1).decode())


def _show(data: bytes, limit: int = 1500) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more]"


# --- the programs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A deterministic program run: what ``wasmig run`` gets, and how its preopened tree starts."""

    name: str
    program: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    stdin: bytes = b""
    dirs: tuple[DirSpec, ...] = ()
    prepare: Callable[[Path], None] | None = None

    @property
    def wasm(self) -> Path:
        return program(self.program)

    def options(self, tree: Path) -> list[str]:
        opts: list[str] = []
        for d in self.dirs:
            opts += ["--dir", d.host if d.guest is None else f"{tree / d.host}::{d.guest}"]
        for k, v in self.env:
            opts += ["--env", f"{k}={v}"]
        return opts


CASES = [
    Case("fileops", "fileops", ("/sandbox",), dirs=(SANDBOX,), prepare=empty_sandbox),
    Case("listdir", "listdir", ("data",), dirs=(DirSpec("data"),), prepare=data_tree),
    Case(
        "args_env",
        "args_env",
        ("one", "", "two words", "ünïcödé 😀", "--dir", "fail"),
        env=(("GREETING", "hello there"), ("EMPTY", ""), ("UNICODE", "ñ😀")),
        dirs=(SANDBOX,),
        prepare=empty_sandbox,
    ),
    Case("filter", "filter", ("> ",), stdin=FILTER_INPUT),
    Case("exitcode", "exitcode", ("42", "exit")),
    Case("checksum", "checksum"),
    Case("trap", "trap", ("divzero",)),
    Case("sandbox_escape", "sandbox_escape", ("/sandbox",), dirs=(SANDBOX,), prepare=escape_tree),
    Case("clockrand", "clockrand"),
    Case("hello", "hello", ("x", "two words"), env=(("WASMIG_GREETING", "hi"),), stdin=b"some input\nmore\n"),
]
CASE_IDS = [c.name for c in CASES]


@dataclass
class Outcome:
    """What a (possibly checkpointed and restored) run did, all processes together."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    files: dict[str, tuple]
    snapshots: list[Path] = field(default_factory=list)  # one per checkpointing stage
    log: list[str] = field(default_factory=list)  # what each process was and did, for failure messages


class Run:
    """One run of a case in a fresh work directory: its own copy of the tree, stdin file and checkpoint
    dir. ``start`` runs ``wasmig run``, each ``resume`` a ``wasmig restore`` of the checkpoint dir's
    latest snapshot, all sharing one stdin file; ``finish`` gives the combined outcome."""

    def __init__(self, case: Case, work: Path) -> None:
        self.case = case
        self.work = work
        self.tree = work / "tree"
        self.tree.mkdir(parents=True)
        if case.prepare is not None:
            case.prepare(self.tree)
        self.ck = work / "ck"
        stdin_path = work / "stdin"
        stdin_path.write_bytes(case.stdin)
        self.stdin = open(stdin_path, "rb")  # noqa: SIM115 - closed by finish()
        self.out = Outcome(0, b"", b"", {})
        self.stopped = False  # the last process wrote a snapshot and exited

    def _stage(self, cmd: list[str | Path]) -> Path | None:
        assert not self.out.log or self.stopped, "nothing to restore: the previous process did not checkpoint"
        proc = wasmig(cmd, cwd=self.tree, stdin=self.stdin)
        err, snap = split_checkpoint_line(proc.stderr)
        self.out.log.append(f"$ wasmig {' '.join(map(str, cmd))}\n  -> exit {proc.returncode}, snapshot {snap}, "
                            f"stderr:\n{_show(proc.stderr)}")
        self.out.stdout += proc.stdout
        self.out.stderr += err
        self.out.exit_code = proc.returncode
        self.stopped = snap is not None
        if snap is not None:
            assert proc.returncode == 0, "\n".join(self.out.log)
            snap = snap if snap.is_absolute() else self.tree / snap
            self.out.snapshots.append(snap)
        return snap

    def start(self, opts: Sequence[str]) -> Path | None:
        return self._stage(["run", *self.case.options(self.tree), *opts, self.case.wasm, *self.case.args])

    def resume(self, opts: Sequence[str] = ()) -> Path | None:
        return self._stage(["restore", *opts, self.ck])

    def checkpoint_opts(self, *more: str) -> list[str]:
        return ["--checkpoint-dir", str(self.ck), "--checkpoint-then", "exit", *more]

    def finish(self) -> Outcome:
        self.stdin.close()
        self.out.files = snapshot(self.tree)
        return self.out

    def stages(self, run_opts: Sequence[str], restores: Sequence[Sequence[str]] = ()) -> Outcome:
        """``start(run_opts)``, then ``resume(opts)`` for each of ``restores`` while there is a snapshot."""
        self.start(run_opts)
        for opts in restores:
            if not self.stopped:
                break
            self.resume(opts)
        return self.finish()


def _work(factory: pytest.TempPathFactory, name: str) -> Path:
    return factory.mktemp(re.sub(r"\W", "_", name))


_references: dict[str, Outcome] = {}


def reference(case: Case, factory: pytest.TempPathFactory) -> Outcome:
    """The uninterrupted ``wasmig run`` (once per case and process)."""
    if case.name not in _references:
        ref = Run(case, _work(factory, f"ref-{case.name}")).stages([])
        assert not ref.snapshots
        if case.program == "trap":
            assert ref.exit_code == TRAP_EXIT_CODE and b"wasm backtrace:" in ref.stderr, ref.stderr
        else:
            assert ref.exit_code != TRAP_EXIT_CODE, ref.stderr
        _references[case.name] = ref
    return _references[case.name]


@dataclass(frozen=True)
class Totals:
    steps: int
    instructions: int


_totals: dict[str, Totals] = {}


def totals(case: Case, factory: pytest.TempPathFactory) -> Totals:
    """Stable points and instructions of a whole run, through the Python API (in process, counting)."""
    if case.name not in _totals:
        from wasmig.errors import Trap
        from wasmig.module import Module
        from wasmig.session.command import instantiate_with_wasi
        from wasmig.wasi.preview1 import ProcExit, Wasi

        run = Run(case, _work(factory, f"totals-{case.name}"))
        preopens = [(str(run.tree / d.host), d.guest_name) for d in case.dirs]
        out, err = io.BytesIO(), io.BytesIO()
        wasi = Wasi([str(case.wasm), *case.args], dict(case.env), preopens=preopens, stdin=case.stdin, stdout=out,
                    stderr=err)
        try:
            inst = instantiate_with_wasi(Module.from_file(case.wasm), wasi)
            inst.machine.counting = True
            try:
                inst.invoke("_start")
            except (ProcExit, Trap):
                pass
            assert inst.machine.instructions is not None
            _totals[case.name] = Totals(inst.machine.steps, inst.machine.instructions)
        finally:
            wasi.close()
        # the API run is the same program run: same output as the CLI's (a trap's report aside)
        assert out.getvalue() == reference(case, factory).stdout
    return _totals[case.name]


def _load(path: Path) -> Any:
    from wasmig.snapshot.store import load_snapshot

    return load_snapshot(path)


def assert_same(expected: Outcome, got: Outcome, what: str) -> None:
    problems = []
    if expected.exit_code != got.exit_code:
        problems.append(f"exit code: uninterrupted {expected.exit_code}, checkpointed+restored {got.exit_code}")
    for stream in ("stdout", "stderr"):
        a, b = getattr(expected, stream), getattr(got, stream)
        if a != b:
            i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            problems.append(f"{stream} differs from byte {i}: uninterrupted ...{_show(a[max(0, i - 80):i + 200])!r}"
                            f"\n  checkpointed+restored ...{_show(b[max(0, i - 80):i + 200])!r}")
    if expected.files != got.files:
        for path in sorted(set(expected.files) | set(got.files)):
            if expected.files.get(path) != got.files.get(path):
                problems.append(f"file {path}: uninterrupted {expected.files.get(path)!r}, "
                                f"checkpointed+restored {got.files.get(path)!r}")
    assert not problems, f"{what}:\n" + "\n".join(problems) + "\n--- processes:\n" + "\n".join(got.log)


def anywhere(lo: int, hi: int) -> st.SearchStrategy[int]:
    """A k in [lo, hi]: hypothesis's integers favour the low end and the edges (k = 1 comes first),
    so half of the draws are uniform over the whole run instead."""
    return st.one_of(st.integers(lo, hi), st.randoms(use_true_random=False).map(lambda r: r.randint(lo, hi)))


def _say(text: str) -> None:
    note(text)
    print(f"[e2e] {text}")


# --- 1. checkpoint anywhere, restore in a fresh process -------------------------------------------
#: (checkpointing engine, restoring engine): the cross-engine matrix
ENGINE_PAIRS = [(a, b) for a in ("interp", "wasmtime") for b in ("interp", "wasmtime")]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@E2E
@given(data=st.data())
def test_checkpoint_at_step_then_restore(case: Case, data: st.DataObject,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    total = totals(case, tmp_path_factory).steps
    k = data.draw(anywhere(1, total), label="k")
    engine_a, engine_b = data.draw(st.sampled_from(ENGINE_PAIRS), label="engines")
    what = f"{case.name}: checkpoint at step {k} of {total} on {engine_a}, restore on {engine_b}"
    _say(what)
    run = Run(case, _work(tmp_path_factory, f"step-{case.name}-{k}"))
    got = run.stages(["--engine", engine_a, "--checkpoint-dir", str(run.ck), "--checkpoint-at-step", str(k),
                      "--checkpoint-then", "exit"], [["--engine", engine_b]])
    assert len(got.snapshots) == 1, f"{what}: no snapshot at a step within the run\n" + "\n".join(got.log)
    snap = _load(got.snapshots[0])
    assert (snap.steps, snap.stable) == (k, True), f"{what}: the snapshot is at step {snap.steps} ({snap.point})"
    assert_same(reference(case, tmp_path_factory), got, what)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@E2E
@given(data=st.data())
def test_checkpoint_at_instruction_then_restore(case: Case, data: st.DataObject,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    total = totals(case, tmp_path_factory).instructions
    # 0 ("before the first instruction") is accepted by the CLI but never stops: see
    # test_checkpoint_at_instruction_zero below.
    k = data.draw(anywhere(1, total), label="k")
    stable_only = data.draw(st.booleans(), label="stable_only")
    what = f"{case.name}: checkpoint at instruction {k} of {total}{' (--stable-only)' if stable_only else ''}, restore"
    _say(what)
    run = Run(case, _work(tmp_path_factory, f"instr-{case.name}-{k}"))
    opts = ["--checkpoint-dir", str(run.ck), "--checkpoint-at-instruction", str(k), "--checkpoint-then", "exit"]
    got = run.stages([*opts, "--stable-only"] if stable_only else opts, [[]])
    if got.snapshots:
        snap = _load(got.snapshots[0])
        if stable_only:  # advanced uncounted to the next stable point: the count is dropped (None)
            assert snap.stable and (snap.instructions is None or snap.instructions >= k), (
                f"{what}: --stable-only snapshot at {snap.point}, instruction {snap.instructions}")
        else:
            assert (snap.point, snap.instructions) == ("instruction", k), (
                f"{what}: snapshot at {snap.point}, instruction {snap.instructions}")
    else:
        # After the last instruction there is nothing left to stop before; with --stable-only
        # there may be no stable point left after k. Either way the run simply finished.
        assert k == total or stable_only, f"{what}: no snapshot within the run\n" + "\n".join(got.log)
    assert_same(reference(case, tmp_path_factory), got, what)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(E2E, max_examples=max(1, E2E.max_examples * 3 // 4))
@given(data=st.data())
def test_chained_checkpoints(case: Case, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Checkpoint, restore and checkpoint the restored run further on, restore that: one program run."""
    t = totals(case, tmp_path_factory)
    first, second = data.draw(st.sampled_from([("step", "step"), ("instruction", "instruction"),
                                               ("instruction", "step")]), label="kinds")
    # instruction stops end one before the total: after the last instruction there is nothing to stop at
    limit = {"step": t.steps, "instruction": t.instructions - 1}
    k1 = data.draw(anywhere(1, limit[first] - 1), label="k1")
    run = Run(case, _work(tmp_path_factory, f"chain-{case.name}-{k1}"))
    path = run.start(run.checkpoint_opts(f"--checkpoint-at-{first}", str(k1)))
    assert path is not None, f"{case.name}: no snapshot at {first} {k1}\n" + "\n".join(run.out.log)
    s1 = _load(path)
    # k2 counts from the program's start too, so it must lie beyond where the first snapshot is
    low = 1 + (s1.steps if second == "step" else s1.instructions)
    if low > limit[second]:
        run.resume()
        assert_same(reference(case, tmp_path_factory), run.finish(), f"{case.name}: {first} {k1}, nothing after")
        return
    k2 = data.draw(anywhere(low, limit[second]), label="k2")
    what = f"{case.name}: checkpoint at {first} {k1}, restore, checkpoint at {second} {k2}, restore"
    _say(what)
    path2 = run.resume(run.checkpoint_opts(f"--checkpoint-at-{second}", str(k2)))
    assert path2 is not None, f"{what}: the restored run wrote no snapshot\n" + "\n".join(run.out.log)
    s2 = _load(path2)
    if second == "step":
        assert s2.steps == k2, f"{what}: second snapshot at step {s2.steps}"
    else:
        assert s2.instructions == k2, f"{what}: second snapshot at instruction {s2.instructions}"
    run.resume()
    assert_same(reference(case, tmp_path_factory), run.finish(), what)


def test_checkpoint_at_instruction_zero(tmp_path: Path) -> None:
    """``--checkpoint-at-instruction 0`` means before the first instruction: an empty-output snapshot."""
    case = next(c for c in CASES if c.name == "exitcode")
    run = Run(case, tmp_path)
    got = run.stages(run.checkpoint_opts("--checkpoint-at-instruction", "0"), [[]])
    assert got.snapshots, "no snapshot at instruction 0:\n" + "\n".join(got.log)
    assert _load(got.snapshots[0]).instructions == 0


def _instructions_at_step(case: Case, step: int) -> int:
    """Instructions a counted run of ``case`` (no preopens) has executed when it reaches stable point ``step``."""
    from wasmig.interp.machine import Suspended
    from wasmig.module import Module
    from wasmig.session.command import instantiate_with_wasi
    from wasmig.wasi.preview1 import Wasi

    wasi = Wasi([str(case.wasm), *case.args], stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        inst = instantiate_with_wasi(Module.from_file(case.wasm), wasi)
        inst.machine.counting = True
        inst.machine.stop_at_step = step
        with pytest.raises(Suspended):
            inst.invoke("_start")
        assert inst.machine.steps == step and inst.machine.instructions is not None
        return inst.machine.instructions
    finally:
        wasi.close()


def test_instruction_stop_after_a_step_snapshot_is_not_mislabelled(tmp_path_factory: pytest.TempPathFactory) -> None:
    case = next(c for c in CASES if c.name == "checksum")
    t = totals(case, tmp_path_factory)
    run = Run(case, _work(tmp_path_factory, "mislabel"))
    k1, k2 = t.steps // 4, t.instructions // 2
    assert run.start(run.checkpoint_opts("--checkpoint-at-step", str(k1))) is not None
    assert _load(run.ck).instructions is None  # the first run did not count
    path = run.resume(run.checkpoint_opts("--checkpoint-at-instruction", str(k2)))
    run.finish()
    if path is None:
        return  # refusing, or not stopping, is an acceptable answer; a wrong count is not
    s2 = _load(path)
    lo, hi = _instructions_at_step(case, s2.steps), _instructions_at_step(case, s2.steps + 1)
    assert s2.instructions is None or lo <= s2.instructions <= hi, (
        f"the second snapshot claims {s2.instructions} instructions since the start; at its step {s2.steps} "
        f"the program has executed between {lo} and {hi}")


# --- 2. blocked in a host call, timer checkpoints ---------------------------------------------------
#: (run on, restore on) for the blocked-call tests: both directions across engines, and wasmtime alone
CROSS_PAIRS = [("interp", "wasmtime"), ("wasmtime", "interp"), ("wasmtime", "wasmtime")]

class Proc:
    """A ``wasmig run`` in the background with its stdout read incrementally (never blocking the test)."""

    def __init__(self, args: Sequence[str | Path], runtime_dir: Path, cwd: Path | None = None) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "wasmig", *map(str, args)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=_env(runtime_dir))
        self.out = b""

    def wait_for_output(self, needle: bytes, timeout: float = 60.0) -> None:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} from the program within {timeout} s; got {self.out!r}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, f"the program ended before printing {needle!r}; got {self.out!r}"
                self.out += chunk

    def finish(self, stdin: bytes = b"", timeout: float = 60.0) -> tuple[int, bytes, bytes]:
        out, err = self.p.communicate(stdin, timeout=timeout)
        return self.p.returncode, self.out + out, err

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.communicate(timeout=30)


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runtime"
    d.mkdir()
    return d


@contextlib.contextmanager
def background(args: Sequence[str | Path], runtime_dir: Path) -> Iterator[Proc]:
    proc = Proc(args, runtime_dir)
    try:
        yield proc
    finally:
        proc.kill()


def checkpoint_pid(pid: int, runtime_dir: Path) -> Path:
    cp = wasmig(["checkpoint", "--timeout", "60", str(pid)], runtime_dir=runtime_dir, timeout=90)
    assert cp.returncode == 0 and cp.stderr == b"", f"wasmig checkpoint failed: {cp.stderr!r}"
    path = Path(cp.stdout.decode().strip())
    assert path.is_file(), f"wasmig checkpoint printed {cp.stdout!r}, not a snapshot file"
    return path


def _wait_for_status(pid: int, runtime_dir: Path, timeout: float = 60.0) -> None:
    """Until a ``wasmig run``/``restore --checkpoint-dir`` has announced itself to ``wasmig checkpoint``."""
    deadline = time.monotonic() + timeout
    while not (runtime_dir / f"{pid}.json").exists():
        assert time.monotonic() < deadline, f"process {pid} never wrote its status file"
        time.sleep(0.05)


@pytest.mark.parametrize(("engine_a", "engine_b"), CROSS_PAIRS)
def test_checkpoint_while_blocked_reading_stdin(tmp_path: Path, runtime_dir: Path, engine_a: str,
                                                engine_b: str) -> None:
    """Blocked in a read of stdin on engine A, checkpointed; restored on engine B, blocked there
    again and checkpointed again; both snapshots finish on either engine. With --count-steps (the
    deterministic variant on wasmtime) both snapshots carry the same step number."""
    wasm = program("stdin_wait")
    full = wasmig(["run", wasm], stdin=b"hello\n")
    assert (full.returncode, full.stdout) == (0, b"name? hello, hello (5 bytes)\n"), full.stderr
    ck = tmp_path / "ck"
    with background(["run", "--engine", engine_a, "--count-steps", "--checkpoint-dir", ck, wasm],
                    runtime_dir) as proc:
        proc.wait_for_output(b"name? ")
        wait_blocked(proc.p.pid)  # well inside the read by now
        path = checkpoint_pid(proc.p.pid, runtime_dir)
        assert proc.p.poll() is None, "the checkpointed program did not keep running"
        # the original carries on after its snapshot (--checkpoint-then continue): feed it a line
        code, out, err = proc.finish(b"world\n")
        assert (code, out, err) == (0, b"name? hello, world (5 bytes)\n", b"stdin_wait: done\n")
    snap = _load(path)
    assert snap.point == "import_call", f"a checkpoint while blocked should re-execute the read, got {snap.point}"
    # a restored run blocks in the same read again, and can itself be checkpointed there
    with background(["restore", "--engine", engine_b, "--count-steps", "--checkpoint-dir", ck, ck],
                    runtime_dir) as again:
        _wait_for_status(again.p.pid, runtime_dir)
        wait_blocked(again.p.pid)
        path2 = checkpoint_pid(again.p.pid, runtime_dir)
        assert path2 != path and again.p.poll() is None
    assert snap.steps is not None
    assert _load(path2).point == "import_call" and _load(path2).steps == snap.steps
    for target, engine in ((path, engine_b), (ck, engine_a)):  # the first snapshot, the restored run's
        restored = wasmig(["restore", "--engine", engine, target], stdin=b"hello\n")
        assert restored.returncode == 0, restored.stderr
        assert b"name? " + restored.stdout == full.stdout
        assert restored.stderr == full.stderr


def _wait_until_pipe_drained(fd: int, timeout: float = 60.0) -> None:
    """Until the reader has taken everything written to the pipe (FIONREAD works on either end on Linux)."""
    import fcntl
    import struct
    import termios

    deadline = time.monotonic() + timeout
    while struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]:
        assert time.monotonic() < deadline, "the program does not read its stdin"
        time.sleep(0.02)


def test_checkpoint_between_pieces_of_a_line_of_stdin(tmp_path: Path, runtime_dir: Path) -> None:
    """Half a line read (in the guest's stdio buffer), blocked for the rest: the restored program
    gets the other half from its own stdin and puts the line together, as if never interrupted."""
    wasm = program("filter")
    first, rest = b"the quick ", b"brown fox\nsecond line\n"
    full = wasmig(["run", wasm], stdin=first + rest)
    assert full.returncode == 0 and b"THE QUICK BROWN FOX" in full.stdout
    ck = tmp_path / "ck"
    with background(["run", "--checkpoint-dir", ck, wasm], runtime_dir) as proc:
        _wait_for_status(proc.p.pid, runtime_dir)
        assert proc.p.stdin is not None
        proc.p.stdin.write(first)
        proc.p.stdin.flush()
        _wait_until_pipe_drained(proc.p.stdin.fileno())
        wait_blocked(proc.p.pid)  # and blocked again, waiting for the newline
        path = checkpoint_pid(proc.p.pid, runtime_dir)
    snap = _load(path)
    assert snap.point == "import_call" and first in snap.memories[0].data, "the half line was not read yet"
    restored = wasmig(["restore", ck], stdin=rest)
    assert (restored.returncode, restored.stdout, restored.stderr) == (0, full.stdout, full.stderr)


FILE_TEXT = b"first line\nsecond line\nthird\n"


def test_open_file_is_reopened_at_its_offset(tmp_path: Path, runtime_dir: Path) -> None:
    """A file open across the checkpoint: re-opened by path, at its offset, beneath a preopen that
    ``--dir`` may move; refused (or warned about, or ignored) when it changed in between."""
    wasm = program("stdin_wait")
    args = [wasm, "file", "/box/data.txt"]
    boxes = tmp_path / "boxes"
    pristine = boxes / "pristine"
    pristine.mkdir(parents=True)
    (pristine / "data.txt").write_bytes(FILE_TEXT)

    def box(name: str) -> Path:  # copies keep the mtime (copy2), as rsync -t or scp -p would
        shutil.copytree(pristine, boxes / name)
        return boxes / name

    full_box = box("full")
    full = wasmig(["run", "--dir", f"{full_box}::/box", *args], stdin=b"bob\n")
    assert full.returncode == 0 and b"rest 18: [second line\nthird\n]" in full.stdout, full.stdout
    expected_file = (full_box / "data.txt").read_bytes()
    assert expected_file == FILE_TEXT + b"appended for bob\n"

    ck = tmp_path / "ck"
    with background(["run", "--dir", f"{pristine}::/box", "--checkpoint-dir", ck, *args], runtime_dir) as proc:
        proc.wait_for_output(b"name? ")
        wait_blocked(proc.p.pid)
        path = checkpoint_pid(proc.p.pid, runtime_dir)
        prefix = proc.out
    [entry] = [fd for fd in _load(path).wasi.fds if fd.kind == "file"]
    assert (entry.guest_path, entry.relpath, entry.offset) == ("/box/data.txt", "data.txt", 11), entry

    # moved to another directory (--dir), unchanged: continues at offset 11
    moved = box("moved")
    r = wasmig(["restore", "--dir", f"{moved}::/box", ck], stdin=b"bob\n")
    assert (r.returncode, prefix + r.stdout, r.stderr) == (0, full.stdout, b"")
    assert (moved / "data.txt").read_bytes() == expected_file

    # changed since the checkpoint: refused by default, in one line naming the file
    for policy in ("fail", "warn", "ignore"):
        changed = box(f"changed-{policy}")
        with open(changed / "data.txt", "ab") as f:
            f.write(b"more\n")
        opts = [] if policy == "fail" else ["--on-file-change", policy]
        r = wasmig(["restore", *opts, "--dir", f"{changed}::/box", ck], stdin=b"bob\n")
        err = r.stderr.decode()
        if policy == "fail":
            _assert_one_line_error(r, "changed file")
            assert "data.txt" in err and "changed" in err, err
            assert (changed / "data.txt").read_bytes() == FILE_TEXT + b"more\n", "a refused restore wrote the file"
            continue
        assert r.returncode == 0, err
        assert r.stdout.startswith(b"hello, bob (3 bytes)\nrest 23: [second line\nthird\nmore\n]"), r.stdout
        if policy == "warn":
            assert len(err.splitlines()) == 1 and err.startswith("wasmig: warning:") and "data.txt" in err, err
        else:
            assert err == "", err

    # and in place, where it was
    r = wasmig(["restore", ck], stdin=b"bob\n")
    assert (r.returncode, prefix + r.stdout, r.stderr) == (0, full.stdout, b"")
    assert (pristine / "data.txt").read_bytes() == expected_file


def test_checkpoint_command_errors(tmp_path: Path, runtime_dir: Path) -> None:
    """``wasmig checkpoint PID`` on something that cannot checkpoint: one line, the program unharmed."""
    wasm = program("stdin_wait")
    with background(["run", "--plain", wasm], runtime_dir) as proc:
        proc.wait_for_output(b"name? ")
        r = wasmig(["checkpoint", "--timeout", "60", str(proc.p.pid)], runtime_dir=runtime_dir, timeout=90)
        _assert_one_line_error(r, "a --plain run")
        assert b"--plain" in r.stderr, r.stderr
        code, out, _ = proc.finish(b"still here\n")
        assert (code, out) == (0, b"name? hello, still here (10 bytes)\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    _assert_one_line_error(wasmig(["checkpoint", str(dead.pid)], runtime_dir=runtime_dir), "a finished process")


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_checkpoint_pid_of_a_run_without_checkpoint_options(tmp_path: Path, runtime_dir: Path, engine: str) -> None:
    """Any run can be checkpointed on request (issue 18 item 6): ``wasmig run PROGRAM`` with no
    checkpoint option writes the snapshot ``wasmig checkpoint PID`` asks for into its default
    directory under ``$XDG_STATE_HOME``, goes on, and the snapshot restores to the same output.
    On wasmtime that is the instrumented variant, run by default; and it takes migrations too
    (its control socket exists)."""
    wasm = program("stdin_wait")
    full = wasmig(["run", "--engine", engine, wasm], stdin=b"hello\n", runtime_dir=runtime_dir)
    assert full.returncode == 0, full.stderr
    with background(["run", "--engine", engine, wasm], runtime_dir) as proc:
        proc.wait_for_output(b"name? ")
        wait_blocked(proc.p.pid)
        path = checkpoint_pid(proc.p.pid, runtime_dir)
        assert (runtime_dir / f"{proc.p.pid}.sock").exists()  # wasmig migrate PID's control socket
        code, out, err = proc.finish(b"world\n")
        assert (code, out, err) == (0, b"name? hello, world (5 bytes)\n", b"stdin_wait: done\n")
    checkpoints = runtime_dir / "state" / "wasmig" / "checkpoints"
    [ck] = list(checkpoints.iterdir())
    assert re.fullmatch(rf"{wasm.stem}-{proc.p.pid}-\d+", ck.name) and path.parent.parent == ck, ck
    assert (ck.stat().st_mode & 0o777) == 0o700
    restored = wasmig(["restore", "--engine", engine, ck], stdin=b"hello\n", runtime_dir=runtime_dir)
    assert restored.returncode == 0, restored.stderr
    assert (b"name? " + restored.stdout, restored.stderr) == (full.stdout, full.stderr)


def test_checkpoint_pid_of_a_run_that_exits_after_it(tmp_path: Path, runtime_dir: Path) -> None:
    wasm = program("stdin_wait")
    ck = tmp_path / "ck"
    with background(["run", "--checkpoint-dir", ck, "--checkpoint-then", "exit", wasm], runtime_dir) as proc:
        proc.wait_for_output(b"name? ")
        wait_blocked(proc.p.pid)
        cp = wasmig(["checkpoint", "--timeout", "60", str(proc.p.pid)], runtime_dir=runtime_dir, timeout=90)
        code, _, err = proc.finish()
    assert code == 0 and b"checkpoint written to" in err, err  # the run did write one, and exited
    written = sorted((ck / "snapshots").iterdir())
    assert len(written) == 1
    assert (cp.returncode, cp.stdout.decode().strip()) == (0, str(written[0])), cp.stderr


def _bigmem_args(mib: int, rounds: int, stride: int) -> list[str]:
    return [str(mib), str(rounds), str(stride)]


#: bigmem arguments for a run that computes for a few seconds on each engine (wasmtime is ~100x faster),
#: printing little: an unread stdout pipe that fills up blocks the guest in a write no checkpoint interrupts.
#: The interpreter's compiled segments run bigmem's loop ~7x faster than its dispatch loop did: 4 MiB, 24
#: rounds (about 2 s of CPU) where 1 MiB, 12 rounds once took 1 s and now 0.2 s, too short to be caught running
COMPUTING = {"interp": _bigmem_args(4, 24, 32), "wasmtime": _bigmem_args(16, 600, 8)}
#: flags that make a run count steps on each engine (wasmtime's deterministic variant), for the tests
#: that check a snapshot against a fresh run stopped at the snapshot's step;
#: test_fast_variant_snapshots_have_no_step_and_restore_on_both_engines covers the default, fast one
STEP_COUNTING = {"interp": [], "wasmtime": ["--count-steps"]}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_checkpoint_pid_of_a_computing_program(tmp_path: Path, runtime_dir: Path, engine: str) -> None:
    """On demand while computing (not blocked): at the next stable point; the run goes on unchanged."""
    wasm = program("bigmem")
    args = COMPUTING[engine]
    full = wasmig(["run", wasm, *args])
    ck = tmp_path / "ck"
    with background(["run", "--engine", engine, *STEP_COUNTING[engine], "--checkpoint-dir", ck, wasm, *args],
                    runtime_dir) as proc:
        proc.wait_for_output(b"round 2 ")
        paths = [checkpoint_pid(proc.p.pid, runtime_dir)]
        proc.wait_for_output(b"round 6 ")
        paths.append(checkpoint_pid(proc.p.pid, runtime_dir))
        code, out, err = proc.finish()
        assert (code, out, err) == (0, full.stdout, b"")
    for path in paths:
        snap = _load(path)
        assert snap.stable, snap.point
        restored = wasmig(["restore", path])
        prefix, _ = _prefix_at_step(wasm, args, snap.steps, tmp_path)
        assert (restored.returncode, prefix + restored.stdout) == (0, full.stdout), restored.stderr


def test_a_loop_that_stores_nothing_still_sees_a_checkpoint_request(tmp_path: Path, runtime_dir: Path) -> None:
    """spin's inner loop stores nothing, and a poll dominates its header (the outer loop's, and
    the function's entry poll before that). With a plain load of the poll byte Cranelift reused
    the dominating poll's value, so the request was seen only when the inner loop ended (after
    a second here, after the whole call for a loop entered once). The poll is an atomic load:
    the stop is in the inner loop, in the first of the two rounds."""
    from wasmig import Module

    wasm = program("spin")
    args = ["2", "3000000000"]  # two rounds of a second or more each on wasmtime
    module = Module.from_file(wasm)
    n_imported = module.ir.num_imported_funcs()
    spin = next(i for i in range(n_imported, n_imported + len(module.ir.funcs))
                if module.ir.func_name(i) == "spin")
    body = module.ir.funcs[spin - n_imported].body
    loops = [ins.offset for ins in body if ins.op == 0x03]
    assert len(loops) >= 2, "spin has no nested loop"
    ck = tmp_path / "ck"
    with background(["run", "--engine", "wasmtime", "--checkpoint-dir", ck, wasm, *args], runtime_dir) as proc:
        proc.wait_for_output(b"spinning 2 x 3000000000\n")
        time.sleep(0.2)
        path = checkpoint_pid(proc.p.pid, runtime_dir)
        code, out, err = proc.finish()
    assert (code, err) == (0, b""), err
    snap = _load(path)
    innermost = snap.frames[-1]  # frames are outermost first
    assert innermost.func == spin and innermost.pc in loops[1:], (innermost.func, innermost.pc, loops)
    assert innermost.pc != loops[0], "stopped at the outer loop: the inner loop's polls never read the request"
    restored = wasmig(["restore", path])
    assert (restored.returncode, b"spinning 2 x 3000000000\n" + restored.stdout) == (0, out), restored.stderr


@pytest.mark.parametrize(("engine_a", "engine_b"), CROSS_PAIRS)
def test_checkpoint_while_sleeping(tmp_path: Path, runtime_dir: Path, engine_a: str, engine_b: str) -> None:
    wasm = program("stdin_wait")
    ck = tmp_path / "ck"
    expected = b"sleeping 2 s\nwoke up, 0 s left\n"
    with background(["run", "--engine", engine_a, "--checkpoint-dir", ck, wasm, "sleep", "2"], runtime_dir) as proc:
        proc.wait_for_output(b"sleeping 2 s\n")
        wait_blocked(proc.p.pid)
        path = checkpoint_pid(proc.p.pid, runtime_dir)
        proc.kill()  # the original dies; the snapshot is all that is left of it
    # in the call, not after it: the sleep was cut short, to be slept again after the restore
    assert _load(path).point == "import_call"
    t0 = time.monotonic()
    restored = wasmig(["restore", "--engine", engine_b, ck])
    assert (restored.returncode, b"sleeping 2 s\n" + restored.stdout, restored.stderr) == (0, expected, b"")
    assert time.monotonic() - t0 >= 1.5, "the restored program did not sleep again"


def test_checkpoint_while_blocked_in_a_host_call_made_through_a_function_pointer(tmp_path: Path,
                                                                                   runtime_dir: Path) -> None:
    """The program blocks in poll_oneoff (called through a function pointer) until its stdin is
    readable, so the request lands in the call however slow the machine: a 2 s sleep there once
    ended before a loaded machine's ``wasmig checkpoint`` reached it."""
    wasm = program("stdin_wait")
    ck = tmp_path / "ck"
    woke = b"woke up, errno 0, 1 event(s), userdata 42, type 1\nname? hello, bob (3 bytes)\n"
    with background(["run", "--checkpoint-dir", ck, wasm, "iwait"], runtime_dir) as proc:
        proc.wait_for_output(b"waiting for stdin (indirect)\n")
        wait_blocked(proc.p.pid)
        cp = wasmig(["checkpoint", "--timeout", "60", str(proc.p.pid)], runtime_dir=runtime_dir, timeout=90)
        code, out, err = proc.finish(b"bob\n")
    # the checkpointed run itself must not suffer, whatever happened to the snapshot
    assert (code, out, err) == (0, b"waiting for stdin (indirect)\n" + woke, b"")
    assert cp.returncode == 0, cp.stderr
    snap = _load(Path(cp.stdout.decode().strip()))
    assert snap.point == "import_call"
    restored = wasmig(["restore", ck], stdin=b"bob\n")
    assert (restored.returncode, restored.stdout) == (0, woke), restored.stderr


def test_a_failed_checkpoint_does_not_end_the_program(tmp_path: Path, runtime_dir: Path) -> None:
    wasm = program("stdin_wait")
    box = tmp_path / "box"
    box.mkdir()
    with background(["run", "--dir", f"{box}::/box", "--checkpoint-dir", tmp_path / "ck", wasm, "unlinked",
                     "/box/tmp.txt"], runtime_dir) as proc:
        proc.wait_for_output(b"name? ")
        wait_blocked(proc.p.pid)
        cp = wasmig(["checkpoint", "--timeout", "60", str(proc.p.pid)], runtime_dir=runtime_dir, timeout=90)
        time.sleep(0.2)
        alive = proc.p.poll() is None
        code, out, err = proc.finish(b"bob\n")
    assert alive and (code, out) == (0, b"name? hello, bob (3 bytes)\ntemporary file: [scratch data\n]\n"), (
        f"the program did not survive a refused checkpoint: exit {code}, stdout {out!r}, stderr {err!r}")
    _assert_one_line_error(cp, "checkpoint of a program with an unlinked open file")


def _echo_client(port: int, message: bytes, deadline: float) -> None:
    from tests.test_wasi_programs import _connect, _recv_exactly

    with _connect(port, deadline) as sock:
        sock.sendall(message)
        assert _recv_exactly(sock, len(message)) == message
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


@pytest.mark.parametrize(("engine_a", "engine_b"), CROSS_PAIRS)
def test_tcp_server_checkpointed_in_accept_serves_on_after_restore(tmp_path: Path, runtime_dir: Path, engine_a: str,
                                                                   engine_b: str) -> None:
    """A server blocked in accept: checkpointed, killed, restored; the restore listens on the same
    address again and serves the next client."""
    from tests.test_wasi_programs import _free_port

    wasm = program("tcp_echo")
    port = _free_port()
    ck = tmp_path / "ck"
    deadline = time.monotonic() + 60
    with background(["run", "--engine", engine_a, "--tcplisten", f"127.0.0.1:{port}", "--checkpoint-dir", ck, wasm,
                     "2"], runtime_dir) as proc:
        _echo_client(port, b"first client\n", deadline)
        wait_blocked(proc.p.pid)  # back in accept (or its poll) for the second client
        path = checkpoint_pid(proc.p.pid, runtime_dir)
        proc.kill()  # frees the port
    assert _load(path).point == "import_call"
    restored = subprocess.Popen([sys.executable, "-m", "wasmig", "restore", "--engine", engine_b, str(ck)],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env(runtime_dir))
    try:
        _echo_client(port, bytes(range(256)) * 64, deadline)
        out, err = restored.communicate(timeout=60)
    finally:
        if restored.poll() is None:
            restored.kill()
            restored.communicate()
    assert restored.returncode == 0, err
    assert (out, err) == (b"", b"tcp_echo: connection 2 done, 16384 bytes echoed\n")


def _same_state(a: Any, b: Any) -> list[str]:
    """The fields of two snapshots that must agree if they are of the same program point."""
    diffs = [name for name in ("module_sha256", "steps", "point", "frames", "tables", "globals", "dropped_data",
                               "dropped_elems") if getattr(a, name) != getattr(b, name)]
    if [m.data for m in a.memories] != [m.data for m in b.memories]:
        diffs.append("memories")
    return diffs


def _prefix_at_step(wasm: Path, args: Sequence[str], steps: int, work: Path) -> tuple[bytes, Any]:
    """The stdout of a fresh run checkpointed at ``steps``, and that snapshot."""
    ck = work / f"prefix-{steps}"
    p = wasmig(["run", "--checkpoint-dir", ck, "--checkpoint-at-step", str(steps), "--checkpoint-then", "exit", wasm,
                *args])
    _, path = split_checkpoint_line(p.stderr)
    assert p.returncode == 0 and path is not None, p.stderr
    return p.stdout, _load(ck)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_periodic_checkpoints_each_restore_to_the_same_end(tmp_path: Path, engine: str) -> None:
    wasm = program("bigmem")
    args = COMPUTING[engine]
    full = wasmig(["run", wasm, *args])
    assert full.returncode == 0 and full.stdout.endswith(b"done\n")
    ck = tmp_path / "ck"
    run = wasmig(["run", "--engine", engine, *STEP_COUNTING[engine], "--checkpoint-dir", ck, "--checkpoint-every",
                  "0.2", wasm, *args])
    assert (run.returncode, run.stdout, run.stderr) == (0, full.stdout, b"")
    from wasmig.snapshot.store import CheckpointDir

    snaps = CheckpointDir(ck).snapshots()
    assert len(snaps) >= 3, f"--checkpoint-every 0.2 wrote only {len(snaps)} snapshots"
    loaded = [_load(s) for s in snaps]
    assert all(s.stable for s in loaded)
    assert [s.steps for s in loaded] == sorted({s.steps for s in loaded}), "snapshots are not in program order"
    rng = random.Random(7)
    chosen = sorted({0, len(snaps) - 1, rng.randrange(len(snaps))})
    print(f"[e2e] --checkpoint-every 0.2: {len(snaps)} snapshots at steps {[s.steps for s in loaded]}; "
          f"restoring #{[i + 1 for i in chosen]}")
    for i in chosen:
        restored = wasmig(["restore", snaps[i]])
        assert restored.returncode == 0, restored.stderr
        # The output before the snapshot: a fresh run stopped at the same step, which must also
        # be in exactly the same state as the timer's snapshot.
        prefix, same_point = _prefix_at_step(wasm, args, loaded[i].steps, tmp_path)
        assert not _same_state(loaded[i], same_point), (
            f"timer snapshot {snaps[i].name} differs from a step-{loaded[i].steps} snapshot in "
            f"{_same_state(loaded[i], same_point)}")
        assert prefix + restored.stdout == full.stdout, f"restoring {snaps[i].name} gives the wrong output"
        assert restored.stderr == b""


@pytest.mark.slow
def test_fast_variant_snapshots_have_no_step_and_restore_on_both_engines(tmp_path: Path, runtime_dir: Path) -> None:
    """The default wasmtime run (the fast variant, no step count): timer and on-demand snapshots
    say ``steps: null``; each restores on both engines to the same rest of the output, which the
    uninterrupted run ends with; a step-based option on such a snapshot is a one-line error."""
    wasm = program("bigmem")
    args = COMPUTING["wasmtime"]
    full = wasmig(["run", wasm, *args])
    assert full.returncode == 0 and full.stdout.endswith(b"done\n")
    ck = tmp_path / "ck"
    # a checkpoint every half second: at 0.3 s a loaded machine once spent most of the run writing
    # 16 MiB snapshots (40-55 s for a 6 s run, before pack files made a write ~4x cheaper); at 1 s an
    # idle machine finished the run with only 2 snapshots
    with background(["run", "--engine", "wasmtime", "--checkpoint-dir", ck, "--checkpoint-every", "0.5", wasm,
                     *args], runtime_dir) as proc:
        proc.wait_for_output(b"round 3 ")
        checkpoint_pid(proc.p.pid, runtime_dir)
        code, out, err = proc.finish(timeout=180)
        assert (code, out, err) == (0, full.stdout, b"")
    from wasmig.snapshot.store import CheckpointDir

    snaps = CheckpointDir(ck).snapshots()
    assert len(snaps) >= 3, f"only {len(snaps)} snapshots"
    loaded = [_load(s) for s in snaps]
    assert all(s.steps is None and s.stable for s in loaded), [(s.steps, s.point) for s in loaded]
    inspected = wasmig(["inspect", snaps[0]])
    assert inspected.returncode == 0 and b"steps: not counted" in inspected.stdout, inspected.stdout
    rng = random.Random(11)
    for i in sorted({0, len(snaps) - 1, rng.randrange(len(snaps))}):
        outs = {}
        for engine in ("wasmtime", "interp"):
            ck2 = tmp_path / f"again-{i}-{engine}"
            # the interpreter is ~100x slower: it checkpoints (and stops) 2 s in, the rest runs on wasmtime
            extra = ["--checkpoint-dir", ck2, "--checkpoint-every", "2", "--checkpoint-then", "exit"] \
                if engine == "interp" else []
            restored = wasmig(["restore", "--engine", engine, *extra, snaps[i]])
            assert restored.returncode == 0, restored.stderr
            rest = restored.stdout
            if engine == "interp" and list(ck2.glob("snapshots/*.snap")):
                again = _load(CheckpointDir(ck2).snapshots()[-1])
                assert again.steps is None, "a restore of an uncounted snapshot must not invent a step count"
                finished = wasmig(["restore", "--engine", "wasmtime", ck2])
                assert finished.returncode == 0, finished.stderr
                rest += finished.stdout
            outs[engine] = rest
        assert outs["interp"] == outs["wasmtime"], f"snapshot {snaps[i].name}: the engines disagree"
        head = full.stdout[: len(full.stdout) - len(outs["wasmtime"])]
        assert full.stdout.endswith(outs["wasmtime"]) and (head == b"" or head.endswith(b"\n")), \
            f"snapshot {snaps[i].name}: the restored run's output is not the rest of the full run's"
    for flags in (["--checkpoint-at-step", "5"], ["--count-steps"]):
        bad = wasmig(["restore", "--checkpoint-dir", tmp_path / "bad", *flags, snaps[0]])
        assert bad.returncode != 0 and b"no step count" in bad.stderr and bad.stderr.count(b"\n") == 1, bad.stderr


# --- 3. corrupt snapshots are one-line errors -------------------------------------------------------
@pytest.fixture
def stdin_devnull() -> Iterator[None]:
    """A restored guest that reads stdin must not hang on the test runner's stdin."""
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def _tiny_checkpoint(work: Path) -> tuple[Path, Path]:
    """A checkpoint dir of ``exitcode 7`` stopped mid-run, whose module exists only as the dir's copy."""
    wasm = work / "prog.wasm"
    shutil.copy(program("exitcode"), wasm)
    (work / "box").mkdir()
    ck = work / "ck"
    p = wasmig(["run", "--dir", f"{work / 'box'}::/box", "--checkpoint-dir", ck, "--checkpoint-at-step", "60",
                "--checkpoint-then", "exit", wasm, "7"])
    assert p.returncode == 0 and split_checkpoint_line(p.stderr)[1] is not None, p.stderr
    wasm.unlink()  # otherwise a restore finds the original through the recorded module path
    [snap] = (ck / "snapshots").iterdir()
    return ck, snap


def _invoke(args: Sequence[str]) -> Any:
    """``wasmig ARGS`` in this process: its exit code, stdout, stderr and the exception that ended
    it (None after exit code 0; a SystemExit otherwise, unless something else escaped)."""
    import contextlib
    import io
    import types

    from wasmig.cli import main

    out, err = io.StringIO(), io.StringIO()
    exception: BaseException | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            exception = e if code != 0 else None
        except Exception as e:
            code, exception = 1, e
        else:
            code = 0
    return types.SimpleNamespace(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue(), exception=exception)


def _mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = len(data)
    kind = rng.choice(["bitflip", "byte", "bytes", "truncate", "append", "delete", "insert", "zero", "empty"])
    if kind == "empty" or n == 0:
        return b"", "empty"
    i = rng.randrange(n)
    if kind == "bitflip":
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:], f"bit flip at {i}"
    if kind == "byte":
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:], f"byte at {i}"
    if kind == "bytes":
        m = rng.randint(1, 64)
        return data[:i] + rng.randbytes(m) + data[i + m:], f"{m} random bytes at {i}"
    if kind == "truncate":
        return data[:i], f"truncated to {i}"
    if kind == "append":
        m = rng.randint(1, 64)
        return data + rng.randbytes(m), f"{m} bytes appended"
    if kind == "delete":
        m = rng.randint(1, 64)
        return data[:i] + data[i + m:], f"{m} bytes deleted at {i}"
    if kind == "insert":
        m = rng.randint(1, 64)
        return data[:i] + rng.randbytes(m) + data[i:], f"{m} bytes inserted at {i}"
    m = rng.randint(1, 256)
    return data[:i] + bytes(min(m, n - i)) + data[i + m:], f"{m} bytes zeroed at {i}"


def _same_page(mutated: bytes, original: bytes) -> bool:
    """A page file (or pack) whose change the store does not see: some bits of a zstd frame (in
    its header, or unused ones) do not change what it decompresses to, so the page still matches
    its hash and a restore rightly uses it."""
    from wasmig.snapshot.packs import PACK_MAGIC
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import _decompress_page

    try:
        if original.startswith(PACK_MAGIC):
            return _pack_pages(mutated) == _pack_pages(original)
        return _decompress_page(mutated, "page") == _decompress_page(original, "page")
    except (SnapshotError, OSError, ValueError):
        return False


def _pack_pages(pack: bytes) -> dict[str, bytes]:
    """A pack's pages by hash, decompressed (raises on a damaged pack)."""
    import tempfile

    from wasmig.snapshot.packs import read_index
    from wasmig.snapshot.store import _decompress_page

    with tempfile.NamedTemporaryFile() as f:
        f.write(pack)
        f.flush()
        return {h: _decompress_page(pack[off:off + n], "page") for h, off, n in read_index(Path(f.name))}


def _check_one_line_error(result: Any, what: str) -> None:
    err = result.stderr
    assert isinstance(result.exception, SystemExit), (
        f"{what}: raised {type(result.exception).__name__}: {result.exception}\n{err}")
    assert result.exit_code != 0, f"{what}: restored successfully (exit 0)"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wasmig: error:"), f"{what}: not a one-line error:\n{err}"
    assert "Traceback" not in err


@pytest.mark.slow
def test_corrupted_checkpoints_are_one_line_errors(tmp_path: Path, stdin_devnull: None) -> None:
    ck, snap = _tiny_checkpoint(tmp_path)
    pages = sorted(p for p in (ck / "pages").rglob("*") if p.is_file())
    [module] = ck.glob("module-*.wasm")
    assert pages, "expected the snapshot to reference stored pages"
    originals = {p: p.read_bytes() for p in [snap, module, *pages]}
    # the untouched checkpoint restores (and the guest's exit code comes through)
    ok = _invoke(["restore", str(ck)])
    assert ok.exit_code == 7, (ok.exit_code, ok.stderr, ok.exception)
    rng = random.Random(20240611)
    same = 0
    started = time.monotonic()
    for i in range(1000):
        r = rng.random()
        target = snap if r < 0.6 else module if r < 0.75 else rng.choice(pages)
        mutated, how = _mutate(originals[target], rng)
        if rng.random() < 0.02:
            how = "deleted"
        for p, data in originals.items():
            p.write_bytes(data)
        if how == "deleted":
            target.unlink()
        elif mutated == originals[target] or (target in pages and _same_page(mutated, originals[target])):
            same += 1
            continue
        else:
            target.write_bytes(mutated)
        label = f"mutation {i}: {target.relative_to(ck)} {how}"
        _check_one_line_error(_invoke(["restore", str(ck if rng.random() < 0.5 else snap)]), label)
    print(f"[e2e] 1000 corruptions ({same} left the bytes unchanged) in {time.monotonic() - started:.1f} s")


def _resign(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as a snapshot file with a valid header and checksum, sealed with the test
    run's own key (a crafted file that passes the signature check, so what is behind it is tested:
    tests/adversarial has the ones signed by others)."""
    from wasmig.snapshot.store import _encode

    path.write_bytes(b"".join(_encode(manifest)))


def _structural_mutation(manifest: dict[str, Any], rng: random.Random) -> str:
    """Change one field of a decoded manifest to a plausible but wrong value; returns a description."""
    junk = [None, True, -1, 0, 1, 2**32, -(2**63), 2**64 - 1, "", "x", b"\0", [], {}, [0], ["i32", 1], 1.5]
    frames = manifest["frames"]
    f = rng.randrange(len(frames))
    choice = rng.randrange(16)
    if choice == 0:
        frames[f][1] += rng.choice([-3, -1, 1, 2, 5, 100])
        return f"frame {f} pc {frames[f][1]}"
    if choice == 1:
        frames[f][0] = rng.choice([0, 1, frames[f][0] + 1, frames[f][0] - 1, 10**6])
        return f"frame {f} func {frames[f][0]}"
    if choice == 2 and frames[f][2]:
        j = rng.randrange(len(frames[f][2]))
        frames[f][2][j] = rng.choice([["i64", 1], ["f32", 0], ["i32", 2**40], ["funcref", 5], ["externref", 1],
                                      ["i32", rng.randrange(2**32)], *junk])
        return f"frame {f} local {j} = {frames[f][2][j]!r}"
    if choice == 3:
        rng.choice([lambda: frames[f][3].append(["i32", 0]), lambda: frames[f][3].clear(),
                    lambda: frames[f][2].append(["i32", 0]), lambda: frames[f][2].clear()])()
        return f"frame {f} stack/locals resized"
    if choice == 4:
        manifest["point"] = rng.choice(["entry", "loop", "import_call", "instruction", "nowhere"])
        return f"point {manifest['point']}"
    if choice == 5:
        rng.choice([lambda: frames.pop(f), lambda: frames.insert(f, list(frames[f])), lambda: frames.clear()])()
        return "frames added/removed"
    if choice == 6:
        mem = manifest["memories"][0]
        key = rng.choice(["size_pages", "min", "max"])
        mem[key] = rng.choice([0, 1, mem[key] + 1 if isinstance(mem[key], int) else 1, 65536, 65537, None])
        return f"memory {key} {mem[key]}"
    if choice == 7:
        data = manifest["memories"][0]["data"]
        j = rng.randrange(len(data))
        data[j] = rng.choice([None, "0" * 64, "g" * 64, "../" * 21 + "x", b"not a page",
                              next((h for h in data if h), None)])
        return f"memory page {j} -> {data[j]!r:.40}"
    if choice == 8 and manifest["globals"]:
        g = rng.randrange(len(manifest["globals"]))
        manifest["globals"][g] = rng.choice([["i64", False, ["i64", 0]], ["i32", True, ["i32", 2**32]],
                                             ["i32", not manifest["globals"][g][1], manifest["globals"][g][2]],
                                             ["i32", True, ["i32", rng.randrange(2**32)]]])
        return f"global {g} -> {manifest['globals'][g]!r}"
    if choice == 9 and manifest["tables"]:
        t = manifest["tables"][0]
        if t["elements"]:
            j = rng.randrange(len(t["elements"]))
            t["elements"][j] = rng.choice([None, 0, 10**6, -1, "f"])
            return f"table element {j} -> {t['elements'][j]!r}"
        t["elements"].append(0)
        return "table grown"
    if choice == 10:
        key = rng.choice(["dropped_data", "dropped_elems"])
        manifest[key] = rng.choice([[], [True] * (len(manifest[key]) + 1), [not x for x in manifest[key]]])
        return f"{key} -> {manifest[key]!r}"
    if choice == 11:
        fds = manifest["wasi"]["fds"]
        base = next(fd for fd in fds if fd.get("preopen"))
        extra = dict(base, fd=rng.choice([7, 3, 0, 2**31]), kind="file", filetype=4, preopen=None,
                     base_preopen=base["preopen"], relpath=rng.choice(["../secret", "/etc/passwd", "a/../../x",
                                                                       "nope.txt", "."]),
                     offset=0, size=0, mtime_ns=0)
        fds.append(extra)
        return f"extra fd {extra['fd']} -> {extra['relpath']}"
    if choice == 12:
        fd = rng.choice(manifest["wasi"]["fds"])
        key = rng.choice(sorted(fd))
        fd[key] = rng.choice(junk)
        return f"fd {fd.get('fd')} {key} = {fd[key]!r}"
    if choice == 13:
        key = rng.choice(["steps", "instructions", "created_ns", "format_version", "module_sha256", "engine"])
        manifest[key] = rng.choice(junk + ["f" * 64, 2])
        return f"{key} = {manifest[key]!r}"
    if choice == 14:
        key = rng.choice(sorted(manifest))
        manifest[key] = rng.choice(junk)
        return f"{key} replaced by {manifest[key]!r}"
    w = manifest["wasi"]
    key = rng.choice(["args", "env", "monotonic_ns", "fds"])
    w[key] = rng.choice(junk + [[1], {"a": 1}, [{"fd": 0}]])
    return f"wasi {key} = {w[key]!r}"


@pytest.mark.slow
def test_crafted_snapshots_with_valid_checksums_fail_cleanly(tmp_path: Path, stdin_devnull: None) -> None:
    """Mutations *inside* the checksummed manifest: the validation behind the checksum.

    A crafted snapshot may be one the restore accepts (a local with another value is still a
    valid state), so the contract is weaker than for random corruption: never a Python
    exception, and an error is one line. Runs are bounded by a checkpoint-and-exit 200k steps on.
    """
    from wasmig.snapshot.store import _read_container

    ck, snap = _tiny_checkpoint(tmp_path)
    (tmp_path / "secret").write_text("outside the preopen tmp_path/box\n")
    (tmp_path / "x").write_text("outside too\n")
    original = snap.read_bytes()

    def read_manifest() -> dict[str, Any]:
        return _read_container(io.BytesIO(original), len(original)).manifest

    manifest0 = read_manifest()
    rng = random.Random(99)
    outcomes: dict[str, int] = {}
    for i in range(200):
        manifest = read_manifest()
        how = _structural_mutation(manifest, rng)
        if manifest == manifest0:
            continue
        _resign(snap, manifest)
        steps = manifest.get("steps")
        valid_steps = isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps < 2**62
        bound = (steps if valid_steps else 0) + 200_000
        result = _invoke(["restore", "--checkpoint-dir", str(tmp_path / "again"), "--checkpoint-at-step", str(bound),
                          "--checkpoint-then", "exit", str(snap)])
        what = f"crafted snapshot {i}: {how}"
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), (
            f"{what}: raised {type(exc).__name__}: {exc}\n{result.stderr}")
        err = result.stderr
        assert "Traceback" not in err
        if "wasmig: error:" in err:
            assert len(err.splitlines()) == 1 and err.startswith("wasmig: error:"), f"{what}:\n{err}"
            outcomes["refused"] = outcomes.get("refused", 0) + 1
        elif err.startswith("Error: wasm trap:"):
            outcomes["trapped"] = outcomes.get("trapped", 0) + 1
        else:
            outcomes[f"ran, exit {result.exit_code}"] = outcomes.get(f"ran, exit {result.exit_code}", 0) + 1
        if how.startswith("extra fd") and how.endswith(("../secret", "/etc/passwd", "a/../../x")):
            # a file outside the preopen (../secret exists) must never be opened, whatever else happens
            assert "wasmig: error:" in err, f"{what}: restored with a file outside the preopen: {err!r}"
            outcomes["escapes refused"] = outcomes.get("escapes refused", 0) + 1
    print(f"[e2e] crafted snapshots: {outcomes}")


def _snapshot_inside_an_indirect_call() -> tuple[Any, Any]:
    """(module, snapshot) of checksum stopped at the entry of a function called through call_indirect."""
    from wasmig.engines.interp.capture import capture
    from wasmig.interp.machine import Suspended
    from wasmig.module import Module
    from wasmig.session.command import instantiate_with_wasi
    from wasmig.wasi.preview1 import Wasi

    module = Module.from_file(program("checksum"))
    wasi = Wasi(["checksum"], stdout=io.BytesIO(), stderr=io.BytesIO())
    inst = instantiate_with_wasi(module, wasi)
    m = inst.machine
    m.stop_at_step = 1
    with pytest.raises(Suspended):
        inst.invoke("_start")
    while not (m.point == "entry" and len(m.frames) > 1
               and m.frames[-2].func.ir.body[m.frames[-2].pc - 1].op == 0x11):  # entered by call_indirect
        m.stop_at_step = m.steps + 1
        with pytest.raises(Suspended):
            m.resume()
    snap = capture(inst)
    wasi.close()
    return module, snap


def test_crafted_call_indirect_callee_of_another_type_is_refused(tmp_path: Path, stdin_devnull: None) -> None:
    from wasmig.session.command import instantiate_with_wasi
    from wasmig.session.modules import store_module
    from wasmig.snapshot.store import CheckpointDir
    from wasmig.wasi.preview1 import Wasi

    module, snap = _snapshot_inside_an_indirect_call()
    inner = snap.frames[-1]
    # a function with as many parameters as the real callee (so the caller's stack fits) but other results
    wasi = Wasi(["checksum"], stdout=io.BytesIO(), stderr=io.BytesIO())
    inst = instantiate_with_wasi(module, wasi)
    wasi.close()
    funcs, n_imported = inst.store.funcs, module.ir.num_imported_funcs()
    callee_type = funcs[inner.func].type
    other = next(i for i in range(n_imported, len(funcs))
                 if len(funcs[i].type.params) == len(callee_type.params)
                 and funcs[i].type.results != callee_type.results)
    info = inst.store.validation.functions[other - n_imported]
    inner.func, inner.pc, inner.stack = other, funcs[other].ir.body[0].offset, []
    inner.locals = [(t, None if t.endswith("ref") else 0) for t in info.local_types]
    ck = tmp_path / "ck"
    snap.meta["module_file"] = store_module(ck, module).name
    CheckpointDir(ck).write(snap)
    result = _invoke(["restore", str(ck)])
    _check_one_line_error(result, f"frame entered by call_indirect of {callee_type}, replaced by func {other} "
                                  f"{funcs[other].type}")


# --- 4. kill -9 while checkpointing ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_kill_9_during_checkpoints_leaves_loadable_snapshots(tmp_path: Path, engine: str) -> None:
    wasm = program("bigmem")
    # long enough to outlast the first snapshot plus the kill's delay (up to 0.8 s) on either engine:
    # with pack files a checkpoint of its 64 MiB is fast, and 8 rounds on the interpreter ended first.
    # On wasmtime 30,000 rounds are ~7 s uninterrupted, more with steps counted and checkpoints every
    # 50 ms (100,000 took 22 s here, and as long again to finish the restore)
    args = _bigmem_args(64, 48, 4096) if engine == "interp" else _bigmem_args(64, 30000, 4096)
    full = wasmig(["run", wasm, *args])
    assert full.returncode == 0 and full.stdout.endswith(b"done\n")
    ck = tmp_path / "ck"
    rng = random.Random(4242)
    delays = []
    def complete() -> int:
        return len(list((ck / "snapshots").glob("[0-9]*.snap"))) if (ck / "snapshots").is_dir() else 0

    for _ in range(10):
        delay = rng.uniform(0.0, 0.8)
        delays.append(round(delay, 2))
        before = complete()
        p = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", engine, *STEP_COUNTING[engine],
                              "--checkpoint-dir", str(ck),
                              "--checkpoint-every",
                              "0.05", str(wasm), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
        try:
            # the kill lands at a random time once this run is checkpointing (its first snapshot is in):
            # a fixed delay from the start let a slow start-up on a loaded machine leave too few snapshots
            deadline = time.monotonic() + 60
            while complete() == before and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
            os.kill(p.pid, signal.SIGKILL)
            _, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == -signal.SIGKILL, f"the run ended by itself before the kill: {err!r}"
    from wasmig.snapshot.store import CheckpointDir

    snaps = CheckpointDir(ck).snapshots()
    names = sorted(os.listdir(ck / "snapshots"))
    leftovers = [n for n in names if not re.fullmatch(r"\d{6}\.snap", n)]
    page_temps = [p.name for p in (ck / "pages").rglob(".*.tmp")]
    print(f"[e2e] kill -9 after {delays} s: {len(snaps)} snapshots, {len(leftovers)} temporary snapshot files "
          f"and {len(page_temps)} temporary page files left")
    assert all(n.startswith(".") and n.endswith(".tmp") for n in leftovers), leftovers
    assert len(snaps) >= 10, f"only {len(snaps)} snapshots survived 10 runs (each wrote one before its kill)"
    loaded = [_load(s) for s in snaps]  # every snapshot file that exists loads, pages and all
    assert all(s.stable for s in loaded)
    last = loaded[-1]
    restored = wasmig(["restore", ck])
    assert restored.returncode == 0, restored.stderr
    prefix, same_point = _prefix_at_step(wasm, args, last.steps, tmp_path)
    assert not _same_state(last, same_point), f"the last snapshot differs from a fresh one at its step: " \
                                              f"{_same_state(last, same_point)}"
    assert prefix + restored.stdout == full.stdout


# --- 5. inspect and diff ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_snapshots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A checkpoint dir of checksum with a snapshot at step 3000 and one at 30000 (both inside main)."""
    ck = tmp_path_factory.mktemp("inspect") / "ck"
    wasm = program("checksum")
    p = wasmig(["run", "--checkpoint-dir", ck, "--checkpoint-at-step", "3000", "--checkpoint-then", "exit", wasm])
    assert p.returncode == 0, p.stderr
    p = wasmig(["restore", "--checkpoint-dir", ck, "--checkpoint-at-step", "30000", "--checkpoint-then", "exit", ck])
    assert p.returncode == 0, p.stderr
    a, b = sorted((ck / "snapshots").iterdir())
    return ck, a, b


MAIN_NAMES = ("main", "__original_main")  # wasi-libc renames a `main(void)` to __original_main


def test_inspect_shows_the_call_stack(two_snapshots: tuple[Path, Path, Path]) -> None:
    ck, a, _ = two_snapshots
    for target in (a, ck):
        p = wasmig(["inspect", target])
        assert p.returncode == 0 and p.stderr == b"", p.stderr
        # the module's path (in argv) is under the repo, whose name may well contain "main"
        text = p.stdout.decode().replace(str(REPO), "<repo>")
        assert re.search(r"\b(__original_)?main\b", text), f"the call stack should name main:\n{text}"
        assert re.search(r"\b30?000\b", text), f"the step count should be shown:\n{text}"
    p = wasmig(["inspect", "--json", a])
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert isinstance(summary, dict)
    values = list(_all_values(summary))
    assert any(v in MAIN_NAMES for v in values), "the JSON call stack should name main"
    assert 3000 in values, "the JSON summary should carry the step count"


def _all_values(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _all_values(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_values(v)
    else:
        yield obj


def test_diff_lists_what_changed(two_snapshots: tuple[Path, Path, Path]) -> None:
    _, a, b = two_snapshots
    p = wasmig(["diff", a, b])
    text = p.stdout.decode()
    assert p.returncode == 1 and p.stderr == b"", p.stderr  # as diff(1): 1 when they differ
    assert "3000" in text and "30000" in text, f"diff should show the steps changing:\n{text}"
    assert re.search(r"page", text, re.I), f"diff should list changed memory pages:\n{text}"
    same = wasmig(["diff", a, a])
    assert same.returncode == 0 and same.stdout == b"", "a snapshot differs from itself?"


def test_inspect_and_diff_refuse_bad_input_in_one_line(tmp_path: Path,
                                                       two_snapshots: tuple[Path, Path, Path]) -> None:
    _, a, _ = two_snapshots
    bad = tmp_path / "bad.snap"
    bad.write_bytes(a.read_bytes()[:-1])
    for args in (["inspect", bad], ["inspect", "--json", tmp_path / "missing.snap"], ["diff", a, bad]):
        _assert_one_line_error(wasmig(args), args)


def test_restore_refuses_bad_input_in_one_line(tmp_path: Path, two_snapshots: tuple[Path, Path, Path]) -> None:
    ck, a, _ = two_snapshots
    bad = tmp_path / "bad.snap"
    bad.write_bytes(a.read_bytes()[:-1])
    empty = tmp_path / "empty"
    (empty / "snapshots").mkdir(parents=True)
    for args in (["restore", bad], ["restore", tmp_path], ["restore", empty], ["restore", tmp_path / "nope"],
                 ["restore", "--module", program("hello"), a], ["restore", "--dir", f"{tmp_path / 'nope'}::/x", a]):
        _assert_one_line_error(wasmig(args), args)


def _assert_one_line_error(p: subprocess.CompletedProcess[bytes], args: Any) -> None:
    err = p.stderr.decode()
    assert p.returncode != 0 and len(err.splitlines()) == 1 and err.startswith("wasmig: error:"), (args, err)
    assert p.stdout == b"", (args, p.stdout)
