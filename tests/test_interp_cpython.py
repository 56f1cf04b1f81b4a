"""CPython for WASI (26 MB, from tests/real_programs.py's sha256-checked download cache, never committed) on the
interpreter: issue 15 asks that its start-up and a short script finish there (about 25 s of CPU with the compiled
segments and straight functions, wasmig/interp/segments.py; over a minute before them).

One run of a short script, stopped part-way, must match the stepwise loop's state at the same step exactly (the
compiled code may not change what a snapshot sees), and its snapshot, restored in a fresh instance, must finish
with the output the host's own Python prints for the same script. The guest's clock is pinned and its hash seed
fixed, so two runs are byte-identical.
"""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest

import wasmig
from tests import real_programs
from wasmig.engines.interp.capture import capture
from wasmig.interp.machine import Suspended
from wasmig.interp.straight import Straight
from wasmig.session.command import instantiate_with_wasi
from wasmig.wasi.preview1 import ProcExit, Wasi

SCRIPT = """
import json
class Odd(Exception):
    pass
def check(i):
    if i % 3 == 0:
        raise Odd(i)
    return {"i": i, "s": str(i) * 2}
caught = total = 0
for i in range(300):
    try:
        total += len(check(i)["s"])
    except Odd as e:
        caught += e.args[0] % 7
print(json.dumps({"caught": caught, "total": total, "sq": sum(i * i for i in range(500))}, sort_keys=True))
"""
#: a stable point well inside the start-up (which passes about 8 M)
STOP = 1_500_000


def module() -> wasmig.Module:
    try:
        return wasmig.Module.from_file(real_programs.obtain("cpython"))
    except real_programs.ProgramUnavailable as e:
        pytest.skip(f"CPython for WASI is not available: {e}")


def start(mod: wasmig.Module, out: io.BytesIO, segments: bool) -> Any:
    wasi = Wasi(["python", "-c", SCRIPT], {"PYTHONHASHSEED": "0"}, stdout=out, stderr=io.BytesIO())
    wasi.now_ns = lambda clock_id: 1_700_000_000_000_000_000  # the same clock in every run
    inst = instantiate_with_wasi(mod, wasi, "interp")
    inst.machine.segments = segments
    return inst


def state(s: Any) -> tuple:
    return (s.steps, s.point, s.frames, s.memories, s.tables, s.globals, s.dropped_data, s.dropped_elems)


def to_end(inst: Any, first: bool) -> int:
    try:
        if first:
            inst.invoke("_start")
        else:
            inst.resume()
    except ProcExit as e:
        return e.code
    return 0


@pytest.mark.slow
def test_cpython_script_on_the_interpreter_stops_and_restores_exactly() -> None:
    mod = module()
    expected = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True).stdout

    out = io.BytesIO()
    inst = start(mod, out, segments=True)
    inst.stop_at(step=STOP)
    with pytest.raises(Suspended):
        inst.invoke("_start")
    snap = capture(inst)
    prefix = out.getvalue()
    assert snap.steps == STOP and snap.stable
    inst.stop_at()
    assert to_end(inst, first=False) == 0
    assert out.getvalue() == expected
    compiled = [f for f in inst.store.funcs if isinstance(getattr(f, "straight", None), Straight)]
    assert len(compiled) > 100, "CPython's start-up compiled hardly any straight function"

    reference = start(mod, io.BytesIO(), segments=False)
    reference.stop_at(step=STOP)
    with pytest.raises(Suspended):
        reference.invoke("_start")
    assert state(capture(reference)) == state(snap), "the compiled run's snapshot differs from the stepwise loop's"

    rest = io.BytesIO()
    restored = wasmig.restore(snap, module=mod, stdin=b"", stdout=rest, stderr=io.BytesIO())
    assert to_end(restored, first=False) == 0
    assert prefix + rest.getvalue() == expected
