"""The official WASI testsuite (WebAssembly/wasi-testsuite, wasm32-wasip1): all of it, on every
way wasmig runs a program, and checkpointed part-way across engines.

The suite is test data outside the repository: ``../shared/wasi-testsuite`` beside the clone
(``WASMIG_WASI_TESTSUITE=/path`` overrides); without it every test here skips, saying why. Each
test is ``tests/{c,rust,assemblyscript}/testsuite/wasm32-wasip1/NAME.wasm`` with an optional
``NAME.json``: ``args``, ``env``, ``root`` (a directory beside the module, preopened as the
guest's ``/``; every run gets a fresh copy, the tests write to it), ``exit_code`` (default 0)
and ``stdout`` (when given, exact).

1. ``test_suite_on_engine``: every test through the command line, three ways: ``wasmig run
   --engine interp``, ``--engine wasmtime`` (the plain module) and ``--engine wasmtime
   --checkpoint-dir D`` (the instrumented module).
2. ``test_partway_checkpoints_across_engines``: every test is stopped part-way and continued on
   the other engine, both ways: checkpointed on wasmtime (the instrumented module, counting
   steps) and restored on the interpreter, and checkpointed on the interpreter and restored on
   wasmtime. Where: an uninterrupted run (instrumented, counting) gives the number of stable
   points N; the stops are at 1/4, 1/2 and 3/4 of N and at N itself (deterministic; a test with
   fewer stable points uses the ones it has). Each restored run must end like the uninterrupted one: the exit
   code and stdout the suite expects (stdout of the part before the stop plus the restored
   part), and the same tree left in the preopened directory (not the same final step count: a
   test may take another path through, e.g. a Rust HashMap's randomly seeded order). The
   restore re-opens the guest's files in the very directory the checkpointed run was using, as
   it left it. This runs in-process (wasmig's Python API: the same code the command line
   drives; each snapshot goes through the on-disk format) to stay within the time budget.
3. ``test_partway_via_the_command_line``: the same for the midpoint of a few tests through
   ``wasmig run --checkpoint-at-step K --checkpoint-then exit`` and ``wasmig restore --engine E
   --dir COPY::/``, in fresh processes.

Also here, without the suite: a module importing one WASI function twice links on every engine.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.wasi_harness import REPO, snapshot
from tests.wat import wat_module

SUITE_ENV = "WASMIG_WASI_TESTSUITE"
HAVE_WASMTIME = importlib.util.find_spec("wasmtime") is not None
#: a hard limit for every subprocess; the slowest test takes about a second
TIMEOUT = 120


def suite_dir() -> Path:
    env = os.environ.get(SUITE_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "wasi-testsuite"


@dataclass(frozen=True)
class SuiteTest:
    name: str  # e.g. "rust/fd_readdir"
    wasm: Path
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    root: Path | None
    exit_code: int
    stdout: bytes | None


def discover() -> list[SuiteTest]:
    tests = []
    for wasm in sorted(suite_dir().glob("tests/*/testsuite/wasm32-wasip1/*.wasm")):
        meta = wasm.with_suffix(".json")
        spec: dict[str, Any] = json.loads(meta.read_text()) if meta.is_file() else {}
        tests.append(SuiteTest(
            name=f"{wasm.parents[2].name}/{wasm.stem}", wasm=wasm, args=tuple(spec.get("args", ())),
            env=tuple(spec.get("env", {}).items()), root=wasm.parent / spec["root"] if "root" in spec else None,
            exit_code=spec.get("exit_code", 0), stdout=spec["stdout"].encode() if "stdout" in spec else None))
    return tests


TESTS = discover()
MISSING = (f"the WASI testsuite is not at {suite_dir()} (put WebAssembly/wasi-testsuite's prebuilt "
           f"wasm32-wasip1 tests there, or set {SUITE_ENV}=/path/to/wasi-testsuite)")


def params(tests: list[SuiteTest]) -> list[Any]:
    if not tests:
        return [pytest.param(None, id="suite-missing", marks=pytest.mark.skip(reason=MISSING))]
    return [pytest.param(t, id=t.name) for t in tests]


needs_wasmtime = pytest.mark.skipif(not HAVE_WASMTIME, reason="wasmtime is not installed")


def fresh_root(test: SuiteTest, where: Path) -> Path | None:
    """A fresh copy of the test's preopened directory (None when it has none)."""
    if test.root is None:
        return None
    shutil.copytree(test.root, where, symlinks=True)
    return where


def tail(data: bytes, n: int = 1500) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= n else "..." + text[-n:]


# --------------------------------------------------------------------------------------------
# 1. every test, three ways, through the command line

MODES: dict[str, list[str]] = {
    "interp": ["--engine", "interp"],
    "wasmtime": ["--engine", "wasmtime"],
    "instrumented": ["--engine", "wasmtime", "--checkpoint-dir", "{ck}"],
}


def wasmig(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "wasmig", *args], cwd=cwd, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": str(REPO)})


def guest_options(test: SuiteTest, root: Path | None) -> list[str]:
    options = [] if root is None else ["--dir", f"{root}::/"]
    for name, value in test.env:
        options += ["--env", f"{name}={value}"]
    return options


def outcome_problems(test: SuiteTest, code: int, stdout: bytes) -> list[str]:
    """The suite's expectations: the exit code, and stdout when it gives one (only then: some tests
    print what differs from run to run, e.g. a Rust HashMap in its randomly seeded order)."""
    problems = []
    if code != test.exit_code:
        problems.append(f"exit code {code}, expected {test.exit_code}")
    if test.stdout is not None and stdout != test.stdout:
        problems.append(f"stdout {tail(stdout, 300)!r}, expected {tail(test.stdout, 300)!r}")
    return problems


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("test", params(TESTS))
def test_suite_on_engine(test: SuiteTest, mode: str, tmp_path: Path) -> None:
    if mode != "interp" and not HAVE_WASMTIME:
        pytest.skip("wasmtime is not installed")
    root = fresh_root(test, tmp_path / "root")
    engine = [a.replace("{ck}", str(tmp_path / "ck")) for a in MODES[mode]]
    proc = wasmig("run", *engine, *guest_options(test, root), str(test.wasm), *test.args, cwd=tmp_path)
    problems = outcome_problems(test, proc.returncode, proc.stdout)
    assert not problems, f"{test.name} on {mode}: {'; '.join(problems)}\nstderr:\n{tail(proc.stderr)}"


# --------------------------------------------------------------------------------------------
# 2. part-way checkpoints, restored on the other engine (in-process)

def stop_points(total: int) -> list[int]:
    """1/4, 1/2 and 3/4 of the way through ``total`` stable points, and the last one (where some
    tests have closed or renumbered over their preopen); fewer if the test has fewer."""
    return sorted({min(total, max(1, round(total * q / 4))) for q in (1, 2, 3, 4)})


@dataclass
class Run:
    """How one (possibly interrupted and restored) run ended."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    steps: int | None
    tree: dict[str, tuple] | None
    stopped_at: int | None = None  # the step of the snapshot


class Guest:
    """One run of a suite test in-process: its WASI state with captured stdio, in its own copy of
    the preopened directory."""

    def __init__(self, test: SuiteTest, root: Path | None) -> None:
        from wasmig.wasi.preview1 import Wasi

        self.test, self.root = test, root
        self.out, self.err = io.BytesIO(), io.BytesIO()
        self.wasi = Wasi([str(test.wasm), *test.args], dict(test.env), stdin=b"", stdout=self.out, stderr=self.err,
                         preopens=[(str(root), "/")] if root is not None else [])

    def tree(self) -> dict[str, tuple] | None:
        return snapshot(self.root) if self.root is not None else None


def until_exit(run: Callable[[], Any]) -> int:
    from wasmig.wasi.preview1 import ProcExit

    try:
        run()
    except ProcExit as e:
        return e.code
    return 0


def uninterrupted(module: Any, test: SuiteTest, root: Path | None) -> Run:
    from wasmig.engines.wasmtime.checkpointable import Checkpointable

    g = Guest(test, root)
    try:
        runner = Checkpointable(module, g.wasi, count_steps=True)
        runner.arm(None)
        code = until_exit(runner.start)
        return Run(code, g.out.getvalue(), g.err.getvalue(), runner.steps, g.tree())
    finally:
        g.wasi.close()


def restored_run(module: Any, snap: Any, engine: str, g: Guest, file: Path) -> Run:
    """Continue ``snap`` on ``engine`` in the directory ``g`` was using (its stdout following
    ``g``'s), after a trip through the on-disk format (``file``), as between two processes."""
    import wasmig
    from wasmig.grants import Granted
    from wasmig.snapshot.store import load_snapshot, write_single_file

    write_single_file(snap, file)
    snap = load_snapshot(file)
    out, err = io.BytesIO(), io.BytesIO()
    # the directory granted by guest name, as `restore --dir ROOT::/` (a Granted of the test's own:
    # the suite's programs that close their preopen may leave no "/" in the snapshot to map)
    granted = Granted(dirs={"/": str(g.root)} if g.root is not None else {})
    inst: Any = wasmig.restore(snap, engine, module=module, stdin=b"", stdout=out, stderr=err, count_steps=True,
                               granted=granted)
    try:
        code = until_exit(inst.resume)
        steps = inst.steps if engine == "wasmtime" else inst.machine.steps
    finally:
        inst.wasi.close()
    return Run(code, g.out.getvalue() + out.getvalue(), g.err.getvalue() + err.getvalue(), steps, g.tree(),
               stopped_at=snap.steps)


def from_wasmtime_to_interp(module: Any, test: SuiteTest, root: Path | None, step: int, file: Path) -> Run:
    """Stop on wasmtime (instrumented, counting) at ``step``, restore on the interpreter. Every
    stable point of every test can be captured (a SnapshotError fails the test)."""
    from wasmig.engines.wasmtime.checkpointable import Checkpointable

    g = Guest(test, root)
    try:
        runner = Checkpointable(module, g.wasi, count_steps=True)
        runner.arm(step)
        code = until_exit(runner.start)
        if not runner.unwound:  # it ended before the step
            return Run(code, g.out.getvalue(), g.err.getvalue(), runner.steps, g.tree())
        snap = runner.capture()
    finally:
        g.wasi.close()
    return restored_run(module, snap, "interp", g, file)


def from_interp_to_wasmtime(module: Any, test: SuiteTest, root: Path | None, step: int, file: Path) -> Run:
    """Stop on the interpreter at ``step``, restore on wasmtime."""
    from wasmig.interp.machine import Suspended
    from wasmig.session.command import instantiate_with_wasi

    g = Guest(test, root)
    try:
        inst: Any = instantiate_with_wasi(module, g.wasi, "interp")
        inst.stop_at(step=step)
        try:
            code = until_exit(lambda: inst.invoke("_start"))
        except Suspended:
            snap = inst.checkpoint()
        else:  # it ended before the step
            return Run(code, g.out.getvalue(), g.err.getvalue(), inst.machine.steps, g.tree())
    finally:
        g.wasi.close()
    return restored_run(module, snap, "wasmtime", g, file)


DIRECTIONS = {"wasmtime->interp": from_wasmtime_to_interp, "interp->wasmtime": from_interp_to_wasmtime}


def partway_problems(test: SuiteTest, reference: Run, how: str, step: int, got: Run) -> list[str]:
    where = f"{how} at step {step}/{reference.steps}"
    if got.stopped_at is None:
        return [f"{where}: ended before the stop (exit code {got.exit_code}, after {got.steps} steps)"]
    if got.stopped_at != step:
        return [f"{where}: the snapshot says step {got.stopped_at}"]
    problems = [f"{where}: {p}" for p in outcome_problems(test, got.exit_code, got.stdout)]
    if got.tree != reference.tree:
        paths = sorted(p for p in set(got.tree or {}) | set(reference.tree or {})
                       if (got.tree or {}).get(p) != (reference.tree or {}).get(p))
        problems.append(f"{where}: the preopened directory differs from the uninterrupted run's at {paths}")
    if problems:
        problems.append(f"{where}: stderr: {tail(got.stderr, 600)}")
    return problems


@needs_wasmtime
@pytest.mark.parametrize("test", params(TESTS))
def test_partway_checkpoints_across_engines(test: SuiteTest, tmp_path: Path) -> None:
    from wasmig.module import Module

    module = Module.from_file(test.wasm)
    reference = uninterrupted(module, test, fresh_root(test, tmp_path / "uninterrupted"))
    problems = outcome_problems(test, reference.exit_code, reference.stdout)
    assert not problems, f"{test.name}, uninterrupted: {'; '.join(problems)}\nstderr:\n{tail(reference.stderr)}"
    assert reference.steps, f"{test.name}: no stable point counted"
    for how, direction in DIRECTIONS.items():
        for step in stop_points(reference.steps):
            run_dir = f"{how.replace('>', '')}-{step}"
            root = fresh_root(test, tmp_path / run_dir)
            try:
                got = direction(module, test, root, step, tmp_path / f"{run_dir}.snap")
            except Exception as e:  # noqa: BLE001 - reported with the test, the direction and the step
                problems.append(f"{how} at step {step}/{reference.steps}: {type(e).__name__}: {e}")
                continue
            problems += partway_problems(test, reference, how, step, got)
    assert not problems, f"{test.name}:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# 3. the same through the command line, in fresh processes, for a few tests

CLI_TESTS = ("c/pwrite-with-access", "rust/fd_readdir", "rust/path_rename", "rust/fd_fdstat_set_rights",
             "assemblyscript/environ_get-multiple-variables", "assemblyscript/args_get-multiple-arguments",
             "assemblyscript/proc_exit-failure")


@needs_wasmtime
@pytest.mark.parametrize("how", list(DIRECTIONS))
@pytest.mark.parametrize("test", params([t for t in TESTS if t.name in CLI_TESTS]))
def test_partway_via_the_command_line(test: SuiteTest, how: str, tmp_path: Path) -> None:
    from wasmig.module import Module

    reference = uninterrupted(Module.from_file(test.wasm), test, fresh_root(test, tmp_path / "uninterrupted"))
    assert reference.steps
    step = max(1, round(reference.steps / 2))
    first, then = ("wasmtime", "interp") if how == "wasmtime->interp" else ("interp", "wasmtime")
    root = fresh_root(test, tmp_path / "root")
    ck = tmp_path / "ck"
    stopped = wasmig("run", "--engine", first, "--checkpoint-dir", str(ck), "--checkpoint-at-step", str(step),
                     "--checkpoint-then", "exit", *guest_options(test, root), str(test.wasm), *test.args, cwd=tmp_path)
    assert stopped.returncode == 0 and b"checkpoint written to" in stopped.stderr, (
        f"{test.name}: no checkpoint at step {step} on {first} (exit code {stopped.returncode})\n"
        f"{tail(stopped.stderr)}")
    restored = wasmig("restore", "--engine", then, *(["--dir", f"{root}::/"] if root is not None else []), str(ck),
                      cwd=tmp_path)
    where = f"{test.name}, {how} at step {step}/{reference.steps}"
    problems = outcome_problems(test, restored.returncode, stopped.stdout + restored.stdout)
    assert not problems, f"{where}: {'; '.join(problems)}\nstderr:\n{tail(restored.stderr)}"
    assert (snapshot(root) if root is not None else None) == reference.tree, f"{where}: the trees differ"


# --------------------------------------------------------------------------------------------
# Without the suite: a module importing one function twice links everywhere

DOUBLE_IMPORT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write_again (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ab")
  (func $put (param $at i32) (param $second i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (if (result i32) (local.get $second)
      (then (call $write_again (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (else (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))))
  (func (export "_start")
    (call $put (i32.const 16) (i32.const 0))
    (call $put (i32.const 17) (i32.const 1))
    (call $exit (i32.const 7))))
"""


def test_a_function_imported_twice_links_on_every_engine() -> None:
    from wasmig.session.command import run_command
    from wasmig.wasi.preview1 import Wasi

    module = wat_module(DOUBLE_IMPORT)
    engines: list[tuple[str, dict[str, Any]]] = [("interp", {})]
    if HAVE_WASMTIME:
        engines += [("wasmtime", {"fast_host_calls": True}), ("wasmtime", {"fast_host_calls": False})]
    for engine, options in engines:
        out = io.BytesIO()
        assert run_command(module, Wasi(["m"], stdout=out), engine, **options) == 7, (engine, options)
        assert out.getvalue() == b"ab", (engine, options)
    if not HAVE_WASMTIME:
        return
    # the instrumented module too, stopped between the two calls and restored on both engines
    from wasmig.engines.wasmtime.checkpointable import Checkpointable

    for engine in ("interp", "wasmtime"):
        out = io.BytesIO()
        runner = Checkpointable(module, Wasi(["m"], stdout=out), count_steps=True)
        runner.arm(3)  # _start, the first $put, the second $put
        runner.start()
        assert runner.unwound and out.getvalue() == b"a"
        snap = runner.capture()
        import wasmig

        rest = io.BytesIO()
        inst: Any = wasmig.restore(snap, engine, module=module, stdout=rest)
        assert until_exit(inst.resume) == 7 and rest.getvalue() == b"b", engine
