"""Compile *straight* functions into plain Python functions that compiled segments call directly.

A function is straight when it has no ``loop``, no ``call_indirect``, no rare instruction
(``memory.grow``, bulk memory, tables) and calls only other straight functions of its instance
(so no recursion), and its body and call depth are bounded. Every run of a straight call then
ends after a bounded number of stable points (``Straight.steps``: its own entry plus those of the
calls it makes, counted along all paths, an upper bound), frames (``depth``) and locals
(``slots``). A segment calls it as a Python function only after checking that no stop can fall
inside it (``steps``) and that the machine's frame and locals limits leave room for ``depth``
and ``slots`` frames; otherwise the call goes through the dispatch loop as before, with explicit
frames, so a deterministic stop or a call-stack exhaustion inside it happens exactly where
instruction-by-instruction execution puts it. An asynchronous request (``stop_at_step = 0``)
that arrives during a straight call is honoured at the next stable point after it.

Why: real programs built without optimisation (CPython for WASI at ``-O0`` among them) spend
most of their calls in small leaf functions; a call through the dispatch loop builds a frame,
switches code and counts a step (about 1.5 µs), a straight call is one Python call.

The body is structured Python: wasm locals are Python locals ``l0, l1, ...``, a ``block`` or
``if`` that a branch targets is wrapped in ``while True: ... break`` so that the branch is a
``break`` (a branch out of several wrappers sets ``_brk`` to the number of further wrappers to
leave, each of which checks it after its loop), a branch to the function's label is a
``return``. A block's results are assigned to ``r<start>_<j>`` where paths join. Each call
counts its own entry in the machine's step cell. A trap's backtrace lists the straight frames:
every source line maps back to its pc, as in segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wasmig.binary.blocks import match_blocks
from wasmig.interp import segments as sg
from wasmig.interp.store import WasmFunction

#: bodies larger than this are not compiled whole (compile time would outweigh a call's saving)
MAX_BODY = 2000
#: straight calls nested at most this deep (Python frames; the analysis recurses as deep)
MAX_DEPTH = 40
#: Python allows 20 statically nested loops (``while True`` wrappers) and 100 indentation levels
MAX_WRAPPERS = 18
MAX_INDENT = 80
#: control instructions a straight function may hold (besides the plain ones of segments)
_CONTROL = frozenset({0x00, 0x01, 0x02, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10})


@dataclass(frozen=True)
class Straight:
    """A compiled straight function and the bounds a caller checks before calling it."""

    name: str  # of the Python function in the instance's segment namespace
    nparams: int
    nresults: int
    steps: int  # stable points one call passes at most (its own entry included)
    depth: int  # frames at most (itself included)
    slots: int  # locals (params included) at most, summed over those frames


def straight_of(func: Any) -> Straight | None:
    """``func``'s straight compilation, made on first request; None when it is not straight."""
    s = func.straight
    if s is None:
        s = _analyze(func, 0)
        return s
    return s or None


def _analyze(func: WasmFunction, depth: int) -> Straight | None:
    known = func.straight
    if known is not None:
        return known or None
    inst = func.instance
    body = func.ir.body
    if len(body) > MAX_BODY:
        func.straight = False
        return None
    info = inst.validation.functions[func.index - inst.module.num_imported_funcs()]
    unreachable = info.unreachable
    func.straight = False  # while in progress: a call back to it is recursion, which is not straight
    steps, depth_below, slots_below = 1, 0, 0
    for i, ins in enumerate(body):
        op = ins.op
        if unreachable[i] and op != 0x05 and op != 0x0B:
            continue
        if op == 0x10:
            callee = inst.funcs[ins.imm]
            if type(callee) is not WasmFunction or callee.instance is not inst or depth >= MAX_DEPTH:
                return None
            s = _analyze(callee, depth + 1)
            if s is None:
                return None
            steps += s.steps
            depth_below = max(depth_below, s.depth)
            slots_below = max(slots_below, s.slots)
        elif op not in _CONTROL and op not in sg.PLAIN_OPS:
            return None
    if 1 + depth_below > MAX_DEPTH:
        return None
    nlocals = len(func.type.params) + len(func.local_defaults)
    result = Straight(f"_sf{func.index}", len(func.type.params), len(func.type.results), steps,
                      1 + depth_below, nlocals + slots_below)
    if not _compile(func, result, info):
        return None
    func.straight = result
    return result


# --- structure: which constructs are branch targets ---------------------------------------------
@dataclass
class _Construct:
    kind: str  # "func", "block" or "if"
    start: int
    nparams: int
    nresults: int
    targeted: bool = False  # a live branch goes to its label: wrapped in a loop
    crossed: bool = False  # a branch leaves it for an outer wrapper: checks _brk after its loop
    has_else: bool = False
    then_live: bool = False  # the then-arm fell through into the else
    entry: list = field(default_factory=list)  # the symbolic stack when entered (atoms)
    known: tuple = ()  # what the generator knew of memory and globals when entered (if: for the else)
    results: list[str] = field(default_factory=list)  # the join variables of its results
    mark: int = 0  # lines emitted when the current arm began (an empty arm gets a ``pass``)
    parent: _Construct | None = None


def _arity(bt: Any, types: list) -> tuple[int, int]:
    if bt is None:
        return 0, 0
    if isinstance(bt, str):
        return 0, 1
    return len(types[bt].params), len(types[bt].results)


def _scan(func: WasmFunction, info: Any, end_of: dict[int, int]) -> dict[int, _Construct]:
    """Pass 1: the constructs (by start index) and which are targeted or crossed by branches.

    Liveness is decided the same way here and in the generation: code after an unconditional
    branch is dead until its construct's ``else``/``end``, and so is the code after a construct
    that nothing branches to and whose end is not reached; a construct opened in dead code is
    skipped whole."""
    body, unreachable, types = func.ir.body, info.unreachable, func.instance.types
    root = _Construct("func", -1, len(func.type.params), len(func.type.results))
    found: dict[int, _Construct] = {-1: root}
    ctl = [root]
    branches: list[tuple[list[_Construct], _Construct]] = []

    def branch(depth: int) -> None:
        target = ctl[-1 - depth]
        if target.kind != "func":
            target.targeted = True
            branches.append((ctl[len(ctl) - depth:], target))

    dead = False
    i = 0
    while i < len(body):
        ins = body[i]
        op = ins.op
        if op != 0x05 and op != 0x0B and (dead or unreachable[i]):
            i = end_of[i] + 1 if op in (0x02, 0x03, 0x04) else i + 1
            continue
        if op == 0x02 or op == 0x04:
            c = _Construct("block" if op == 0x02 else "if", i, *_arity(ins.imm, types), parent=ctl[-1])
            found[i] = c
            ctl.append(c)
        elif op == 0x05:
            ctl[-1].has_else = True
            ctl[-1].then_live = not dead
            dead = False
        elif op == 0x0B:
            c = ctl.pop()
            if c.kind == "func":
                break
            fall = not dead
            if c.kind == "block":
                dead = not (fall or c.targeted)
            else:
                dead = c.has_else and not (fall or c.then_live or c.targeted)
        elif op == 0x0C:
            branch(ins.imm)
            dead = True
        elif op == 0x0D:
            branch(ins.imm)
        elif op == 0x0E:
            labels, default = ins.imm
            for d in {*labels, default}:
                branch(d)
            dead = True
        elif op == 0x0F or op == 0x00:
            dead = True
        i += 1
    for inner, _target in branches:
        wrappers = [c for c in inner if c.targeted]
        for c in wrappers:
            c.crossed = True
    return found


def _too_deep(found: dict[int, _Construct]) -> bool:
    """Whether the Python source would nest deeper than Python compiles."""
    for c in found.values():
        loops = indent = 0
        node: _Construct | None = c
        while node is not None:
            loops += node.targeted
            indent += node.targeted + (node.kind == "if") * 2
            node = node.parent
        if loops > MAX_WRAPPERS or indent > MAX_INDENT:
            return True
    return False


# --- generation --------------------------------------------------------------------------------
class _Gen(sg.Generator):
    local_template = "l{}"

    def atoms(self) -> None:
        """Evaluate every pending expression now (before a construct whose arms may change locals)."""
        self.stack = [self.materialize(e) for e in self.stack]

    def assign(self, names: list[str], n: int) -> None:
        """The top ``n`` entries into the join variables ``names`` (the stack is left as it is)."""
        if not n:
            return
        values = [self.value(e) for e in self.stack[len(self.stack) - n:]]
        if n == 1:
            self.emit(f"{names[0]} = {values[0]}")
        else:
            self.emit(f"{', '.join(names)} = {', '.join(values)}")

    def leave(self, ctl: list[_Construct], depth: int) -> None:
        """The branch to label ``depth``: its values into the target's join variables, then out."""
        target = ctl[-1 - depth]
        if target.kind == "func":
            self.ret(target.nresults)
            return
        self.assign(target.results, target.nresults)
        wrappers = [c for c in ctl[len(ctl) - depth:] if c.targeted]
        if wrappers:
            self.emit(f"_brk = {len(wrappers)}")
        self.emit("break")

    def ret(self, n: int) -> None:
        values = [self.value(e) for e in self.stack[len(self.stack) - n:]] if n else []
        if not values:
            self.emit("return")
        elif n == 1:
            self.emit(f"return {values[0]}")
        else:
            self.emit(f"return ({', '.join(values)},)")


def _compile(func: WasmFunction, straight: Straight, info: Any) -> bool:
    """Pass 2: generate, compile and register the Python function of ``func`` (False: its
    constructs nest deeper than Python allows)."""
    body, unreachable = func.ir.body, info.unreachable
    end_of, _ = match_blocks(body)
    found = _scan(func, info, end_of)
    if _too_deep(found):
        return False
    inst = func.instance
    ns = sg.namespace_of(inst)
    g = _Gen(ns, inst)
    nparams = straight.nparams
    g.emit("_cell[0] += 1")
    if any(c.crossed for c in found.values()):
        g.emit("_brk = 0")
    by_default: dict[str, list[str]] = {}
    for j, d in enumerate(func.local_defaults):
        by_default.setdefault(repr(d), []).append(f"l{nparams + j}")
    for d, names in by_default.items():
        g.emit(f"{' = '.join(names)} = {d}")
    ctl = [found[-1]]
    dead = False
    i = 0
    while i < len(body):
        ins = body[i]
        op = ins.op
        g.pc = i
        if op != 0x05 and op != 0x0B and (dead or unreachable[i]):
            i = end_of[i] + 1 if op in (0x02, 0x03, 0x04) else i + 1
            continue
        if op == 0x02 or op == 0x04:
            c = found[i]
            cond = g.pop() if op == 0x04 else None
            g.atoms()
            c.entry = list(g.stack)
            c.known = (dict(g.known), dict(g.globals_known))
            c.results = [f"r{i}_{j}" for j in range(c.nresults)]
            if c.targeted:
                g.emit("while True:")
                g.indent += 1
            if cond is not None:
                g.emit(f"if {cond[0]}:")
                g.indent += 1
            c.mark = len(g.lines)
            ctl.append(c)
        elif op == 0x05:
            c = ctl[-1]
            if not dead:
                g.assign(c.results, c.nresults)
            if len(g.lines) == c.mark:
                g.emit("pass")
            g.indent -= 1
            g.emit("else:")
            g.indent += 1
            c.mark = len(g.lines)
            g.stack = list(c.entry)
            g.known, g.globals_known = dict(c.known[0]), dict(c.known[1])
            dead = False
        elif op == 0x0B:
            c = ctl.pop()
            fall = not dead
            if c.kind == "func":
                if fall:
                    g.ret(c.nresults)
                break
            below = c.entry[: len(c.entry) - c.nparams]
            if c.kind == "if":
                if fall:
                    g.assign(c.results, c.nresults)
                if len(g.lines) == c.mark:
                    g.emit("pass")
                g.indent -= 1
                if not c.has_else and c.nresults:
                    g.emit("else:")  # the missing else passes the params through
                    g.stack = list(c.entry)
                    g.indent += 1
                    g.assign(c.results, c.nresults)
                    g.indent -= 1
                live = (not c.has_else) or fall or c.then_live or c.targeted
            else:
                live = fall or c.targeted
            if c.targeted:
                if c.kind == "block" and fall:
                    g.assign(c.results, c.nresults)
                g.emit("break")
                g.indent -= 1
                if c.crossed:
                    g.emit("if _brk:")
                    g.emit("_brk -= 1", 1)
                    g.emit("break", 1)
            if c.kind == "if" or c.targeted:
                g.stack = below + [(r, False, sg.NO_DEPS, 0) for r in c.results]
                g.forget()  # paths join here
            dead = not live
        elif op == 0x0C:
            g.leave(ctl, ins.imm)
            dead = True
        elif op == 0x0D:
            cond = g.pop()
            g.emit(f"if {cond[0]}:")
            g.indent += 1
            g.leave(ctl, ins.imm)
            g.indent -= 1
        elif op == 0x0E:
            labels, default = ins.imm
            index = g.materialize(g.pop())[0]
            arms: dict[int, list[int]] = {}
            for k, d in enumerate(labels):
                if d != default:
                    arms.setdefault(d, []).append(k)
            keyword = "if"
            for d, ks in arms.items():
                if len(ks) == 1:
                    test = f"{index} == {ks[0]}"
                else:
                    test = f"{index} in {g.name(f'_bt{func.index}_{i}_{d}', frozenset(ks))}"
                g.emit(f"{keyword} {test}:")
                g.indent += 1
                g.leave(ctl, d)
                g.indent -= 1
                keyword = "elif"
            if arms:
                g.emit("else:")
                g.indent += 1
            g.leave(ctl, default)
            if arms:
                g.indent -= 1
            dead = True
        elif op == 0x0F:
            g.ret(straight.nresults)
            dead = True
        elif op == 0x00:
            g.emit('raise Trap("unreachable")')
            dead = True
        elif op == 0x10:
            callee = inst.funcs[ins.imm]
            s = callee.straight
            assert isinstance(s, Straight)  # the analysis compiled every callee first
            g.call(s)
        elif not sg.translate(g, op, ins.imm):  # pragma: no cover - the analysis checked every op
            raise AssertionError(f"straight function with opcode {op:#x}")
        i += 1
    params = ", ".join(f"l{k}" for k in range(nparams))
    src = f"def {straight.name}({params}):\n" + "\n".join(g.lines) + "\n"
    namespace: dict[str, Any] = {}
    try:
        code = compile(src, f"<wasm func {func.index}>", "exec")
    except (SyntaxError, RecursionError, MemoryError):  # a limit of Python's compiler: run it as segments
        return False
    exec(code, ns, namespace)  # noqa: S102 - our own source
    fn = namespace[straight.name]
    ns[straight.name] = fn
    ns.setdefault("_straight_codes", {})[fn.__code__] = (func, (0, 0, *g.pcs))
    return True

