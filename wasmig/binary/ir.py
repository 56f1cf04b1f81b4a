"""The typed module IR: what the decoder produces, the encoder consumes and the validator,
interpreter and instrumentation pass read.

Plain dataclasses with value equality, so ``decode(encode(m)) == m`` is a meaningful test and
a module can be built or rewritten in Python (the instrumentation pass does exactly that).

Conventions:
- Value types are strings: ``"i32" "i64" "f32" "f64" "funcref" "externref"``.
- Index spaces include imports first, as in the spec: function index ``i`` is an imported
  function when ``i < module.num_imported_funcs()``.
- ``Instr.offset`` is the byte offset of the instruction *within its function body*, counted
  from the first byte of the body (the locals vector), i.e. the position right after the body's
  size field. ``Function.body_offset`` is where that body starts in the module's bytes, so
  ``body_offset + instr.offset`` is the absolute offset. Canonical snapshot frames use the
  body-relative offset, which survives re-encoding of other functions. Decoded IR records the
  offsets of the original bytes; hand-built IR may leave them at 0 (they do not take part in
  equality).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ValType = str
VALTYPES = ("i32", "i64", "f32", "f64", "funcref", "externref")
REFTYPES = ("funcref", "externref")


@dataclass(frozen=True, slots=True)
class FuncType:
    params: tuple[ValType, ...]
    results: tuple[ValType, ...]

    def __str__(self) -> str:
        return f"[{' '.join(self.params)}] -> [{' '.join(self.results)}]"


@dataclass(frozen=True, slots=True)
class Limits:
    min: int
    max: int | None = None


@dataclass(frozen=True, slots=True)
class TableType:
    elem: ValType  # "funcref" or "externref"
    limits: Limits


@dataclass(frozen=True, slots=True)
class MemType:
    limits: Limits
    #: a shared memory (the threads proposal): several threads' instances may hold it at once
    shared: bool = False


@dataclass(frozen=True, slots=True)
class GlobalType:
    type: ValType
    mutable: bool = False


@dataclass(slots=True)
class Instr:
    """One instruction. ``op`` as in :mod:`wasmig.binary.opcodes`, ``imm`` per ``opcodes.IMM``."""

    op: int
    imm: Any = None
    offset: int = field(default=0, compare=False)

    def __repr__(self) -> str:
        from wasmig.binary.opcodes import name

        return f"Instr({name(self.op)}, {self.imm!r}, @{self.offset})"


Expr = list[Instr]  # a constant expression, including its final ``end``


@dataclass(slots=True)
class Import:
    module: str
    name: str
    kind: str  # "func" | "table" | "memory" | "global"
    desc: int | TableType | MemType | GlobalType  # a type index for "func"


@dataclass(slots=True)
class Export:
    name: str
    kind: str  # "func" | "table" | "memory" | "global"
    index: int


@dataclass(slots=True)
class Function:
    """A function defined in this module (not imported)."""

    type_idx: int
    locals: list[tuple[int, ValType]]  # the run-length encoded declaration, as in the binary
    body: list[Instr]  # including the final ``end``
    body_offset: int = field(default=0, compare=False)
    body_size: int = field(default=0, compare=False)
    #: decoded, and its instructions' bytes (``body_offset + body[0].offset`` to ``body_offset +
    #: body_size`` in the module) are exactly what the encoder makes of them: no LEB128 longer
    #: than it needs to be, no memory 0 named in a memarg. The instrumentation pass then copies
    #: them from the module instead of encoding them again. Set by the decoder after it builds the
    #: Function; not an ``__init__`` argument, so hand-built IR and ``dataclasses.replace`` (an
    #: edited body) always start False. A decoded body edited in place must set it to False.
    canonical: bool = field(default=False, compare=False, init=False)

    def local_types(self) -> list[ValType]:
        """The declared locals (not the parameters), expanded one entry per local."""
        out: list[ValType] = []
        for count, t in self.locals:
            out.extend([t] * count)
        return out


@dataclass(slots=True)
class Global:
    type: GlobalType
    init: Expr


@dataclass(slots=True)
class Elem:
    mode: str  # "active" | "passive" | "declarative"
    type: ValType  # the reference type of the elements
    init: list[Expr]  # one constant expression per element
    table: int = 0  # active only
    offset: Expr | None = None  # active only


@dataclass(slots=True)
class Data:
    mode: str  # "active" | "passive"
    init: bytes
    memory: int = 0  # active only
    offset: Expr | None = None  # active only


@dataclass(slots=True)
class CustomSection:
    name: str
    data: bytes
    #: id of the last non-custom section before it (0 = before all), so encoding keeps its place
    after: int = 0


@dataclass(slots=True)
class NameSection:
    """The decoded ``name`` custom section (only the subsections wasmig uses)."""

    module: str | None = None
    functions: dict[int, str] = field(default_factory=dict)
    locals: dict[int, dict[int, str]] = field(default_factory=dict)


@dataclass(slots=True)
class Module:
    types: list[FuncType] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    funcs: list[Function] = field(default_factory=list)
    tables: list[TableType] = field(default_factory=list)
    mems: list[MemType] = field(default_factory=list)
    globals: list[Global] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    start: int | None = None
    elems: list[Elem] = field(default_factory=list)
    datas: list[Data] = field(default_factory=list)
    data_count: int | None = None
    customs: list[CustomSection] = field(default_factory=list)
    names: NameSection | None = None

    # --- index spaces (imports first) -------------------------------------------------------
    def imported(self, kind: str) -> list[Import]:
        return [imp for imp in self.imports if imp.kind == kind]

    def num_imported_funcs(self) -> int:
        return sum(1 for imp in self.imports if imp.kind == "func")

    def func_type_indices(self) -> list[int]:
        """Type index of every function in the function index space."""
        out = [imp.desc for imp in self.imports if imp.kind == "func"]
        out.extend(f.type_idx for f in self.funcs)
        return out  # type: ignore[return-value]

    def func_type(self, func_idx: int) -> FuncType:
        return self.types[self.func_type_indices()[func_idx]]

    def all_tables(self) -> list[TableType]:
        return [imp.desc for imp in self.imports if imp.kind == "table"] + list(self.tables)  # type: ignore[misc]

    def all_mems(self) -> list[MemType]:
        return [imp.desc for imp in self.imports if imp.kind == "memory"] + list(self.mems)  # type: ignore[misc]

    def all_globals(self) -> list[GlobalType]:
        imported = [imp.desc for imp in self.imports if imp.kind == "global"]
        return imported + [g.type for g in self.globals]  # type: ignore[operator]

    def func_name(self, func_idx: int) -> str:
        """The name-section name of a function, else its export or import name, else ``func[i]``."""
        if self.names and func_idx in self.names.functions:
            return self.names.functions[func_idx]
        for exp in self.exports:
            if exp.kind == "func" and exp.index == func_idx:
                return exp.name
        funcs = self.imported("func")
        if func_idx < len(funcs):
            return f"{funcs[func_idx].module}.{funcs[func_idx].name}"
        return f"func[{func_idx}]"
