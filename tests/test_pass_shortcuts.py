"""Shortcuts the pass takes for speed must not change what it makes (docs/instrument.md, session 8).

It copies a decoded function's unchanged instructions from the module's own bytes when the
encoder would make the same bytes (``Function.canonical``; ``emit.OriginalCode``): the output
must be the same as with every instruction encoded again. It plans a function's entry loops from
the instructions it walks only (``transfer.plan_entries``'s ``at``): the same plan as from all."""

from __future__ import annotations

import dataclasses
from itertools import compress

from tests.test_decoder_inline import _module
from tests.wat import wat_module
from wasmig.binary.blocks import match_blocks
from wasmig.binary.ir import Module as IRModule
from wasmig.instrument.transfer import plan_entries
from wasmig.instrument.unwind import _WALKED, instrument
from wasmig.module import Module


def _encoded_again(module: Module) -> Module:
    """The same module with every function marked not canonical: the pass encodes every body."""
    ir: IRModule = module.ir
    funcs = [dataclasses.replace(f) for f in ir.funcs]  # a replaced Function is never canonical
    assert not any(f.canonical for f in funcs)
    return Module(dataclasses.replace(ir, funcs=funcs), None, module.data, features=module.features)


def _outputs(module: Module) -> tuple[bytes, bytes | None]:
    done = instrument(module, count_steps=False)
    return done.data, done.rewind


def test_copied_from_the_module_or_encoded_the_output_is_the_same() -> None:
    module = wat_module("""(module (memory 1)
      (func $f (export "f") (param i32) (result i32) (local i64)
        (loop $l (local.set 0 (i32.add (local.get 0) (i32.const -100000)))
          (i64.store offset=70000 (i32.const 8) (i64.const 1234567890123))
          (br_if $l (i32.gt_s (call $g (local.get 0)) (i32.const 0))))
        (local.get 0))
      (func $g (param i32) (result i32) (if (result i32) (local.get 0) (then (call $f (i32.const 3)))
        (else (i32.const 0)))))""")
    assert all(f.canonical for f in module.ir.funcs)
    assert _outputs(module) == _outputs(_encoded_again(module))


def test_a_padded_body_is_encoded_again() -> None:
    """A body with padded LEB128s is not copied: its instructions in the output are in the
    encoder's form, as they were before the pass copied bodies from the module."""
    code = (b"\x03\x40"  # loop
            b"\x20\x80\x00"  # local.get 0, padded
            b"\x41\xff\x7f"  # i32.const -1, padded
            b"\x6a\x22\x00\x0d\x00"  # i32.add local.tee 0 br_if 0
            b"\x0b\x0b")
    module = Module.from_bytes(_module(code, params=1))
    assert not module.ir.funcs[0].canonical
    out = _outputs(module)
    assert out == _outputs(_encoded_again(module))
    assert b"\x20\x80\x00" not in out[0]
    marked = dataclasses.replace(module.ir.funcs[0])
    marked.canonical = True
    forced = Module(dataclasses.replace(module.ir, funcs=[marked]), None, module.data)
    assert _outputs(forced) != out  # the flag is what keeps the padded bytes out


def test_entry_loops_planned_from_the_walked_instructions_alone() -> None:
    """Two big loop nests (an inner loop branching to its outer header: no entry loops; and one
    not: entry loops): each plan from the walked instructions equals the plan from all of them."""
    straight = "(local.set 0 (i32.add (local.get 0) (i32.const 1)))" * 120  # 480 instructions
    module = wat_module(f"""(module
      (func $restarts (param i32) (local i32)
        (loop $a {straight} (loop $b {straight} (br_if $a (local.get 1)) {straight} (br_if $b (local.get 0)))))
      (func $nest (param i32) (local i32)
        (block $out (loop $c {straight} (block {straight} (loop $d {straight} (br_if $d (local.get 1))))
          (br_if $out (local.get 0)) (br $c)))))""")
    planned = []
    for k, func in enumerate(module.ir.funcs):
        body = func.body
        walked = list(compress(range(len(body)), (ins.op in _WALKED for ins in body)))
        end_of, _ = match_blocks(body)
        unreachable = module.validation.functions[k].unreachable
        plan = plan_entries(body, end_of, unreachable)
        assert plan == plan_entries(body, end_of, unreachable, walked)
        planned.append(bool(plan))
    assert planned == [False, True]


def test_loop_facts_from_the_walked_instructions_equal_a_scan_of_every_instruction() -> None:
    """Whether a loop lies in another (``_nested``), has no loop or call inside
    (``_innermost_without_calls``) and need not poll at its header thanks to its calls
    (``_scan_for_polling_call``) are found from the constructs, branches and calls alone (session
    10): the same answers as from every instruction (a rewriter whose ``special_at`` lists them
    all: the scans as they were), on the loops of six kernels, each answer seen both ways."""
    from pathlib import Path

    from wasmig.instrument.unwind import _FunctionRewriter, _Pass
    from wasmig.toolchain import compile_c

    kernels = Path(__file__).parent.parent / "benchmarks" / "kernels"
    seen: set[tuple[str, bool]] = set()
    for name in ("lz77", "sieve", "pb_lu", "qsort", "nbody", "fib"):
        module = Module.from_file(compile_c(kernels / f"{name}.c", opt="-O2"))
        p = _Pass(module.ir, data=module.data)
        p.count_steps = False
        for k, func in enumerate(module.ir.funcs):
            info = module.validation.functions[k]
            rw = _FunctionRewriter(p, p.n_imported + k, func, info)
            every = _FunctionRewriter(p, p.n_imported + k, func, info)
            every.special_at = list(range(len(func.body)))
            body, end_of = func.body, rw.end_of
            for i in (j for j in end_of if body[j].op == 0x03):
                facts = (rw._nested(i), rw._innermost_without_calls(i), rw._scan_for_polling_call(i))
                assert facts == (every._nested(i), every._innermost_without_calls(i), every._scan_for_polling_call(i))
                assert facts[0] == any(body[j].op == 0x03 and end_of[j] > i for j in end_of if j < i)
                seen |= set(zip(("nested", "innermost", "polling call"), facts, strict=True))
    assert len(seen) == 6, f"each answer both ways: {sorted(seen)}"


def test_origin_tags_of_a_big_body_and_of_offsets_out_of_order() -> None:
    """``OriginalCode`` looks the tags of offsets below 2**14 - 1 up and makes the rest (a body
    over 16 KB) one by one; offsets out of order (IR made by hand) fall back to one by one for
    all: the same tags as :func:`origin_tag` of each offset, in both cases."""
    from wasmig.binary.ir import Instr
    from wasmig.instrument.emit import OriginalCode, origin_tag

    for offsets in (list(range(0, 40_000, 3)), [5, 20_000, 7, 126, 127, 16_383, 16_382, 0]):
        body = [Instr(0x01, None, o) for o in offsets]
        code = OriginalCode(body)
        assert code.tags == b"".join(origin_tag(o) for o in offsets)
        assert code.tag_pos[-1] == len(code.tags) and len(code.tag_pos) == len(offsets) + 1
