"""What checkpointing a module on wasmtime needs to know about it besides its code, learnt once
from the decoded IR and cached by the module's digest.

A run, a checkpoint or a restore on wasmtime hands the code to wasmtime (compiled and cached),
so of the module itself it needs only a few facts: its memories', globals' and tables' types,
which pages its data segments fill, its segments' modes, the tables its element segments build
(wasmtime's tables cannot be read back as function indices), whether any instruction changes a
table at run time, and where each function's code starts (a rewind through a ``call_indirect``
reads that one call). Decoding the whole module in pure Python to learn them costs about 9 s for
CPython's 26 MB (11,448 functions, 2.7 million instructions) and over a gigabyte; the facts are a
few hundred kilobytes of JSON, read in a few milliseconds.

The cache entry (``facts-DIGEST.json`` in the wasmtime cache directory, through
:func:`wasmig.checked.cache_entry`'s checksum) is keyed by the :func:`fast_digest` of the
module's bytes and :data:`FACTS_VERSION`; a damaged or older entry is recomputed. The facts also
hold the module's sha256 (what a snapshot records), so a cached run never hashes the module twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from wasmig import log

if TYPE_CHECKING:
    from wasmig.binary.ir import Module as IRModule
    from wasmig.module import Module

#: Bumped whenever what the facts hold, or how they are computed, changes.
FACTS_VERSION = 1
PAGE = 65536
#: instructions that change a table at run time (table.set, table.init, table.copy, table.grow,
#: table.fill): with one of them the element segments no longer tell what a table holds
TABLE_MUTATORS = frozenset({0x26, 0xFC0C, 0xFC0E, 0xFC0F, 0xFC11})
_I32_CONST, _REF_FUNC, _CALL_INDIRECT = 0x41, 0xD2, 0x11


class ModuleFacts:
    """Everything the wasmtime checkpoint path reads from a module, in the module's index spaces
    (imports first). A plain class, not a dataclass: ``dataclasses`` (with ``inspect`` and ``ast``)
    would add 4 ms to every start."""

    FIELDS = ("sha256", "imported_funcs", "defined_funcs", "mems", "globals", "tables", "elements",
              "static_tables_problem", "data_modes", "elem_modes", "data_pages", "code_offsets", "code_end",
              "features")
    __slots__ = FIELDS

    def __init__(self, *, sha256: str | None, imported_funcs: int, defined_funcs: int,
                 mems: list[tuple[int, int | None]], globals: list[tuple[str, bool]],
                 tables: list[tuple[str, int, int | None]], elements: list[list[int | None]] | None,
                 static_tables_problem: str | None, data_modes: str, elem_modes: str,
                 data_pages: list[list[list[int]] | None], code_offsets: list[int], code_end: int,
                 features: list[str]) -> None:
        self.sha256 = sha256  # of the module's bytes (None for a module known only as IR)
        self.imported_funcs = imported_funcs
        self.defined_funcs = defined_funcs
        self.mems = mems  # every memory's limits (min, max) in pages
        self.globals = globals  # every global's (value type, mutable)
        self.tables = tables  # every table's (element type, min, max)
        #: per table, what its active element segments put in each slot (a function index or None);
        #: None when they do not tell (see ``static_tables_problem``)
        self.elements = elements
        self.static_tables_problem = static_tables_problem  # why the tables cannot be derived, if so
        self.data_modes = data_modes  # one letter per data segment: "a"ctive, "p"assive
        self.elem_modes = elem_modes  # one letter per element segment: "a"ctive, "p"assive, "d"eclarative
        #: per memory, the [first, last] page runs its active data segments initialise; None for a
        #: memory where a segment's offset is not a constant (any page may then be non-zero)
        self.data_pages = data_pages
        #: per defined function, the offset in the module of its code entry (its size, then its body:
        #: a rewind through a ``call_indirect`` reads that one instruction)
        self.code_offsets = code_offsets
        self.code_end = code_end  # the end of the code section
        self.features = features

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleFacts) and all(getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    def __repr__(self) -> str:
        return (f"ModuleFacts(sha256={self.sha256!r}, {self.imported_funcs}+{self.defined_funcs} functions, "
                f"{len(self.mems)} memories, {len(self.globals)} globals, {len(self.tables)} tables)")

    @classmethod
    def from_ir(cls, ir: IRModule, sha256: str | None, features: frozenset[str] = frozenset(),
                code_offsets: list[int] | None = None, code_end: int = 0) -> ModuleFacts:
        """The facts of a decoded module. ``code_offsets``/``code_end``: where the functions' code
        entries sit in the bytes (:func:`code_entries`), when there are bytes."""
        mems = [(m.limits.min, m.limits.max) for m in ir.all_mems()]
        tables = ir.all_tables()
        problem = None
        elements: list[list[int | None]] | None = None
        if any(ins.op in TABLE_MUTATORS for f in ir.funcs for ins in f.body):
            problem = "the module changes its tables at run time"
        else:
            elements = [[None] * t.limits.min for t in tables]
            for seg in ir.elems:
                if seg.mode != "active":
                    continue
                if not seg.offset or seg.offset[0].op != _I32_CONST:
                    problem, elements = "an element segment's offset is not a constant", None
                    break
                offset = seg.offset[0].imm
                slots = elements[seg.table]
                if offset + len(seg.init) > len(slots):
                    problem, elements = "an element segment does not fit its table", None
                    break
                for k, expr in enumerate(seg.init):
                    head = expr[0]
                    slots[offset + k] = head.imm if head.op == _REF_FUNC else None
        data_pages: list[list[list[int]] | None] = [[] for _ in mems]
        for seg in ir.datas:
            if seg.mode != "active" or not seg.init or seg.memory >= len(mems):
                continue
            runs = data_pages[seg.memory]
            if runs is None:
                continue
            if not seg.offset or seg.offset[0].op != _I32_CONST:
                data_pages[seg.memory] = None
                continue
            start = seg.offset[0].imm & 0xFFFFFFFF
            runs.append([start // PAGE, (start + len(seg.init) - 1) // PAGE])
        return cls(
            sha256=sha256, imported_funcs=ir.num_imported_funcs(), defined_funcs=len(ir.funcs), mems=mems,
            globals=[(g.type, g.mutable) for g in ir.all_globals()],
            tables=[(t.elem, t.limits.min, t.limits.max) for t in tables], elements=elements,
            static_tables_problem=problem, data_modes="".join(d.mode[0] for d in ir.datas),
            elem_modes="".join(e.mode[0] for e in ir.elems),
            data_pages=[None if runs is None else _merge(runs) for runs in data_pages],
            code_offsets=list(code_offsets or []), code_end=code_end, features=sorted(features))

    def to_bytes(self) -> bytes:
        plain = {f: getattr(self, f) for f in self.FIELDS}
        return json.dumps({"version": FACTS_VERSION, **plain}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ModuleFacts:
        """Raises ValueError (also for an entry of another :data:`FACTS_VERSION`)."""
        data = json.loads(raw)
        if not isinstance(data, dict) or data.pop("version", None) != FACTS_VERSION:
            raise ValueError("not a module facts entry of this version")
        try:
            facts = cls(**data)
        except TypeError as e:
            raise ValueError(f"malformed module facts: {e}") from None
        facts.mems = [(lo, hi) for lo, hi in facts.mems]
        facts.globals = [(t, bool(m)) for t, m in facts.globals]
        facts.tables = [(e, lo, hi) for e, lo, hi in facts.tables]
        return facts

    def page_set(self, memory: int) -> set[int] | None:
        """The pages of ``memory`` that its active data segments initialise (None: not known)."""
        runs = self.data_pages[memory]
        if runs is None:
            return None
        pages: set[int] = set()
        for lo, hi in runs:
            pages.update(range(lo, hi + 1))
        return pages

    def indirect_call_table(self, data: bytes, defined: int, pc: int) -> int | None:
        """The table of the ``call_indirect`` at body offset ``pc`` of defined function
        ``defined`` (``data``: the module's bytes), read from that one instruction's bytes (the
        function may be CPython's 46,000-instruction interpreter loop); None when there is none."""
        from wasmig.binary.leb128 import decode_u

        if not 0 <= defined < len(self.code_offsets):
            return None
        try:
            size, body = decode_u(data, self.code_offsets[defined])
            if not 0 <= pc < size or body + size > self.code_end or data[body + pc] != _CALL_INDIRECT:
                return None
            _, pos = decode_u(data, body + pc + 1)  # the type index
            table, end = decode_u(data, pos)
        except (ValueError, IndexError):
            return None
        return table if end <= body + size else None


def _merge(runs: list[list[int]]) -> list[list[int]]:
    """Page runs sorted, overlapping and adjacent ones joined (CPython's 24,171 data segments
    fill a few runs)."""
    out: list[list[int]] = []
    for lo, hi in sorted(runs):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def code_entries(data: bytes) -> tuple[list[int], int]:
    """(the offset of every code entry, the end of the code section) of a module's bytes, walking
    the entries' sizes only."""
    from wasmig.binary.decoder import sections
    from wasmig.binary.leb128 import decode_u

    for section_id, start, end in sections(data):
        if section_id != 10:
            continue
        count, pos = decode_u(data, start)
        offsets = []
        for _ in range(count):
            offsets.append(pos)
            size, body = decode_u(data, pos)
            pos = body + size
        return offsets, end
    return [], 0


def compute(module: Module) -> ModuleFacts:
    """The facts of ``module``, from its IR (decoded for this when it was not: seconds for a big
    module, once per module thanks to the cache)."""
    offsets, end = code_entries(module.data) if module.has_bytes and module.data is not None else ([], 0)
    return ModuleFacts.from_ir(module.ir, module.sha256, module.features, offsets, end)


def _path(module: Module, cache_dir: Path | None) -> Path:
    from wasmig.files import wasmtime_cache_dir

    return (cache_dir if cache_dir is not None else wasmtime_cache_dir()) / f"facts-{module.digest}.json"


def cached_facts(module: Module, cache_dir: Path | None = None) -> ModuleFacts | None:
    """``module``'s facts from the cache, or None when there is no valid entry for its digest."""
    from wasmig.checked import cache_payload

    if not module.has_bytes:
        return None
    path = _path(module, cache_dir)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    payload = cache_payload(blob)
    if payload is None:
        log.debug(__name__, "module facts cache: damaged entry %s", path)
        return None
    try:
        facts = ModuleFacts.from_bytes(payload)
    except (ValueError, TypeError):
        return None
    if facts.features != sorted(module.features):
        return None
    log.debug(__name__, "module facts cache hit: %s", path)
    return facts


def facts_for(module: Module, cache_dir: Path | None = None) -> ModuleFacts:
    """``module``'s facts, from the cache when an entry for its digest is there, else computed
    (and cached). A module decoded only for this is forgotten again (its IR is gigabytes for a
    big module; what needs it later decodes it again)."""
    from wasmig.checked import cache_entry
    from wasmig.files import write_atomically

    if not module.has_bytes:
        return ModuleFacts.from_ir(module.ir, module.sha256, module.features)
    facts = cached_facts(module, cache_dir)
    if facts is not None:
        return facts
    decoded = module.decoded
    facts = compute(module)
    if not decoded:
        module.forget_ir()
    path = _path(module, cache_dir)
    log.debug(__name__, "module facts computed -> %s", path)
    try:
        write_atomically(path, cache_entry(facts.to_bytes()))
    except OSError:
        log.debug(__name__, "module facts cache: cannot write %s", path)
    return facts
