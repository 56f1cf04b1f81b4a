#!/usr/bin/env python3
"""How much does ``wasmig run`` add to a program's start-up, against plain wasmtime-py?

The target (issue 14): ``wasmig run hello.wasm`` costs at most 30 ms more than a cached wasmtime-py
run of the same module. Both sides are whole processes, started the same way and measured side by
side, alternating, so that the machine's other load falls on both alike:

- ``wasmtime-py``: a fresh ``python`` that imports wasmtime, loads the module's compiled artifact
  from a file made before timing starts (``Module.deserialize_file``: the cached case), links
  wasmtime's own WASI with stdout to a file, and runs ``_start``;
- ``wasmig run``: the console script, on its default engine (wasmtime, its own artifact cache warm
  from an untimed first run), stdout to a file;
- ``python -c pass``: the interpreter's own start, for scale.

It prints the median and quartiles of each, in wall time and in CPU time (user + system, which
other load on a shared machine disturbs much less), and the median of the per-round differences
(each round runs all commands once, in rotating order). ``--rounds`` (default 21). The guest is
``tests/programs/hello.c`` compiled with the test toolchain (cached).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WASMTIME_PY = """
import sys, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
wasi = wasmtime.WasiConfig()
wasi.argv = [sys.argv[2]]
wasi.stdout_file = sys.argv[3]
store = wasmtime.Store(engine)
store.set_wasi(wasi)
linker.instantiate(store, module).exports(store)["_start"](store)
"""


#: Bytecode caches on, as a pip install leaves them (PYTHONDONTWRITEBYTECODE would make every run of
#: an edited checkout recompile its sources): the untimed first run writes them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of ``cmd``. CPU time is what the run
    itself cost, much less disturbed than wall time by other load on a shared machine."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          env=ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"startup: {cmd[:3]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed, _children_cpu() - cpu


def quartiles(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4)
    return f"median {statistics.median(xs) * 1000:6.1f} ms  (quartiles {q[0] * 1000:.1f}-{q[2] * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()

    import wasmtime

    from wasmig.toolchain import compile_c

    hello = str(compile_c(REPO / "tests" / "programs" / "hello.c"))
    wasmig = [str(Path(sys.executable).with_name("wasmig"))]
    if not Path(wasmig[0]).exists():
        wasmig = [sys.executable, "-m", "wasmig"]
    with tempfile.TemporaryDirectory() as tmp:
        cwasm = os.path.join(tmp, "hello.cwasm")
        engine = wasmtime.Engine()
        Path(cwasm).write_bytes(wasmtime.Module.from_file(engine, hello).serialize())
        out = os.path.join(tmp, "out.txt")
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "wasmtime-py (cached)": [sys.executable, "-c", WASMTIME_PY, cwasm, hello, out],
            "wasmig run": [*wasmig, "run", hello],
        }
        for cmd in commands.values():  # warm every cache (wasmig's artifact cache, the OS's file cache)
            timed(cmd, tmp)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                w, c = timed(commands[name], tmp)
                wall[name].append(w)
                cpu[name].append(c)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for label, times in (("wall", wall), ("cpu", cpu)):
        for name, xs in times.items():
            print(f"{label:4} {name:24} {quartiles(xs)}")
        extra = [a - b for a, b in zip(times["wasmig run"], times["wasmtime-py (cached)"], strict=True)]
        ratio = statistics.median(times["wasmig run"]) / statistics.median(times["wasmtime-py (cached)"])
        print(f"{label:4} wasmig run - wasmtime-py: median {statistics.median(extra) * 1000:+.1f} ms per round "
              f"(target: at most +30 ms); ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
