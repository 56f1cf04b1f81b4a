"""``make demo`` end to end: ``python -m wasmig.examples.demo`` checkpoints pi.c on wasmtime,
restores it on the interpreter and back, live-migrates a second run across two daemons, and must
end with exit 0 and its proof line (both runs' stdout and file identical to an uninterrupted
run's), having printed every step's header and no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wasmig.examples.demo import PROOF_LINE, STEPS

pytest.importorskip("wasmtime")
pytest.importorskip("ziglang")

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_demo_runs_and_proves_the_output_identical() -> None:
    try:
        done = subprocess.run([sys.executable, "-m", "wasmig.examples.demo"], cwd=REPO, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the demo did not finish within 300 s:\n{e.stdout}\n{e.stderr}")
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    assert "Traceback" not in out + done.stderr
    headers = re.findall(rf"^\[(\d+)/{STEPS}\] ", out, re.M)
    assert headers == [str(n) for n in range(1, STEPS + 1)], out
    for step in ("Reference", "checkpoint it part-way", "Restore it on the interpreter", "Restore that on wasmtime",
                 "Live-migrate", "Proof"):
        assert step in out, f"no step {step!r}:\n{out}"
    assert out.count("  identical\n") == 4, out  # stdout and pi.txt, of both interrupted runs
    assert "DIFFERENT" not in out
    assert out.rstrip().splitlines()[-1].startswith(PROOF_LINE), out
    # the figures the demo is for
    for label, unit in (("checkpoint", "s"), ("restore", "s"), ("downtime", "ms"), ("snapshot", "B file")):
        assert len(re.findall(rf"^ {{4}}{label} +[\d.,]+ {unit}", out, re.M)) == 2, f"{label} figures:\n{out}"
    assert "pi = 3.1415926535897932384626433832795028841971...9216420198" in out
