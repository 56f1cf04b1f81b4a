#!/usr/bin/env python3
"""Where the run module's bytes beyond plain go (issue 18's code bound; docs/instrument.md, "Code size").

For each module (``--programs``: QuickJS-ng, CPython for WASI of ``tests/real_programs.py``;
``--kernels``: ``benchmarks/kernels/*.c``), the fast variant's run module is decoded with its origin
tags (``wasmig.origins``: each instruction's original offset, or none for one the pass added), and
every byte of every instrumented body is put in one category:

- ``original``: the first copy of each original instruction, less plain's body (what is left:
  the original instructions not emitted, such as each body's final ``end``, which the framing
  has), and apart what re-encoding the LEB128s that plain pads (wasm-ld's relocations) saves;
- ``copies: ...``: further copies of original instructions -- unrolled loops' copies (those of an
  entry-bounded loop, both its arms, apart), and the entry arm's path copy (a function where a call
  is copied: unrolled loops hold none);
- ``arm ...``: the cold arms, per kind (``poll``: a loop header's or entry's; ``post-call``: after a
  call), split into what their instructions do (the test and its ``if``/``end``, pops into spill
  locals, the site id, saver calls, record-slot stores, ``br $unwind``, drops);
- the rest the pass adds outside arms (the framing with the record header's call, spills of call
  operands, the unrolled loops' blocks and exits, entry-bound guards, ...), the locals'
  declarations, and the pass's own functions.

The categories add up to the run module's code size minus plain's (the check is printed). The
figures are exact bytes of one pass's output; nothing is timed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from wasmig import Module  # noqa: E402
from wasmig.binary.decoder import decode_module, read_custom_section  # noqa: E402
from wasmig.binary.features import INSTRUMENTED  # noqa: E402
from wasmig.binary.ir import Function, Instr  # noqa: E402
from wasmig.instrument.linking import HELPERS  # noqa: E402
from wasmig.instrument.origins import SECTION_NAME, decode_origins  # noqa: E402
from wasmig.instrument.unwind import instrument  # noqa: E402

_BLOCKS = (0x02, 0x03, 0x04)
_CALLS = (0x10, 0x11)
_GET, _SET, _CONST, _GLOBAL_GET = 0x20, 0x21, 0x41, 0x23
_STRUCTURE = frozenset((0x02, 0x03, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x45))


def _sizes(f: Function) -> tuple[list[int], int]:
    """Each instruction's bytes, and the locals declaration's (the body's bytes before them)."""
    offsets = [ins.offset for ins in f.body] + [f.body_size]
    return [offsets[k + 1] - offsets[k] for k in range(len(f.body))], f.body[0].offset


class _Walk:
    """One instrumented body, its instructions put into categories."""

    def __init__(self, body: list[Instr], sizes: list[int], tags: list[int], n_locals: int,
                 savers: range, header: int, out: Counter[str]) -> None:
        self.body, self.sizes, self.tags, self.out = body, sizes, tags, out
        self.site_local, self.addr_local = n_locals, n_locals + 1
        self.savers, self.header = savers, header
        self.done = [False] * len(body)

    def put(self, k: int, category: str) -> None:
        if not self.done[k]:
            self.done[k] = True
            self.out[category] += self.sizes[k]

    def run(self, plain_sizes: dict[int, int], arm_copies: bool) -> None:
        body, tags = self.body, self.tags
        seen: set[int] = set()
        ends = self._match()
        # the framing: $done, $unwind, the function's label; after the label's end, the header writer
        for k in range(3):
            self.put(k, "framing and record header call")
        for k in range(ends[2], len(body)):
            self.put(k, "framing and record header call")
        for start, end, kind in self._arms(ends):
            self._arm(start, end, kind)
        guarded = self._guarded_ifs(ends)
        for k, ins in enumerate(body):
            if self.done[k]:
                continue
            tag = tags[k]
            if tag >= 0:
                if tag not in seen:
                    seen.add(tag)
                    self.done[k] = True
                    self.out["original (first copy)"] += plain_sizes[tag]
                    self.out["original: LEB128s plain pads, re-encoded"] += self.sizes[k] - plain_sizes[tag]
                elif arm_copies:
                    self.put(k, "copies: entry arm / transfer path")
                elif any(a < k < b for a, b in guarded):
                    self.put(k, "copies: entry-bounded loops (both arms)")
                else:
                    self.put(k, "copies: unrolled loops")
                continue
            self.put(k, self._added(k, ins))

    def _match(self) -> dict[int, int]:
        """Construct start -> its end."""
        ends: dict[int, int] = {}
        stack: list[int] = []
        for k, ins in enumerate(self.body):
            if ins.op in _BLOCKS:
                stack.append(k)
            elif ins.op == 0x0B and stack:
                ends[stack.pop()] = k
        return ends

    def _arms(self, ends: dict[int, int]) -> list[tuple[int, int, str]]:
        """(the `if`, its `end`, kind) of each cold arm: the `if` around a `br $unwind`, widened to a
        poll's `if` whose first instruction is the state test's (a two-arm post-call check)."""
        body = self.body
        stack: list[int] = []
        found: dict[int, int] = {}
        for k, ins in enumerate(body):
            if ins.op in _BLOCKS:
                stack.append(k)
            elif ins.op == 0x0B and stack:
                stack.pop()
            elif ins.op == 0x0C and len(stack) - 1 - ins.imm == 1 and self.tags[k] < 0:
                k_if = stack[-1]
                if (len(stack) > 1 and body[stack[-2]].op == 0x04 and k_if - stack[-2] == 4
                        and body[k_if - 3].op == _GLOBAL_GET):
                    k_if = stack[-2]
                found[k_if] = ends[k_if]
        out = []
        for start in sorted(found):
            if out and out[-1][0] < start < out[-1][1]:
                continue  # inside an arm already taken
            test = start - 2 if body[start - 1].op != 0x46 else start - 3
            before = body[test - 1].op if test > 0 else None
            out.append((start, found[start], "post-call" if before in _CALLS else "poll"))
        return out

    def _arm(self, start: int, end: int, kind: str) -> None:
        body = self.body
        pre = f"arm {kind}: "
        test = start - 2 if body[start - 1].op != 0x46 else start - 3
        for k in range(test, start + 1):
            self.put(k, pre + "test, if, end")
        self.put(end, pre + "test, if, end")
        k = start + 1
        while k < end:
            ins = body[k]
            op = ins.op
            nxt = body[k + 1] if k + 1 < end else None
            if op in (0x04, 0x0B, 0x05, 0x46) or (op == _GLOBAL_GET and nxt is not None and nxt.op == _CONST
                                                 and k + 2 < end and body[k + 2].op == 0x46):
                self.put(k, pre + "test, if, end")
                if op == _GLOBAL_GET:
                    self.put(k + 1, pre + "test, if, end")
                    k += 1
            elif op == 0x1A:
                self.put(k, pre + "drops")
            elif op == 0x0C:
                self.put(k, pre + "br $unwind")
            elif op == _SET and ins.imm == self.site_local:
                self.put(k, pre + "site id")
            elif op == _CONST and self._sets_site(k, end):
                self.put(k, pre + "site id")
                if body[k + 1].op == _GLOBAL_GET:  # - $state
                    self.put(k + 1, pre + "site id")
                    self.put(k + 2, pre + "site id")
                    k += 2
            elif op == _SET and ins.imm == self.addr_local:
                self.put(k - 1, pre + "record stores")
                self.put(k - 2, pre + "record stores")
                self.put(k, pre + "record stores")
            elif op == _SET:
                self.put(k, pre + "pops to spill locals")
            elif op == _CONST and self._saver_call_after(k, end):
                self.put(k, pre + "saver: position")
            elif op == _GET and ins.imm != self.addr_local and self._saver_call_after(k, end):
                self.put(k, pre + "saver: values")
            elif op == 0x10 and ins.imm in self.savers:
                self.put(k, pre + "saver: call")
            else:
                self.put(k, pre + "record stores")
            k += 1

    def _sets_site(self, k: int, end: int) -> bool:
        body = self.body
        return ((k + 1 < end and body[k + 1].op == _SET and body[k + 1].imm == self.site_local)
                or (k + 3 < end and body[k + 1].op == _GLOBAL_GET and body[k + 3].op == _SET
                    and body[k + 3].imm == self.site_local))

    def _saver_call_after(self, k: int, end: int) -> bool:
        body = self.body
        j = k + 1
        while j < end and body[j].op == _GET:
            j += 1
        return j < end and body[j].op == 0x10 and body[j].imm in self.savers

    def _guarded_ifs(self, ends: dict[int, int]) -> list[tuple[int, int]]:
        """The added `if`s an entry-bound guard (`... i32.lt_u`) opens: both arms hold copies."""
        return [(k, ends[k]) for k, ins in enumerate(self.body)
                if ins.op == 0x04 and self.tags[k] < 0 and k > 0 and self.body[k - 1].op == 0x49
                and self.tags[k - 1] < 0]

    def _added(self, k: int, ins: Instr) -> str:
        op, body = ins.op, self.body
        if op in (_GET, _SET, 0x22):
            if ins.imm >= self.site_local:
                return "spills outside arms (call operands, buried values)"
            return "other added (locals)"
        if op in _STRUCTURE:
            return "unrolled loops' blocks and exits"
        if op == 0x49 or (op in (0x41, 0x6B, 0x78) and any(body[j].op == 0x49 and self.tags[j] < 0
                                                            for j in range(k + 1, min(k + 8, len(body))))):
            return "entry-bound guards"
        if op == 0x3F or (op == 0x36 and k > 0 and body[k - 1].op == 0x3F):
            return "memory.grow publish"
        return f"other added ({op:#x})"


def breakdown(plain: bytes, run: bytes) -> Counter[str]:
    """Bytes of ``run`` (a fast run module of ``plain``) beyond plain's code, by category; the
    categories sum to the difference of the two code sections' sizes."""
    orig = decode_module(plain)
    inst = decode_module(run, features=INSTRUMENTED)
    raw = read_custom_section(run, SECTION_NAME)
    assert raw is not None, "no origin tags: not a module of this pass"
    tags, _owners = decode_origins(raw)
    out: Counter[str] = Counter()
    n_def = len(orig.funcs)
    n_imp = orig.num_imported_funcs()
    helper_base = n_imp + n_def
    savers = range(helper_base + 4, helper_base + HELPERS)
    for k, (f, g) in enumerate(zip(orig.funcs, inst.funcs, strict=False)):
        sizes, locals_bytes = _sizes(g)
        plain_locals = f.body[0].offset
        out["locals declarations"] += locals_bytes - plain_locals
        n_locals = len(orig.types[f.type_idx].params) + len(f.local_types())
        plain_sizes, _ = _sizes(f)
        walk = _Walk(g.body, sizes, tags[k], n_locals, savers, helper_base + 3, out)
        # a copied call: the entry arm's path copy (an unrolled loop holds no call)
        copied: Counter[int] = Counter(t for t in tags[k] if t >= 0)
        arm_copies = any(g.body[j].op in _CALLS and copied[t] > 1 for j, t in enumerate(tags[k]) if t >= 0)
        walk.run({ins.offset: n for ins, n in zip(f.body, plain_sizes, strict=True)}, arm_copies)
        out["original (first copy)"] -= f.body_size - plain_locals  # what is left: instructions not emitted
    for g in inst.funcs[n_def:n_def + HELPERS]:
        out["the pass's own functions"] += g.body_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default="quickjs", help="of tests/real_programs.py: quickjs,cpython")
    ap.add_argument("--kernels", default="", help="comma-separated benchmarks/kernels (default: none)")
    args = ap.parse_args()
    from benchmarks.code_size import code_size, modules

    for name, wasm in modules(argparse.Namespace(kernels=args.kernels or "none", programs=args.programs)):
        done = instrument(Module.from_bytes(wasm), count_steps=False)
        plain, run = code_size(wasm), code_size(done.data)
        parts = breakdown(wasm, done.data)
        total = sum(parts.values())
        print(f"{name}: plain {plain:,} B, run module {run:,} B ({run / plain:.3f}x), +{run - plain:,} B; "
              f"categories sum to +{total:,} B{'' if total == run - plain else '  (MISMATCH)'}")
        for cat, n in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {cat:<58} {n:>10,} B {n / plain * 100:>6.2f}% of plain")


if __name__ == "__main__":
    main()
