"""The site map: what the instrumentation pass records about every place a frame can stop.

A *site* is a function entry, a ``loop`` header or a call. For each, the map keeps what the
host needs to turn a frame record written by the instrumented module into a canonical frame:
the function, the canonical pc (byte offset in the original body), the kind, and for every
value live on the operand stack at that site (bottom to top) its type and the spill local
holding it. The map travels inside the instrumented module as the custom section
``wasmig.sitemap`` (JSON), so an instrumented module is self-describing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

SECTION_NAME = "wasmig.sitemap"
KINDS = ("entry", "loop", "call", "import_call", "after_call")


@dataclass
class Site:
    id: int
    func: int  # function index (module index space)
    pc: int  # canonical pc: byte offset of the instruction in the original function body
    kind: str  # entry | loop | call | import_call | after_call (the fast variant: just after a call returned)
    stack: list[str]  # live operand-stack types at the site (canonical frame stack), bottom to top
    spills: list[int]  # the local index holding each of them, same order
    #: import and indirect call sites: the call's operands (arguments, and call_indirect's table
    #: index) and their spill locals — part of the frame's stack only when a host call was interrupted
    args: list[str] = field(default_factory=list)
    arg_spills: list[int] = field(default_factory=list)
    #: the original locals live at the site (ascending): only their slots of a record are written;
    #: the others are dead, and zero in the canonical frame (docs/snapshot-format.md)
    live: list[int] = field(default_factory=list)


_TYPE_ORDER = {"i32": 0, "i64": 1, "f32": 2, "f64": 3}


def compact_slots(site: Site, local_types: list[str]) -> list[int]:
    """The locals a normal body's cold arm saves at ``site``, in the order of their compact
    positions in the frame record (docs/instrument.md, "Compact records"): its live original
    locals by type (i32, i64, f32, f64), each type's ascending, then its stack's spill locals
    bottom to top, then its argument spill locals.

    The stack comes in stack order so that a call site's order is a prefix of its
    ``after_call`` site's (the same live locals and the stack beneath the call, then the call's
    results): one cold arm saves the ``after_call`` site's values for both, and a record of
    either reads its values at the same positions."""
    live = sorted(site.live, key=lambda j: (_TYPE_ORDER[local_types[j]], j))
    return live + site.spills + site.arg_spills  # spill locals: distinct, and none an original local


@dataclass
class FunctionLayout:
    func: int
    num_locals: int  # original params + declared locals (the canonical frame's locals)
    local_types: list[str]  # types of every local of the instrumented function, record order
    record_size: int


@dataclass
class SiteMap:
    ctl_memory: int  # index of the control memory
    globals_base: int  # index of the first global the pass added
    sites: list[Site] = field(default_factory=list)
    functions: dict[int, FunctionLayout] = field(default_factory=dict)
    #: the deterministic variant: ``$steps`` counts stable points (the canonical step count)
    counts_steps: bool = True
    _firsts: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def first_site(self, func: int) -> int | None:
        """The id of function ``func``'s first site (None if it has none): a frame record names
        its site by the id less this (docs/instrument.md, "Compact records"). A function's sites
        are a range of ids: the pass makes them while it rewrites the function, one function at
        a time."""
        if self._firsts is None:  # worked out once, on the first record read or written
            self._firsts = {}
            for site in reversed(self.sites):
                self._firsts[site.func] = site.id
        return self._firsts.get(func)

    def to_bytes(self) -> bytes:
        data = {"ctl_memory": self.ctl_memory, "globals_base": self.globals_base, "counts_steps": self.counts_steps,
                # vars(), not asdict(): the fields are flat, and asdict's deep copy cost seconds on big modules
                "sites": [vars(s) for s in self.sites],
                "functions": {str(k): vars(v) for k, v in self.functions.items()}}
        # no check for circular references: the lists are flat (it kept a set of every
        # container's id, a quarter of a million sites on CPython)
        return json.dumps(data, separators=(",", ":"), check_circular=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SiteMap:
        data = json.loads(raw)
        return cls(data["ctl_memory"], data["globals_base"], [Site(**s) for s in data["sites"]],
                   {int(k): FunctionLayout(**v) for k, v in data["functions"].items()}, bool(data["counts_steps"]))
