#!/usr/bin/env python3
"""Where the fast variant's extra instructions go, counted exactly (issue 15 item 5).

Timing a 5-8% difference on shared cores needs many rounds at several code placements
(``real_programs.py``, ``guest_real.py``), and still wanders by several percent between runs; an
instruction count does not: valgrind's callgrind counts every instruction a run executes, the same
on every run. This script runs one real program's guest (QuickJS or CPython, as ``guest_real.py``
runs it: ``real_programs.py``'s steady-state script, ``--size`` its argument, on wasmtime-py with
wasmig's WASI) under callgrind once per variant -- ``plain`` (the module as shipped), ``fast`` (this
tree's fast run module) and any ``--extra NAME=FILE.wasm`` (an experiment's module, e.g. an unsafe
one that prices a piece of the pass) -- and attributes the instructions executed in compiled code to
the module's functions, so a change to the pass can be priced per function without timing noise.

How: each run is a child process that compiles its module inside valgrind (valgrind's virtual CPU
lacks some of the host's features, so an artifact compiled outside would not load), serializes the
compiled module to a file, and runs ``_start``. callgrind names compiled code ``???`` with an
address; the artifact is an ELF file whose symbol table names each wasm function
(``wasm[0]::function[N]::NAME``), and the one load address that puts the most callgrind function
entries on symbol starts (page-aligned) maps every executed address to its function. The *polls* are
found in the disassembly (``objdump -d``): a byte load at exactly a memory's base (``movzbq
(%reg)``), which only the pass emits (the poll byte is byte 0 of the hidden page, or of the poll
memory); each is counted with the test and branch after it (3 instructions).

It prints every variant's compiled-code instructions and their ratio to plain's (not those outside
compiled code: they include compiling the module inside valgrind), the functions whose count changed
most from plain to fast, and each instrumented variant's polls executed: in all, by function and at
the hottest sites. Every run's output must equal plain's. Needs valgrind (Debian ``valgrind``) and
binutils' ``objdump``; about 5 minutes per variant for QuickJS's ``bench.js 1``. ``--out DIR``
keeps the modules, artifacts and callgrind files (default: a temporary directory, removed);
``--reuse`` analyses what ``--out`` already holds.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from guest_real import GUEST_ARGS, parse_extra  # noqa: E402
from guest_real import build as guest_real_build  # noqa: E402
from real_programs import SCRIPTS  # noqa: E402

from tests.real_programs import ProgramUnavailable, obtain  # noqa: E402

#: a poll: a byte load from exactly a register (a memory's base), with no index and no offset
POLL = re.compile(r"movzbq (?:0x0)?\(%r[a-z0-9]+\),%")
INSTR = re.compile(r"\s*([0-9a-f]+):\s+(.*)")
FUNCTION = re.compile(r"[0-9a-f]+ <(.*)>:")
SYMBOL = re.compile(r"([0-9a-f]+)\s.*\s[0-9a-f]+\s+(wasm\[\d+\]::function\[\d+\]\S*|\S*trampoline\S*)$")

#: One run under callgrind (argv: the variant's module, the artifact to write, the original module, the host dir
#: to preopen as /app, then the guest's argv): compiles the module inside valgrind, keeps the artifact for its
#: symbols, and runs ``_start`` with wasmig's WASI (guest_real.py's child, but for the compiling).
CHILD = f"""
import sys
sys.path.insert(0, {str(REPO / "benchmarks")!r})
from wasmig_host import bench_engine, timed_start
import wasmtime
from wasmig import Module
engine = bench_engine()
with open(sys.argv[1], "rb") as f:
    compiled = wasmtime.Module(engine, f.read())
with open(sys.argv[2], "wb") as f:
    f.write(compiled.serialize())
timed_start(Module.from_file(sys.argv[3]), compiled, sys.argv[5:], preopens=[(sys.argv[4], "/app")],
            wasm_engine=engine)
"""


def build(program: Path, extras: list[tuple[str, Path]], out: Path) -> list[str]:
    """Write every variant's module (guest_real.py's: plain, fast, the extras) into ``out``
    (``NAME.wasm``); their names, plain first."""
    blobs = guest_real_build(program, [], extras, out)
    for name, blob in blobs.items():
        (out / f"{name}.wasm").write_bytes(blob)
    return list(blobs)


def run_variant(name: str, program: Path, guest: list[str], app: Path, out: Path) -> bytes:
    """One run of variant ``name`` under callgrind: its output."""
    print(f"{name}: running under callgrind (minutes) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no", "--compress-strings=no",
         f"--callgrind-out-file={out / name}.callgrind", sys.executable, "-c", CHILD, str(out / f"{name}.wasm"),
         str(out / f"{name}.cwasm"), str(program), str(app), *guest],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"jit_profile: {name} failed: {proc.stderr.decode(errors='replace')[-1500:]}")
    (out / f"{name}.stdout").write_bytes(proc.stdout)
    return proc.stdout


def parse_callgrind(path: Path) -> tuple[collections.Counter[int], list[int], int]:
    """Self instruction counts of compiled code by address, the compiled code's function entries
    callgrind saw, and the instructions executed anywhere else."""
    counts: collections.Counter[int] = collections.Counter()
    entries: list[int] = []
    other = 0
    obj = ""
    after_call = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                obj = line[3:].strip()
            elif line.startswith("fn="):
                if obj == "???":
                    entries.append(int(line[3:].split()[0].split("'")[0], 16))
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the call's inclusive cost
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if obj == "???":
                    counts[int(fields[0], 16)] += int(fields[-1])
                else:
                    other += int(fields[-1])
    return counts, entries, other


def symbols(artifact: Path) -> list[tuple[int, str]]:
    """(address, name) of every function in a compiled artifact, sorted."""
    out = subprocess.run(["objdump", "-t", str(artifact)], capture_output=True, text=True, check=True).stdout
    found = [(int(m.group(1), 16), m.group(2)) for m in map(SYMBOL.match, out.splitlines()) if m]
    return sorted(found)


def load_address(entries: list[int], syms: list[tuple[int, str]]) -> int:
    """Where the artifact's code was mapped: the page-aligned offset that puts the most callgrind
    function entries on symbol starts."""
    votes: collections.Counter[int] = collections.Counter()
    starts = [a for a, _ in syms]
    for e in set(entries):
        for s in starts:
            if (e - s) % 4096 == 0:
                votes[e - s] += 1
    if not votes:
        raise SystemExit("jit_profile: callgrind's compiled-code addresses match no function of the artifact")
    return votes.most_common(1)[0][0]


def short(symbol: str) -> str:
    """``wasm[0]::function[262]::JS_CallInternal`` -> ``JS_CallInternal`` (or ``function[N]``)."""
    return symbol.split("::")[-1]


class Profile:
    """One variant's instructions, per address of its artifact and per function."""

    def __init__(self, callgrind: Path, artifact: Path) -> None:
        counts, entries, self.outside = parse_callgrind(callgrind)
        self.syms = symbols(artifact)
        base = load_address(entries, self.syms)
        self.at = collections.Counter({a - base: n for a, n in counts.items()})
        self.artifact = artifact
        starts = [a for a, _ in self.syms]
        self.by_function: collections.Counter[str] = collections.Counter()
        for a, n in self.at.items():
            i = bisect.bisect_right(starts, a) - 1
            self.by_function[short(self.syms[i][1]) if i >= 0 else "?"] += n

    def total(self) -> int:
        return sum(self.by_function.values())

    def polls(self) -> list[tuple[int, int, str]]:
        """(executions, address, function) of every poll in the artifact's code."""
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(self.artifact)], capture_output=True,
                             text=True, check=True).stdout
        found = []
        function = "?"
        for line in out.splitlines():
            m = FUNCTION.match(line)
            if m:
                function = short(m.group(1))
                continue
            m = INSTR.match(line)
            if m and POLL.match(m.group(2)):
                a = int(m.group(1), 16)
                found.append((self.at.get(a, 0), a, function))
        return found


def report(profiles: dict[str, Profile], top: int) -> None:
    plain, fast = profiles["plain"], profiles["fast"]
    p = plain.total()
    for name, prof in profiles.items():
        t = prof.total()
        print(f"{name:12} {t / 1e9:8.3f} G instructions in compiled code  {t / p:.4f}x plain  ({(t - p) / 1e6:+.0f} M)")
    names = set(plain.by_function) | set(fast.by_function)
    rows = sorted(names, key=lambda n: -(fast.by_function[n] - plain.by_function[n]))[:top]
    print(f"\n{'function':34} {'plain M':>9} {'fast M':>9} {'extra M':>9}")
    for n in rows:
        a, b = plain.by_function[n], fast.by_function[n]
        print(f"{n[:34]:34} {a / 1e6:9.1f} {b / 1e6:9.1f} {(b - a) / 1e6:+9.1f}" + (f"  {b / a:.3f}x" if a else ""))
    for name, prof in profiles.items():
        polls = prof.polls()
        if name == "plain" or not polls:
            continue
        executed = sum(n for n, _, _ in polls)
        per_function: collections.Counter[str] = collections.Counter()
        for n, _, fn in polls:
            per_function[fn] += n
        extra = prof.total() - p
        print(f"\n{name}: {len(polls)} polls in the code, {executed / 1e6:.1f} M executed, about "
              f"{3 * executed / 1e6:.0f} M instructions with their tests and branches"
              + (f" ({3 * executed / extra:.0%} of the extra)" if extra > 0 else ""))
        print("  by function: " + ", ".join(f"{fn} {n / 1e6:.1f} M" for fn, n in per_function.most_common(top // 2)))
        print("  hottest sites: " + ", ".join(f"{fn}+{a - start_of(prof, fn):#x} {n / 1e6:.1f} M"
                                             for n, a, fn in sorted(polls, reverse=True)[:top // 2]))


def start_of(profile: Profile, function: str) -> int:
    """The address of ``function``'s first instruction in the profile's artifact."""
    return next(a for a, s in profile.syms if short(s) == function)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", choices=sorted(GUEST_ARGS), default="quickjs")
    ap.add_argument("--size", type=int, default=1, metavar="N", help="the script's size argument (default 1)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=FILE.wasm",
                    help="also this module (repeatable)")
    ap.add_argument("--out", type=Path, help="keep the modules, artifacts and callgrind files here")
    ap.add_argument("--reuse", action="store_true", help="analyse the runs --out holds already")
    ap.add_argument("--top", type=int, default=20, help="functions to list (default 20)")
    args = ap.parse_args(argv)
    if args.reuse and args.out is None:
        ap.error("--reuse needs --out")
    extras = [parse_extra(spec) for spec in args.extra]
    for name, _ in extras:
        if name in ("plain", "fast") or not re.fullmatch(r"[\w.-]+", name):
            ap.error(f"--extra: {name!r} is taken or not a plain name")
    for tool in ("objdump",) + (() if args.reuse else ("valgrind",)):
        if shutil.which(tool) is None:
            sys.exit(f"jit_profile: needs {tool} (Debian: apt-get install -y "
                     f"{'valgrind' if tool == 'valgrind' else 'binutils'})")
    with tempfile.TemporaryDirectory(prefix="wasmig-jit-profile-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        if args.reuse:
            found = sorted(p.stem for p in out.glob("*.callgrind"))
            names = ["plain", "fast", *(n for n in found if n not in ("plain", "fast"))]
        else:
            try:
                program = obtain(args.program)
            except ProgramUnavailable as e:
                raise SystemExit(f"jit_profile: {e}") from None
            app = out / "app"
            app.mkdir(exist_ok=True)
            for fname, text in SCRIPTS.items():
                (app / fname).write_text(text.lstrip())
            guest = [*GUEST_ARGS[args.program][:-1], str(args.size)]
            names = build(program, extras, out)
            expected = None
            for name in names:
                printed = run_variant(name, program, guest, app, out)
                if expected is None:
                    expected = printed
                elif printed != expected:
                    raise SystemExit(f"jit_profile: {name} printed {printed[-200:]!r}, plain {expected[-200:]!r}")
        profiles = {name: Profile(out / f"{name}.callgrind", out / f"{name}.cwasm") for name in names}
        print(f"{args.program}: callgrind, one run per variant (deterministic counts)")
        report(profiles, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
