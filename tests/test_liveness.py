"""Which locals are live where (wasmig/instrument/liveness.py): the pass stores only live locals
in a frame record, and a snapshot writes dead ones as zero on every engine, so a local wrongly
found dead loses its value on restore and one wrongly found live makes snapshots differ between
engines. :func:`live_locals` solves the dataflow on control instructions only (the runs between
them summarised); here it is checked against the textbook per-instruction fixpoint on
hand-written control flow, compiled C and the spec testsuite's modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import wasmig
from tests.spec.convert import convert_wast, find_testsuite
from tests.wat import wat_module
from wasmig.binary.blocks import match_blocks
from wasmig.binary.ir import Instr
from wasmig.instrument.liveness import LiveAt, live_locals
from wasmig.toolchain import compile_c

PROGRAMS = Path(__file__).parent / "programs"
KERNELS = Path(__file__).parent.parent / "benchmarks" / "kernels"
#: spec scripts whose modules are mostly control flow and local accesses
SPEC_SCRIPTS = ("block", "br", "br_if", "br_table", "if", "loop", "local_get", "local_set", "local_tee",
                "return", "unreachable", "unwind", "labels", "switch", "fac", "select", "call_indirect")


def reference_live_locals(body: list[Instr]) -> list[int]:
    """The per-instruction backward fixpoint: live[i] = gen[i] | (live of i's successors) & ~kill[i]."""
    n = len(body)
    succ: list[tuple[int, ...]] = [()] * n
    end_of, else_of = match_blocks(body)
    stack: list[int] = []

    def label(depth: int) -> int:
        if depth >= len(stack):
            return -1
        start = stack[len(stack) - 1 - depth]
        return start if body[start].op == 0x03 else end_of[start]

    for i, ins in enumerate(body):
        op = ins.op
        if op in (0x02, 0x03):
            stack.append(i)
            succ[i] = (i + 1,)
        elif op == 0x04:
            stack.append(i)
            succ[i] = (i + 1, else_of[i] + 1 if i in else_of else end_of[i])
        elif op == 0x05:
            succ[i] = (end_of[stack[-1]],)
        elif op == 0x0B:
            succ[i] = ()
            if stack:
                stack.pop()
                succ[i] = (i + 1,)
        elif op == 0x0C:
            succ[i] = (label(ins.imm),)
        elif op == 0x0D:
            succ[i] = (i + 1, label(ins.imm))
        elif op == 0x0E:
            succ[i] = tuple(label(d) for d in (*ins.imm[0], ins.imm[1]))
        elif op not in (0x00, 0x0F):
            succ[i] = (i + 1,)
    live = [0] * n
    changed = True
    while changed:
        changed = False
        for i in range(n - 1, -1, -1):
            out = 0
            for s in succ[i]:
                if s >= 0:
                    out |= live[s]
            op = body[i].op
            new = out | 1 << body[i].imm if op == 0x20 else out & ~(1 << body[i].imm) if op in (0x21, 0x22) else out
            if new != live[i]:
                live[i] = new
                changed = True
    return live


def test_live_sets_at_chosen_points() -> None:
    """Pinned by hand: a loop carrying a local round its back edge, an if/else writing a local in
    one arm only, a br_table, and code after a branch."""
    module = wat_module("""
    (module (func (param i32 i32) (result i32) (local i32)
      (local.set 2 (i32.const 0))
      (loop $l                                  ;; 0 and 2 live round the back edge
        (local.set 2 (i32.add (local.get 2) (local.get 0)))
        (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))
      (if (local.get 1)
        (then (local.set 2 (i32.const 7)))      ;; 2 dead here: overwritten
        (else (nop)))                           ;; 2 live here: read after the if
      (block $a (block $b
        (br_table $a $b (local.get 1))
        (local.set 2 (local.get 0))))           ;; unreachable
      (local.get 2)))""")
    body = module.ir.funcs[0].body
    live = live_locals(body)
    ops = [ins.op for ins in body]
    loop = ops.index(0x03)
    assert live[loop] == 0b111  # 0 and 2 round the back edge, 1 read after the loop
    assert live[0] == 0b011  # params read before written; local 2 is set first
    then_set = ops.index(0x21, ops.index(0x04))  # the then arm's local.set 2
    assert live[then_set - 1] == 0b010  # its i32.const 7: 2 is overwritten, only 1 (the br_table's) is read
    else_at = ops.index(0x05)
    assert live[else_at + 1] == 0b110  # the else arm's nop: 2 flows to the end, 1 to the br_table
    assert live[ops.index(0x0E)] == 0b100  # the br_table: the unreachable read of 0 is not counted
    _same_as_the_reference(body)


def _bodies(module: wasmig.Module) -> list[list[Instr]]:
    return [f.body for f in module.ir.funcs]


def _same_as_the_reference(body: list[Instr]) -> None:
    """live_locals against the per-instruction fixpoint, and the pass's lookup (LiveAt: the sets
    of a run worked out when first asked) against live_locals, asked from the end backwards and
    again from the start (the second time from the runs it filled in)."""
    live = live_locals(body)
    assert live == reference_live_locals(body)
    lookup = LiveAt(body)
    assert [lookup[i] for i in reversed(range(len(body)))] == live[::-1]
    assert [lookup[i] for i in range(len(body))] == live


@pytest.mark.parametrize("name", ["checksum", "deeprec", "journal", "floaty", "filter"])
def test_same_as_the_reference_on_compiled_c(name: str) -> None:
    for body in _bodies(wasmig.Module.from_file(compile_c(PROGRAMS / f"{name}.c"))):
        _same_as_the_reference(body)


@pytest.mark.parametrize("name", ["lz77", "qsort", "pb_durbin", "pb_nussinov"])
def test_same_as_the_reference_on_the_kernels(name: str) -> None:
    for body in _bodies(wasmig.Module.from_file(compile_c(KERNELS / f"{name}.c", opt="-O2"))):
        _same_as_the_reference(body)


@pytest.mark.parametrize("script", SPEC_SCRIPTS)
def test_same_as_the_reference_on_spec_modules(script: str) -> None:
    wast = find_testsuite() / f"{script}.wast"
    if not wast.is_file():
        pytest.skip(f"the spec testsuite has no {wast.name} here")
    try:
        path = convert_wast(wast)
    except RuntimeError as e:
        pytest.skip(str(e))
    compared = 0
    for cmd in json.loads(path.read_text())["commands"]:
        if cmd.get("type") != "module" or cmd.get("module_type", "binary") != "binary":
            continue
        try:
            module = wasmig.Module.from_file(path.parent / cmd["filename"])
        except wasmig.WasmError:
            continue
        for body in _bodies(module):
            _same_as_the_reference(body)
            compared += 1
    assert compared > 0
