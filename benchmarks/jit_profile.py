#!/usr/bin/env python3
"""Where the fast variant's extra instructions go, counted exactly (issue 15 item 5).

Timing a 5-8% difference on shared cores needs many rounds at several code placements
(``real_programs.py``, ``guest_real.py``); an instruction count does not: valgrind's callgrind
counts every instruction a run executes, the same on every run. This script runs one real program
(``real_programs.py``'s steady-state script, ``--size`` its argument) under callgrind twice --
``wasmig run --plain`` and ``wasmig run`` (the fast variant) -- and attributes the instructions
executed in wasmtime's compiled code to the module's functions, so a change to the pass can be
priced per function without timing noise.

How: each variant first runs natively with a fresh ``WASMIG_CACHE`` (instrumenting and compiling
there, untimed), then its compiled artifact is deleted and the run is repeated under
``valgrind --tool=callgrind --dump-instr=yes``, so that wasmtime compiles the module again inside
valgrind (Cranelift's output is deterministic: the artifact it writes is the very code that ran).
callgrind names compiled code ``???`` with an address; the compiled artifact is an ELF file whose
symbol table names each wasm function (``wasm[0]::function[N]::NAME``), and the one load address
that lines up the most callgrind function entries with symbol starts (page-aligned) maps every
executed address to its function. The fast variant's *polls* are found in its disassembly
(``objdump -d``): a byte load at exactly a memory's base (``movzbq (%reg)``), which only the pass
emits (the poll byte is byte 0 of the hidden page, or of the poll memory); each is counted with the
test and branch after it (3 instructions).

It prints the compiled code's instruction totals for both variants and their ratio (not the
instructions outside it: they include compiling the module inside valgrind), the functions whose
count changed most, and the polls executed: in all and at the hottest sites, with their functions. Needs
valgrind (Debian ``valgrind``) and binutils' ``objdump``; about 10 minutes per variant for
QuickJS's ``bench.js 1``. ``--out DIR`` keeps the callgrind files and caches (default: a
temporary directory, removed); ``--reuse`` analyses what ``--out`` already holds.
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
from real_programs import PROGRAMS, SCRIPTS, obtain  # noqa: E402

VARIANTS = {"plain": ["--plain"], "fast": []}
#: the guest's argv after the script, per program (a short run: callgrind is ~50x slower than native)
DEFAULT_SIZE = {"quickjs": "1", "cpython": "1"}
#: a poll: a byte load from exactly a register (a memory's base), with no index and no offset
POLL = re.compile(r"movzbq (?:0x0)?\(%r[a-z0-9]+\),%")
INSTR = re.compile(r"\s*([0-9a-f]+):\s+(.*)")
FUNCTION = re.compile(r"[0-9a-f]+ <(.*)>:")
SYMBOL = re.compile(r"([0-9a-f]+)\s.*\s[0-9a-f]+\s+(wasm\[\d+\]::function\[\d+\]\S*|\S*trampoline\S*)$")


def run_variant(name: str, program: Path, argv: list[str], app: Path, out: Path) -> None:
    """Run one variant natively (to fill its cache), then under callgrind with the artifact deleted."""
    cache = out / name / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env = {**os.environ, "WASMIG_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "wasmig", "run", *VARIANTS[name], "--dir", f"{app}::/app", str(program), *argv]
    print(f"{name}: preparing (instrumenting and compiling natively) ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    for f in cache.rglob("*.cwasm*"):
        f.unlink()
    print(f"{name}: running under callgrind (minutes) ...", file=sys.stderr, flush=True)
    subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
                    "--compress-strings=no", f"--callgrind-out-file={out / name}.callgrind", *cmd],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    parts = symbol.split("::")
    return parts[-1] if len(parts) > 2 else parts[-1] if len(parts) == 1 else parts[1]


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


def artifact_of(out: Path, name: str) -> Path:
    found = sorted((out / name / "cache").rglob("*.cwasm"))
    if len(found) != 1:
        raise SystemExit(f"jit_profile: expected one compiled artifact under {out / name / 'cache'}, "
                         f"found {len(found)}")
    return found[0]


def report(plain: Profile, fast: Profile, top: int) -> None:
    p, f = plain.total(), fast.total()
    print(f"compiled code: plain {p / 1e9:.3f} G instructions, fast {f / 1e9:.3f} G: {f / p:.4f}x "
          f"(+{(f - p) / 1e6:.0f} M)")
    names = set(plain.by_function) | set(fast.by_function)
    rows = sorted(names, key=lambda n: -(fast.by_function[n] - plain.by_function[n]))[:top]
    print(f"\n{'function':34} {'plain M':>9} {'fast M':>9} {'extra M':>9}")
    for n in rows:
        a, b = plain.by_function[n], fast.by_function[n]
        print(f"{n[:34]:34} {a / 1e6:9.1f} {b / 1e6:9.1f} {(b - a) / 1e6:+9.1f}" + (f"  {b / a:.3f}x" if a else ""))
    polls = fast.polls()
    executed = sum(n for n, _, _ in polls)
    per_function: collections.Counter[str] = collections.Counter()
    for n, _, fn in polls:
        per_function[fn] += n
    print(f"\nfast variant's polls: {len(polls)} in the code, {executed / 1e6:.1f} M executed, about "
          f"{3 * executed / 1e6:.0f} M instructions with their tests and branches "
          f"({3 * executed / max(f - p, 1):.0%} of the extra)")
    print("by function: " + ", ".join(f"{fn} {n / 1e6:.1f} M" for fn, n in per_function.most_common(top // 2)))
    print("hottest sites: " + ", ".join(f"{fn}+{a - fast_start(fast, fn):#x} {n / 1e6:.1f} M"
                                         for n, a, fn in sorted(polls, reverse=True)[:top // 2]))


def fast_start(profile: Profile, function: str) -> int:
    return next(a for a, s in profile.syms if short(s) == function)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", choices=sorted(PROGRAMS), default="quickjs")
    ap.add_argument("--size", help="the script's argument (default 1: a short run)")
    ap.add_argument("--out", type=Path, help="keep the callgrind files and caches here")
    ap.add_argument("--reuse", action="store_true", help="analyse the runs --out holds already")
    ap.add_argument("--top", type=int, default=20, help="functions to list (default 20)")
    args = ap.parse_args(argv)
    if args.reuse and args.out is None:
        ap.error("--reuse needs --out")
    for tool in ("objdump",) + (() if args.reuse else ("valgrind",)):
        if shutil.which(tool) is None:
            sys.exit(f"jit_profile: needs {tool} (Debian: apt-get install -y "
                     f"{'valgrind' if tool == 'valgrind' else 'binutils'})")
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="wasmig-jit-profile-")
        out = Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if not args.reuse:
            spec = PROGRAMS[args.program]
            program = obtain(spec)
            app = out / "app"
            app.mkdir(exist_ok=True)
            (app / spec["script"]).write_text(SCRIPTS[spec["script"]].lstrip())
            guest = [spec["steady"][0], args.size or DEFAULT_SIZE[args.program]]
            for name in VARIANTS:
                run_variant(name, program, guest, app, out)
        plain, fast = (Profile(out / f"{name}.callgrind", artifact_of(out, name)) for name in VARIANTS)
        print(f"{args.program}: callgrind, one run per variant (deterministic counts)")
        report(plain, fast, args.top)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
