"""Translate the frame records an instrumented module wrote into its control memory into
canonical frames (engine-independent: works on the raw bytes of ``$ctl``).

A record is ``u32 site, u32 func, then 8 bytes per local`` of the instrumented function, in the
layout the site map gives (the site as its id less the id of the function's first site: a
function's code names its sites so, in one or two LEB128 bytes); records are appended innermost
frame first. Only the slots the site needs are written (its live original locals, its stack and
argument spill locals); the others hold garbage and are not read: a dead local is zero in the
canonical frame. A record a normal body wrote (``func`` has
:data:`~wasmig.instrument.linking.COMPACT_RECORD` set) holds those values at their *compact*
positions instead if its site is a call (:func:`~wasmig.instrument.sites.compact_slots`: the
i-th in slot i); a loop's or an entry's, a rewind copy's, and every record the host writes,
hold local j in slot j.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from wasmig.instrument.linking import COMPACT_ALL, COMPACT_RECORD, site_id_of, site_number
from wasmig.instrument.liveness import dead_value
from wasmig.instrument.sites import Site, SiteMap, compact_slots
from wasmig.instrument.unwind import RECORDS_BASE, WRITE_PTR
from wasmig.snapshot.state import FrameState, SnapshotError, Value

#: bit masks of the numeric value types
MASKS = {"i32": 0xFFFFFFFF, "i64": 0xFFFFFFFFFFFFFFFF, "f32": 0xFFFFFFFF, "f64": 0xFFFFFFFFFFFFFFFF}


def _value(t: str, raw: bytes, offset: int) -> Value:
    return (t, int.from_bytes(raw[offset : offset + 8], "little") & MASKS[t])


#: the kinds of site whose normal-body arms store each value in its own slot unless the function
#: is big (a poll: saver calls there cost small loop nests; wasmig/instrument/unwind.py,
#: ``unwind_branch``)
_SLOTTED = frozenset(("loop", "entry"))


class _Slots:
    """Local j -> the offset of its own slot in a record whose slots start at ``base``."""

    def __init__(self, base: int) -> None:
        self.base = base

    def __getitem__(self, j: int) -> int:
        return self.base + 8 * j


def frames_from_records(ctl: bytes, sitemap: SiteMap) -> tuple[list[FrameState], str]:
    """(canonical frames outermost first, the point of the innermost frame)."""
    end = struct.unpack_from("<I", ctl, WRITE_PTR)[0]
    if not RECORDS_BASE <= end <= len(ctl):
        raise SnapshotError("control memory holds no valid frame records")
    frames: list[FrameState] = []
    at_sites: list[Site] = []  # each record's site, innermost first
    pos = RECORDS_BASE
    sites = sitemap.sites
    while pos < end:
        site_id, func = _record_site(ctl, pos, sitemap)
        # a normal body's record: compact at a call site, or at any site of a big function
        compact = bool(func & COMPACT_RECORD)
        compact_all = bool(func & COMPACT_ALL)
        func &= ~(COMPACT_RECORD | COMPACT_ALL)
        if not 0 <= site_id < len(sites) or sites[site_id].func != func or func not in sitemap.functions:
            raise SnapshotError(f"corrupt frame record at {pos:#x} (site {site_id}, function {func})")
        site = sites[site_id]
        layout = sitemap.functions[func]
        types = layout.local_types
        slot = pos + 8
        # where local j's value is: its own slot, or (compact) its position among the saved ones
        at = ({j: slot + 8 * i for i, j in enumerate(compact_slots(site, types))}
              if compact and (compact_all or site.kind not in _SLOTTED) else _Slots(slot))
        live = set(site.live)  # dead locals were not written: canonically zero
        locals_ = [_value(types[j], ctl, at[j]) if j in live else dead_value(types[j])
                   for j in range(layout.num_locals)]
        stack = [_value(t, ctl, at[local]) for t, local in zip(site.stack, site.spills, strict=True)]
        if not frames and site.args:  # innermost at a call site: a host call was interrupted
            stack += [_value(t, ctl, at[local]) for t, local in zip(site.args, site.arg_spills, strict=True)]
        frames.append(FrameState(func, site.pc, locals_, stack))
        at_sites.append(site)
        pos += layout.record_size
    if pos != end or not frames:
        raise SnapshotError("frame records do not end where the control memory says")
    innermost = at_sites[0].kind
    if any(site.kind not in ("call", "import_call") for site in at_sites[1:]):
        raise SnapshotError("an outer frame record is not at a call site")
    if innermost == "call" and not at_sites[0].args:
        raise SnapshotError("the innermost frame record is at a call to a wasm function that wrote no record")
    frames.reverse()
    return frames, "import_call" if innermost == "call" else innermost


def _record_site(ctl: bytes, pos: int, sitemap: SiteMap) -> tuple[int, int]:
    """(site id, function field with its flags) of the record at ``pos``: the record names its
    site relative to its function's first, plus :data:`~wasmig.instrument.linking.SITE_BIAS`
    (docs/instrument.md, "Compact records"). An id that fits no function is out of range (the
    caller refuses it)."""
    rel, func = struct.unpack_from("<iI", ctl, pos)
    first = sitemap.first_site(func & ~(COMPACT_RECORD | COMPACT_ALL))
    return (site_id_of(rel, first) if first is not None else len(sitemap.sites)), func


def records_from_frames(frames: list[FrameState], point: str, sitemap: SiteMap,
                        indirect_slot: Callable[[int, int, int], int] | None = None) -> bytes:
    """The frame records that rewind ``frames`` (canonical, outermost first) into the instrumented
    module: outermost record first (each rewinding function pops the next one), to be written at
    ``RECORDS_BASE``. The inverse of :func:`frames_from_records`; every frame is checked against
    the site map, so a snapshot that does not fit the module is refused here, not run.

    A frame suspended in a ``call_indirect`` re-issues that call on rewind, so its record needs a
    table index that reaches the callee (the canonical frame no longer holds the operand):
    ``indirect_slot(func, pc, callee)`` gives one."""
    by_key = _SiteLookup(sitemap)
    out = bytearray()
    for depth, frame in enumerate(frames):
        innermost = depth == len(frames) - 1
        kind = point if innermost and point in ("entry", "loop", "after_call") else "call"
        if innermost and point not in ("entry", "loop", "import_call", "after_call"):
            raise SnapshotError(f"a snapshot taken at an {point!r} point cannot be resumed on the compiled engine "
                                "(it resumes at stable points only: take it with --checkpoint-stable-only)")
        site = by_key.get((frame.func, frame.pc, kind))
        layout = sitemap.functions.get(frame.func)
        if site is None and kind == "after_call" and layout is not None:
            raise SnapshotError(f"a snapshot taken just after a call (function {frame.func}, pc {frame.pc:#x}) "
                                "resumes on the compiled engine's fast variant only, not the step-counting one")
        if site is None or layout is None:
            raise SnapshotError(f"snapshot does not fit the module: frame {depth} (function {frame.func}, pc "
                                f"{frame.pc:#x}) is at no {kind} site")
        if innermost and point == "import_call" and not site.args:
            raise SnapshotError(f"snapshot does not fit the module: frame {depth} is not at an import call")
        stack_types = site.stack + site.args if innermost and point == "import_call" else site.stack
        slots = site.spills + site.arg_spills if innermost and point == "import_call" else site.spills
        if len(frame.locals) != layout.num_locals or len(frame.stack) != len(stack_types):
            raise SnapshotError(f"snapshot does not fit the module: frame {depth} has {len(frame.locals)} locals and "
                                f"{len(frame.stack)} stack values, expected {layout.num_locals} and {len(stack_types)}")
        values = [0] * len(layout.local_types)
        for j, (value, want) in enumerate(zip(frame.locals, layout.local_types, strict=False)):
            values[j] = _bits(value, want, f"frame {depth} local {j}")
        for k, (value, want, slot) in enumerate(zip(frame.stack, stack_types, slots, strict=True)):
            values[slot] = _bits(value, want, f"frame {depth} stack slot {k}")
        if not innermost and site.args:  # suspended in a call_indirect: its table index
            if indirect_slot is None:
                raise SnapshotError("internal error: no table lookup for an indirect call")
            values[site.arg_spills[-1]] = indirect_slot(frame.func, frame.pc, frames[depth + 1].func)
        first = sitemap.first_site(frame.func) or 0  # the frame's function has a site (found above)
        out += struct.pack("<iI", site_number(site.id, first), frame.func)
        out += struct.pack(f"<{len(values)}Q", *values)
    return bytes(out)


class _SiteLookup:
    """The first site of each (function, pc, kind) — ``import_call`` counted as ``call`` —,
    indexed one function at a time as frames ask: a rewind reads the sites of the functions on
    its stack, not the whole map (hundreds of thousands of sites for CPython)."""

    def __init__(self, sitemap: SiteMap) -> None:
        self._sitemap = sitemap
        self._by_func: dict[int, dict[tuple[int, str], Site]] = {}

    def _add(self, site: Site) -> None:
        table = self._by_func.setdefault(site.func, {})
        table.setdefault((site.pc, "call" if site.kind == "import_call" else site.kind), site)

    def get(self, key: tuple[int, int, str]) -> Site | None:
        func, pc, kind = key
        if func not in self._by_func:
            sites_of = getattr(self._sitemap, "sites_of", None)  # a SiteIndex reads one function's sites
            if sites_of is not None:
                self._by_func[func] = {}
                for site in sites_of(func):
                    self._add(site)
            elif not self._by_func:  # a SiteMap in memory: index it all at once
                for site in self._sitemap.sites:
                    self._add(site)
        table = self._by_func.get(func)
        return None if table is None else table.get((pc, kind))


def _bits(value: Value, want: str, what: str) -> int:
    t, bits = value
    if t != want or not isinstance(bits, int) or not 0 <= bits <= MASKS[want]:
        raise SnapshotError(f"snapshot does not fit the module: {what} is {t}, the module says {want}")
    return bits
