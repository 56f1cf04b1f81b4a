"""The call graph facts the fast variant's poll and check elision rests on
(wasmig/instrument/callgraph.py): who is on a call cycle, who can unwind, what a call_indirect
can reach. A mistake here would leave a cycle without a poll (a request never seen) or a call
without its post-call check (a stack unwound half-way), so each rule is pinned down."""

from __future__ import annotations

import pytest

from tests.wat import wat_module
from wasmig.binary.ir import FuncType
from wasmig.instrument.callgraph import CallGraph, call_graph

WAT = """
(module
  (import "env" "host" (func $host))
  (type $t (func (param i32) (result i32)))
  (table 4 funcref)
  (elem (i32.const 0) $viaTable $other)
  (func $leaf (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func $self (param i32) (result i32)
    (if (result i32) (local.get 0) (then (call $self (i32.const 0))) (else (i32.const 1))))
  (func $ping (param i32) (result i32) (call $pong (local.get 0)))
  (func $pong (param i32) (result i32)
    (if (result i32) (local.get 0) (then (call $ping (i32.const 0))) (else (i32.const 2))))
  (func $looper (loop $l (br_if $l (i32.const 0))))
  (func $callsLooper (call $looper))
  (func $callsLeaf (result i32) (call $leaf (i32.const 1)))
  (func $callsHost (call $host))
  (func $viaTable (param i32) (result i32) (call_indirect (type $t) (local.get 0) (i32.const 0)))
  (func $other (param i32) (result i32) (local.get 0))
  (func $indirectOther (result i32) (call_indirect (type $t) (i32.const 0) (i32.const 1)))
  (func $refd (result i32) (i32.const 3))
  (elem declare func $refd)
  (func $takesRef (drop (ref.func $refd)))
  (func $exported (result i32) (i32.const 4))
  (export "exported" (func $exported)))
"""


@pytest.fixture(scope="module")
def graph() -> tuple[CallGraph, dict[str, int]]:
    ir = wat_module(WAT).ir
    names = {ir.func_name(i): i for i in range(ir.num_imported_funcs() + len(ir.funcs))}
    return call_graph(ir), names


def test_recursion_direct_mutual_and_through_a_table(graph: tuple[CallGraph, dict[str, int]]) -> None:
    g, n = graph
    named = {name for name, i in n.items() if i in g.recursive}
    # $viaTable calls, through the table, every function of its type that a table can hold:
    # itself (in the elem segment) and $other; so it is on a cycle
    assert named == {"self", "ping", "pong", "viaTable"}


def test_who_can_unwind(graph: tuple[CallGraph, dict[str, int]]) -> None:
    g, n = graph
    unwinds = {name for name, i in n.items() if i in g.may_unwind}
    assert {"self", "ping", "pong", "looper", "callsLooper", "callsHost", "viaTable"} <= unwinds
    # $indirectOther's call_indirect may reach $viaTable, which recurses
    assert "indirectOther" in unwinds
    assert not unwinds & {"leaf", "callsLeaf", "other", "refd", "takesRef", "exported"}


def test_indirect_candidates_are_every_function_a_table_could_hold(graph: tuple[CallGraph, dict[str, int]]) -> None:
    g, n = graph
    t = FuncType(("i32",), ("i32",))
    assert set(g.indirect[t]) == {n["viaTable"], n["other"]}  # $leaf is in no table
    unit = set(g.indirect[FuncType((), ("i32",))])
    assert unit == {n["refd"], n["exported"]}  # a ref.func and an export
    assert g.indirect_may_unwind(t)
    assert not g.indirect_may_unwind(FuncType((), ("i32",)))
    assert not g.indirect_may_unwind(FuncType(("f64",), ()))  # nothing of that type in reach


def test_an_import_in_a_table_is_a_host_call() -> None:
    wat = """(module (import "env" "f" (func $f (param i32) (result i32)))
      (table 1 funcref) (elem (i32.const 0) $f)
      (func $g (result i32) (call_indirect (param i32) (result i32) (i32.const 0) (i32.const 0))))"""
    g = call_graph(wat_module(wat).ir)
    assert g.calls_host == {1} and g.may_unwind == {1}
    assert g.indirect_may_unwind(FuncType(("i32",), ("i32",)))


def _calls(ir: object, caller: int) -> list[object]:
    return [ins for ins in ir.funcs[caller - ir.num_imported_funcs()].body if ins.op in (0x10, 0x11)]  # type: ignore[attr-defined]


def test_the_fast_variant_polls_where_recursive_calls_return_not_at_entries(
        graph: tuple[CallGraph, dict[str, int]]) -> None:
    """The fast variant's post-call check polls after a call that can unwind (so no function
    needs an entry poll), except after a direct host call; the deterministic variant polls at
    every entry and never after a call (it counts steps at entries)."""
    from wasmig.instrument.unwind import _Pass

    _, n = graph
    ir = wat_module(WAT).ir
    fast, steps = _Pass(ir), _Pass(ir)
    fast.count_steps = False
    assert not any(fast.entry_polled(f) for f in n.values() if f >= 1)
    assert all(steps.entry_polled(f) for f in n.values() if f >= 1)
    after = {name: [fast.polls_after(ins) for ins in _calls(ir, n[name])]
             for name in ("self", "ping", "callsLooper", "callsLeaf", "callsHost", "viaTable", "indirectOther")}
    assert after == {"self": [True], "ping": [True], "callsLooper": [True], "callsLeaf": [False],
                     "callsHost": [False], "viaTable": [True], "indirectOther": [True]}
    assert not any(steps.polls_after(ins) for name in after for ins in _calls(ir, n[name]))


def test_a_recursive_function_whose_call_cannot_poll_polls_at_its_entry() -> None:
    """A call returning a reference cannot stop just after it (a frame record holds numbers
    only), so a recursive function making one keeps its entry poll: every cycle still polls."""
    from wasmig.instrument.unwind import _Pass

    wat = """(module
      (func $r (param i32) (result funcref)
        (if (result funcref) (local.get 0) (then (call $r (i32.const 0))) (else (ref.null func))))
      (func $s (param i32) (result i32)
        (if (result i32) (local.get 0) (then (call $s (i32.const 0))) (else (i32.const 0)))))"""
    ir = wat_module(wat).ir
    fast = _Pass(ir)
    fast.count_steps = False
    assert [fast.entry_polled(f) for f in (0, 1)] == [True, False]
    assert [fast.polls_after(ins) for f in (0, 1) for ins in _calls(ir, f)] == [False, True]
