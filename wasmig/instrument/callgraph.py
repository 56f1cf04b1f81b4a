"""Which functions of a module can recurse, and which can unwind: what lets the fast variant of
the instrumentation pass leave out polls and post-call checks (docs/instrument.md).

A checkpoint request must be seen within a bounded time. Every cycle of execution runs through
a loop header or a call cycle; loops poll at their headers, so only functions on a *call cycle*
(recursion, direct or through ``call_indirect``) need more: the fast variant polls when their
calls return (a descent without returns ends at the stack limit). A function off every cycle
runs, between two polls, at most its own code and that of the acyclic calls below it.

And a call needs its post-call check (is the callee unwinding?) only if the callee *can* unwind:
it polls, has a loop, calls an import (a host call blocked when a checkpoint is requested
returns unwinding) or calls, directly or indirectly, a function that can.

``call_indirect`` is taken to reach every function of its type that could be in a table: those
named by an element segment, a ``ref.func`` (in code or a global's initializer) or an export (the
host could store an exported function in a table); an imported function among them makes it a
host call. So is a ``call_indirect`` through a *host table* (``host_tables``): a table the host
fills with its own functions (the wasi-threads runner's table of waits and notifies on wasmtime).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wasmig.binary.ir import FuncType, Instr
from wasmig.binary.ir import Module as IRModule

_CALL, _CALL_INDIRECT, _LOOP, _REF_FUNC = 0x10, 0x11, 0x03, 0xD2
_PICKED = frozenset((_CALL, _CALL_INDIRECT, _LOOP, _REF_FUNC))


@dataclass
class CallGraph:
    """Per defined function (by function index): its callees, and the facts the pass needs."""

    n_imported: int
    #: defined callees only; a call_indirect's callee is a node (a negative number) standing for
    #: its type, whose callees are the defined functions a table could hold of that type
    callees: dict[int, set[int]] = field(default_factory=dict)
    calls_host: set[int] = field(default_factory=set)  # calls an import itself (call, or a call_indirect that may)
    has_loop: set[int] = field(default_factory=set)
    recursive: set[int] = field(default_factory=set)  # on a call cycle
    may_unwind: set[int] = field(default_factory=set)
    indirect: dict[FuncType, list[int]] = field(default_factory=dict)  # candidates per type
    #: tables the host fills with its own functions: a call_indirect through one is a host call
    host_tables: frozenset[int] = frozenset()

    def indirect_may_unwind(self, ft: FuncType) -> bool:
        """Whether a ``call_indirect`` of type ``ft`` can reach a function that unwinds or an import."""
        return any(f < self.n_imported or f in self.may_unwind for f in self.indirect.get(ft, []))


def call_graph(ir: IRModule, host_tables: frozenset[int] = frozenset()) -> CallGraph:
    n_imported = ir.num_imported_funcs()
    g = CallGraph(n_imported, host_tables=host_tables)
    types = ir.func_type_indices()
    # one filtering pass over each body keeps what the graph needs: a big module has millions of
    # instructions and a few percent of them are calls, loops or ref.func
    picked = [[ins for ins in func.body if ins.op in _PICKED] for func in ir.funcs]
    for f in _table_candidates(ir, picked):
        g.indirect.setdefault(ir.types[types[f]], []).append(f)
    # A call_indirect calls a node of its type (a negative number), whose callees are the type's
    # defined candidates: the graph then has an edge per call site, not one per site and candidate
    # (CPython: 1.4 M edges), and reaches and cycles through the same functions.
    type_node: dict[FuncType, int] = {}
    host_types: set[FuncType] = set()
    for ft, candidates in g.indirect.items():
        type_node[ft] = -1 - len(type_node)
        if any(c < n_imported for c in candidates):
            host_types.add(ft)
    graph: dict[int, set[int]] = {}
    for k, instrs in enumerate(picked):
        f = n_imported + k
        callees = graph[f] = set()
        for ins in instrs:
            if ins.op == _CALL:
                if ins.imm < n_imported:
                    g.calls_host.add(f)
                else:
                    callees.add(ins.imm)
            elif ins.op == _CALL_INDIRECT:
                ft = ir.types[ins.imm[0]]
                if ins.imm[1] in host_tables:
                    g.calls_host.add(f)
                elif ft in type_node:
                    callees.add(type_node[ft])
                    if ft in host_types:
                        g.calls_host.add(f)
            elif ins.op == _LOOP:
                g.has_loop.add(f)
    for ft, node in type_node.items():
        graph[node] = {c for c in g.indirect[ft] if c >= n_imported}
    g.callees = graph
    g.recursive = {f for f in _on_cycles(graph) if f >= 0}
    g.may_unwind = {f for f in _callers_closure(graph, g.recursive | g.has_loop | g.calls_host) if f >= 0}
    return g


def _table_candidates(ir: IRModule, picked: list[list[Instr]]) -> set[int]:
    """The functions a table could hold; ``picked``: the calls, loops and ``ref.func`` of each
    defined function's body."""
    out: set[int] = set()
    for seg in ir.elems:
        for expr in seg.init:
            out.update(ins.imm for ins in expr if ins.op == _REF_FUNC)
    for instrs in picked:
        out.update(ins.imm for ins in instrs if ins.op == _REF_FUNC)
    for glob in ir.globals:
        out.update(ins.imm for ins in glob.init if ins.op == _REF_FUNC)
    out.update(e.index for e in ir.exports if e.kind == "func")
    return out


def _on_cycles(callees: dict[int, set[int]]) -> set[int]:
    """The nodes on some cycle: in a strongly connected component of two or more, or calling
    themselves (Tarjan's algorithm, iterative: call graphs of big modules are deep)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: set[int] = set()
    counter = 0
    for root in callees:
        if root in index:
            continue
        work: list[tuple[int, list[int]]] = [(root, sorted(callees[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(callees.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in callees.get(node, ()):
                    out.update(component)
    return out


def _callers_closure(callees: dict[int, set[int]], seeds: set[int]) -> set[int]:
    """``seeds`` and every function that calls, directly or transitively, one of them."""
    callers: dict[int, set[int]] = {}
    for f, cs in callees.items():
        for c in cs:
            callers.setdefault(c, set()).add(f)
    out = set(seeds)
    todo = list(seeds)
    while todo:
        for caller in callers.get(todo.pop(), ()):
            if caller not in out:
                out.add(caller)
                todo.append(caller)
    return out
