#!/usr/bin/env python3
"""Does a change to the instrumentation pass keep its output byte for byte? (issue 15 item 3)

Work on the pass's own speed and memory must not change what it emits (other work depends on the
instrumented code's shape). This script instruments a fixed corpus with the pass of the tree it
runs from, both variants (``fast``, ``steps``), and records the sha256 of every output (the run
module with its site index, and the rewind module; or the pass's refusal message): CPython for
WASI and QuickJS-ng (``tests/real_programs.py``, cached), the benchmark kernels
(``benchmarks/kernels/*.c``) and the test programs (``tests/programs/*.c``), compiled at
``-O2``, and every module of the spec testsuite's non-SIMD scripts (converted by ``wast2json``,
cached), which holds the odd constructs (values buried beneath blocks, deep ``br_table``s,
multi-value blocks) real programs hardly have.

``--write FILE`` records the digests (run it on the tree before the change); ``--check FILE``
compares against such a record and exits 1 on any difference, naming the modules that differ.
``--skip-big`` leaves out CPython (a minute or two per variant on the old pass).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests import real_programs  # noqa: E402
from tests.spec.convert import convert_wast, find_testsuite  # noqa: E402
from wasmig.errors import WasmError  # noqa: E402
from wasmig.instrument.unwind import InstrumentError, instrument  # noqa: E402
from wasmig.module import Module  # noqa: E402
from wasmig.toolchain import ToolchainError, compile_c  # noqa: E402

VARIANTS = {"fast": False, "steps": True}


def corpus(skip_big: bool) -> list[tuple[str, Path]]:
    """(name, path of the module) for every module the check instruments."""
    out: list[tuple[str, Path]] = []
    for name in real_programs.PROGRAMS:
        if skip_big and name == "cpython":
            continue
        try:
            out.append((f"program:{name}", real_programs.obtain(name)))
        except real_programs.ProgramUnavailable as e:
            print(f"{name}: unavailable ({e}); left out", file=sys.stderr)
    sources = sorted((REPO / "benchmarks" / "kernels").glob("*.c")) + sorted((REPO / "tests" / "programs").glob("*.c"))
    for src in sources:
        try:
            out.append((f"c:{src.parent.name}/{src.name}", compile_c(src, opt="-O2")))
        except ToolchainError:  # a program needing flags of its own (threads): left out
            print(f"{src.name}: not compiled at plain -O2; left out", file=sys.stderr)
    suite = find_testsuite()
    for wast in sorted(suite.glob("*.wast")) if suite.is_dir() else []:
        if wast.stem.startswith("simd_"):
            continue
        try:
            script = convert_wast(wast)
        except RuntimeError as e:
            print(f"{wast.name}: not converted ({e}); left out", file=sys.stderr)
            continue
        commands = json.loads(script.read_text())["commands"]
        for cmd in commands:
            if cmd.get("type") == "module" and cmd.get("module_type", "binary") == "binary":
                out.append((f"spec:{wast.stem}/{cmd['filename']}", script.parent / cmd["filename"]))
    return out


def digest(path: Path, count_steps: bool) -> str:
    """The sha256 of the instrumented run module and, when there is one, the rewind module, or
    why there is none (the pass's refusal, an invalid module): a refusal that changes is a
    difference too."""
    try:
        module = Module.from_file(path)
    except WasmError as e:
        return f"unloadable: {type(e).__name__}"
    try:
        done = instrument(module, count_steps=count_steps)
    except InstrumentError as e:
        return f"refused: {e}"
    h = hashlib.sha256(done.data)  # the run module, its site index included (a custom section)
    if done.rewind is not None:  # the rewind module, when the copies went into one of their own
        h.update(b"\0rewind\0" + done.rewind)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FILE", type=Path, help="record the digests into FILE (JSON)")
    group.add_argument("--check", metavar="FILE", type=Path, help="compare against the digests recorded in FILE")
    ap.add_argument("--skip-big", action="store_true", help="leave out CPython")
    args = ap.parse_args(argv)
    recorded: dict[str, str] = {}
    if args.check is not None:
        try:
            recorded = json.loads(args.check.read_text())
        except (OSError, ValueError) as e:
            print(f"instrument_hashes: cannot read {args.check}: {e}", file=sys.stderr)
            return 2
    digests: dict[str, str] = {}
    started = time.process_time()
    for name, path in corpus(args.skip_big):
        for variant, count_steps in VARIANTS.items():
            digests[f"{name}:{variant}"] = digest(path, count_steps)
    print(f"{len(digests)} outputs in {time.process_time() - started:.1f} s CPU")
    if args.write is not None:
        args.write.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"recorded into {args.write}")
        return 0
    differ = [k for k in digests if k in recorded and recorded[k] != digests[k]]
    unrecorded = [k for k in digests if k not in recorded]
    for k in differ:
        print(f"DIFFERS: {k}: {recorded[k]} -> {digests[k]}")
    for k in unrecorded:
        print(f"not in the record: {k}")
    print(f"{len(digests) - len(differ) - len(unrecorded)} identical, {len(differ)} differ, "
          f"{len(unrecorded)} not recorded")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
