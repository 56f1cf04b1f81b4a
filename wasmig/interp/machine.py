"""The interpreter's execution loop: explicit frames, one value stack, no Python recursion.

A wasm call pushes a :class:`Frame` onto ``Machine.frames`` and switches the loop's local
variables to it; a return pops it. Python's own stack never grows with wasm call depth, so a
guest recursing 100k frames deep is fine, and running out of frames is a wasm
:class:`~wasmig.errors.Exhaustion` trap. All state lives in plain data — frames (function,
pc, locals, stack base) and the shared operand stack — which is what a checkpoint captures.

``Machine.steps`` counts stable points (function entries plus loop entries and re-entries),
the engine-neutral logical clock that later checkpoint logic uses.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any

from wasmig.errors import Exhaustion, HostCallInterrupted, Trap
from wasmig.interp import ops
from wasmig.interp.numeric import M32, M64, f32_from_bytes, f32_into_bytes
from wasmig.interp.rare import execute_rare
from wasmig.interp.segments import compile_segment, segment_fault
from wasmig.interp.store import FuncInst, HostFunc, ModuleInstance, WasmFunction

NEVER = 1 << 62
DEFAULT_MAX_FRAMES = 150_000
#: locals (params included) summed over all live frames: bounds memory for frames with many locals
DEFAULT_MAX_SLOTS = 4_000_000


def _segment_threshold() -> int:
    """``WASMIG_SEGMENT_THRESHOLD`` (arrivals before a segment compiles; 1 compiles all that runs),
    else 20. A value that is not a positive integer is reported once and ignored."""
    text = os.environ.get("WASMIG_SEGMENT_THRESHOLD")
    if text is None:
        return 20
    try:
        value = int(text)
        if value >= 1:
            return value
    except ValueError:
        pass
    print(f"wasmig: warning: WASMIG_SEGMENT_THRESHOLD={text!r} is not a positive integer; using 20", file=sys.stderr)
    return 20


DEFAULT_SEGMENT_THRESHOLD = _segment_threshold()

_OOB = "out of bounds memory access"
_f64_pack_into = struct.Struct("<d").pack_into


class Suspended(Exception):
    """The machine stopped at a checkpointable point; its frames and stack are left in place.

    ``point`` is ``entry``, ``loop``, ``import_call`` or ``instruction`` (see docs/snapshot-format.md).
    Not a WasmError: it is control flow between the machine and whoever asked for the stop.
    """

    def __init__(self, point: str) -> None:
        self.point = point
        super().__init__(f"suspended at a {point} point")


class Frame:
    """One activation of a wasm function: what a canonical snapshot frame is made of."""

    __slots__ = ("func", "pc", "locals", "base", "slots")

    def __init__(self, func: WasmFunction, locals: list[Any], base: int, slots: int) -> None:
        self.func = func
        self.pc = 0  # index of the next instruction to execute (saved while a callee runs)
        self.locals = locals
        self.base = base  # operand stack height at entry (after the arguments were taken)
        self.slots = slots  # locals in this frame and all frames below it (the stack-size measure)


def ensure_compiled(f: WasmFunction) -> list[tuple]:
    if f.code is None:
        from wasmig.interp.compile import compile_function

        inst = f.instance
        info = inst.validation.functions[f.index - inst.module.num_imported_funcs()]
        f.code = compile_function(f.ir, f.type, info.stack_before, info.unreachable, inst.types, inst.funcs)
        f.segs = [None] * len(f.code)
        f.heat = {}
    return f.code


class Machine:
    """Executes wasm functions of one or more module instances that share a call stack."""

    def __init__(self, max_frames: int = DEFAULT_MAX_FRAMES, max_slots: int = DEFAULT_MAX_SLOTS) -> None:
        self.frames: list[Frame] = []
        self.stack: list[Any] = []
        self.max_frames = max_frames
        self.max_slots = max_slots
        #: ``steps`` lives in a one-element list shared with compiled code that counts entries itself
        self.step_cell = [0]
        #: False after restoring a snapshot that has no step count: ``steps`` then counts from the
        #: restore, which is not the canonical number, so snapshots say None
        self.steps_counted = True
        #: instructions executed, counted only by the counting loop (None once uncounted code ran)
        self.instructions: int | None = 0
        #: stop at the first stable point at which steps >= stop_at_step (set to 0 to stop asap)
        self.stop_at_step = NEVER
        #: with the counting loop: stop before executing instruction number stop_at_instruction + 1
        self.stop_at_instruction = NEVER
        self.counting = False
        #: run compiled straight-line segments (:mod:`wasmig.interp.segments`); False executes
        #: instruction by instruction (the reference they are tested against; same results, slower)
        self.segments = True
        #: arrivals at a pc before the segment starting there is compiled: Python's compile() costs
        #: about as much as interpreting a short segment 30 times, and most code of a program's
        #: start-up runs once (see docs/design.md); 1 compiles everything that runs
        self.segment_threshold = DEFAULT_SEGMENT_THRESHOLD
        self.point: str | None = None  # set when suspended
        self._entry_depth = 0

    @property
    def steps(self) -> int:
        """Stable points passed so far (function entries plus loop entries and re-entries)."""
        return self.step_cell[0]

    @steps.setter
    def steps(self, value: int) -> None:
        self.step_cell[0] = value

    # ------------------------------------------------------------------------------------------
    def invoke(self, func: FuncInst, args: list[Any]) -> list[Any]:
        """Call ``func`` with internal values; return its results as internal values.

        Raises :class:`Suspended` (frames left in place, see :meth:`resume`) when a requested
        stop point is reached during an outermost invocation.
        """
        if isinstance(func, HostFunc):
            return func.call_internal(list(args))
        assert isinstance(func, WasmFunction)
        entry_depth = len(self.frames)
        entry_height = len(self.stack)
        self._push_frame(func, list(args))
        if entry_depth == 0 and self.steps >= self.stop_at_step:
            self.point = "entry"
            self._entry_depth = 0
            raise Suspended("entry")
        return self._execute(entry_depth, entry_height)

    def resume(self) -> list[Any]:
        """Continue a suspended (or restored) machine until the outermost invocation returns."""
        if not self.frames:
            raise RuntimeError("nothing to resume: the machine has no frames")
        self.point = None
        return self._execute(self._entry_depth, 0)

    def _execute(self, entry_depth: int, entry_height: int) -> list[Any]:
        suspended = False
        try:
            if self.counting:
                return self._run_counted(entry_depth)
            self.instructions = None
            if self.segments:
                return self._run(entry_depth)
            return self._run_stepwise(entry_depth)  # type: ignore[attr-defined]
        except Suspended:
            if entry_depth != 0:  # a host function re-entered the guest: not a capturable state
                raise Trap("cannot checkpoint while a host function is calling back into wasm") from None
            suspended = True
            self._entry_depth = entry_depth
            raise
        except RecursionError:
            raise Exhaustion("call stack exhausted") from None
        except MemoryError:
            raise Exhaustion("call stack exhausted (out of memory)") from None
        finally:
            if not suspended:
                del self.frames[entry_depth:]
                del self.stack[entry_height:]

    def _push_frame(self, func: WasmFunction, args: list[Any]) -> Frame:
        if len(self.frames) >= self.max_frames:
            raise Exhaustion("call stack exhausted")
        ensure_compiled(func)
        locals_ = args + func.local_defaults
        below = self.frames[-1].slots if self.frames else 0
        if below + len(locals_) > self.max_slots:
            raise Exhaustion("call stack exhausted")
        frame = Frame(func, locals_, len(self.stack), below + len(locals_))
        self.frames.append(frame)
        self.steps += 1
        return frame

    def backtrace(self, pc: int | None = None) -> list[str]:
        """Innermost-first description of the current frames (function names from the name section)."""
        out = []
        for i, fr in enumerate(reversed(self.frames)):
            # pc is always one past the instruction being executed: the trapping one, or the call
            at = pc if (i == 0 and pc is not None) else fr.pc
            out.append(self.describe(fr.func, at))
        return out

    @staticmethod
    def describe(func: WasmFunction, at: int) -> str:
        """One backtrace line: ``func`` executing the instruction before pc ``at``."""
        ir = func.ir
        idx = max(0, min(at - 1, len(ir.body) - 1))
        off = ir.body_offset + ir.body[idx].offset if ir.body else 0
        return f"{func.name} (func {func.index}) at offset {off:#x}"

    # ------------------------------------------------------------------------------------------
    def _run(self, entry_depth: int) -> list[Any]:  # noqa: C901 - the dispatch loop is one function on purpose
        frames = self.frames
        stack = self.stack
        push = stack.append
        pop = stack.pop
        frame = frames[-1]
        func = frame.func
        code = func.code
        segs = func.segs
        locs = frame.locals
        pc = frame.pc
        inst: ModuleInstance = func.instance
        glob = inst.globals
        mem = inst.mems[0].data if inst.mems else bytearray()
        max_frames = self.max_frames
        max_slots = self.max_slots
        cell = self.step_cell
        icount = self.instructions or 0  # noqa: F841 - used by the counting variant
        stop_icount = self.stop_at_instruction  # noqa: F841 - used by the counting variant
        threshold = self.segment_threshold  # noqa: F841 - not used by the variants without segments

        try:
            while True:
                # @segments-begin
                seg = segs[pc]
                if seg:  # a compiled segment: runs to its exit, returns where to go on
                    try:
                        pc = seg(stack, locs)
                    except Exception as exc:
                        pc, trap = segment_fault(self, seg, exc, pc)
                        frame.pc = pc
                        if trap is None:
                            raise
                        raise trap from None
                    continue
                if seg is None:  # not compiled (yet): count arrivals, compile once hot (False: a boundary)
                    heat = func.heat
                    h = heat.get(pc, 0) + 1
                    if h >= threshold:
                        heat.pop(pc, None)
                        seg = segs[pc] = compile_segment(func, pc) or False
                        if seg:
                            continue
                    else:
                        heat[pc] = h
                # @segments-end
                # @count
                ins = code[pc]
                pc += 1
                op = ins[0]
                # boundaries of compiled segments first: with segments they are most of what is dispatched here
                if op == ops.CALL or op == ops.CALL_INDIRECT:
                    if op == ops.CALL:
                        callee = ins[1]
                    else:
                        i = pop()
                        table = inst.tables[ins[2]].elements
                        if i >= len(table):
                            raise Trap(f"undefined element {i}")
                        callee = table[i]
                        if callee is None:
                            raise Trap(f"uninitialized element {i}")
                        if callee.type != ins[1]:
                            raise Trap("indirect call type mismatch")
                    if type(callee) is WasmFunction:
                        if len(frames) >= max_frames:
                            raise Exhaustion("call stack exhausted")
                        np = callee.nparams
                        if np:
                            args = stack[-np:]
                            del stack[-np:]
                        else:
                            args = []
                        frame.pc = pc
                        if callee.code is None:
                            ensure_compiled(callee)
                        args += callee.local_defaults
                        slots = frame.slots + len(args)
                        if slots > max_slots:
                            raise Exhaustion("call stack exhausted")
                        frame = Frame(callee, args, len(stack), slots)
                        frames.append(frame)
                        func = callee
                        code = callee.code
                        segs = callee.segs
                        locs = frame.locals
                        pc = 0
                        cell[0] += 1
                        if cell[0] >= self.stop_at_step:
                            # @sync
                            self.point = "entry"
                            raise Suspended("entry")
                        if callee.instance is not inst:
                            inst = callee.instance
                            glob = inst.globals
                            mem = inst.mems[0].data if inst.mems else bytearray()
                    else:
                        np = len(callee.type.params)
                        if np:
                            args = stack[-np:]
                            del stack[-np:]
                        else:
                            args = []
                        frame.pc = pc
                        # @sync
                        try:
                            results = callee.call_internal(args)
                        except HostCallInterrupted:
                            # nothing happened yet: put the arguments (and call_indirect's table index)
                            # back and stand at the call again
                            stack.extend(args)
                            if op == ops.CALL_INDIRECT:
                                push(i)
                            frame.pc = pc - 1
                            # @uncount
                            # @sync
                            self.point = "import_call"
                            raise Suspended("import_call") from None
                        stack.extend(results)
                        mem = inst.mems[0].data if inst.mems else bytearray()
                elif op == ops.RETURN or op == ops.BR_IF_RET:
                    if op == ops.BR_IF_RET and not pop():
                        continue
                    arity = ins[1]
                    drop = ins[2]
                    if drop:
                        top = len(stack) - arity
                        del stack[top - drop : top]
                    frames.pop()
                    if len(frames) == entry_depth:
                        # @sync
                        if arity:
                            res = stack[-arity:]
                            del stack[-arity:]
                            return res
                        return []
                    frame = frames[-1]
                    func = frame.func
                    code = func.code
                    segs = func.segs
                    locs = frame.locals
                    pc = frame.pc
                    if func.instance is not inst:
                        inst = func.instance
                        glob = inst.globals
                        mem = inst.mems[0].data if inst.mems else bytearray()
                elif op == ops.LOOP:
                    cell[0] += 1
                    if cell[0] >= self.stop_at_step:
                        frame.pc = pc
                        # @sync
                        self.point = "loop"
                        raise Suspended("loop")
                elif op == 0x20:
                    push(locs[ins[1]])
                elif op == 0x21:
                    locs[ins[1]] = pop()
                elif op == ops.CONST:
                    push(ins[1])
                elif op == 0x6A:
                    b = pop()
                    stack[-1] = (stack[-1] + b) & M32
                elif op == 0x22:
                    locs[ins[1]] = stack[-1]
                elif op == ops.BR_IF:
                    if pop():
                        pc = ins[1]
                elif op == ops.IF:
                    if not pop():
                        pc = ins[1]
                elif op == ops.LOAD:
                    try:
                        stack[-1] = ins[2](mem, stack[-1] + ins[1])[0]
                    except struct.error:
                        raise Trap(_OOB) from None
                elif op == ops.STORE:
                    v = pop()
                    try:
                        ins[2](mem, pop() + ins[1], v & ins[3])
                    except struct.error:
                        raise Trap(_OOB) from None
                elif op == ops.NOP:
                    pass
                elif op == ops.JUMP:
                    pc = ins[1]
                elif op == ops.BINOP:
                    b = pop()
                    stack[-1] = ins[1](stack[-1], b)
                elif op == ops.UNOP:
                    stack[-1] = ins[1](stack[-1])
                elif op == 0x71:
                    b = pop()
                    stack[-1] &= b
                elif op == 0x6B:
                    b = pop()
                    stack[-1] = (stack[-1] - b) & M32
                elif op == 0x45:
                    stack[-1] = 1 if stack[-1] == 0 else 0
                elif op == 0x23:
                    push(glob[ins[1]].internal)
                elif op == 0x74:
                    b = pop()
                    stack[-1] = (stack[-1] << (b & 31)) & M32
                elif op == 0x46:
                    b = pop()
                    stack[-1] = 1 if stack[-1] == b else 0
                elif op == 0x47:
                    b = pop()
                    stack[-1] = 1 if stack[-1] != b else 0
                elif op == 0x49:
                    b = pop()
                    stack[-1] = 1 if stack[-1] < b else 0
                elif op == 0x48:
                    b = pop()
                    a = stack[-1]
                    stack[-1] = 1 if (a ^ 0x80000000) < (b ^ 0x80000000) else 0
                elif op == 0x4B:
                    b = pop()
                    stack[-1] = 1 if stack[-1] > b else 0
                elif op == 0x4D:
                    b = pop()
                    stack[-1] = 1 if stack[-1] <= b else 0
                elif op == 0x4F:
                    b = pop()
                    stack[-1] = 1 if stack[-1] >= b else 0
                elif op == 0x76:
                    b = pop()
                    stack[-1] >>= b & 31
                elif op == 0x72:
                    b = pop()
                    stack[-1] |= b
                elif op == 0x73:
                    b = pop()
                    stack[-1] ^= b
                elif op == 0x6C:
                    b = pop()
                    stack[-1] = (stack[-1] * b) & M32
                elif op == ops.LOAD8_U:
                    try:
                        stack[-1] = mem[stack[-1] + ins[1]]
                    except IndexError:
                        raise Trap(_OOB) from None
                elif op == ops.STORE8:
                    v = pop()
                    try:
                        mem[pop() + ins[1]] = v & 0xFF
                    except IndexError:
                        raise Trap(_OOB) from None
                elif op == 0x7C:
                    b = pop()
                    stack[-1] = (stack[-1] + b) & M64
                elif op == 0x7D:
                    b = pop()
                    stack[-1] = (stack[-1] - b) & M64
                elif op == 0x7E:
                    b = pop()
                    stack[-1] = (stack[-1] * b) & M64
                elif op == 0x83:
                    b = pop()
                    stack[-1] &= b
                elif op == 0x84:
                    b = pop()
                    stack[-1] |= b
                elif op == 0x86:
                    b = pop()
                    stack[-1] = (stack[-1] << (b & 63)) & M64
                elif op == 0x88:
                    b = pop()
                    stack[-1] >>= b & 63
                elif op == 0x50:
                    stack[-1] = 1 if stack[-1] == 0 else 0
                elif op == 0xA7:
                    stack[-1] &= M32
                elif op == 0xAD:
                    pass
                elif op == 0x24:
                    glob[ins[1]].internal = pop()
                elif op == ops.LOAD_S:
                    try:
                        stack[-1] = ins[2](mem, stack[-1] + ins[1])[0] & ins[3]
                    except struct.error:
                        raise Trap(_OOB) from None
                elif op == ops.BR_ADJ or op == ops.BR_IF_ADJ:
                    if op == ops.BR_IF_ADJ and not pop():
                        continue
                    top = len(stack) - ins[2]
                    del stack[top - ins[3] : top]
                    pc = ins[1]
                elif op == ops.BR_TABLE:
                    i = pop()
                    targets = ins[1]
                    target, arity, drop = targets[i] if i < len(targets) else ins[2]
                    if drop:
                        top = len(stack) - arity
                        del stack[top - drop : top]
                    pc = target
                elif op == 0x1A:
                    pop()
                elif op == 0x1B or op == 0x1C:
                    c = pop()
                    b = pop()
                    if not c:
                        stack[-1] = b
                elif op == ops.LOAD_F32:
                    try:
                        stack[-1] = f32_from_bytes(mem, stack[-1] + ins[1])
                    except struct.error:
                        raise Trap(_OOB) from None
                elif op == ops.STORE_F32:
                    v = pop()
                    try:
                        f32_into_bytes(mem, pop() + ins[1], v)
                    except struct.error:
                        raise Trap(_OOB) from None
                elif op == ops.STORE_F64:
                    v = pop()
                    try:
                        _f64_pack_into(mem, pop() + ins[1], v)
                    except struct.error:
                        raise Trap(_OOB) from None
                elif op == 0x00:
                    raise Trap("unreachable")
                else:
                    frame.pc = pc
                    mem = self._rare(op, ins, inst, mem)
        except Trap as trap:
            if not trap.backtrace:
                frame.pc = pc
                trap.backtrace = self.backtrace(pc)
            # @sync
            raise

    # ------------------------------------------------------------------------------------------
    def _rare(self, op: int, ins: tuple, inst: ModuleInstance, mem: bytearray) -> bytearray:
        """Less frequent instructions, out of the hot loop (:mod:`wasmig.interp.rare`)."""
        return execute_rare(self, op, ins, inst, mem)


# --- the counting variant of the loop -------------------------------------------------------------
_COUNT = """if icount >= stop_icount:
    frame.pc = pc
    self.instructions = icount
    self.point = "instruction"
    raise Suspended("instruction")
icount += 1"""


def _make_variant(name: str, *, count: bool) -> Any:
    """Build a variant of ``Machine._run`` from its source: one source of truth for the semantics.

    Every variant drops the compiled segments (``# @segments-begin`` .. ``# @segments-end``) and
    executes instruction by instruction. ``count=True`` also expands the ``# @count`` / ``# @sync``
    / ``# @uncount`` marker comments into instruction counting (``_run_counted``), so
    checkpoint-at-instruction costs nothing when it is not used; ``count=False`` is
    ``_run_stepwise``, the loop without segments, the reference the segments are compared with.
    """
    import inspect
    import textwrap

    src = textwrap.dedent(inspect.getsource(Machine._run)).replace("def _run(", f"def {name}(", 1)
    out = []
    skipping = False
    for line in src.splitlines():
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped == "# @segments-begin":
            skipping = True
        elif stripped == "# @segments-end":
            skipping = False
        elif skipping:
            continue
        elif stripped == "# @count":
            if count:
                out.extend(indent + part for part in _COUNT.splitlines())
        elif stripped == "# @sync":
            if count:
                out.append(indent + "self.instructions = icount")
        elif stripped == "# @uncount":
            if count:
                out.append(indent + "icount -= 1")
        else:
            out.append(line)
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(out), __file__, "exec"), globals(), namespace)  # noqa: S102 - our own source
    return namespace[name]


Machine._run_counted = _make_variant("_run_counted", count=True)  # type: ignore[attr-defined]
Machine._run_stepwise = _make_variant("_run_stepwise", count=False)  # type: ignore[attr-defined]
