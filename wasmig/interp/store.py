"""Runtime objects of the interpreter: functions, memories, tables, globals, module instances.

These are the spec's *store* entries. The public host externs (``wasmig.HostFunc``,
``wasmig.Memory``, ``wasmig.Table``, ``wasmig.Global``) are these very classes, so an extern
exported by one instance can be imported by another without wrapping, as the spec's linking
tests require. All state is plain Python data (bytearrays, lists, ints, floats), which is what
lets a later stage capture and rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wasmig.binary.ir import FuncType, Limits
from wasmig.errors import Trap
from wasmig.interp.atomics import WaitQueues
from wasmig.interp.numeric import (
    M32,
    M64,
    f32_from_bits,
    f32_to_bits,
    f64_from_bits,
    f64_to_bits,
    r32,
    signed32,
    signed64,
)

if TYPE_CHECKING:
    from wasmig.binary.ir import Function

PAGE_SIZE = 65536
MAX_PAGES = 65536
#: tables are Python lists; refuse absurd sizes with a clean failure instead of exhausting RAM
MAX_TABLE_SIZE = 10_000_000


@dataclass(frozen=True, slots=True)
class Val:
    """A value with an explicit wasm type. Numbers are given as their *unsigned bit pattern*,
    so ``Val("f32", 0x7FC00000)`` is exactly that NaN; references as ``None`` (null), a
    function, or any host object for ``externref``."""

    type: str
    value: Any


# --- value conversion between API form and the interpreter's internal form -------------------
def to_internal(t: str, v: Any) -> Any:
    """Python value (or :class:`Val` of raw bits) -> the interpreter's representation."""
    if isinstance(v, Val):
        if v.type != t:
            raise TypeError(f"expected a {t} value, got a {v.type} value")
        return from_bits(t, v.value)
    if t == "i32":
        return int(v) & M32
    if t == "i64":
        return int(v) & M64
    if t == "f32":
        return r32(float(v))
    if t == "f64":
        return float(v)
    return v  # references are themselves


def from_bits(t: str, bits: Any) -> Any:
    if t == "i32":
        return int(bits) & M32
    if t == "i64":
        return int(bits) & M64
    if t == "f32":
        return f32_from_bits(int(bits) & M32)
    if t == "f64":
        return f64_from_bits(int(bits) & M64)
    return bits


def to_bits(t: str, v: Any) -> Any:
    """Internal value -> unsigned bit pattern (numbers) or the reference itself."""
    if t == "f32":
        return f32_to_bits(v)
    if t == "f64":
        return f64_to_bits(v)
    return v


def to_python(t: str, v: Any) -> Any:
    """Internal value -> the friendly Python value (signed ints, floats)."""
    if t == "i32":
        return signed32(v)
    if t == "i64":
        return signed64(v)
    return v


def default_value(t: str) -> Any:
    return 0 if t in ("i32", "i64") else 0.0 if t in ("f32", "f64") else None


# --- functions -----------------------------------------------------------------------------
class FuncInst:
    """Base of everything that can sit in a function index space or a funcref table."""

    __slots__ = ("type",)
    type: FuncType

    def __call__(self, *args: Any) -> Any:
        """Call with Python values; returns None, one value, or a tuple (see ``Instance.invoke``)."""
        from wasmig.interp.calls import call_function
        from wasmig.interp.machine import Machine

        machine = self.instance.machine if isinstance(self, WasmFunction) else Machine()  # type: ignore[attr-defined]
        return call_function(machine, self, args)


class WasmFunction(FuncInst):
    """A function defined by a module instance, with its compiled code."""

    __slots__ = ("instance", "index", "ir", "code", "segs", "heat", "straight", "nparams", "local_defaults", "name")

    def __init__(self, instance: ModuleInstance, index: int, ftype: FuncType, ir: Function) -> None:
        self.type = ftype
        self.instance = instance
        self.index = index  # index in the module's function index space
        self.ir = ir
        self.code: list[tuple] | None = None  # compiled lazily on first call
        #: per pc: the compiled segment starting there, False (a boundary), None (not compiled yet)
        self.segs: list[Any] | None = None
        self.heat: dict[int, int] = {}  # pc -> arrivals while not compiled
        #: None: not analysed yet; False: not straight; else a wasmig.interp.straight.Straight
        self.straight: Any = None
        self.nparams = len(ftype.params)
        self.local_defaults = [default_value(t) for t in ir.local_types()]
        self.name = instance.module.func_name(index)

    def __repr__(self) -> str:
        return f"<wasm function {self.name} {self.type}>"


class HostFunc(FuncInst):
    """A function implemented in Python and imported by a module.

    ``fn`` is called with Python values (signed ints, floats, references) and returns ``None``,
    one value, or a tuple/list for several results. With ``raw=True`` it instead receives and
    returns the interpreter's internal values (unsigned ints, exact floats), which is what
    WASI and other system layers use to avoid conversions.
    """

    __slots__ = ("fn", "raw", "name")

    def __init__(self, params: Sequence[str], results: Sequence[str], fn: Callable[..., Any], *,
                 raw: bool = False, name: str = "host") -> None:
        self.type = FuncType(tuple(params), tuple(results))
        self.fn = fn
        self.raw = raw
        self.name = name

    def call_internal(self, args: list[Any]) -> list[Any]:
        """Call with internal values, return internal values (used by the interpreter)."""
        ft = self.type
        if self.raw:
            out = self.fn(*args)
        else:
            out = self.fn(*[to_python(t, a) for t, a in zip(ft.params, args, strict=True)])
        results = ft.results
        if not results:
            return []
        if len(results) == 1:
            if isinstance(out, (tuple, list)):
                out = out[0]
            return [out if self.raw else to_internal(results[0], out)]
        if not isinstance(out, (tuple, list)) or len(out) != len(results):
            raise Trap(f"host function {self.name} returned {out!r}, expected {len(results)} results")
        if self.raw:
            return list(out)
        return [to_internal(t, v) for t, v in zip(results, out, strict=True)]

    def __repr__(self) -> str:
        return f"<host function {self.name} {self.type}>"


# --- memory, table, global -----------------------------------------------------------------
class Memory:
    """A linear memory: a bytearray that only ever grows in place (so cached references stay valid)."""

    __slots__ = ("data", "max_pages", "shared", "waiters")

    def __init__(self, min_pages: int, max_pages: int | None = None, shared: bool = False) -> None:
        if min_pages > MAX_PAGES or (max_pages is not None and max_pages < min_pages):
            raise ValueError("invalid memory limits")
        if shared and max_pages is None:
            raise ValueError("a shared memory must have a maximum")
        self.data = bytearray(min_pages * PAGE_SIZE)
        self.max_pages = max_pages
        #: the threads proposal: a shared memory, and the waiters of its addresses (in order)
        self.shared = shared
        self.waiters = WaitQueues() if shared else None

    @property
    def size_pages(self) -> int:
        return len(self.data) // PAGE_SIZE

    @property
    def limits(self) -> Limits:
        return Limits(self.size_pages, self.max_pages)

    def grow(self, delta: int) -> int:
        """Grow by ``delta`` pages; return the old size in pages, or -1 (as wasm's memory.grow)."""
        old = self.size_pages
        new = old + delta
        cap = MAX_PAGES if self.max_pages is None else min(self.max_pages, MAX_PAGES)
        if new > cap:
            return -1
        try:
            self.data.extend(bytes(delta * PAGE_SIZE))
        except MemoryError:
            return -1
        return old

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > len(self.data):
            raise IndexError(f"memory read [{offset}, {offset + n}) out of bounds ({len(self.data)} bytes)")
        return bytes(self.data[offset : offset + n])

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > len(self.data):
            raise IndexError(f"memory write [{offset}, {offset + len(data)}) out of bounds ({len(self.data)} bytes)")
        self.data[offset : offset + len(data)] = data


class Table:
    """A table of references (functions for ``funcref``, host objects for ``externref``)."""

    __slots__ = ("elem_type", "elements", "max")

    def __init__(self, elem_type: str, min: int, max: int | None = None, init: Any = None) -> None:
        if elem_type not in ("funcref", "externref"):
            raise ValueError(f"bad table element type {elem_type!r}")
        if min > MAX_TABLE_SIZE:
            raise ValueError(f"table of {min} elements is larger than wasmig supports ({MAX_TABLE_SIZE})")
        self.elem_type = elem_type
        self.elements: list[Any] = [init] * min
        self.max = max

    @property
    def size(self) -> int:
        return len(self.elements)

    @property
    def limits(self) -> Limits:
        return Limits(len(self.elements), self.max)

    def grow(self, delta: int, init: Any = None) -> int:
        old = len(self.elements)
        new = old + delta
        cap = 0xFFFFFFFF if self.max is None else self.max
        if new > cap or new > MAX_TABLE_SIZE:
            return -1
        self.elements.extend([init] * delta)
        return old

    def get(self, i: int) -> Any:
        return self.elements[i]

    def set(self, i: int, v: Any) -> None:
        self.elements[i] = v


class GlobalValue:
    """``value`` (the friendly Python value, writable when ``mutable``) and ``raw`` (type, bits) over
    a global's ``internal`` value: one surface for every engine's globals, which differ only in
    where that value lives (``_set_internal``)."""

    __slots__ = ()
    type: str
    mutable: bool
    internal: Any

    def _set_internal(self, internal: Any) -> None:
        raise NotImplementedError

    @property
    def value(self) -> Any:
        return to_python(self.type, self.internal)

    @value.setter
    def value(self, v: Any) -> None:
        if not self.mutable:
            raise AttributeError("global is immutable")
        self._set_internal(to_internal(self.type, v))

    @property
    def raw(self) -> tuple[str, Any]:
        return (self.type, to_bits(self.type, self.internal))


class Global(GlobalValue):
    """A global variable of the interpreter. ``value`` reads and writes the friendly Python value;
    ``raw`` the bits."""

    __slots__ = ("type", "mutable", "internal")

    def __init__(self, type: str, value: Any = None, mutable: bool = False) -> None:
        self.type = type
        self.mutable = mutable
        self.internal = default_value(type) if value is None else to_internal(type, value)

    def _set_internal(self, internal: Any) -> None:
        self.internal = internal


class ModuleInstance:
    """Everything one instantiated module owns or imported, in spec index-space order."""

    def __init__(self, module: Any) -> None:
        self.module = module  # the IR Module
        self.funcs: list[FuncInst] = []
        self.tables: list[Table] = []
        self.mems: list[Memory] = []
        self.globals: list[Global] = []
        self.elems: list[list[Any]] = []  # dropped segments become []
        self.datas: list[bytes] = []  # dropped segments become b""
        self.exports: dict[str, Any] = {}
        self.types: list[FuncType] = list(module.types)
        #: the globals of this instance's compiled segments (wasmig.interp.segments.namespace_of)
        self.segment_namespace: dict[str, Any] | None = None
