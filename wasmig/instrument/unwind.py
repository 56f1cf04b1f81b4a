"""The instrumentation pass: make a module able to stop at any stable point and write its whole
call stack, as frame records, into a control memory, and to rebuild such a stack on restore (see
docs/instrument.md).

What it adds (none of it part of the canonical state):

- memory ``$ctl`` (exported ``wasmig:ctl``) for the frame records, memory ``$poll`` (exported
  ``wasmig:poll``) whose byte 0 the host sets to request a checkpoint, globals
  ``$state``/``$steps``/``$stop_at`` (exported), every original global and memory 0 exported
  (``wasmig:g<i>``, ``wasmig:mem0``) so the host can read them, and a byte per passive segment
  recording ``data.drop``/``elem.drop``;
- per function: polls (an atomic load of the poll byte; in the deterministic variant also a
  step count and a test of the stop step) at its entry and at every ``loop`` header -- the fast
  variant leaves out those it can (see :meth:`_Pass.entry_polled`,
  :meth:`_FunctionRewriter._every_iteration_calls`, :meth:`_FunctionRewriter._unrolled_loop`) --,
  a state test after every call whose callee can unwind (in the fast variant also a poll, and
  a second site just after the call, ``after_call``), spill locals, an unwind path that
  appends the frame record ``(site, func, live locals)`` and returns dummy results;
- per function a rewind copy, a function of its own that pops such a record and re-enters the
  frame, the table ``$rewinds`` of the copies and an export ``wasmig:rewind<f>`` of the copy of
  every exported function; in a big function the copy hands the frame over to normal code at
  the next header of an entry loop (:mod:`wasmig.instrument.transfer`): the function's entry
  function, after the copies, or for a huge dispatch loop the function's own entry arm
  (:mod:`wasmig.instrument.entry_arm`);
- the site map (``wasmig.sitemap`` custom section) to translate records into canonical frames,
  and the origin map (``wasmig.origins``) to report traps at the original offsets.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter

from wasmig.binary.blocks import match_blocks
from wasmig.binary.collector import collector_paused
from wasmig.binary.encoder import (
    cached_instr,
    encode_code_entry,
    encode_code_entry_raw,
    encode_module,
    encoded_instr,
)
from wasmig.binary.ir import (
    CustomSection,
    Data,
    Elem,
    Export,
    Function,
    FuncType,
    Global,
    GlobalType,
    Import,
    Instr,
    Limits,
    MemType,
    NameSection,
    TableType,
)
from wasmig.binary.ir import Module as IRModule
from wasmig.binary.leb128 import encode_s
from wasmig.binary.opcodes import memarg
from wasmig.binary.validator import validate_declarations
from wasmig.errors import WasmError
from wasmig.instrument import entry_arm, hidden_page, transfer, widen
from wasmig.instrument.callgraph import call_graph
from wasmig.instrument.counted import EntryBound, counted_trips, entry_bound, entry_guard
from wasmig.instrument.emit import Code, OriginalCode, encode_seq, origin_tag
from wasmig.instrument.linking import (
    COMPACT_ALL,
    COMPACT_RECORD,
    HELPERS,
    LINK_PREFIX,
    REWIND_MODULE_NAME,
    RUN_MODULE_NAME,
    SAVE_COUNTS,
    SAVE_TYPES,
    site_number,
)
from wasmig.instrument.liveness import LiveAt
from wasmig.instrument.origins import SECTION_NAME as ORIGINS_SECTION
from wasmig.instrument.origins import origin_tags, pack_origins
from wasmig.instrument.sites import SECTION_NAME, FunctionLayout, Site, SiteMap, compact_slots
from wasmig.instrument.transfer import EntryPlan, plan_entries

# control memory layout
POLL = 0  # the host's checkpoint request (any thread writes 1)
#: in the poll memory: memory 0's size in pages, as a u32, stored after every memory.grow, so the
#: host can read it from another thread while the guest runs (no call into wasmtime's store)
MEMORY_PAGES = 8
WRITE_PTR = 8
READ_PTR = 12
DROPS_BASE = 1024
GLOBALS_BASE = 16384  # wasmig:dump writes global i's bits at GLOBALS_BASE + 8 * i
#: the stash of a call-free loop nest (:meth:`_FunctionRewriter._stash_plan`): 8 bytes a local
STASH_BASE, STASH_SLOTS = 16, (DROPS_BASE - 16) // 8
#: the most locals one nest adds to the stash; a nest whose plan has more stashes none
#: (:meth:`_FunctionRewriter._stash_at_entry`)
STASH_MOST = 2
RECORDS_BASE = 32768
NEVER = 1 << 62
#: opcodes :meth:`_FunctionRewriter.plain` does not copy unchanged: constructs, branches (their
#: depths are renumbered), calls (of a widened function: dead code, see there), memory.grow
#: (publishes the new size), data.drop and elem.drop (noted), and memory.size and the bulk memory
#: operations (with the hidden page, :mod:`~wasmig.instrument.hidden_page`, they move)
_NOT_VERBATIM = frozenset((0x02, 0x03, 0x04, 0x0B, 0x0C, 0x0D, 0x0E, 0x10, 0x3F, 0x40, 0xFC08, 0xFC09, 0xFC0A,
                           0xFC0B, 0xFC0D))
#: opcodes the normal body's emitter (:meth:`_FunctionRewriter._emit_range`) looks at: those and calls
_SPECIAL = _NOT_VERBATIM | {0x10, 0x11}
#: opcodes the rewind copy's walk (:meth:`_FunctionRewriter._rewind_body`) looks at: those, `else`,
#: and the instructions after which code is unreachable (the validator's flag changes only at
#: these and at constructs); runs of other instructions are copied whole
_WALKED = _SPECIAL | {0x00, 0x05, 0x0F}
#: the globals the pass adds, from ``globals_base``: $state, $steps, $stop_at, then the largest
#: record's size in bytes and in pages + 1 (immutable)
MAX_RECORD_GLOBAL, MAX_RECORD_PAGES_GLOBAL = 3, 4
#: the fast variant copies a small loop without calls this many times, one poll per round
UNROLL = 4
UNROLL_MAX_BODY = 96  # instructions: larger loops are not unrolled (their poll weighs less)
#: and at most this many are also versioned by an entry bound (a second set of copies, unpolled): lz77's
#: match loop is 17; up to 96 (session 7, s7-kernels) QuickJS's run module was 2.10x plain, 2.06x at 24,
#: kernels 1.82x -> 1.80x geomean
ENTRY_BOUND_MAX_BODY = 24
#: nor are the loops of a function of this many instructions or more: a big function's small
#: loops are a small part of its time, and their copies a big part of its code (libc's
#: ``printf_core``: 3.5 KB of 25.6 KB instrumented)
UNROLL_MAX_FUNCTION = 1000
#: a *lone* loop (no loop around it in its function) with a poll holds the fewest copies a round (at
#: most UNROLL) that make the round at least this many instructions (:func:`copies_per_round`)
UNROLL_ROUND = 32

STATE_RUNNING, STATE_UNWINDING, STATE_REWINDING = 0, 1, 2
_OP = attrgetter("op")
_CALLS = frozenset((0x10, 0x11))

_STORE = {"i32": (0x36, 2), "i64": (0x37, 3), "f32": (0x38, 2), "f64": (0x39, 3)}
_CONST = {"i32": 0x41, "i64": 0x42, "f32": 0x43, "f64": 0x44}
_LOAD = {"i32": (0x28, 2), "i64": (0x29, 3), "f32": (0x2A, 2), "f64": (0x2B, 3)}
_NUMERIC = ("i32", "i64", "f32", "f64")
_NUMERIC_SET = frozenset(_NUMERIC)
_DROP = encode_seq((0x1A,))
_ELSE = encode_seq((0x05,))
_END = encode_seq((0x0B,))
_I32_EQ = encode_seq((0x46,))
#: (n, types) -> n drops, then a dummy value of each type (:func:`_drops_zeros`)
_DROPS_ZEROS: dict[tuple[int, tuple[str, ...]], bytes] = {}
_UNWIND_LABEL = 1  # index of $unwind in the label stack ($done, $unwind, the function's label, ...)
_COPY_UNWIND_LABEL = 3  # in the rewind copy: $done, $unwind, the copy's function label, $copy_unwind


#: ``i32.const n`` for the small n (two bytes of signed LEB128 hold n < 2**13), and for -2**13
#: <= n < 0 (a function's site numbers, SITE_BIAS + k) at ``n + 2**13``
_SMALL_I32_CONST = [b"\x41" + encode_s(n) for n in range(1 << 13)]
_NEGATIVE_I32_CONST = [b"\x41" + encode_s(n) for n in range(-(1 << 13), 0)]


def _i32_const(n: int) -> bytes:
    """``i32.const n`` for -2**31 <= n < 2**31, encoded without the memo: site ids are each used
    once or twice, and 240,000 of them (CPython) would only fill it. Three signed LEB128 bytes
    hold 0 <= n < 2**20, built directly (600,000 calls on CPython)."""
    if n < 0:
        return _NEGATIVE_I32_CONST[n + (1 << 13)] if n >= -(1 << 13) else b"\x41" + encode_s(n)
    if n < 1 << 13:
        return _SMALL_I32_CONST[n]
    if n < 1 << 20:
        return bytes((0x41, n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    return b"\x41" + encode_s(n)


def _drops_zeros(n: int, types: Sequence[str]) -> bytes:
    """``n`` drops, then a zero (``ref.null`` for a reference) of each type: the arm of a skipped
    segment or construct, or dummy results; encoded once per shape."""
    key = (n, tuple(types))
    code = _DROPS_ZEROS.get(key)
    if code is None:
        zeros = encode_seq(*((_CONST[t], 0) if t in _CONST else (0xD0, t) for t in key[1]))
        code = _DROPS_ZEROS[key] = _DROP * n + zeros
    return code


class InstrumentError(WasmError):
    """The module uses something the instrumentation cannot make checkpointable."""


class Instrumented:
    """The instrumented module: its bytes (the pass encodes each function as soon as it is built,
    so a big module's instrumented IR never exists whole) and its site map. ``ir`` decodes the
    bytes, for tests and tools that look inside."""

    def __init__(self, data: bytes, sitemap: SiteMap, rewind: bytes | None = None) -> None:
        self.data = data  # the run module
        self.sitemap = sitemap
        #: the rewind module (the copies alone, importing the run instance), or None when the run
        #: module holds its copies itself
        self.rewind = rewind
        self._ir: IRModule | None = None

    @property
    def ir(self) -> IRModule:
        if self._ir is None:
            from wasmig.binary.decoder import decode_module
            from wasmig.binary.features import INSTRUMENTED

            self._ir = decode_module(self.data, features=INSTRUMENTED)
        return self._ir


class _Ctl:
    """A construct open around the code being emitted (one per construct of every body: a plain
    class with slots, cheaper to make than a dataclass)."""

    __slots__ = ("kind", "start", "base", "buried", "result_types", "split")

    def __init__(self, kind: str, start: int, base: int, buried: list[tuple[int, str]] | None = None,
                 result_types: tuple[str, ...] = (), split: bool = False) -> None:
        self.kind = kind  # block | loop | if
        self.start = start
        self.base = base  # canonical stack height where this construct's level starts (its params included above)
        self.buried = buried if buried is not None else []  # (depth, type) spilled at entry
        self.result_types = result_types
        #: the rewind copy's loop: its first (partial) iteration in skip-guarded code, then the loop
        #: itself as the normal body has it (see :meth:`_FunctionRewriter._enter_construct`)
        self.split = split


class _FunctionRewriter:
    """Rewrites one function: the normal body (with polls, post-call checks and spills) and its
    rewind copy; see the module docstring and docs/instrument.md."""

    def __init__(self, pass_: _Pass, func_idx: int, func: Function, info: object) -> None:
        self.p = pass_
        self.func_idx = func_idx
        self.func = func
        self.info = info
        ir = pass_.ir
        self.ftype = ir.types[func.type_idx]
        self.local_types: list[str] = list(self.ftype.params) + func.local_types()
        for t in self.local_types:
            if t not in _NUMERIC:
                raise InstrumentError(f"function {ir.func_name(func_idx)} has a {t} local: reference-typed locals "
                                      "cannot be checkpointed on the compiled engine")
        self.num_locals = len(self.local_types)
        #: the parameters widened to i64 in the run module (:mod:`wasmig.instrument.widen`), and
        #: those the code being emitted must wrap and extend: ``wide`` in the normal body (where
        #: they are i64 parameters), none in the rewind copy and entry function (where they are
        #: i32 locals)
        self.wide: tuple[int, ...] = pass_.widened.get(func_idx, ())
        self.wrap_now: frozenset[int] = frozenset()
        #: a big widened function's shadow locals (parameter -> its i32 shadow, read by the cold
        #: arms: ``widen.SHADOW_BODY``), first of the pass's locals to keep their indices small
        self.shadow: dict[int, int] = {j: self._new_local("i32") for j in widen.shadowed(func.body, self.wide)}
        self.site_local = self._new_local("i32")
        self.addr_local = self._new_local("i32")
        self.skip_local = self._new_local("i32")  # rewind copy: 1 while skipping to the resume site
        #: the pass's locals no record holds (their slots are neither loaded nor stored)
        self.scratch = frozenset((self.site_local, self.addr_local, self.skip_local, *self.shadow.values()))
        # sequences every function emits many times, encoded once
        self.set_site = encode_seq((0x21, self.site_local))
        self.set_site_and_record = encode_seq((0x21, self.site_local), (0x41, 0),
                                              (0x28, self.ctl_memarg(2, WRITE_PTR)), (0x21, self.addr_local))
        self.get_skip = encode_seq((0x20, self.skip_local))
        self.skip_eqz = encode_seq((0x20, self.skip_local), (0x45,))  # not skipping
        self.clear_skip = encode_seq((0x41, 0), (0x21, self.skip_local))
        self.get_site = encode_seq((0x20, self.site_local))
        self.finish = encode_seq((0x10, pass_.finish_func), (0x41, 0), (0x21, self.skip_local))
        self.spills: dict[tuple[int, str], int] = {}
        #: (local.set or local.get, types, depth) -> the moves of those values to or from their
        #: spill locals, encoded (:meth:`pop_into`, :meth:`push_from`)
        self.moves: dict[tuple[int, tuple[str, ...], int], bytes] = {}
        #: local j -> the three instructions storing it into its record slot, encoded
        self.slot_stores: dict[int, bytes] = {}
        self.slot_caches = (self.slot_stores, {})  # i32 locals, widened parameters (set_widening)
        self.temps: dict[str, list[int]] = {}
        #: the code being emitted, encoded as it is emitted (:mod:`wasmig.instrument.emit`)
        self.out = Code()
        self.emit = self.out.add
        #: the labels of the code being emitted, outermost first: True for a label of the original
        #: body (branches are renumbered through it), False for one the pass added
        self.labels: list[bool] = []
        self.site_at: dict[tuple[int, str], int] = {}  # (instruction index, kind) -> site id
        #: the id of this function's first site: its sites are ids site_base.. (made while it is
        #: rewritten), and its code and records name a site by its id less this (:meth:`rel`)
        self.site_base = len(pass_.sites)
        self.unwind_label = _UNWIND_LABEL  # index in self.labels of the block unwind branches leave
        #: the normal body's cold arms save their values compactly (:meth:`_save_compact`); the
        #: rewind copy's (in the rewind module, compiled only to rewind) store each in its slot
        self.compact = True
        #: a big function: its loops are not unrolled and its polls save compactly too
        self.big = len(func.body) >= UNROLL_MAX_FUNCTION
        self.entry_site = -1
        body = func.body
        self.stack_before = info.stack_before  # type: ignore[attr-defined]
        self.unreachable = info.unreachable  # type: ignore[attr-defined]
        #: the instructions the emitters look at, ascending; those between are copied as runs
        # (a comprehension: on CPython 3.11 its specialised attribute loads beat compress() over
        # map(attrgetter), 0.10 s against 0.15 s for CPython's 2.7 million instructions)
        self.walked_at = [k for k, ins in enumerate(body) if ins.op in _WALKED]
        self.special_at = [k for k in self.walked_at if body[k].op in _SPECIAL]
        blocks = self.end_of, self.else_of = match_blocks(body, self.walked_at)
        #: the locals live before an instruction (a bit set), asked at the sites only: the
        #: validator's cached list when a validated module has it, else worked out per run
        self.live = info.live if info.live is not None else LiveAt(body, blocks)
        # runs copied unchanged are slices of it: of the module's own bytes for a decoded function
        # the encoder would make the same bytes of
        self.original = (OriginalCode(body, pass_.data, func.body_offset, func.body_size)
                         if func.canonical and pass_.data is not None else OriginalCode(body))
        #: the normal body's runs of a widened function (made when it is emitted)
        self.wide_original: OriginalCode | None = None
        self.has_site: dict[int, bool] = {}  # construct start -> whether it holds a site
        self.live_lists: dict[int, list[int]] = {}  # a live set's bits -> its locals, ascending
        self.spill_lists: dict[tuple[int | str, ...], list[int]] = {}  # (depth, *types) -> _spills_of
        #: the loops where a rewind copy hands the frame back to the normal body (transfer.py)
        self.entries: EntryPlan = plan_entries(body, self.end_of, self.unreachable, self.walked_at)
        self.counted: dict[int, bool] = {}  # loop start -> whether it is left unpolled (_counted)
        self.every_iteration: dict[int, bool] = {}  # loop start -> _every_iteration_calls
        self.entry_bounds: dict[int, EntryBound | None] = {}  # loop start -> its _entry_bound
        self.nested_loops: set[int] | None = None  # the loops inside another loop (_nested)
        #: the stash of the call-free loop nests being emitted (local -> stash slot), and per nest
        #: whose entry added to it, its loop and the stash as it was before
        self.stash: dict[int, int] = {}
        self.stashed_at: list[tuple[int, dict[int, int]]] = []
        #: with entry loops: the index of the entry function, where the copy hands its frame over
        self.entry_func = -1
        #: a chain of entry loops around a huge target: an entry arm instead (entry_arm.py)
        self.entries, self.chain = entry_arm.chain_of(self.entries, body, self.end_of, self.unreachable)
        self.arm_head: Code | None = None  # the normal body up to the entry arm
        #: two i32 locals for a bulk memory operation's moved operands (:meth:`moved_bulk`)
        self.bulk_locals: tuple[int, int] | None = None

    # --- locals -----------------------------------------------------------------------------
    def _new_local(self, t: str) -> int:
        self.local_types.append(t)
        return len(self.local_types) - 1

    def spill(self, depth: int, t: str) -> int:
        key = (depth, t)
        if key not in self.spills:
            self.spills[key] = self._new_local(t)
        return self.spills[key]

    def temp(self, t: str, k: int) -> int:
        pool = self.temps.setdefault(t, [])
        while len(pool) <= k:
            pool.append(self._new_local(t))
        return pool[k]

    # --- emission helpers ---------------------------------------------------------------------
    def _start_code(self) -> Code:
        """Emit into new code from here; returns the code emitted so far. ``self.emit(op, imm,
        origin)`` appends an instruction to ``self.out``: the bound :meth:`Code.add`, not a method
        that calls it, as the pass emits ten instructions per original one."""
        done = self.out
        self.out = Code()
        self.emit = self.out.add
        return done

    def open(self, op: int, imm: object, original: bool, origin: int = -1) -> int:
        """Open a construct; returns its place in ``self.out.chunks`` (a guard's block type is
        known only when it closes: :meth:`_rewind_body` overwrites it there). A million calls on
        CPython: :meth:`Code.add`'s work is done here, with no call."""
        self.labels.append(original)
        out = self.out
        chunks = out.chunks
        chunks.append(cached_instr((op, imm)) or encoded_instr(op, imm))
        if origin < 0:
            out.tags.append(0)
        else:
            out.tags += origin_tag(origin)
        return len(chunks) - 1

    def close(self, origin: int = -1) -> None:
        self.labels.pop()
        out = self.out
        out.chunks.append(_END)
        if origin < 0:
            out.tags.append(0)
        else:
            out.tags += origin_tag(origin)

    def label(self, depth: int) -> int:
        """The new relative depth of the original body's label ``depth``."""
        seen = -1
        for k in range(len(self.labels) - 1, -1, -1):
            if self.labels[k]:
                seen += 1
                if seen == depth:
                    return len(self.labels) - 1 - k
        raise InstrumentError(f"internal error: branch depth {depth} out of range")  # pragma: no cover

    def unwind_depth(self) -> int:
        return len(self.labels) - 1 - self.unwind_label

    def ctl_memarg(self, align: int, offset: int) -> tuple[int, ...]:
        return memarg(align, offset, self.p.ctl)

    def check_types(self, types: tuple[str | None, ...] | list[str | None], where: str) -> list[str]:
        if not _NUMERIC_SET.issuperset(types):
            t = next(t for t in types if t not in _NUMERIC_SET)
            raise InstrumentError(f"{where} in {self.p.ir.func_name(self.func_idx)}: a {t} value on the "
                                  "operand stack cannot be checkpointed on the compiled engine")
        return list(types)  # type: ignore[arg-type]

    def known_types(self, types: tuple[str | None, ...] | list[str | None]) -> list[str]:
        if None in types:  # pragma: no cover - only unreachable code has unknown types
            raise InstrumentError(f"internal error: unknown operand type in {self.p.ir.func_name(self.func_idx)}")
        return list(types)  # type: ignore[arg-type]

    def pop_into(self, types: list[str], base_depth: int) -> None:
        """Pop values of canonical depths base_depth.. (top first) into their spill locals."""
        if not types:
            return
        key = (0x21, tuple(types), base_depth)
        code = self.moves.get(key)
        if code is None:  # the first time allocates the spill locals, in this order
            code = self.moves[key] = encode_seq(*((0x21, self.spill(base_depth + k, types[k]))
                                                  for k in range(len(types) - 1, -1, -1)))
        self.out.add_encoded(code, len(types))

    def push_from(self, types: list[str], base_depth: int) -> None:
        if not types:
            return
        key = (0x20, tuple(types), base_depth)
        code = self.moves.get(key)
        if code is None:
            code = self.moves[key] = encode_seq(*((0x20, self.spill(base_depth + k, t)) for k, t in enumerate(types)))
        self.out.add_encoded(code, len(types))

    def drop(self, n: int) -> None:
        if n:
            self.out.add_encoded(_DROP * n, n)

    def zeros(self, types: Sequence[str]) -> None:
        if types:
            self.out.add_encoded(_drops_zeros(0, types), len(types))

    def add_site(self, key: tuple[int, str], kind: str, pc: int, stack: list[str],
                 args: list[str] | None = None, live_at: int | None = None) -> int:
        """The site of instruction ``key`` (made once: an unrolled loop emits its body again);
        ``live_at``: the instruction whose live locals the site keeps (default: ``key``'s)."""
        if key in self.site_at:
            return self.site_at[key]
        site_id = len(self.p.sites)
        args = args or []
        bits = self.live[max(key[0] if live_at is None else live_at, 0)]
        live = self.live_lists.get(bits)
        if live is None:  # most sites of a function share a few sets: one list each (never mutated)
            live = self.live_lists[bits] = [j for j in range(self.num_locals) if bits >> j & 1]
        self.p.sites.append(Site(site_id, self.func_idx, pc, kind, stack, self._spills_of(0, stack), args,
                                 self._spills_of(len(stack), args) if args else [], live))
        self.site_at[key] = site_id
        return site_id

    def rel(self, site_id: int) -> int:
        """How this function's code and frame records name site ``site_id``: its id less the
        function's first site's, plus :data:`~wasmig.instrument.linking.SITE_BIAS` (the host
        reads it back with the record's function, :func:`wasmig.engines.wasmtime.records`).
        Two LEB128 bytes for a function's first 8,128 sites, where an id of a big module took
        three."""
        return site_number(site_id, self.site_base)

    def _spills_of(self, depth: int, types: list[str]) -> list[int]:
        """The spill locals of values of ``types`` from canonical depth ``depth`` up (allocated
        the first time, in this order): a list per shape, shared by the sites of that shape
        (never mutated, as the live lists)."""
        key = (depth, *types)
        found = self.spill_lists.get(key)
        if found is None:
            found = self.spill_lists[key] = [self.spill(depth + k, t) for k, t in enumerate(types)]
        return found

    def unwind_branch(self, site_id: int, *, compact: bool = False, call_site: int | None = None) -> None:
        """Inside a cold `if`: write this site's slots of the frame record, set $site and branch
        to $unwind (which writes the record's header).

        Only the slots the host reads are written: the original locals live at the site and the
        spill locals of the site's stack (and operands). A shared writer after $unwind reading
        every local would make every local live at every site: Cranelift then merges all of a
        local's values into one register-allocation bundle reaching the unwind path, and spills
        and reloads loop variables inside hot loops (matmul 3x). Sharing a writer only among the
        sites that store the very same slots (a tail block per slot set) was tried: a third less
        code on QuickJS, but the tail's block parameters merge the values of every site that
        branches there in the same way, and QuickJS's n-body ran 1.19x plain against 1.09x. So
        each cold arm stores its own slots: each value's live range stays where the original
        program has it. The rewind copy's own (guarded) sites go to its one writer of every slot.

        ``compact`` (a call site's arms, and a big function's polls): in the normal body, the
        values go to their compact positions through the pass's savers (:meth:`_save_compact`).
        A poll's arm in a function of fewer than :data:`UNROLL_MAX_FUNCTION` instructions keeps a
        store per value: with saver calls in every poll's arm, the triangular loop nests ran
        1.14-1.31x plain against 0.94-1.04x (pb_cholesky, pb_lu, pb_ludcmp, pb_trisolv).

        ``call_site`` (its id is ``site_id - 1``): the one arm of a polling call's two sites
        (:meth:`_shares_arm`). It saves the ``after_call`` site ``site_id``'s values, a superset
        of the call site's at the same positions, and records the site ``site_id - $state``: the
        call site when the callee unwound (``$state`` 1), the ``after_call`` site on a request
        with the call done (``$state`` 0; a normal body never runs while rewinding)."""
        out = self.out
        head, n = _i32_const(self.rel(site_id)), 1  # emitted with what follows it: one add_encoded
        if call_site is not None:
            head, n = head + self.p.minus_state, 3
        if self.unwind_label == _COPY_UNWIND_LABEL:  # the rewind copy has one shared (cold) writer
            out.add_encoded(head + self.set_site, n + 1)
            self.emit(0x0C, self.unwind_depth())
            return
        site = self.p.sites[site_id]
        if compact and self.compact:
            out.add_encoded(head + self.set_site, n + 1)
            self._save_compact(site)
            self.emit(0x0C, len(self.labels) - 1 - _UNWIND_LABEL)
            return
        out.add_encoded(head + self.set_site_and_record, n + 4)  # $site = K; a = the write pointer
        chunks, stores, stash = out.chunks, self.slot_stores, self.stash
        slots = sorted({*site.live, *site.spills, *site.arg_spills})
        stashed = 0
        for j in slots:
            n = stash.get(j)
            if n is not None:  # from the nest's stash (_stash_plan)
                chunks.append(self._stash_copy(j, n))
                stashed += 1
                continue
            code = stores.get(j)
            chunks.append(code if code is not None else self.slot_store(j))
        self.out.tags += bytes(3 * len(slots) + stashed)
        self.emit(0x0C, len(self.labels) - 1 - _UNWIND_LABEL)

    def _stash_copy(self, j: int, n: int) -> bytes:
        """``local.get $a  i32.const 0  T.load $ctl (stash n)  T.store $ctl (8 + 8j)``."""
        store, align = _STORE[self.local_types[j]]
        load, _ = _LOAD[self.local_types[j]]
        return encode_seq((0x20, self.addr_local), (0x41, 0), (load, self.ctl_memarg(align, STASH_BASE + 8 * n)),
                          (store, self.ctl_memarg(align, 8 + 8 * j)))

    def slot_store(self, j: int) -> bytes:
        """``local.get $a  local.get j  T.store $ctl (8 + 8j)``: local j into its record slot,
        encoded once per slot (most of a big function's sites store the same locals; the normal
        body of a widened function has a cache of its own, :meth:`set_widening`). A widened
        parameter (i64 here) is stored with ``i64.store``: its slot's low four bytes are the i32,
        all the host and the copy read, and the upper four are zero -- a byte less than a wrap."""
        code = self.slot_stores.get(j)
        if code is None:
            op, align = self.slot_store_op(j)
            code = self.slot_stores[j] = (encoded_instr(0x20, self.addr_local) + encoded_instr(0x20, j)
                                          + encoded_instr(op, self.ctl_memarg(align, 8 + 8 * j)))
        return code

    def slot_store_op(self, j: int) -> tuple[int, int]:
        """(store opcode, alignment) of local j into a control-memory slot: its type's, but
        ``i64.store`` for a widened parameter where it is an i64 (:meth:`slot_store`)."""
        return _STORE["i64" if j in self.wrap_now else self.local_types[j]]

    def set_widening(self, on: bool) -> None:
        """Emit code where the widened parameters are i64 (``on``: the normal body) or i32 locals
        (the rewind copy, the entry function): reads of them wrap, writes extend
        (:mod:`wasmig.instrument.widen`)."""
        if not self.wide:
            return
        self.wrap_now = frozenset(self.wide) if on else frozenset()
        self.slot_stores = self.slot_caches[on]
        if on and self.wide_original is None:
            self.wide_original = widen.WidenedCode(self.func.body, self.wide, self.shadow)

    def _wide_reads(self) -> dict[int, tuple[bytes, int]]:
        """Widened parameter -> how a cold arm reads it as an i32 (encoded) and the instructions
        that adds: its shadow (none), or the parameter and a wrap (one)."""
        return {j: (encoded_instr(0x20, self.shadow[j]), 0) if j in self.shadow
                else (encoded_instr(0x20, j) + widen.WRAP_CODE, 1) for j in self.wide}

    def _save_compact(self, site: Site) -> None:
        """The normal body's cold arm: the site's values to their compact record positions
        (:func:`~wasmig.instrument.sites.compact_slots`) by calls of the pass's savers, each
        taking up to 16 values of one type -- two bytes a value, where a store of its own took
        eight (a record-slot store per value was 60% of libc's ``printf_core`` instrumented).
        The arm ends in ``br $unwind`` and never returns to the hot path, so nothing is live
        across these calls (docs/instrument.md, "Compact records")."""
        order = compact_slots(site, self.local_types)
        types = self.local_types
        p = self.p
        parts: list[bytes] = []  # the arm's code, added at once (two instructions a call, one a value)
        # a widened parameter (an i64 here) goes to an i32 saver wrapped, or as its shadow
        reads = self._wide_reads() if self.wrap_now else None
        wraps = sum(reads[j][1] for j in order if j in reads) if reads else 0
        calls = 0
        pos = 0
        i = 0
        while i < len(order):
            t = types[order[i]]
            run = 1
            while i + run < len(order) and types[order[i + run]] == t:
                run += 1
            for k in SAVE_COUNTS:
                while run >= k:
                    parts.append(_i32_const(pos))
                    if reads is None:
                        parts += [encoded_instr(0x20, j) for j in order[i : i + k]]
                    else:
                        parts += [reads[j][0] if j in reads else encoded_instr(0x20, j) for j in order[i : i + k]]
                    parts.append(encoded_instr(0x10, p.saver(t, k)))
                    calls += 1
                    pos += k
                    i += k
                    run -= k
        self.out.add_encoded(b"".join(parts), 2 * calls + len(order) + wraps)

    def _framed(self, inner: Code, results: list[str], after_body: Callable[[], None]) -> Code:
        """A function's code around ``inner`` (the code inside its own label) and the header
        writer after $unwind::

            block $done (result R*)
              block $unwind
                block (result R*)  inner  end       ;; the function's label
                after_body                          ;; leaves to $done
              end
              the record's header, dummy results
            end
        """
        p = self.p
        self._start_code()
        self.emit(0x02, p.block_type([], results))  # $done
        self.emit(0x02, None)  # $unwind
        self.emit(0x02, p.block_type([], results))  # the function's own label
        self.out.extend(inner)
        self.emit(0x0B)
        after_body()
        self.emit(0x0B)  # end $unwind
        self._write_record()
        self.zeros(results)  # dummy results: the caller is unwinding and never looks at them
        self.emit(0x0B)  # end $done
        self.emit(0x0B)  # end of function
        return self.out

    def stable_point(self, site_id: int, params: list[str], base: int) -> None:
        g = self.p.globals_base
        steps, stop = g + 1, g + 2
        if self.p.count_steps:
            self.emit(0x23, steps)
            self.emit(0x42, 1)
            self.emit(0x7C)
            self.emit(0x24, steps)
            self.emit(0x23, steps)
            self.emit(0x23, stop)
            self.emit(0x5A)  # i64.ge_u
        self.emit(0x41, 0)
        # i32.atomic.load8_u $ctl: the request. Atomic, so that the compiler never merges it
        # with an earlier poll's load: with a plain load, Cranelift reused the entry poll's
        # value in every loop without stores, which then never saw a request
        self.emit(0xFE12, self.p.poll_memarg)
        if self.p.count_steps:
            self.emit(0x72)  # i32.or
        self.open(0x04, self.p.block_type(params, params), False)
        self.pop_into(params, base)
        self.unwind_branch(site_id, compact=self.big)
        self.close()

    def post_call_check(self, site_id: int, level: list[str], results: list[str], base: int,
                        after: int | None = None) -> None:
        """After a call whose callee can unwind: if it did, unwind this frame at the call site.

        With ``after`` (an ``after_call`` site, the fast variant), the check is also a poll: it
        tests the poll byte, which a pending request and every unwind set, and only in that cold
        arm tells the two apart -- a request with the call done unwinds at ``after``, keeping the
        call's results. That one load replaces the entry poll of a recursive function (see
        :meth:`_Pass.entry_polled`)."""
        carried = level + results
        p = self.p
        key = tuple(carried)
        test_if = p.check_ifs.get(key)  # `if (carried -> carried)`, encoded once per shape
        if test_if is None:
            test_if = p.check_ifs[key] = encoded_instr(0x04, p.block_type(carried, carried))
        if after is not None:
            self.labels.append(False)  # the `if`, added with its test in one piece
            self.out.add_encoded(p.poll_load + test_if, 3)  # i32.atomic.load8_u $poll, if
            if self._shares_arm(site_id, after):
                self.pop_into(carried, base)
                self.unwind_branch(after, compact=True, call_site=site_id)
                self.close()
                return
        self.labels.append(False)
        self.out.add_encoded(p.is_unwinding + test_if, 4)  # $state == 1, if
        self.drop(len(results))
        self.pop_into(level, base)
        self.unwind_branch(site_id, compact=True)
        self.close()
        if after is None:
            return
        # a request, the call completed: stop just after it. (The rewind copy's guarded calls
        # have no after_call stop: a copy still skipping to its site must not stop there.) The
        # normal body never runs while rewinding, and there the cold arm must not fall back into
        # the hot path: a join there costs Cranelift moves and jumps on every call (fib 1.1x ->
        # 1.25x)
        self.pop_into(carried, base)
        self.unwind_branch(after, compact=True)
        self.close()

    def _shares_arm(self, site_id: int, after: int) -> bool:
        """Whether a polling call's two sites can share one cold arm (:meth:`unwind_branch` with
        ``call_site``): the call site saves a prefix of what its ``after_call`` site saves
        (:func:`~wasmig.instrument.sites.compact_slots`) -- the same live locals, the same stack
        beneath the call, and no operands kept for a re-issue (a ``call_indirect``'s table index,
        whose spill local a result could share) -- and its id is one less, so that the arm picks
        the site as ``after - $state``. One arm instead of two saves ~30-60 bytes a call."""
        sites = self.p.sites
        call, done = sites[site_id], sites[after]
        return (after == site_id + 1 and not call.arg_spills and call.live == done.live
                and done.spills[: len(call.spills)] == call.spills)

    def call_sites(self, i: int, ins: Instr, kind: str, below: list[str], args: list[str],
                   results: list[str]) -> tuple[int, int | None]:
        """The call site of call ``i`` and, where its check polls, its ``after_call`` site: the
        frame just after the call returned, its results on the stack (canonical pc: the next
        instruction's)."""
        site = self.add_site((i, "call"), kind, ins.offset, below, args)
        if not self.p.polls_after(ins):
            return site, None
        nxt = self.func.body[i + 1]
        return site, self.add_site((i, "after_call"), "after_call", nxt.offset, below + results, live_at=i + 1)

    def plain(self, ins: Instr) -> None:
        """An instruction that is neither a site nor a construct holding one: copied, with its
        branch depths renumbered and segment drops recorded."""
        op, imm, origin = ins.op, ins.imm, ins.offset
        if op not in _NOT_VERBATIM:  # most instructions: copied as they are
            self.emit(op, imm, origin)
        elif op in (0x02, 0x03, 0x04):
            self.open(op, imm, True, origin)
        elif op == 0x0B:
            self.close(origin)
        elif op in (0x0C, 0x0D):
            self.emit(op, self.label(imm), origin)
        elif op == 0x0E:
            labels, default = imm
            self.emit(op, (tuple(self.label(x) for x in labels), self.label(default)), origin)
        elif op == 0x40:  # memory.grow: publish the new size (the old one stays the result)
            self.emit(op, imm, ins.offset)
            hidden = self.p.hidden
            if hidden:
                self.emit_seq(hidden_page.GROW_FIX)
            self.emit(0x41, 0)
            self.emit(0x3F, imm)
            if hidden:
                self.emit_seq(hidden_page.SIZE_FIX)
            self.emit(0x36, memarg(2, MEMORY_PAGES, self.p.poll_mem))
        elif op == 0x3F:  # memory.size
            self.emit(op, imm, origin)
            if self.p.hidden:
                self.emit_seq(hidden_page.SIZE_FIX)
        elif op in (0xFC08, 0xFC0A, 0xFC0B) and self.p.hidden:
            self.moved_bulk(op, imm, origin)
        elif op == 0x10:  # a call in dead code: of a widened function, its i32 arguments would not validate
            if imm in self.p.widened:
                self.emit(0x00)
            self.emit(op, imm, origin)
        elif op in (0xFC09, 0xFC0D):
            self.emit(op, imm, ins.offset)
            seg = (self.p.ir.datas if op == 0xFC09 else self.p.ir.elems)[imm]
            if seg.mode == "passive":  # an active one has no flag (always dropped), and its slot may lie past them
                slot = DROPS_BASE + (imm if op == 0xFC09 else len(self.p.ir.datas) + imm)
                self.emit(0x41, 0)
                self.emit(0x41, 1)
                self.emit(0x3A, self.ctl_memarg(0, slot))  # i32.store8 $ctl
        else:
            self.emit(op, imm, origin)

    def emit_seq(self, seq: Sequence[tuple[int, object]]) -> None:
        for op, imm in seq:
            self.emit(op, imm)

    def moved_bulk(self, op: int, imm: object, origin: int) -> None:
        """memory.init, memory.copy or memory.fill with its memory-0 addresses moved past the
        hidden page (:mod:`~wasmig.instrument.hidden_page`): the operands ``[d, s|v, n]`` go
        through two i32 locals of the function's own (never live at a site: the three
        instructions around them are not sites)."""
        if self.bulk_locals is None:
            self.bulk_locals = (self._new_local("i32"), self._new_local("i32"))
        n, s = self.bulk_locals
        fix = hidden_page.ADDRESS_FIX
        self.emit(0x21, n)
        if op == 0xFC0A:  # memory.copy: the source is an address as well
            self.emit_seq(fix)
        self.emit(0x21, s)
        self.emit_seq(fix)
        self.emit(0x20, s)
        self.emit(0x20, n)
        self.emit(op, imm, origin)

    # --- the function -------------------------------------------------------------------------
    def rewrite(self) -> tuple[_Rewritten, _Rewritten, _Rewritten | None]:
        """The instrumented function, its rewind copy and, for a function with entry loops, its
        entry function (:mod:`wasmig.instrument.transfer`), encoded.

        The copy is a function of its own (type ``[] -> results``, every local of the function
        a local), called directly by its caller's rewind copy at the record's call site — or
        through the table ``$rewinds`` for a ``call_indirect``, by the host for the outermost
        frame. Inline, the copy made every function several times larger and Cranelift then kept
        the VM context and loop values on the stack in the normal body too (recursive fib 1.4x
        -> 1.1x out of line); and since a rewind never enters the function itself, its entry
        poll needs no rewind test. The copy writes and reads the same frame records."""
        p = self.p
        results = list(self.ftype.results)
        normal = self._normal_body()
        # the entry function (transfer.py): emitted before the copy, which must know every site
        entry = None
        if self.entries and self.chain is None:
            self.entry_func = p.add_entry(self.func_idx)
            entry = transfer.entry_body(self)
        self.compact = False  # the copy's own cold arms store each local in its slot
        rewind = self._rewind_body()
        self.compact = True
        if self.arm_head is not None:  # the entry arm's loads, now that every local is known
            self.set_widening(True)  # in the normal body
            loads = transfer.record_loads(self)
            self.set_widening(False)
            normal = entry_arm.with_arm_loads(self, self.arm_head, normal, loads)
        body = self._framed(normal, results, lambda: self.emit(0x0C, 1))  # to $done
        if entry is not None:  # its loads, now that every local is known
            entry = self._framed(transfer.with_entry_loads(self, entry), results, lambda: self.emit(0x0C, 1))
        self.compact = False  # the copy's records: every local in its slot

        self._start_code()
        self.emit(0x02, None)  # $copy_unwind: where the copy's own sites branch
        if self.entries:
            self.emit(0x02, None)  # $transfer: where the copy hands its frame to normal code
            self.out.extend(rewind)
            self.emit(0x0C, 4)  # the copy's results straight to $done
            self.emit(0x0B)
            transfer.transfer_tail(self)
        else:
            self.out.extend(rewind)
            self.emit(0x0C, 3)  # the copy's results straight to $done
        self.emit(0x0B)
        self._write_all_slots()  # the copy is cold: one writer for all its sites keeps it small
        self.emit(0x0C, 1)  # to $unwind (the record's header)
        copy_body = self._framed(self.out, results, lambda: self.emit(0x0C, 1))  # the results to $done

        # the declared locals (the original ones, then the pass's) as runs of one type: a
        # declaration a local took 14 KB of QuickJS's run module (its spill locals are mostly
        # i32s, allocated one after another); Cranelift makes byte for byte the same machine code
        params = len(self.ftype.params)
        new = _Rewritten(self.type_idx(), encode_code_entry_raw(_grouped(self.local_types[params:]), body.body()),
                         body.origin_entry())
        # the copy has no parameters (it reloads every local): the function's are its first locals
        rewind_copy = _Rewritten(p.func_type_index([], results),
                                 encode_code_entry_raw(_grouped(self.local_types), copy_body.body()),
                                 copy_body.origin_entry())
        entry_fn = None
        if entry is not None:  # like the copy: no parameters, every local from the record
            entry_fn = _Rewritten(rewind_copy.type_idx, encode_code_entry_raw(_grouped(self.local_types), entry.body()),
                                  entry.origin_entry())
        p.layouts[self.func_idx] = FunctionLayout(self.func_idx, self.num_locals, list(self.local_types),
                                                  8 + 8 * len(self.local_types))
        return new, rewind_copy, entry_fn

    def type_idx(self) -> int:
        """The function's type in the run module: its parameters at :attr:`wide` i64."""
        if not self.wide:
            return self.func.type_idx
        ft = widen.widened_type(self.ftype, self.wide)
        return self.p.func_type_index(list(ft.params), list(ft.results))

    def call_params(self) -> list[str]:
        """The parameters a call of this function passes in the run module (:meth:`type_idx`)."""
        return list(widen.widened_type(self.ftype, self.wide).params)

    def _normal_body(self) -> Code:
        """The original body with polls, post-call checks and spills (allocates the sites)."""
        self._start_code()
        self.labels = [False, False, True]  # $done, $unwind, the function's label
        self.unwind_label = _UNWIND_LABEL
        body = self.func.body
        self.has_site = self._constructs_with_sites(body)
        entry = self.entry_site = self.add_site((-1, "entry"), "entry", body[0].offset, [])
        self.arm_head = None
        self.set_widening(True)
        for j, q in self.shadow.items():  # before the entry arm's loads, which set them again
            self.out.add_encoded(encode_seq((0x20, j), (widen.WRAP,), (0x21, q)), 3)
        if self.chain is not None:  # a transfer lands in an arm of its own (entry_arm.py)
            self.arm_head = entry_arm.arms(self, self.chain)
        else:
            if self.p.entry_polled(self.func_idx):
                self.stable_point(entry, [], 0)
            self._emit_range(0, len(body) - 1, [])
        self.set_widening(False)
        return self.out

    def _emit_range(self, start: int, end: int, ctl: list[_Ctl]) -> None:
        """body[start:end] as the normal body has it; ``ctl``: the constructs open around it."""
        body = self.func.body
        stack_before, unreachable = self.stack_before, self.unreachable
        has_site, widened = self.has_site, self.p.widened
        special_at = self.special_at
        copy = (self.original if not self.wrap_now else self.wide_original).copy  # type: ignore[union-attr]
        k = bisect_left(special_at, start)
        copied_to = start  # body[start:copied_to] is emitted
        while k < len(special_at) and special_at[k] < end:
            i = special_at[k]
            k += 1
            ins = body[i]
            op = ins.op
            live = not unreachable[i]
            # a live call of a widened function copies the run before it itself (widen.extend_args)
            wide = widened.get(ins.imm) if op == 0x10 and live else None
            if i > copied_to and wide is None:  # the plain instructions before it, copied unchanged in one run
                copy(self.out, copied_to, i)
            run_start = copied_to
            copied_to = i + 1
            base = ctl[-1].base if ctl else 0
            if op in (0x02, 0x03, 0x04):
                nparams, result_types, _ = self.p.block_arity(ins.imm)
                stack = stack_before[i]
                entry_height = len(stack) - nparams - (1 if op == 0x04 else 0)
                buried: list[tuple[int, str]] = []
                if live and has_site.get(i) and entry_height > base:
                    buried = self._spill_buried(stack, base, entry_height, guarded=False)
                if op == 0x03 and live and self._unrollable(i):
                    self._unrolled_loop(i, ins, stack, entry_height, ctl)
                    self._push_back_buried(_Ctl("loop", i, entry_height, buried, tuple(result_types)))
                    copied_to = self.end_of[i] + 1  # the loop was emitted whole
                    k = bisect_left(special_at, copied_to)
                    continue
                if op == 0x03 and live and self.end_of[i] < end:
                    self._stash_at_entry(i)
                # tagged with the original's offset: Cranelift may report a trap in a small arm
                # (`if .. unreachable end`) at its `if` (wasmig.engines.wasmtime.traps)
                self.open(op, ins.imm, True, ins.offset)
                ctl.append(_Ctl("loop" if op == 0x03 else "block", i, entry_height, buried, tuple(result_types)))
                if op == 0x03 and live:
                    params = self.check_types(stack[entry_height:], "a loop parameter")
                    site = self.add_site((i, "loop"), "loop", ins.offset, self.check_types(stack, "a value at a loop"))
                    if not self._every_iteration_calls(i) and not self._counted(i):
                        self.stable_point(site, params, entry_height)
            elif op == 0x0B:
                done = ctl.pop()
                if self.stashed_at and done.start == self.stashed_at[-1][0]:
                    self.stash = self.stashed_at.pop()[1]
                self.close(ins.offset)
                self._push_back_buried(done)
            elif op in (0x10, 0x11) and live:
                stack = list(stack_before[i])
                kind, below, args, callee = self._call_shape(ins, stack)
                if args:
                    self.pop_into(args, len(below))
                    self.push_from(args, len(below))
                if wide is not None:
                    widen.extend_args(self, i, wide, run_start, copy)
                self.emit(ins.op, ins.imm, ins.offset)
                site, after = self.call_sites(i, ins, kind, below, args, list(callee.results))
                if self.p.call_may_unwind(ins):
                    self.post_call_check(site, below[base:], list(callee.results), base, after)
            else:
                self.plain(ins)
        if end > copied_to:
            copy(self.out, copied_to, end)

    def _stash_plan(self, i: int) -> list[int]:
        """The locals loop ``i``'s polls save from a stash: in the fast variant, for a loop nest
        (a loop holding a loop) with no call in it, in a function whose polls store each value
        (not :attr:`big`), the locals live at its header that nothing in the nest reads or
        writes. They are stored once at its entry (:meth:`_stash_at_entry`), and the cold arms of
        the polls inside it copy them from there into the record instead of reading the locals.

        Why: such a local (sieve's repetition count, live across the sieve of one repetition) is
        otherwise used inside the nest only by those arms, and Cranelift kept it moving between a
        register and its stack slot on the nest's hot path -- a store and a reload every
        iteration of sieve's outer loop (sieve 1.14x plain over eight code placements, 1.04x
        without those uses). A local the nest reads anyway gains nothing (lz77 ran 3% slower with
        those stashed too). Sound because nothing but the nest runs between its entry and a poll
        inside it (no call: no other frame, and no other nest, writes the stash), the nest is
        entered only through its ``loop`` (where the stash is written), and code that enters it
        elsewhere (a transfer after a rewind) reads the locals (:meth:`_emit_range` uses the stash
        only between a nest's own ``loop`` and its ``end``)."""
        if self.p.count_steps or self.big:
            return []
        body, end = self.func.body, self.end_of[i]
        inner = False
        used = 0
        for k in range(i + 1, end):
            op = body[k].op
            if op in (0x10, 0x11, 0x12, 0x13):
                return []
            if op == 0x03:
                inner = True
            elif op in (0x20, 0x21, 0x22):
                used |= 1 << body[k].imm
        if not inner:
            return []
        bits = self.live[i] & ~used
        return [j for j in range(self.num_locals) if bits >> j & 1]

    def _stash_at_entry(self, i: int) -> None:
        """Before loop ``i``'s ``loop``: the locals of its stash plan not stashed by an enclosing
        nest written to the stash, and read by the polls inside it until its ``end`` -- if they
        are at most :data:`STASH_MOST`, else none.

        Why the limit: stashing lz77's nests (6 and 7 locals each: main's locals live across the
        inlined compress and decompress loops, each nest inside one loop) made lz77 1.15-1.20x
        plain against 1.06-1.07x without, for either nest alone, although the stores run only at
        the nest's entry: presumably Cranelift allocates the nest's hot loops worse once those
        locals are dead in it (not narrowed further; not by the entry's depth either: stashing
        only nests inside at most one loop left lz77 at 1.18x). The nests that
        gain (sieve's, 2 locals: 1.10x -> 1.00-1.02x plain) stash few."""
        stash = self.stash
        new = [j for j in self._stash_plan(i) if j not in stash]
        if not new or len(new) > STASH_MOST or len(stash) + len(new) > STASH_SLOTS:
            return
        self.stashed_at.append((i, stash))
        stash = self.stash = dict(stash)
        for j in new:
            n = stash[j] = len(stash)
            op, align = self.slot_store_op(j)
            self.out.add_encoded(encode_seq((0x41, 0), (0x20, j), (op, self.ctl_memarg(align, STASH_BASE + 8 * n))), 3)

    def _every_iteration_calls(self, i: int) -> bool:
        """Whether the fast variant may leave loop ``i`` without a header poll: every iteration
        makes a call whose post-call check polls (:meth:`post_call_check`), which then bounds
        the time to a stop (the callee itself polls while it runs).

        That holds when such a call sits at the top level of the loop's body with no branch
        back to the loop before it: code after it can only be reached through it (a branch from
        before it can only leave the loop, restart it, or stay in a construct that ends before
        it). Recursive fib loses a third of its overhead. The deterministic variant counts every
        header, as the interpreter does, and keeps them all."""
        if self.p.count_steps:
            return False
        found = self.every_iteration.get(i)
        if found is None:  # asked again by the rewind copy's normal loops and transfers: scanned once
            found = self.every_iteration[i] = self._scan_for_polling_call(i)
        return found

    def _scan_for_polling_call(self, i: int) -> bool:
        body, special_at = self.func.body, self.special_at
        depth = 0  # constructs open inside the loop's body
        # the constructs, branches and calls of the loop's body (the others change nothing
        # here): a loop nest's bodies, each scanned, took 0.2 s of CPython's pass instruction by
        # instruction
        end = self.end_of[i]
        for j in range(bisect_right(special_at, i), bisect_left(special_at, end)):
            k = special_at[j]
            op = body[k].op
            if op in (0x02, 0x03, 0x04):
                depth += 1
            elif op == 0x0B:
                depth -= 1
            elif op in (0x0C, 0x0D) and body[k].imm == depth:
                return False  # a branch back to the loop before any call
            elif op == 0x0E and depth in (*body[k].imm[0], body[k].imm[1]):
                return False
            elif op in (0x10, 0x11) and depth == 0 and not self.unreachable[k] and self.p.polls_after(body[k]):
                return True
        return False

    def _unrollable(self, i: int) -> bool:
        """A loop the fast variant unrolls: an innermost loop (no loop inside) with no call and a
        small body. Unrolling an outer loop too (its inner loop in turn, in each copy) was tried:
        sieve's two-deep nest then kept 16 copies of its innermost body, and Cranelift spilled
        the outer loop's values to the stack (sieve 1.22x plain against 1.06x)."""
        if self.p.unroll < 2 or self.big:
            return False
        end = self.end_of[i]
        if end - i - 1 > UNROLL_MAX_BODY or not self._innermost_without_calls(i):
            return False
        # a lone polled loop of one copy a round is emitted as written (no blocks around it)
        return self._counted(i) or self._entry_bound(i) is not None or self._rounds(i, True) > 1

    def _innermost_without_calls(self, i: int) -> bool:
        body, special_at = self.func.body, self.special_at  # loops and calls are among the latter
        return not any(body[special_at[j]].op in (0x03, 0x10, 0x11)
                       for j in range(bisect_right(special_at, i), bisect_left(special_at, self.end_of[i])))

    def _counted(self, i: int) -> bool:
        """Whether the fast variant leaves loop ``i`` without a poll: an innermost loop without
        calls whose trip count its constants bound (:mod:`wasmig.instrument.counted`), so it
        runs a bounded time per entry and the enclosing code's polls bound the time to a stop.
        Its copies stay (if small enough to unroll): without them sha256, pb_jacobi1d and
        pb_heat3d lost their 0.85-0.96x plain (docs/instrument.md). The deterministic variant
        counts every header and keeps them all."""
        if self.p.count_steps:
            return False
        found = self.counted.get(i)
        if found is None:
            found = self.counted[i] = (self._innermost_without_calls(i)
                                       and counted_trips(self.func.body, i, self.end_of[i]) is not None)
        return found

    def _unrolled_loop(self, i: int, ins: Instr, stack: Sequence[str | None], entry_height: int,
                       ctl: list[_Ctl]) -> None:
        """A loop without calls, its body copied ``unroll`` times and one poll per round of
        copies (the fast variant; see docs/instrument.md):

            block $exit (P -> R)                      ;; the loop's own block type
              loop $L (P -> R)
                poll (the loop's site)
                block $c1 (P -> P)  body, a branch to the loop going to $c1's end; br $exit  end
                ...
                body                                  ;; the last copy: branches to $L, as written
              end
            end

        Every copy keeps its own exit test, so any trip count runs exactly as the original: only
        the poll is taken once per ``unroll`` iterations instead of every one. A tight loop's
        three poll instructions cost it up to 40%; a quarter of them costs ~10%. The loop holds
        no site but its header, so its frames, records and rewind are those of the plain loop.
        """
        params = self.check_types(stack[entry_height:], "a loop parameter")
        site = self.add_site((i, "loop"), "loop", ins.offset, self.check_types(stack, "a value at a loop"))
        bound = None if self._counted(i) else self._entry_bound(i)
        if bound is None:
            self._copies(i, ins, params, entry_height, ctl, None if self._counted(i) else site)
            return
        # bounded at its entry: the copies without a poll when the count is small, else as
        # they are without the guard, a poll a round (skipping the poll on a local holding the
        # guard's verdict instead cost lz77 1.24x plain against main's 1.10x)
        for op, imm in entry_guard(bound):
            self.emit(op, imm)
            if op == 0x20 and imm in self.wrap_now:
                self.emit(widen.WRAP)
        self.open(0x04, ins.imm, False)
        self._copies(i, ins, params, entry_height, ctl, None)
        self.out.add_encoded(_ELSE, 1)
        self._copies(i, ins, params, entry_height, ctl, site)
        self.close()  # the if

    def _entry_bound(self, i: int) -> EntryBound | None:
        """Loop ``i``'s :class:`~wasmig.instrument.counted.EntryBound` (an innermost loop without
        calls whose count its entry values fix), if any: the fast variant runs it unpolled when
        that count is small (:meth:`_unrolled_loop`). The deterministic variant counts every
        header and keeps them all."""
        if i not in self.entry_bounds:
            small = self.end_of[i] - i - 1 <= ENTRY_BOUND_MAX_BODY
            self.entry_bounds[i] = (entry_bound(self.func.body, i, self.end_of[i])
                                    if small and not self.p.count_steps and self._innermost_without_calls(i)
                                    else None)
        return self.entry_bounds[i]

    def _copies(self, i: int, ins: Instr, params: list[str], entry_height: int, ctl: list[_Ctl],
                site: int | None) -> None:
        """Loop ``i`` as ``unroll`` copies of its body (:meth:`_unrolled_loop`); ``site``: the
        loop's site, polled once per round, or None for no poll."""
        end = self.end_of[i]
        self.open(0x02, ins.imm, False)  # $exit
        exit_label = len(self.labels) - 1
        self.open(0x03, ins.imm, False)  # $L: the label of the last copy's branches
        loop_label = len(self.labels) - 1
        if site is not None:
            self.stable_point(site, params, entry_height)
        rounds = self._rounds(i, site is not None)
        # `... br_if $L end` (LLVM's loop shape): a copy leaves through `i32.eqz br_if $exit`
        tail_test = ins.imm is None and body_ends_with_back_branch(self.func.body, i, end, self.unreachable)
        for k in range(rounds):
            last = k == rounds - 1
            if last:
                self.labels[loop_label] = True
            else:
                self.open(0x02, self.p.block_type(params, params), True)  # $c: the next copy
            level = _Ctl("loop", i, entry_height, [], ())
            if last or not tail_test:
                self._emit_range(i + 1, end, [*ctl, level])
            else:
                self._emit_range(i + 1, end - 1, [*ctl, level])
                self.emit(0x45, None)  # i32.eqz: the loop ends unless the original branched back
                self.emit(0x0D, len(self.labels) - 1 - exit_label, self.func.body[end - 1].offset)
            if not last:
                if not tail_test:
                    self.emit(0x0C, len(self.labels) - 1 - exit_label)  # the loop ended: its results out
                self.close()
        self.close()  # $L
        self.close()  # $exit

    def _rounds(self, i: int, polled: bool) -> int:
        """How many copies of loop ``i``'s body a round holds (:func:`copies_per_round`)."""
        lone = polled and not self._nested(i)
        return copies_per_round(self.end_of[i] - i - 1, lone, self.p.unroll)

    def _nested(self, i: int) -> bool:
        """Whether loop ``i`` lies inside another loop of its function."""
        if self.nested_loops is None:  # found once, in one walk over the constructs
            body = self.func.body
            self.nested_loops = set()
            open_loops: list[bool] = []  # per construct open around the walk: whether a loop
            loops = 0
            for k in self.special_at:
                op = body[k].op
                if op in (0x02, 0x03, 0x04):
                    if op == 0x03 and loops:
                        self.nested_loops.add(k)
                    open_loops.append(op == 0x03)
                    loops += op == 0x03
                elif op == 0x0B and open_loops:
                    loops -= open_loops.pop()
        return i in self.nested_loops

    def _spill_buried(self, stack: Sequence[str | None], base: int, entry_height: int, *, guarded: bool
                      ) -> list[tuple[int, str]]:
        """Values of the enclosing level beneath a construct holding a site go to their spill
        locals (in the rewind copy, only when not skipping: there they already hold the record's)."""
        buried_types = self.check_types(stack[base:entry_height], "a value beneath a block")
        top = self.check_types(stack[entry_height:], "a block parameter")
        for k in range(len(top) - 1, -1, -1):
            self.emit(0x21, self.temp(top[k], k))
        if guarded:
            self.emit(0x20, self.skip_local)
            self.open(0x04, self.p.block_type(buried_types, []), False)
            self.drop(len(buried_types))
            self.emit(0x05)
            self.pop_into(buried_types, base)
            self.close()
        else:
            self.pop_into(buried_types, base)
        for k, t in enumerate(top):
            self.emit(0x20, self.temp(t, k))
        return [(base + k, t) for k, t in enumerate(buried_types)]

    def _push_back_buried(self, done: _Ctl) -> None:
        if not done.buried:
            return
        rtypes = list(done.result_types)
        for k in range(len(rtypes) - 1, -1, -1):
            self.emit(0x21, self.temp(rtypes[k], k))
        for depth, t in done.buried:
            self.emit(0x20, self.spill(depth, t))
        for k, t in enumerate(rtypes):
            self.emit(0x20, self.temp(t, k))

    def _constructs_with_sites(self, body: list[Instr]) -> dict[int, bool]:
        """Construct start -> whether a loop or a call lies in it (or it is a loop)."""
        at = [k for k in self.special_at if body[k].op in (0x03, 0x10, 0x11)]  # ascending
        out: dict[int, bool] = {}
        for start, end in self.end_of.items():
            k = bisect_right(at, start)
            out[start] = body[start].op == 0x03 or (k < len(at) and at[k] < end)
        return out

    def _call_shape(self, ins: Instr, stack: list[str | None]) -> tuple[str, list[str], list[str], FuncType]:
        """(site kind, the stack beneath the call's operands, the operands kept in spill locals, callee type)."""
        p = self.p
        if ins.op == 0x10:
            callee = p.func_types[ins.imm]
            consumed = len(callee.params)
            kind = "import_call" if ins.imm < p.n_imported else "call"
        else:
            callee = p.ir.types[ins.imm[0]]
            consumed = len(callee.params) + 1
            kind = "call"
        full = self.check_types(stack, "a value live across a call")
        below = full[: len(full) - consumed]
        # import and indirect calls keep their operands (and the table index) in spill locals: an
        # interrupted host call is recorded with them and re-executed on restore
        args = full[len(below):] if kind == "import_call" or ins.op == 0x11 else []
        return kind, below, args, callee

    # --- the rewind copy ------------------------------------------------------------------------
    def _write_all_slots(self) -> None:
        """Every local into the record slots at the write pointer (the rewind copy's writer)."""
        a = self.addr_local
        self.emit(0x41, 0)
        self.emit(0x28, self.ctl_memarg(2, WRITE_PTR))
        self.emit(0x21, a)
        shadows = set(self.shadow.values())
        slots = [j for j in range(len(self.local_types)) if j != a and j not in shadows]
        self.out.add_encoded(b"".join([self.slot_store(j) for j in slots]), 3 * len(slots))

    def _rewind_body(self) -> Code:
        """The copy run by a frame being rewound: it reloads the frame's locals from its record,
        skips (without side effects) to the site the record names, re-enters the call there (or,
        innermost, ends the rewind) and from then on runs as the normal body does."""
        self._start_code()
        self.labels = [False, False, True, False]  # ..., the arm, $copy_unwind
        if self.entries:
            self.labels.append(False)  # $transfer (transfer.py)
        self.unwind_label = _COPY_UNWIND_LABEL
        body = self.func.body
        stack_before, unreachable = self.stack_before, self.unreachable
        sites = sorted((i, self.rel(sid)) for (i, _kind), sid in self.site_at.items() if i >= 0)
        positions = [i for i, _ in sites]

        def site_range(start: int, end: int) -> tuple[int, int] | None:
            lo = bisect_left(positions, start)
            hi = bisect_left(positions, end + 1)
            if lo == hi:
                return None
            return sites[lo][1], sites[hi - 1][1]

        levels: list[_Ctl] = []  # the constructs holding a site the copy is inside
        segment: tuple[int, list[str]] | None = None  # (the guard `if`'s chunk, its params) while a segment is open
        plain_depth = 0  # plain constructs open inside the current segment
        raw_depth = -1  # >= 0: copying dead code after an unconditional branch, at that nesting

        def base() -> int:
            return levels[-1].base if levels else 0

        def open_segment(i: int) -> None:
            nonlocal segment
            if segment is None:
                self.out.add_encoded(self.skip_eqz, 2)  # not skipping -> run the segment
                segment = (self.open(0x04, None, False), stack_before[i][base():])

        ends = self.p.segment_ends

        def close_segment(j: int) -> None:
            nonlocal segment
            if segment is None:
                return
            guard, params = segment
            key = (params, stack_before[j][base():])
            found = ends.get(key)
            if found is None:  # the `if`, and `else`, drops of the parameters, zeros for the results, `end`
                found = ends[key] = self._segment_end(*key)
            self.out.chunks[guard] = found[0]
            self.out.add_encoded(found[1], found[2])
            self.labels.pop()
            segment = None

        walked_at, copy = self.walked_at, self.original.copy
        last = len(body) - 1  # the final `end` is the framing's
        copied_to = 0  # body[:copied_to] is walked
        for i in walked_at + [last]:
            if i > copied_to:  # a run of plain instructions: copied whole, in the state the walk is in
                if raw_depth < 0 and plain_depth == 0:
                    if unreachable[copied_to]:
                        close_segment(copied_to)
                        raw_depth = 0
                    else:
                        open_segment(copied_to)
                copy(self.out, copied_to, i)
            if i == last:
                break
            copied_to = i + 1
            ins = body[i]
            op = ins.op
            if raw_depth >= 0:
                if op in (0x05, 0x0B) and raw_depth == 0:
                    raw_depth = -1  # the dead code ends with its construct's arm
                else:
                    if op in (0x02, 0x03, 0x04):
                        raw_depth += 1
                    elif op == 0x0B:
                        raw_depth -= 1
                    self.plain(ins)
                    continue
            if plain_depth > 0:
                if op in (0x02, 0x03, 0x04):
                    plain_depth += 1
                elif op == 0x0B:
                    plain_depth -= 1
                self.plain(ins)
                continue
            if op in (0x02, 0x03, 0x04):
                rng = site_range(i, self.end_of[i]) if not unreachable[i] else None
                if rng is None:
                    open_segment(i)
                    plain_depth = 1
                    self.plain(ins)
                    continue
                close_segment(i)
                levels.append(self._enter_construct(i, ins, base(), rng, site_range))
            elif op == 0x05:
                close_segment(i)
                self.emit(0x05)
            elif op == 0x0B:
                close_segment(i)
                done = levels.pop()
                if done.split:  # the end of a loop's first iteration, then the loop as normal
                    self.emit(0x0C, 2)  # the body fell through: the loop ended, its results to $exit
                    self.close()  # the block standing for the loop
                    self.close()  # `if $skip`
                    if done.start in self.entries.ordinal:  # to normal code (transfer.py)
                        transfer.transfer_branch(self, self.entries, done.start)
                    else:
                        self._normal_loop(done.start)
                    self.close()  # $exit
                    # no longer skipping (the loop ran): $skip is known 0 from here, so it is not
                    # live across the loop
                    self.emit(0x41, 0)
                    self.emit(0x21, self.skip_local)
                else:
                    self.close()  # the construct
                self.close()  # its skip guard
                self._push_back_buried(done)
            elif op in (0x10, 0x11) and not unreachable[i]:
                close_segment(i)
                self._rewind_call(i, ins, base())
            elif op in (0x00, 0x0C, 0x0E, 0x0F) and not unreachable[i]:
                # an unconditional branch: the rest of this arm is dead code, copied as it is; a
                # frame skipping to its site never gets here (its site would be dead code too)
                close_segment(i)
                self.plain(ins)
                raw_depth = 0
            elif unreachable[i]:
                close_segment(i)
                self.plain(ins)
                raw_depth = 0
            else:
                open_segment(i)
                self.plain(ins)
        close_segment(len(body) - 1)
        walked = self._start_code()  # the prologue last: it reloads every local the walk may have added
        self._rewind_prologue()
        self.emit(0x20, self.site_local)
        self.emit(0x41, self.rel(self.site_at[(-1, "entry")]))
        self.emit(0x46)
        self.open(0x04, None, False)
        self._finish_rewind()
        self.close()
        self.out.extend(walked)
        return self.out

    def _segment_end(self, params: tuple[str | None, ...], results: tuple[str | None, ...]
                     ) -> tuple[bytes, bytes, int]:
        """A guarded segment of the rewind copy taking ``params`` and leaving ``results``: its
        ``if`` (the guard), and its ``else`` arm with the ``end`` (and that arm's instruction
        count), encoded. :meth:`_rewind_body` closes 205,000 segments on CPython, most of a few
        shapes (304): each is made once per pass (:attr:`_Pass.segment_ends`)."""
        params_, results_ = self.known_types(params), self.known_types(results)
        return (encoded_instr(0x04, self.p.block_type(params_, results_)),
                _ELSE + _drops_zeros(len(params_), results_) + _END, 2 + len(params_) + len(results_))

    def _rewind_prologue(self) -> None:
        """Pop this frame's record: $site and every canonical local and spill local."""
        a = self.addr_local
        self.emit(0x41, 0)
        self.emit(0x28, self.ctl_memarg(2, READ_PTR))
        self.emit(0x21, a)
        self.emit(0x20, a)
        self.emit(0x28, self.ctl_memarg(2, 4))
        self.emit(0x41, self.func_idx)
        self.emit(0x47)  # i32.ne: a record of another function -> trap rather than run garbage
        self.open(0x04, None, False)
        self.emit(0x00)
        self.close()
        self.emit(0x20, a)
        self.emit(0x28, self.ctl_memarg(2, 0))
        self.emit(0x21, self.site_local)
        scratch = self.scratch
        get_a = encoded_instr(0x20, a)
        loads: list[bytes] = []  # local.get $a  T.load $ctl (8 + 8j)  local.set j, for each j
        reloads = self.p.reloads  # (type, j) -> its load and local.set: the same in every function
        for j, t in enumerate(self.local_types):
            if j not in scratch:
                reload = reloads.get((t, j))
                if reload is None:
                    op, align = _LOAD[t]
                    reload = reloads[(t, j)] = (encoded_instr(op, self.ctl_memarg(align, 8 + 8 * j))
                                                + encoded_instr(0x21, j))
                loads += (get_a, reload)
        self.out.add_encoded(b"".join(loads), len(loads) // 2 * 3)
        self.emit(0x41, 0)
        self.emit(0x20, a)
        self.emit(0x41, 8 + 8 * len(self.local_types))
        self.emit(0x6A)
        self.emit(0x36, self.ctl_memarg(2, READ_PTR))
        self.emit(0x41, 1)
        self.emit(0x21, self.skip_local)

    def _finish_rewind(self) -> None:
        """The innermost frame reached its site: the stack is rebuilt, run normally from here (a
        checkpoint request the host made meanwhile is still in the poll byte). The state and the
        record pointers are reset by one function the pass adds (:func:`_finish_rewind_function`),
        called rather than inlined at each of the copy's resume points; then $skip = 0."""
        self.out.add_encoded(self.finish, 3)

    def _skip_test(self, lo: int, hi: int, *, inside: bool) -> bytes:
        """Whether $site lies in [lo, hi] (inside) or outside it: five instructions, encoded
        (``$site - lo  <=  hi - lo``, unsigned; outside: ``>``)."""
        return b"".join((self.get_site, _i32_const(lo), b"\x6b", _i32_const(hi - lo), b"\x4d" if inside else b"\x4b"))

    def skip_guard(self, rng: tuple[int, int], top: list[str], results: list[str]) -> None:
        """Open a construct's guard: skipping to a target outside ``rng`` (of ``$site``), drop its
        parameters ``top`` and push zeros for its ``results``; the caller emits the construct in
        the ``else`` arm this leaves open and closes it. (Encoded as one piece: the rewind copy
        has one at every construct holding a site.)"""
        self.labels.append(False)  # the guard's `if`
        key = (*top, None, *results)
        tail = self.p.guard_tails.get(key)
        if tail is None:  # i32.and, the `if`, its arm: once per shape (78,000 guards on CPython)
            tail = self.p.guard_tails[key] = (b"\x71" + encoded_instr(0x04, self.p.block_type(top, results))
                                              + _drops_zeros(len(top), results) + _ELSE)
        self.out.add_encoded(self.get_skip + self._skip_test(*rng, inside=False) + tail, 9 + len(top) + len(results))

    def skipping_condition(self, then: tuple[int, int] | None) -> None:
        """Before an `if` entered while skipping: its condition becomes "the target is in the then
        arm" (``then``: the arm's range of ``$site``, None when it holds none)."""
        # local.get $skip  if (i32 -> i32)  drop  [the test, or i32.const 0]  end
        head = self.get_skip + encoded_instr(0x04, self.p.block_type(["i32"], ["i32"])) + _DROP
        if then is None:
            self.out.add_encoded(head + _i32_const(0) + _END, 5)
        else:
            self.out.add_encoded(head + self._skip_test(*then, inside=True) + _END, 9)

    def _enter_construct(self, i: int, ins: Instr, base: int, rng: tuple[int, int],
                         site_range: Callable[[int, int], tuple[int, int] | None]) -> _Ctl:
        """A block/loop/if holding a site: skipped whole (zeros for its results) when skipping to a
        site outside it, else entered — an `if` taking the arm that holds the site."""
        op = ins.op
        nparams, result_types, _ = self.p.block_arity(ins.imm)
        stack = list(self.stack_before[i])
        entry_height = len(stack) - nparams - (1 if op == 0x04 else 0)
        buried: list[tuple[int, str]] = []
        if entry_height > base:
            buried = self._spill_buried(stack, base, entry_height, guarded=True)
        self.skip_guard(rng, self.known_types(stack[entry_height:]), list(result_types))
        if op == 0x04:  # skipping: the condition is "the site is in the then arm"
            else_at = self.else_of.get(i)
            self.skipping_condition(site_range(i + 1, else_at if else_at is not None else self.end_of[i]))
        if op == 0x03:
            # A loop is entered here only to skip to a site inside it (or, not skipping, to run
            # it). Its first iteration runs in skip-guarded code, in a block standing for the
            # loop: a branch to the loop ends that iteration there, and the loop then runs as
            # the normal body has it (polls, unrolling, no skip tests), so a frame that was live
            # at a checkpoint runs its loops after the rewind as fast as before it (the guards
            # of the first iteration run once per loop entry, not per iteration):
            #
            #     block $exit (P -> R)
            #       local.get $skip  if (P -> P)
            #         block (P -> P)   ;; the loop's label: `br` = the next iteration
            #           [$site is the header: the params from the record, the rewind ends]
            #           first iteration (guarded, as the rest of the copy); br $exit
            #         end
            #       end
            #       loop (P -> R) ... end   ;; as in the normal body
            #     end
            params = self.check_types(stack[entry_height:], "a loop parameter")
            site = self.site_at[(i, "loop")]
            self.open(0x02, ins.imm, False)  # $exit
            self.emit(0x20, self.skip_local)
            self.open(0x04, self.p.block_type(params, params), False)
            self.open(0x02, self.p.block_type(params, params), True)  # the loop's label
            self.emit(0x20, self.site_local)
            self.out.add_encoded(_i32_const(self.rel(site)), 1)
            self.emit(0x46)
            self.open(0x04, self.p.block_type(params, params), False)
            self.drop(len(params))
            self.push_from(params, entry_height)
            self._finish_rewind()  # the step was counted before the unwind: no poll
            self.close()
            return _Ctl("loop", i, entry_height, buried, tuple(result_types), split=True)
        self.open(op, ins.imm, True)
        return _Ctl("block", i, entry_height, buried, tuple(result_types))

    def _normal_loop(self, i: int) -> None:
        """Loop ``i`` in the rewind copy as the normal body has it (its values beneath are
        already in their spill locals); its unwind arms write their own slots, as there, and
        branch to the copy's header writer."""
        saved = self.unwind_label
        self.unwind_label = _UNWIND_LABEL  # $unwind: the same index in the copy's labels
        nparams, _, _ = self.p.block_arity(self.func.body[i].imm)
        height = len(self.stack_before[i]) - nparams
        self._emit_range(i, self.end_of[i] + 1, [_Ctl("block", i, height)])
        self.unwind_label = saved

    def _site_is(self, site: int) -> None:
        """Push whether $site is ``site``."""
        self.out.add_encoded(self.get_site + _i32_const(self.rel(site)) + _I32_EQ, 3)

    def _rewind_call(self, i: int, ins: Instr, base: int) -> None:
        """A call site in the copy: skipped (zeros for its results) when skipping past it; when it
        is the record's site, the live values come back from their spill locals and the call is
        re-issued (a wasm callee rewinds itself; an import runs again for real)."""
        stack = list(self.stack_before[i])
        kind, below, args, callee = self._call_shape(ins, stack)
        site = self.site_at[(i, "call")]
        after = self.site_at.get((i, "after_call"))
        level = below[base:]
        operands = stack[len(below):]
        results = list(callee.results)
        if args:  # only when running: while skipping, the spill locals hold the record's operands
            self.out.add_encoded(self.skip_eqz, 2)
            self.open(0x04, self.p.block_type(args, args), False)
            self.pop_into(args, len(below))
            self.push_from(args, len(below))
            self.close()
        carried_in = level + self.known_types(operands)
        carried_out = level + results
        # skipping (to this site or past it): the level's values come back from their spill
        # locals either way (past it they are junk that only skipped code consumes); then the
        # call's results: from the callee's rewind, from the record (an after_call site), or zeros
        self.out.add_encoded(self.get_skip, 1)
        self.open(0x04, self.p.block_type(carried_in, carried_out), False)
        self.drop(len(carried_in))
        self.push_from(level, base)
        self._site_is(site)
        self.open(0x04, self.p.block_type([], results), False)
        self.out.add_encoded(self.clear_skip, 2)
        if kind == "import_call":  # the innermost frame: the host call runs again, for real
            self._finish_rewind()
            self.push_from(args, len(below))
            self.emit(ins.op, ins.imm, ins.offset)
        elif ins.op == 0x10:  # the callee's rewind copy takes its locals from its own record
            self.emit(0x10, self.p.copy_base + ins.imm - self.p.n_imported, ins.offset)
        else:  # call_indirect: the next record names the callee; none left: it calls an import
            self.emit(0x41, 0)
            self.emit(0x28, self.ctl_memarg(2, READ_PTR))
            self.emit(0x41, 0)
            self.emit(0x28, self.ctl_memarg(2, WRITE_PTR))
            self.emit(0x46)
            self.open(0x04, self.p.block_type([], results), False)
            self._finish_rewind()
            self.push_from(args, len(below))
            self.emit(ins.op, ins.imm, ins.offset)
            self.out.add_encoded(_ELSE, 1)
            self.emit(0x41, 0)
            self.emit(0x28, self.ctl_memarg(2, READ_PTR))
            self.emit(0x28, self.ctl_memarg(2, 4))  # the record's function
            self.emit(0x11, (self.p.func_type_index([], results), self.p.rewinds_table), ins.offset)
            self.close()
        self.out.add_encoded(_ELSE, 1)
        if after is not None:  # stopped just after the call: its results come back from the record
            self._site_is(after)
            self.open(0x04, self.p.block_type([], results), False)
            self.push_from(results, base + len(level))
            self._finish_rewind()
            self.out.add_encoded(_ELSE, 1)
            self.zeros(results)
            self.close()
        else:
            self.zeros(results)
        self.close()
        self.out.add_encoded(_ELSE, 1)
        wide = self.p.widened.get(ins.imm) if ins.op == 0x10 else None
        if wide is not None:  # the operands are on the stack: no run to copy
            widen.extend_args(self, i, wide, i, self.original.copy)
        self.emit(ins.op, ins.imm, ins.offset)
        self.close()
        if self.p.call_may_unwind(ins):
            # no poll here (no after_call stop): the guarded code runs once per activation or loop
            # entry, so the next poll (a loop header, a call in a loop, the callee's own) comes
            # within a bounded time; only a callee's unwind must be seen
            self.post_call_check(site, level, results, base)

    def _write_record(self) -> None:
        """After $unwind: the cold arm's tail wrote this record's slots; the record's header
        (site, function) and the rest are written by one function the pass adds
        (:func:`_record_header_function`), called here rather than inlined in every function."""
        self.emit(0x20, self.site_local)
        # a normal body's records hold their values at compact positions (:meth:`_save_compact`)
        flags = COMPACT_RECORD | (COMPACT_ALL if self.big else 0)
        self.emit(0x41, (self.func_idx | flags) - (1 << 32) if self.compact else self.func_idx)
        self.emit(0x41, 8 + 8 * len(self.local_types))
        self.emit(0x10, self.p.header_func)


@dataclass
class _Rewritten:
    """A function as the pass built it: its type, its code-section entry and its origin tags."""

    type_idx: int
    code: bytes
    origins: bytes


def copies_per_round(body: int, lone_polled: bool, unroll: int = UNROLL) -> int:
    """The copies of an unrolled loop's ``body``-instruction body in one round: ``unroll``, but a
    polled loop that no other loop of its function encloses (``lone_polled``) gets the fewest that
    make a round at least :data:`UNROLL_ROUND` instructions long (a body of up to 10 instructions
    four, of 11-15 three, of 16-31 two, of 32 or more one: not unrolled).

    Why: a lone loop is most of QuickJS's unrolled code (418 of its 497 unrolled loops, 82 KB of
    the 96 KB their copies add: string, list and hash helpers) and few of a kernel's hot loops,
    which sit in loop nests; a longer body weighs its poll less anyway (three instructions a
    round: under 10% of a 32-instruction round). Loops in a nest keep ``unroll`` copies, and so do
    copies without a poll (a counted loop's; an entry-bounded loop's unpolled arm), which are
    there for speed alone."""
    if not lone_polled:
        return unroll
    return max(1, min(unroll, -(-UNROLL_ROUND // max(1, body))))


def body_ends_with_back_branch(body: list[Instr], start: int, end: int, unreachable: list[bool]) -> bool:
    """Whether loop ``body[start]``'s body ends with a reachable ``br_if`` back to the loop itself
    (``body[end]`` is the loop's ``end``): LLVM's shape of nearly every loop.

    An unrolled copy of such a body leaves the loop through ``i32.eqz  br_if $exit`` rather than
    ``br_if $next_copy  br $exit``. Same semantics, but the exit edge then leaves the copy's own
    block with the locals as branch arguments, so Cranelift computes the loop's values (a row
    reduction's accumulator) in each copy. Through a separate exit block it computed them only
    where they were used -- the exit paths and the last copy's back edge -- keeping every loaded
    operand of all the copies live until then and spilled (pb_covariance, pb_gesummv: 1.25-1.27x
    plain before, 0.86-1.01x after; docs/instrument.md).
    """
    last = body[end - 1]
    return end - 1 > start and last.op == 0x0D and last.imm == 0 and not unreachable[end - 1]


def _grouped(types: list[str]) -> list[tuple[int, str]]:
    """Local declarations: runs of one type as (count, type)."""
    out: list[tuple[int, str]] = []
    for t in types:
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0] + 1, t)
        else:
            out.append((1, t))
    return out


class _Pass:
    def __init__(self, ir: IRModule, host_tables: frozenset[int] = frozenset(), data: bytes | None = None,
                 hidden: bool = False) -> None:
        self.ir = ir
        #: the poll byte is in memory 0's hidden page (:mod:`~wasmig.instrument.hidden_page`),
        #: not in the poll memory, which then keeps only memory 0's published size
        self.hidden = hidden
        #: the bytes ``ir`` was decoded from, if known: the pass copies a canonical body's
        #: instructions from them (:class:`~wasmig.instrument.emit.OriginalCode`)
        self.data = data
        self.n_imported = ir.num_imported_funcs()
        #: the type of every function of the index space (looked up at every call site: building
        #: it per lookup made the pass quadratic in the number of functions)
        self.func_types = [ir.types[t] for t in ir.func_type_indices()]
        self.sites: list[Site] = []
        self.layouts: dict[int, FunctionLayout] = {}
        self.ctl = len(ir.all_mems())
        self.poll_mem = self.ctl + 1  # a memory of its own: see instrument()
        self.globals_base = len(ir.all_globals())
        #: where a poll reads the poll byte: memory 0's hidden page, or the poll memory
        self.poll_memarg = memarg(0, POLL, 0 if hidden else self.poll_mem)
        #: the poll (i32.atomic.load8_u $poll 0) and the test $state == unwinding, encoded once
        self.poll_load = encode_seq((0x41, 0), (0xFE12, self.poll_memarg))
        self.is_unwinding = encode_seq((0x23, self.globals_base), (0x41, STATE_UNWINDING), (0x46,))
        #: ``- $state``: a shared call arm's site (:meth:`_FunctionRewriter.unwind_branch`)
        self.minus_state = encode_seq((0x23, self.globals_base), (0x6B,))
        self._block_types: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}  # type indices
        self.count_steps = True
        self.unroll = 1  # copies of a small call-free loop's body per poll (fast variant: UNROLL)
        self.copy_base = 0  # function index of defined function 0's rewind copy
        self.entry_base = 0  # function index of the first entry function (after the copies)
        #: the original defined function of each entry function (:meth:`add_entry`)
        self.entry_owners: list[int] = []
        self.graph = call_graph(ir, host_tables)  # of the original module: who recurses, who can unwind
        self.rewinds_table = 0  # index of the table $rewinds
        self.finish_func = 0  # index of the function that ends a rewind (:func:`_finish_rewind_function`)
        self.header_func = 0  # index of the function that writes a record's header (:func:`_record_header_function`)
        #: the savers some arm calls (:meth:`saver`): the others' slots get an empty body
        self.savers_called: set[tuple[str, int]] = set()
        self._entry_polled: dict[int, bool] = {}
        #: function -> its parameters widened to i64 in the run module (:mod:`wasmig.instrument.widen`)
        self.widened: dict[int, tuple[int, ...]] = widen.widen_plan(ir)
        self._arity: dict[object, tuple[int, tuple[str, ...], tuple[str, ...]]] = {}
        #: (parameters, results) -> a rewind copy's guarded segment's `if` and `else` arm
        #: (:meth:`_FunctionRewriter._segment_end`)
        self.segment_ends: dict[tuple[tuple[str | None, ...], tuple[str | None, ...]], tuple[bytes, bytes, int]] = {}
        #: the types a post-call check carries -> its `if` (:meth:`_FunctionRewriter.post_call_check`)
        self.check_ifs: dict[tuple[str, ...], bytes] = {}
        #: (type, j) -> ``T.load $ctl (8 + 8j)  local.set j``: a rewind copy's prologue reloads
        #: every local (:meth:`_FunctionRewriter._rewind_prologue`)
        self.reloads: dict[tuple[str, int], bytes] = {}
        #: (*parameters, None, *results) -> the rest of a construct's skip guard after its test
        #: (:meth:`_FunctionRewriter.skip_guard`)
        self.guard_tails: dict[tuple[str | None, ...], bytes] = {}
        #: (opcode, immediate) of a call -> :meth:`call_may_unwind`, :meth:`polls_after` (asked
        #: 530,000 and 210,000 times on CPython, of 6,446 callees)
        self._may_unwind: dict[tuple[int, object], bool] = {}
        self._polls_after: dict[tuple[int, object], bool] = {}

    def saver(self, t: str, k: int) -> int:
        """The function index of ``$save_<t>_<k>`` (:func:`_saver_function`), which the module then
        holds (:attr:`savers_called`)."""
        self.savers_called.add((t, k))
        return self.header_func + 1 + SAVE_TYPES.index(t) * len(SAVE_COUNTS) + SAVE_COUNTS.index(k)

    def add_entry(self, func: int) -> int:
        """The function index of function ``func``'s entry function (after every copy, in the
        order the functions are rewritten; :attr:`entry_owners` says whose each is)."""
        self.entry_owners.append(func - self.n_imported)
        return self.entry_base + len(self.entry_owners) - 1

    def max_record(self) -> int:
        return max((layout.record_size for layout in self.layouts.values()), default=8)

    def block_type(self, params: list[str], results: list[str]) -> object:
        if not params and not results:
            return None
        if not params and len(results) == 1:
            return results[0]
        return self.func_type_index(params, results)

    def entry_polled(self, func: int) -> bool:
        """Whether function ``func`` polls at its entry: in the deterministic variant every
        function (it counts entries). In the fast one, hardly any: a function off every call
        cycle runs a bounded time between the polls of its loops and callees, and a recursive
        one polls when its calls return (:meth:`polls_after`) -- a descent without returns ends
        at the stack limit. Only a recursive function with a call that cannot poll on return
        (its results are references, which a frame record cannot hold) polls at its entry."""
        if self.count_steps:
            return True
        if func not in self.graph.recursive:
            return False
        if func not in self._entry_polled:
            body = self.ir.funcs[func - self.n_imported].body
            calls = compress(body, map(_CALLS.__contains__, map(_OP, body)))  # in C: CPython's eval loop is 41,889
            self._entry_polled[func] = any(self.call_may_unwind(ins) and not self.polls_after(ins) for ins in calls)
        return self._entry_polled[func]

    def call_may_unwind(self, ins: Instr) -> bool:
        """Whether the callee of a call can unwind (so the call needs its post-call check)."""
        key = (ins.op, ins.imm)
        found = self._may_unwind.get(key)
        if found is None:
            if self.count_steps or self.calls_host(ins):
                found = True
            elif ins.op == 0x10:
                found = ins.imm in self.graph.may_unwind
            else:
                found = self.graph.indirect_may_unwind(self.ir.types[ins.imm[0]])
            self._may_unwind[key] = found
        return found

    def calls_host(self, ins: Instr) -> bool:
        """Whether call ``ins`` calls the host: an imported function, or through a host table."""
        return ins.imm < self.n_imported if ins.op == 0x10 else ins.imm[1] in self.graph.host_tables

    def polls_after(self, ins: Instr) -> bool:
        """Whether a call's post-call check also polls: in the fast variant, a call of the
        module's own code (not a direct import call: a host call returns at once, and a request
        it saw stops the guest at the next poll, as in the deterministic variant) that can
        unwind, with results a frame record can hold."""
        key = (ins.op, ins.imm)
        found = self._polls_after.get(key)
        if found is None:
            if self.count_steps or not self.call_may_unwind(ins) or self.calls_host(ins):
                found = False
            else:
                ft = self.func_types[ins.imm] if ins.op == 0x10 else self.ir.types[ins.imm[0]]
                found = all(t in _NUMERIC for t in ft.results)
            self._polls_after[key] = found
        return found

    def func_type_index(self, params: list[str], results: list[str]) -> int:
        """The index of the type ``params -> results``, added to the module if it has none."""
        key = (tuple(params), tuple(results))
        found = self._block_types.get(key)
        if found is None:
            ft = FuncType(*key)
            if ft in self.ir.types:
                found = self.ir.types.index(ft)
            else:
                self.ir.types.append(ft)
                found = len(self.ir.types) - 1
            self._block_types[key] = found
        return found

    def block_arity(self, bt: object) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
        """(parameter count, results, parameters) of block type ``bt`` (looked up at every
        construct of every body, so remembered: the original types never change)."""
        found = self._arity.get(bt)
        if found is None:
            if bt is None:
                found = (0, (), ())
            elif isinstance(bt, str):
                found = (0, (bt,), ())
            else:
                ft = self.ir.types[bt]  # type: ignore[index]
                found = (len(ft.params), tuple(ft.results), tuple(ft.params))
            self._arity[bt] = found
        return found


def instrument(module: object, *, count_steps: bool = True, split: bool = True,
               progress: Callable[[int, int], None] | None = None,
               host_tables: frozenset[int] = frozenset(), hidden_page: bool | None = None) -> Instrumented:
    """Instrument a validated :class:`wasmig.Module` for checkpointing on a compiled engine.

    ``count_steps=True`` builds the deterministic variant: every stable point also counts a step
    in the global ``$steps`` and stops when it reaches ``$stop_at`` -- the interpreter's count, so
    ``--checkpoint-at-step`` and step-exact cross-engine comparisons work. That count is a load,
    add and store of a global per loop iteration, a chain through memory that costs tight loops
    ~40% (benchmarks/overhead.py), so ``count_steps=False``, the fast variant, only tests the
    poll byte; its snapshots carry no step number. Both have the same sites and frame records,
    but for the fast variant's ``after_call`` sites (its post-call checks are its polls).

    ``split`` (the default): the rewind copies go into a module of their own, the *rewind
    module* (:attr:`Instrumented.rewind`), which the host compiles and instantiates only when a
    frame is to be rewound; the *run module* (:attr:`Instrumented.data`) every run executes has
    no copies. A module whose code uses its own segments (:data:`_PER_INSTANCE`) keeps its copies
    in one module, as does ``split=False``.

    ``progress(done, total)`` is called with the number of functions rewritten so far, before the
    first and after each (``wasmig run`` shows it while a big module is instrumented).

    ``host_tables``: tables the host fills with its own functions; a ``call_indirect`` through
    one is a host call (a site with its operands, which a host function interrupted for a
    checkpoint unwinds from and a rewind re-issues), as the wasi-threads runner's rerouted
    waits are (:mod:`wasmig.engines.wasmtime.host_waits`).

    ``hidden_page``: whether the poll byte goes in a page in front of memory 0
    (:mod:`wasmig.instrument.hidden_page`; the host then sees the program's memory from that page
    on, :mod:`wasmig.engines.wasmtime.program_memory`): None (the default) where it fits and pays
    (:func:`~wasmig.instrument.hidden_page.chosen`: an interpreter's giant functions), True
    wherever it fits, False never (a module whose memory other modules link to: they would see
    the page).

    The cyclic garbage collector is paused while the pass runs (:func:`collector_paused`): the
    pass allocates tens of millions of short-lived objects, none in a cycle, and every collection
    also walked the decoded module (3,500 collections, 1.1 s of CPython's pass).
    """
    with collector_paused():
        return _instrument(module, count_steps, split, progress, host_tables, hidden_page)


def _instrument(module: object, count_steps: bool, split: bool, progress: Callable[[int, int], None] | None,
                host_tables: frozenset[int], hidden_page_wanted: bool | None) -> Instrumented:
    """:func:`instrument`, with the collector paused."""
    # the pass builds every function anew and only adds to the module's lists: copies of the
    # lists are enough to leave the caller's IR untouched (a deep copy cost a third of the pass)
    original: IRModule = module.ir  # type: ignore[attr-defined]
    ir = dataclasses.replace(original, **{f.name: list(getattr(original, f.name)) for f in dataclasses.fields(original)
                                          if isinstance(getattr(original, f.name), list)})
    # a module validated already lends its per-function stack info; otherwise the declarations
    # are checked now and each body just before it is rewritten, its stack info dropped after
    # (on CPython's 26 MB, holding every function's took 150 MB of the pass's peak)
    validated = module.validated  # type: ignore[attr-defined]
    check = (validated.functions.__getitem__ if validated is not None
             else validate_declarations(original, features=module.features))  # type: ignore[attr-defined]
    if len(ir.all_mems()) > 1:
        raise InstrumentError("modules with several memories are not supported")
    passive = [i for i, seg in enumerate(ir.datas) if seg.mode == "passive"] + \
              [len(ir.datas) + i for i, seg in enumerate(ir.elems) if seg.mode == "passive"]
    if passive and DROPS_BASE + passive[-1] >= GLOBALS_BASE:
        raise InstrumentError(f"passive segment {passive[-1]} (of data and element segments) lies beyond the "
                              f"control memory's {GLOBALS_BASE - DROPS_BASE} drop flags")
    # a Module's IR is its bytes decoded (or the bytes are its IR encoded): a decoded function's
    # offsets point into them
    hidden = hidden_page.chosen(ir, hidden_page_wanted)
    if hidden:
        hidden_page.hide(ir)
    p = _Pass(ir, host_tables, module.data if getattr(module, "has_bytes", False) else None,  # type: ignore[attr-defined]
              hidden)
    p.count_steps = count_steps
    p.unroll = 1 if count_steps else UNROLL  # the deterministic variant counts every iteration
    n_imported = p.n_imported
    n_defined = len(ir.funcs)
    # defined functions: the instrumented functions, the pass's own (wasmig:dump, wasmig:load, the
    # end of a rewind, a record's header), then the rewind copies (function f's copy is function
    # f + n_defined + HELPERS), then the entry functions (transfer.py): the run module is
    # everything before the copies, with the very same indices, and the rewind module the copies
    # and entry functions alone (see _split below)
    helper_base = n_imported + n_defined
    p.copy_base = helper_base + HELPERS
    p.entry_base = p.copy_base + n_defined
    p.rewinds_table = len(ir.all_tables())
    p.finish_func = helper_base + 2
    p.header_func = helper_base + 3
    split = split and not _uses_instance_segments(ir)
    # each function is encoded as soon as it is rewritten and only its bytes are kept: the IR of
    # an instrumented function is ten times the original's, and for a 26 MB module (CPython) the
    # whole instrumented IR took several GB
    code: list[bytes] = []
    copies: list[bytes] = []
    origins: list[bytes] = []
    copy_origins: list[bytes] = []
    shells: list[Function] = []
    copy_shells: list[Function] = []
    entries: list[_Rewritten] = []  # the entry functions (transfer.py), after the copies
    for k, f in enumerate(ir.funcs):
        if progress is not None:
            progress(k, n_defined)
        new, copy, entry = _FunctionRewriter(p, n_imported + k, hidden_page.hidden_function(f) if hidden else f,
                                             check(k)).rewrite()
        code.append(new.code)
        copies.append(copy.code)
        origins.append(new.origins)
        copy_origins.append(copy.origins)
        shells.append(Function(new.type_idx, [], []))
        copy_shells.append(Function(copy.type_idx, [], []))
        if entry is not None:
            entries.append(entry)
    copies += [e.code for e in entries]
    copy_origins += [e.origins for e in entries]
    copy_shells += [Function(e.type_idx, [], []) for e in entries]
    del entries
    if progress is not None:
        progress(n_defined, n_defined)
    ir.funcs = shells
    del shells
    ir.mems.append(MemType(Limits((RECORDS_BASE + p.max_record()) // 65536 + 1)))
    # the poll byte lives in a memory of its own: a poll then needs that memory's base only for
    # itself, and the control memory's base is loaded by the cold arms that write records, so
    # neither stays in a register across the calls of a recursive function
    ir.mems.append(MemType(Limits(1, 1)))
    ir.datas.append(Data("active", RECORDS_BASE.to_bytes(4, "little") * 2, p.ctl, [Instr(0x41, WRITE_PTR),
                                                                                        Instr(0x0B)]))
    if ir.data_count is not None:
        ir.data_count = len(ir.datas)
    g = p.globals_base
    if g * 8 > RECORDS_BASE - GLOBALS_BASE:
        raise InstrumentError(f"too many globals ({g}) for the control memory layout")
    savers = [_saver_function(p, t, k) if (t, k) in p.savers_called else _unused_saver(p)
              for t in SAVE_TYPES for k in SAVE_COUNTS]
    for extra_func in (_dump_globals(ir, p), _load_state(ir, p), _finish_rewind_function(ir, p),
                       _record_header_function(p), *savers):
        ir.funcs.append(extra_func)
        code.append(encode_code_entry(extra_func))
        origins.append(_NO_ORIGINS)
    if any(seg.mode == "passive" for seg in ir.datas) and ir.data_count is None:
        ir.data_count = len(ir.datas)  # wasmig:load drops passive data segments
    ir.globals += [Global(GlobalType("i32", True), [Instr(0x41, 0), Instr(0x0B)]),
                   Global(GlobalType("i64", True), [Instr(0x42, 0), Instr(0x0B)]),
                   Global(GlobalType("i64", True), [Instr(0x42, NEVER), Instr(0x0B)]),
                   # the largest record, in bytes and in pages (+1): an unwind grows $ctl so that
                   # one more fits; known only once every function is rewritten (and encoded)
                   Global(GlobalType("i32"), [Instr(0x41, p.max_record()), Instr(0x0B)]),
                   Global(GlobalType("i32"), [Instr(0x41, p.max_record() // 65536 + 1), Instr(0x0B)])]
    if hidden:  # where the program's memory starts in memory 0: the host's view starts there
        ir.globals.append(Global(GlobalType("i32"), [Instr(0x41, hidden_page.HIDDEN), Instr(0x0B)]))
    taken = {e.name for e in ir.exports}
    extra = [Export("wasmig:dump", "func", helper_base), Export("wasmig:load", "func", helper_base + 1),
             Export("wasmig:ctl", "memory", p.ctl), Export("wasmig:poll", "memory", p.poll_mem),
             Export("wasmig:state", "global", g),
             Export("wasmig:steps", "global", g + 1), Export("wasmig:stop_at", "global", g + 2)]
    if hidden:
        extra.append(Export(hidden_page.EXPORT, "global", g + 5))
    extra += [Export(f"wasmig:g{i}", "global", i) for i in range(g)]
    if p.ctl > 0:
        extra.append(Export("wasmig:mem0", "memory", 0))
    if ir.start is not None:  # run by the host on a fresh start only, never again on a restore
        extra.append(Export("wasmig:start", "func", ir.start))
        ir.start = None
    # the host rewinds the outermost frame, which runs an exported function, through its copy
    exported = sorted({e.index for e in ir.exports if e.kind == "func" and e.index >= n_imported})
    rewind_exports = [Export(f"wasmig:rewind{f}", "func", p.copy_base + f - n_imported) for f in exported]
    for e in extra + rewind_exports:
        if e.name in taken or e.name.startswith(LINK_PREFIX):
            raise InstrumentError(f"the module already exports {e.name!r}")
    ir.exports += extra
    sitemap = SiteMap(p.ctl, g, p.sites, p.layouts, count_steps)
    ir.customs = [c for c in ir.customs if c.name not in (SECTION_NAME, ORIGINS_SECTION)]
    ir.customs.append(CustomSection(SECTION_NAME, sitemap.to_bytes(), 11))
    rewinds_elem = Elem("active", "funcref", [[Instr(0xD2, p.copy_base + k), Instr(0x0B)] for k in range(n_defined)],
                        p.rewinds_table, [Instr(0x41, n_imported), Instr(0x0B)])
    rewinds_type = TableType("funcref", Limits(n_imported + n_defined, n_imported + n_defined))
    if not split:  # one module: the copies after the pass's functions, as in the rewind module
        ir.funcs += copy_shells
        code += copies
        origins += copy_origins
        del copies, copy_origins, copy_shells
        ir.tables.append(rewinds_type)
        ir.elems.append(rewinds_elem)
        ir.exports += rewind_exports
        ir.customs.append(CustomSection(ORIGINS_SECTION, pack_origins(origins, p.entry_owners), 11))
        return Instrumented(encode_module(ir, code), sitemap)
    rewind = _rewind_module(ir, copy_shells, rewinds_type, rewinds_elem, rewind_exports)
    ir.exports += _link_exports(ir)
    ir.customs.append(CustomSection(ORIGINS_SECTION, pack_origins(origins), 11))
    run = encode_module(ir, code)
    del code, origins
    rewind.customs.append(CustomSection(ORIGINS_SECTION, pack_origins(copy_origins, p.entry_owners), 11))
    return Instrumented(run, sitemap, encode_module(rewind, copies))


_NO_ORIGINS = origin_tags([])
#: instructions that use the instance's own data or element segments (memory.init, data.drop,
#: table.init, elem.drop) or declare a function reference (ref.func): a rewind module would
#: have segments of its own, so such a module keeps its copies in the run module
_PER_INSTANCE = frozenset((0xFC08, 0xFC09, 0xFC0C, 0xFC0D, 0xD2))


def _uses_instance_segments(ir: IRModule) -> bool:
    """Whether a function of ``ir`` uses an instruction of :data:`_PER_INSTANCE`."""
    return any(not _PER_INSTANCE.isdisjoint({ins.op for ins in f.body}) for f in ir.funcs)


def _link_exports(ir: IRModule) -> list[Export]:
    """The run module's exports of everything a rewind module imports, by index (last, after
    every other export: see :data:`LINK_PREFIX`)."""
    out = [Export(f"{LINK_PREFIX}f{i}", "func", i) for i in range(ir.num_imported_funcs() + len(ir.funcs))]
    out += [Export(f"{LINK_PREFIX}t{i}", "table", i) for i in range(len(ir.all_tables()))]
    out += [Export(f"{LINK_PREFIX}m{i}", "memory", i) for i in range(len(ir.all_mems()))]
    out += [Export(f"{LINK_PREFIX}g{i}", "global", i) for i in range(len(ir.all_globals()))]
    return out


def _rewind_module(run: IRModule, copies: list[Function], rewinds_type: TableType, rewinds_elem: Elem,
                   exports: list[Export]) -> IRModule:
    """The rewind module of the run module ``run`` (docs/instrument.md, "Two modules"): it imports
    every function, table, memory and global of the run instance, in index order, so that its
    copies -- its only functions -- have the very indices (and the very code) they would have
    after the run module's functions, and it adds the table ``$rewinds`` and the exports
    ``wasmig:rewind<f>``. Instantiated beside the run instance, in its store, only when a frame
    is to be rewound."""
    imports = [Import(RUN_MODULE_NAME, f"{LINK_PREFIX}f{i}", "func", t)
               for i, t in enumerate(run.func_type_indices())]
    imports += [Import(RUN_MODULE_NAME, f"{LINK_PREFIX}t{i}", "table", t) for i, t in enumerate(run.all_tables())]
    imports += [Import(RUN_MODULE_NAME, f"{LINK_PREFIX}m{i}", "memory", m) for i, m in enumerate(run.all_mems())]
    imports += [Import(RUN_MODULE_NAME, f"{LINK_PREFIX}g{i}", "global", g) for i, g in enumerate(run.all_globals())]
    return IRModule(types=run.types, imports=imports, funcs=copies, tables=[rewinds_type], elems=[rewinds_elem],
                    exports=exports, names=NameSection(module=REWIND_MODULE_NAME))


def _dump_globals(ir: IRModule, p: _Pass) -> Function:
    """``wasmig:dump``: store every original global's bits into $ctl (floats reinterpreted, so
    NaN payloads survive; references cannot be captured and are stored as 0)."""
    body: list[Instr] = []
    reinterpret = {"f32": (0xBC, 0x36, 2), "f64": (0xBD, 0x37, 3), "i32": (None, 0x36, 2), "i64": (None, 0x37, 3)}
    for i, gt in enumerate(ir.all_globals()):
        if gt.type not in reinterpret:
            continue
        conv, store, align = reinterpret[gt.type]
        body += [Instr(0x41, 0), Instr(0x23, i)]
        if conv is not None:
            body.append(Instr(conv))
        body.append(Instr(store, memarg(align, GLOBALS_BASE + 8 * i, p.ctl)))
    body.append(Instr(0x0B))
    ft = FuncType((), ())
    if ft not in ir.types:
        ir.types.append(ft)
    return Function(ir.types.index(ft), [], body)


def _load_state(ir: IRModule, p: _Pass) -> Function:
    """``wasmig:load``: the inverse of ``wasmig:dump`` for a restore — every mutable numeric global
    from its bits in $ctl, and ``data.drop``/``elem.drop`` for each passive segment whose byte
    in $ctl is set (the host writes both before calling it)."""
    body: list[Instr] = []
    reinterpret = {"f32": (0x28, 0xBE, 2), "f64": (0x29, 0xBF, 3), "i32": (0x28, None, 2), "i64": (0x29, None, 3)}
    for i, gt in enumerate(ir.all_globals()[: p.globals_base]):
        if gt.type not in reinterpret or not gt.mutable:
            continue
        load, conv, align = reinterpret[gt.type]
        body += [Instr(0x41, 0), Instr(load, memarg(align, GLOBALS_BASE + 8 * i, p.ctl))]
        if conv is not None:
            body.append(Instr(conv))
        body.append(Instr(0x24, i))
    n_data = len(ir.datas) - 1  # the control memory's own segment is last
    for i, seg in enumerate(ir.datas[:n_data]):
        if seg.mode == "passive":
            body += [Instr(0x41, 0), Instr(0x2D, memarg(0, DROPS_BASE + i, p.ctl)), Instr(0x04, None),
                     Instr(0xFC09, i), Instr(0x0B)]
    for i, seg in enumerate(ir.elems):
        if seg.mode == "passive":
            body += [Instr(0x41, 0), Instr(0x2D, memarg(0, DROPS_BASE + n_data + i, p.ctl)), Instr(0x04, None),
                     Instr(0xFC0D, i), Instr(0x0B)]
    body.append(Instr(0x0B))
    ft = FuncType((), ())
    if ft not in ir.types:
        ir.types.append(ft)
    return Function(ir.types.index(ft), [], body)


def _finish_rewind_function(ir: IRModule, p: _Pass) -> Function:
    """The end of a rewind, called by the innermost rewound frame's copy at its site: ``$state``
    back to running and both record pointers back to the first record."""
    g = p.globals_base
    body = [Instr(0x41, STATE_RUNNING), Instr(0x24, g)]
    for ptr in (WRITE_PTR, READ_PTR):
        body += [Instr(0x41, 0), Instr(0x41, RECORDS_BASE), Instr(0x36, memarg(2, ptr, p.ctl))]
    body.append(Instr(0x0B))
    ft = FuncType((), ())
    if ft not in ir.types:
        ir.types.append(ft)
    return Function(ir.types.index(ft), [], body)


def _saver_function(p: _Pass, t: str, k: int) -> Function:
    """``$save_<t>_<k>(pos, v1..vk)``: the k values into the frame record at the write pointer, at
    compact positions ``pos``.. (slot offsets ``8 + 8 * (pos + i)``); called by the normal body's
    cold arms (:meth:`_FunctionRewriter._save_compact`). k runs from 1 to 16, so that an arm saves
    a run of up to 16 values of one type in one call: five bytes a call (its ``call`` and
    position), where 8/4/2/1 took up to four calls a run (QuickJS's run module -65 KB)."""
    op, align = _STORE[t]
    a = k + 1
    body = [Instr(0x41, 0), Instr(0x28, memarg(2, WRITE_PTR, p.ctl)), Instr(0x20, 0), Instr(0x41, 3), Instr(0x74),
            Instr(0x6A), Instr(0x21, a)]
    for i in range(k):
        body += [Instr(0x20, a), Instr(0x20, 1 + i), Instr(op, memarg(align, 8 + 8 * i, p.ctl))]
    body.append(Instr(0x0B))
    return Function(p.func_type_index(["i32"] + [t] * k, []), [(1, "i32")], body)


def _unused_saver(p: _Pass) -> Function:
    """The function in the slot of a saver no arm calls (most modules use a few of the 64): its
    index is fixed before the functions are rewritten, its body and type need not be its own
    (``unreachable``, 4 bytes)."""
    return Function(p.func_type_index([], []), [], [Instr(0x00), Instr(0x0B)])


def _record_header_function(p: _Pass) -> Function:
    """``(site, func, size)``, called by an unwinding frame after its record's slots are stored:
    ``$state`` = unwinding (its caller sees it when the call returns, and unwinds too; in the
    fast variant the poll byte is set as well, since post-call checks test it first), the
    header (site, function) at the write pointer, the write pointer advanced by ``size``, and
    ``$ctl`` grown so that a record of the largest size still fits after this one (the slot
    stores do not check; the control memory's initial size fits the first record)."""
    site, func, size, a = 0, 1, 2, 3
    g = p.globals_base

    def i(op: int, imm: object = None) -> Instr:
        return Instr(op, imm)

    body = [i(0x41, STATE_UNWINDING), i(0x24, g)]
    if not p.count_steps:
        body += [i(0x41, 0), i(0x41, 1), i(0x3A, p.poll_memarg)]
    body += [i(0x41, 0), i(0x28, memarg(2, WRITE_PTR, p.ctl)), i(0x22, a),
             i(0x20, site), i(0x36, memarg(2, 0, p.ctl)),
             i(0x20, a), i(0x20, func), i(0x36, memarg(2, 4, p.ctl)),
             i(0x41, 0), i(0x20, a), i(0x20, size), i(0x6A), i(0x22, a), i(0x36, memarg(2, WRITE_PTR, p.ctl)),
             i(0x20, a), i(0x23, g + MAX_RECORD_GLOBAL), i(0x6A), i(0x3F, p.ctl), i(0x41, 16), i(0x74),
             i(0x4B),  # i32.gt_u
             i(0x04, None), i(0x23, g + MAX_RECORD_PAGES_GLOBAL), i(0x40, p.ctl), i(0x1A), i(0x0B),
             i(0x0B)]
    return Function(p.func_type_index(["i32", "i32", "i32"], []), [(1, "i32")], body)
