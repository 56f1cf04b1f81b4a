"""wasmtime's traps as :class:`wasmig.Trap`: the spec's wording (what the interpreter says) and the
interpreter's backtrace format, with every frame named and placed in the *original* module (an
instrumented module's functions and offsets mapped back)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wasmtime

from wasmig.errors import Exhaustion, Trap
from wasmig.instrument.linking import HELPERS, REWIND_MODULE_NAME

if TYPE_CHECKING:
    from wasmig.binary.ir import Module as IRModule
    from wasmig.module import Module


# --- traps -------------------------------------------------------------------------------------
_TC = wasmtime.TrapCode
#: wasmtime trap code -> the spec's wording (what the interpreter says). By name, because the set of
#: codes grew over wasmtime-py's releases (older ones lacked NULL_REFERENCE): a code this release
#: lacks is simply never reported.
TRAP_REASONS: dict[Any, str] = {getattr(_TC, code): reason for code, reason in (
    ("UNREACHABLE", "unreachable"),
    ("INTEGER_DIVISION_BY_ZERO", "integer divide by zero"),
    ("INTEGER_OVERFLOW", "integer overflow"),
    ("BAD_CONVERSION_TO_INTEGER", "invalid conversion to integer"),
    ("MEMORY_OUT_OF_BOUNDS", "out of bounds memory access"),
    ("HEAP_MISALIGNED", "unaligned atomic"),
    ("TABLE_OUT_OF_BOUNDS", "out of bounds table access"),  # "undefined element" for call_indirect
    ("INDIRECT_CALL_TO_NULL", "uninitialized element"),
    ("BAD_SIGNATURE", "indirect call type mismatch"),
    ("STACK_OVERFLOW", "call stack exhausted"),
    ("NULL_REFERENCE", "null reference"),
    ("INTERRUPT", "interrupt"),
    ("OUT_OF_FUEL", "all fuel consumed"),
) if hasattr(_TC, code)}
#: Message fragments for traps that carry no code (older wasmtime builds, host-made traps).
_MESSAGE_REASONS = [
    ("call stack exhausted", "call stack exhausted"), ("integer divide by zero", "integer divide by zero"),
    ("integer overflow", "integer overflow"), ("out of bounds memory access", "out of bounds memory access"),
    ("wasm `unreachable` instruction executed", "unreachable"), ("indirect call type mismatch",
    "indirect call type mismatch"), ("undefined element", "undefined element"),
    ("uninitialized element", "uninitialized element"), ("invalid conversion to integer",
    "invalid conversion to integer"), ("out of bounds table access", "out of bounds table access"),
]

_NO_OFFSET = 0xFFFFFFFF  # wasmtime reports SIZE_MAX for a frame without a code offset
_CALL_INDIRECT, _BLOCK, _LOOP, _IF, _ELSE, _END, _BR_IF, _UNREACHABLE = 0x11, 0x02, 0x03, 0x04, 0x05, 0x0B, 0x0D, 0x00


class _Code:
    """Instruction lookup by absolute module offset, for one module (built on first trap)."""

    def __init__(self, module: Module, instrumented: bytes | Callable[[], bytes] | None = None) -> None:
        self._module = module  # decoded only when a trap needs it (a run may never trap)
        self._index: dict[int, dict[int, int]] = {}
        self._instrumented = instrumented  # the bytes, or what reads them when a trap needs them
        self._origins: Any = None
        #: an instrumented module's rewind module, once linked beside it (its bytes, or what reads
        #: them): frames in it (:data:`REWIND_MODULE_NAME`) are mapped through its own origins
        self.rewind: bytes | Callable[[], bytes] | None = None
        self._rewind_origins: Any = None

    @functools.cached_property
    def ir(self) -> IRModule:
        return self._module.ir

    @functools.cached_property
    def imported(self) -> int:
        return self.ir.num_imported_funcs()

    @functools.cached_property
    def total(self) -> int:
        return self.imported + len(self.ir.funcs)

    def original_offset(self, func_index: int, offset: int, module_name: str | None = None) -> int:
        """For a run of the instrumented module: the offset of the original instruction that
        ``offset`` (in the module named ``module_name``: the run module, or the rewind module) was
        copied from (unchanged when there is none, or no instrumentation)."""
        if self._instrumented is None:
            return offset
        found = self._origin_map(module_name).translate(func_index, offset)
        return offset if found is None else found

    def _origin_map(self, module_name: str | None) -> Any:
        """The origins of the module named ``module_name`` (the rewind module, else the run
        module), decoded on first use."""
        from wasmig.instrument.origins import OriginMap

        if module_name == REWIND_MODULE_NAME and self.rewind is not None:
            if self._rewind_origins is None:
                code = self.rewind() if callable(self.rewind) else self.rewind
                self._rewind_origins = OriginMap(code, self.ir)
            return self._rewind_origins
        if self._origins is None:
            assert self._instrumented is not None
            code = self._instrumented() if callable(self._instrumented) else self._instrumented
            self._origins = OriginMap(code, self.ir)
        return self._origins

    def canonical_index(self, func_index: int, module_name: str | None = None) -> int:
        """For a run of the instrumented module: the original function whose code ``func_index``
        (in the module named ``module_name``) runs (a rewind copy or an entry function stands
        for its function; the entry functions' owners are read from that module's origins)."""
        if self._instrumented is None:
            return func_index
        from wasmig.instrument.origins import canonical_defined

        n = len(self.ir.funcs)
        defined = func_index - self.imported
        original = canonical_defined(defined, n)
        if original is None and defined >= 2 * n + HELPERS:  # past the copies: an entry function?
            original = canonical_defined(defined, n, self._origin_map(module_name).owners)
        return func_index if original is None else self.imported + original

    def locate(self, func_index: int, offset: int) -> tuple[Any, int] | None:
        """(IR function, instruction index) of the instruction at ``offset``, if any."""
        defined = func_index - self.imported
        if not 0 <= defined < len(self.ir.funcs):
            return None
        func = self.ir.funcs[defined]
        index = self._index.get(defined)
        if index is None:
            index = self._index[defined] = {func.body_offset + ins.offset: i for i, ins in enumerate(func.body)}
        i = index.get(offset)
        return None if i is None else (func, i)


def _folded_trap(body: list[Any], i: int) -> int | None:
    """The ``unreachable`` a trap reported at a branch really is.

    Cranelift folds "branch to a block that only traps" into a conditional trap placed at the
    branch, so wasmtime reports the ``br_if`` (or ``if``) while the interpreter — executing one
    instruction at a time — reports the ``unreachable`` the branch led to. Returns that
    instruction's index when the branch leads straight to an ``unreachable``; else None."""
    ins = body[i]
    candidates: list[int] = []
    if ins.op == _BR_IF:
        enclosing, ends = _structure(body, i)
        depth = ins.imm
        if depth < len(enclosing):
            opener = enclosing[-1 - depth]
            if body[opener].op != _LOOP:
                candidates.append(ends[opener] + 1)
        candidates.append(i + 1)  # not taken
    elif ins.op == _IF:
        _, ends = _structure(body, i + 1)
        candidates.append(i + 1)  # the then-branch
        end = ends.get(i)
        if end is not None:
            else_at = next((j for j in range(i + 1, end) if body[j].op == _ELSE and _depth_between(body, i, j) == 0),
                           None)
            candidates.append(else_at + 1 if else_at is not None else end + 1)
    last = len(body) - 1
    for k in candidates:
        while k < last and body[k].op == _END:  # falling out of enclosing blocks
            k += 1
        if k < last and body[k].op == _UNREACHABLE:
            return k
    return None


def _structure(body: list[Any], upto: int) -> tuple[list[int], dict[int, int]]:
    """The openers (block/loop/if) enclosing instruction ``upto``, and every opener's ``end``."""
    stack: list[int] = []
    enclosing: list[int] = []
    ends: dict[int, int] = {}
    for j, ins in enumerate(body):
        if j == upto:
            enclosing = list(stack)
        if ins.op in (_BLOCK, _LOOP, _IF):
            stack.append(j)
        elif ins.op == _END and stack:
            ends[stack.pop()] = j
    return enclosing, ends


def _depth_between(body: list[Any], start: int, j: int) -> int:
    depth = 0
    for ins in body[start + 1 : j]:
        if ins.op in (_BLOCK, _LOOP, _IF):
            depth += 1
        elif ins.op == _END:
            depth -= 1
    return depth


def convert_trap(trap: wasmtime.Trap, module: Module, code: _Code | None = None) -> Trap:
    """A wasmtime trap as :class:`wasmig.Trap` (:class:`wasmig.Exhaustion` for stack overflow):
    the spec's reason and the interpreter's backtrace lines, innermost first."""
    code = code or _Code(module)
    trap_code = trap.trap_code
    reason = TRAP_REASONS.get(trap_code) if trap_code is not None else None
    if reason is None:
        message = trap.message
        reason = next((r for needle, r in _MESSAGE_REASONS if needle in message), None) or _one_line(trap)
    frames = trap.frames
    if frames and trap_code == _TC.STACK_OVERFLOW and frames[0].module_offset >= _NO_OFFSET:
        # overflow is detected in the callee's prologue, before any of its instructions; the
        # interpreter refuses to enter the callee, so its innermost frame is the caller's call
        frames = frames[1:]
    lines = []
    for depth, frame in enumerate(frames):
        index, offset = frame.func_index, frame.module_offset
        if offset < _NO_OFFSET:
            offset = code.original_offset(index, offset, frame.module_name)
        index = code.canonical_index(index, frame.module_name)
        if depth == 0:
            found = code.locate(index, offset)
            if found is not None:
                func, i = found
                if trap_code == _TC.UNREACHABLE and func.body[i].op != _UNREACHABLE:
                    k = _folded_trap(func.body, i)
                    if k is not None:
                        offset = func.body_offset + func.body[k].offset
                elif trap_code == _TC.TABLE_OUT_OF_BOUNDS and func.body[i].op == _CALL_INDIRECT:
                    reason = "undefined element"
        # wasmig's naming (name section, else export or import name, else func[i]) is exactly
        # what the interpreter prints; wasmtime's own name only for an index wasmig does not know
        name = module.ir.func_name(index) if index < code.total else (frame.func_name or f"func[{index}]")
        lines.append(f"{name} (func {index}) at offset {offset:#x}")
    cls = Exhaustion if reason == "call stack exhausted" else Trap
    return cls(reason, lines)


# --- instances ---------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    """wasmtime's error text (often several lines: ``Caused by: ...``) as one line."""
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
