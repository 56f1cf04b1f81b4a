#!/usr/bin/env python3
"""What does the checkpointing instrumentation cost on wasmtime, in run time and code size?

The instrumentation pass (``wasmig.instrument.unwind.instrument``, see docs/instrument.md)
rewrites a module so wasmtime can checkpoint it: a poll at every function entry and loop header
and a state check after every call (the fast variant: no entry polls, a poll after each call
that can unwind instead, once per four iterations of an unrolled small innermost loop, none in
a loop that makes such a call every iteration), and the unwind and rewind code paths. This
benchmark measures
what that costs a program that is never checkpointed -- the hot-path overhead every migratable
program pays.

Workloads: the small C kernels in ``benchmarks/kernels/*.c``: eight of wasmig's own (dense matmul
on doubles, a prime sieve, n-body, SHA-256, libc ``qsort`` through a comparison function
pointer, recursive fib, an open-addressing hash table, an LZ77 round trip) and nineteen of the
public PolyBench/C 4.2.1 suite (``pb_*.c``, re-written from its kernels with attribution in each
file): linear algebra (atax, bicg, mvt, gesummv, gramschmidt, covariance), triangular loop nests
whose inner trip counts vary with the outer index (trmm, syrk, lu, ludcmp, cholesky, trisolv,
nussinov), recurrences with variable trip counts (durbin: Levinson-Durbin), stencils (jacobi-1d,
seidel-2d, fdtd-2d, heat-3d) and floyd-warshall. Each is compiled once with
``wasmig.toolchain.compile_c`` at ``-O2`` (zig, wasm32-wasi, cached), sized to run roughly
0.1-1 s on wasmtime, and prints a checksum.

Variants of each kernel:

- ``plain``: the module as compiled;
- ``fast``: ``instrument(module, count_steps=False)``, encoded with ``encode_module``: the variant
  every ``wasmig run``/``restore`` on wasmtime uses (stable points only test the poll bytes). The
  issue's targets (<= 1.05x geomean, <= 1.15x worst) are about this column;
- ``base`` (with ``--baseline REV``): the fast variant as git revision REV's pass builds it (its
  files extracted with ``git archive``, the pass run in a child process), timed in the same
  interleaved rounds: a change to the pass measured before/after side by side;
- ``steps`` (unless ``--no-steps``): ``instrument(module, count_steps=True)``, the deterministic
  variant that also counts stable points (``--checkpoint-at-step``, ``--count-steps``): what the canonical step count
  costs is the difference between ``steps`` and ``fast``;
- ``asyncify`` (when binaryen's ``wasm-opt`` is on PATH, e.g. Debian's ``binaryen`` package):
  ``wasm-opt --asyncify -O2``, the usual alternative for unwinding a wasm stack. It only adds
  exports, so it runs as an ordinary WASI command. (Retried with ``--all-features`` when
  binaryen does not infer every feature of zig's output, e.g. bulk memory in Debian's 108.)
  Without ``wasm-opt`` the column is skipped with a note. Not like for like: asyncify only
  instruments functions that may reach an import (where it assumes an unwind can start), so
  pure compute loops stay untouched and cannot be interrupted, whereas ``fast`` polls in every
  loop; ``wasm-opt -O2`` also re-optimizes the whole module, which can make it faster than plain.

Times are the CPU time of the thread that runs the guest (``time.thread_time``: a run descheduled
by other load on a shared machine is not charged for the wait; ``--wall`` for wall time).
Every variant runs on wasmtime (wasmtime-py) with wasmig's own WASI (``wasmig_host.py``, stdout to a
temp file; until session 13 it was wasmtime's own WASI, which cannot run a module with the hidden
page), the same host layer for all, so only the guest code differs. Each module is compiled once per
variant, on ``wasmig run``'s engine; every run makes a fresh store and instance and times only the
``_start`` call. After
one untimed warm-up run of the plain module, runs are interleaved (plain, fast, steps, asyncify,
then fast, steps, asyncify, plain, ...: the order rotates each round) so drift in machine load and cache
warmth hit all variants alike. Every variant is timed at four *code placements* (:func:`placed`:
its machine code moved by padding the first function; where a hot loop lands moves a kernel by
up to 15% with the code unchanged, which a single placement reports as overhead or as gain), in
``--runs`` rounds (default 3), and the median of all those runs is reported; as a second view,
the ratio of the fastest runs (the least disturbed on a shared machine). Every run's
stdout must equal the plain module's (the checksums agree) or the script fails.

Output: per kernel the median times and their ratios to plain; the ``.wasm`` sizes and growth
(the instrumented file carries the ``wasmig.sitemap`` custom section, and ``wasm-opt`` drops the
``name`` section, so whole files are not like for like); the code-section sizes and growth (the
fair comparison of generated code). Then, per variant, the geometric mean and the worst time
ratio and the mean size growth. Then (unless ``--no-timing``) the time to safepoint, checkpoint
and restore times at 16/64/256 MiB of guest memory (``benchmarks/checkpoint_timing.py``, whose
docstring explains the method). The whole run takes about 3-5 minutes; ``--kernels fib,sieve``
for a subset.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from wasmig import Module  # noqa: E402
from wasmig.instrument.unwind import instrument  # noqa: E402
from wasmig.toolchain import compile_c  # noqa: E402

sys.path.insert(0, str(HERE))
import placement  # noqa: E402
from wasmig_host import bench_engine, timed_start  # noqa: E402

KERNELS_DIR = HERE / "kernels"
#: code placements: never-executed global stores padding the first defined function (always
#: __wasm_call_ctors, run once), which moves all later functions' machine code: Cranelift places
#: functions at 32-byte boundaries, and 2, 6 and 9 stores (each to a global of its own) move them
#: by 32, 64 and 96 bytes (session 8: before, 1, 3 and 5 stores to one global all moved them by 32)
PLACEMENTS = (0, 2, 6, 9)


@dataclass
class Variant:
    name: str
    wasm: bytes
    modules: list[wasmtime.Module]  # one per code placement
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        """The fastest run: the one least disturbed by the machine's other tenants."""
        return min(self.times)


def make_engine() -> wasmtime.Engine:
    """``wasmig run``'s engine (wasmig_host.py), for every variant."""
    return bench_engine()


#: what a run's time is: ``time.thread_time`` (the CPU time of the thread that runs the guest: on a
#: machine shared with other load, a run descheduled for a while is not charged for it) or, with
#: ``--wall``, ``time.perf_counter``
CLOCK = {"clock": time.thread_time}


def run_once(engine: wasmtime.Engine, module: wasmtime.Module, argv: list[str], tmp: Path,
             host: Module) -> tuple[float, str]:
    """Instantiate *module* (a variant of *host*'s code) with wasmig's WASI, time its ``_start``;
    return (seconds, stdout)."""
    out = tmp / "stdout.txt"
    with out.open("wb") as f:
        elapsed = timed_start(host, module, argv, stdout=f, clock=CLOCK["clock"], wasm_engine=engine)
    return elapsed, out.read_text()


def asyncify(src: Path, dst: Path) -> bytes:
    """``wasm-opt --asyncify -O2 src -o dst``; return the result's bytes."""
    cmd = ["wasm-opt", "--asyncify", "-O2", str(src), "-o", str(dst)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # older binaryen may not infer every feature zig's output uses
        proc = subprocess.run([*cmd, "--all-features"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wasm-opt failed on {src.name}: {proc.stderr.strip()}")
    return dst.read_bytes()


def placed(wasm: bytes, stores: int) -> bytes:
    """``wasm`` with its code moved: ``stores`` stores to a new global, behind a test of that
    global (never true), at the start of the first defined function. Where a hot loop lands
    relative to cache-line and fetch boundaries moves a kernel by up to 15% on its own (fib: 0.177
    s at one placement, 0.160-0.164 s at five others, the code unchanged), so every variant is
    timed at the same few placements and the median taken over all of them. Written into the
    binary by ``placement.placed`` (a global of its own per store: Cranelift keeps only the last
    of several stores to one global, so with one global every count of stores moved the code by
    the same 32 bytes)."""
    return placement.placed(wasm, stores)


#: Run in a child process with a baseline revision's tree first on sys.path: writes that tree's
#: fast variant of the module to stdout.
BASELINE_CHILD = """
import sys
from wasmig import Module
from wasmig.instrument.unwind import instrument
sys.stdout.buffer.write(instrument(Module.from_file(sys.argv[1]), count_steps=False).data)
"""


def baseline_tree(rev: str, tmp: Path) -> Path:
    """The files of git revision ``rev`` of this repository, extracted under ``tmp``."""
    tree = tmp / f"baseline-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"overhead: cannot read revision {rev!r}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def baseline_fast(tree: Path, path: Path) -> bytes:
    """The fast variant of the module at ``path`` as the pass of the revision in ``tree`` builds it."""
    proc = subprocess.run([sys.executable, "-c", BASELINE_CHILD, str(path)], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"overhead: the baseline's pass failed on {path.name}: {proc.stderr.decode()[-2000:]}")
    return proc.stdout


def measure_kernel(engine: wasmtime.Engine, src: Path, runs: int, use_asyncify: bool, tmp: Path,
                   steps: bool = True, baseline: Path | None = None) -> list[Variant]:
    path = compile_c(src, opt="-O2")
    wasm = path.read_bytes()
    module = Module.from_file(path)
    blobs = [("plain", wasm), ("fast", instrument(module, count_steps=False).data)]
    if baseline is not None:
        blobs.append(("base", baseline_fast(baseline, path)))
    if steps:
        blobs.append(("steps", instrument(module, count_steps=True).data))
    if use_asyncify:
        blobs.append(("asyncify", asyncify(path, tmp / f"{src.stem}.asyncify.wasm")))
    variants = [Variant(name, blob, [wasmtime.Module(engine, placed(blob, p)) for p in PLACEMENTS])
                for name, blob in blobs]
    argv = [src.stem]
    expected = run_once(engine, variants[0].modules[0], argv, tmp, module)[1]  # untimed warm-up; the reference
    for k in range(runs):
        for at in range(len(PLACEMENTS)):
            turn = k * len(PLACEMENTS) + at
            for v in variants[turn % len(variants):] + variants[:turn % len(variants)]:  # rotate who goes first
                elapsed, stdout = run_once(engine, v.modules[at], argv, tmp, module)
                if stdout != expected:
                    raise SystemExit(f"{src.stem}: {v.name} printed {stdout!r}, plain printed {expected!r}")
                v.times.append(elapsed)
    return variants


def code_size(wasm: bytes) -> int:
    """Bytes of the code section (id 10) of a module's binary."""
    from wasmig.binary.decoder import sections

    return next((end - start for section_id, start, end in sections(wasm) if section_id == 10), 0)


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3,
                    help=f"rounds; each times every variant at each of {len(PLACEMENTS)} code placements (default 3)")
    ap.add_argument("--kernels", default="", help="comma-separated subset (default: all in kernels/)")
    ap.add_argument("--no-asyncify", action="store_true", help="skip the wasm-opt --asyncify column")
    ap.add_argument("--no-timing", action="store_true",
                    help="skip the time-to-safepoint and checkpoint/restore times (checkpoint_timing.py)")
    ap.add_argument("--sizes", default="16,64,256", help="guest memory sizes in MiB for the checkpoint/restore "
                    "times (default: %(default)s)")
    ap.add_argument("--no-steps", action="store_true", help="skip the deterministic (steps) variant")
    ap.add_argument("--baseline", metavar="REV", help="also time the fast variant as git revision REV's pass "
                    "builds it (column 'base'), interleaved with the others: before/after in one run")
    ap.add_argument("--wall", action="store_true", help="time runs in wall time, not the guest thread's CPU time")
    args = ap.parse_args(argv)
    if args.wall:
        CLOCK["clock"] = time.perf_counter

    sources = sorted(KERNELS_DIR.glob("*.c"))
    if args.kernels:
        wanted = set(args.kernels.split(","))
        sources = [s for s in sources if s.stem in wanted]
    use_asyncify = not args.no_asyncify and shutil.which("wasm-opt") is not None
    note = None
    if args.no_asyncify:
        note = "asyncify column skipped (--no-asyncify)"
    elif not use_asyncify:
        note = "asyncify column skipped: binaryen's wasm-opt is not on PATH (apt-get install binaryen)"

    engine = make_engine()
    others = ["fast", *(["base"] if args.baseline else []), *([] if args.no_steps else ["steps"]),
              *(["asyncify"] if use_asyncify else [])]
    header = f"{'kernel':<10} {'plain s':>8}"
    for name in others:
        header += f" {name[:5] + ' s':>8} {'ratio':>6}"
    header += f" | {'.wasm plain':>11}"
    for name in others:
        header += f" {name[:5]:>8} {'x':>5}"
    header += f" | {'code plain':>10}"
    for name in others:
        header += f" {name[:5]:>8} {'x':>5}"
    print(header)
    print("-" * len(header))
    ratios: dict[str, list[float]] = {name: [] for name in others}
    best_ratios: dict[str, list[float]] = {name: [] for name in others}
    growth: dict[str, list[float]] = {name: [] for name in others}
    code_growth: dict[str, list[float]] = {name: [] for name in others}
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wasmig-overhead-") as d:
        baseline = baseline_tree(args.baseline, Path(d)) if args.baseline else None
        for src in sources:
            plain, *rest = measure_kernel(engine, src, args.runs, use_asyncify, Path(d), not args.no_steps, baseline)
            names.append(src.stem)
            times = f"{src.stem:<10} {plain.median:>8.3f}"
            sizes = f" | {len(plain.wasm):>11}"
            codes = f" | {code_size(plain.wasm):>10}"
            for v in rest:
                r = v.median / plain.median
                g = len(v.wasm) / len(plain.wasm)
                cg = code_size(v.wasm) / code_size(plain.wasm)
                ratios[v.name].append(r)
                best_ratios[v.name].append(v.best / plain.best)
                growth[v.name].append(g)
                code_growth[v.name].append(cg)
                times += f" {v.median:>8.3f} {r:>5.2f}x"
                sizes += f" {len(v.wasm):>8} {g:>4.2f}x"
                codes += f" {code_size(v.wasm):>8} {cg:>4.2f}x"
            print(times + sizes + codes, flush=True)
    print()
    for name in others:
        worst = max(range(len(names)), key=lambda i: ratios[name][i])
        print(f"{name:<9} time: geomean {geomean(ratios[name]):.2f}x, worst {ratios[name][worst]:.2f}x "
              f"({names[worst]}); fastest runs: geomean {geomean(best_ratios[name]):.2f}x, worst "
              f"{max(best_ratios[name]):.2f}x; .wasm size: geomean {geomean(growth[name]):.2f}x; "
              f"code section: geomean {geomean(code_growth[name]):.2f}x")
    if note:
        print(note)
    print(f"(median of {args.runs * len(PLACEMENTS)} interleaved runs: {args.runs} at each of {len(PLACEMENTS)} code "
          "placements, order rotated each time; times are the _start call "
          f"only, in {'wall time' if args.wall else 'the CPU time of the thread running the guest'}; "
          "all checksums agree. fast's and steps' .wasm include the wasmig.sitemap custom section; "
          "wasm-opt drops the name section, so compare code sections across tools.)")
    if not args.no_timing:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from checkpoint_timing import report

        print()
        for line in report(sizes_mib=tuple(int(x) for x in args.sizes.split(",") if x.strip())):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
