#!/usr/bin/env python3
"""How long a restore of a real program's snapshot takes on wasmtime, and how much memory (issue 15, item 4).

For each program (CPython 3.12 and QuickJS-ng for WASI, the modules ``benchmarks/real_programs.py`` uses, from the
shared download cache of ``tests/real_programs.py``):

1. a script builds a heap (CPython: a dict of 200,000 entries and 8 MiB of bytes, about 80 MB of linear memory;
   QuickJS: 200,000 objects), prints ``ready``, and then polls for the file ``/app/go`` in a loop;
2. ``wasmig run --checkpoint-dir CK --checkpoint-then exit`` runs it (the instrumented module, cached: the first
   run of this benchmark instruments and compiles it, untimed), and ``wasmig checkpoint PID`` takes the snapshot
   while it polls; three times, each the first checkpoint of its run (the downtime a start-up that deferred work
   would push there), reported as the run logs it: the capture's and the write's seconds;
3. with ``/app/go`` present, ``wasmig restore CK`` is run ``--rounds`` times (default 7). The restored program
   prints ``resumed`` and the host's clock (``time.time()`` / ``Date.now()`` through WASI) and exits at once, so
   *time to resumed* = that clock minus the moment the ``wasmig restore`` process was started: everything a
   restore does, process start-up, imports, reading the snapshot, the module and its cached instrumented and
   compiled variants, writing the memory, rebuilding the WASI state, the rewind. Also reported: the whole
   process's wall and CPU time and its peak RSS (``wait4``), and the phases ``wasmig -v restore`` logs.

Every restore's output must be ``resumed``; the benchmark fails otherwise. ``--rounds N``, ``--programs``.
Target (issue 15): well under 1 s once the compile cache is warm.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests import real_programs  # noqa: E402  (the shared download cache of the big programs)

HOLD_PY = r'''
import os, sys, time
data = {i: [str(i) * 10, float(i), (i, i + 1)] for i in range(200000)}
blob = bytearray(os.urandom(1 << 20)) * 8
print("ready", len(data), len(blob), flush=True)
while not os.path.exists("/app/go"):
    pass
print("resumed", repr(time.time()), flush=True)
os._exit(0)
'''

HOLD_JS = r'''
import * as std from "qjs:std";
import * as os from "qjs:os";
const data = [];
for (let i = 0; i < 200000; i++) data.push({i, s: String(i).repeat(3), l: [i, i + 1]});
console.log("ready", data.length);
while (os.stat("/app/go")[1] !== 0) {}
console.log("resumed", Date.now() / 1000);
std.exit(0);
'''

PROGRAMS = {
    "cpython": {"script": ("hold.py", HOLD_PY), "argv": ["/app/hold.py"]},
    "quickjs": {"script": ("hold.mjs", HOLD_JS), "argv": ["--module", "/app/hold.mjs"]},
}
#: Bytecode caches on, as a pip install leaves them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
PHASES = {
    "snapshot read": re.compile(rb"restore: snapshot read in ([0-9.]+) s"),
    "module read": re.compile(rb"restore: module found and read in ([0-9.]+) s"),
    "instantiated and loaded": re.compile(rb"instantiated and state loaded on wasmtime in ([0-9.]+) s"),
}
PAGES = re.compile(rb"restore: (\d+) of (\d+) pages of memory read and written")


class Failed(Exception):
    pass


def wasmig_command() -> list[str]:
    script = Path(sys.executable).with_name("wasmig")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wasmig"]


CHECKPOINT = re.compile(rb"checkpoint \S+ at step \S+: capture ([0-9.]+) s, write ([0-9.]+) s")


def take_snapshot(wasmig: list[str], wasm: Path, app: Path, ck: Path, argv: list[str],
                  timeout: float) -> tuple[float, float, float]:
    """Run the script under ``wasmig run --checkpoint-dir``, checkpoint it while it polls: (the seconds from the
    request to the process's exit, the capture's and the write's seconds as the run logs them: the first
    checkpoint of a run, its downtime)."""
    (app / "go").unlink(missing_ok=True)
    proc = subprocess.Popen([*wasmig, "-v", "run", "--checkpoint-dir", str(ck), "--checkpoint-then", "exit",
                             "--dir", f"{app}::/app", str(wasm), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"ready"):
        proc.kill()
        raise Failed(f"the script did not start: {line!r} {proc.stderr.read()[-800:] if proc.stderr else b''!r}")
    started = time.perf_counter()
    done = subprocess.run([*wasmig, "checkpoint", str(proc.pid)], capture_output=True, env=ENV, timeout=timeout)
    code = proc.wait(timeout)
    took = time.perf_counter() - started
    err = proc.stderr.read() if proc.stderr else b""
    if done.returncode != 0 or code != 0 or not list(ck.glob("snapshots/*.snap")):
        raise Failed(f"checkpoint failed: {done.stderr[-400:]!r} {err[-400:]!r}")
    logged = CHECKPOINT.search(err)
    if logged is None:
        raise Failed(f"the run did not log its checkpoint: {err[-400:]!r}")
    return took, float(logged.group(1)), float(logged.group(2))


def restore_once(wasmig: list[str], app: Path, ck: Path, timeout: float) -> dict[str, float]:
    """One ``wasmig -v restore``: time to resumed, wall, CPU, peak RSS, the logged phases."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start_wall = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen([*wasmig, "-v", "restore", "--dir", f"{app}::/app", str(ck)], stdout=out,
                                stderr=err, env=ENV)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                raise Failed(f"restore timed out after {timeout:.0f} s")
            time.sleep(0.002)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    words = stdout.split()
    if code != 0 or len(words) != 2 or words[0] != b"resumed":
        raise Failed(f"restore exit {code}, stdout {stdout[-200:]!r}, stderr {stderr[-600:]!r}")
    result = {"to resumed": float(words[1]) - start_wall, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
              "peak RSS MB": usage.ru_maxrss / 1024}
    for name, pattern in PHASES.items():
        found = pattern.search(stderr)
        if found:
            result[name] = float(found.group(1))
    pages = PAGES.search(stderr)
    if pages:
        result["pages written"], result["pages in memory"] = float(pages.group(1)), float(pages.group(2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="restores per program (default 7)")
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated: " + ", ".join(PROGRAMS))
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds the first run may take (it may instrument and compile the module)")
    args = parser.parse_args()
    wasmig = wasmig_command()
    git = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True, text=True).stdout
    print(f"checkout {git.strip()}; {os.cpu_count()} cores; {args.rounds} restores per program")
    for name in [n.strip() for n in args.programs.split(",") if n.strip()]:
        if name not in PROGRAMS:
            parser.error(f"unknown program {name!r}")
        spec = PROGRAMS[name]
        try:
            wasm = real_programs.obtain(name)
        except real_programs.ProgramUnavailable as e:
            sys.exit(f"restore_real: {e}")
        with tempfile.TemporaryDirectory(prefix="restore-real-") as tmp:
            app, ck = Path(tmp, "app"), Path(tmp, "ck")
            app.mkdir()
            fname, text = spec["script"]
            (app / fname).write_text(text.lstrip())
            try:
                take_snapshot(wasmig, wasm, app, Path(tmp, "warm"), spec["argv"], args.timeout)  # warms the caches
                checkpoints = [take_snapshot(wasmig, wasm, app, Path(tmp, f"ck{k}"), spec["argv"], args.timeout)
                               for k in range(3)]
                ck = Path(tmp, "ck0")
                (app / "go").touch()
                restore_once(wasmig, app, ck, args.timeout)  # untimed: warms the caches
                runs = [restore_once(wasmig, app, ck, 300) for _ in range(args.rounds)]
            except Failed as e:
                print(f"{name:8} FAILED {e}")
                continue
            snap_kb = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file() and "module-" not in f.name) / 1024
            took, capture, write = (statistics.median(c[i] for c in checkpoints) for i in range(3))
            print(f"\n== {name}: {wasm.name}, {wasm.stat().st_size} bytes; snapshot {snap_kb / 1024:.1f} MB on disk "
                  f"(without the module copy)")
            print(f"{name:8} first checkpoint of a run (median of 3): capture {capture:.3f} s, write {write:.3f} s "
                  f"(with the module copy), request to exit {took:.2f} s")
            for key in runs[0]:
                xs = [r[key] for r in runs if key in r]
                unit = "" if key.startswith("pages") or key.startswith("peak") else " s"
                q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0], xs[0], xs[0]]
                print(f"{name:8} {key:26} median {statistics.median(xs):9.3f}{unit}  ({q[0]:.3f}-{q[2]:.3f})")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
