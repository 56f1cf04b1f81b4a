"""The instrumentation pass, unwind half: make a module able to stop at any stable point and write
its whole call stack, as frame records, into a control memory (see docs/instrument.md).

What it adds (none of it part of the canonical state):

- memory ``$ctl`` (exported ``wasmig:ctl``), globals ``$state``/``$steps``/``$stop_at`` (exported),
  every original global and memory 0 exported (``wasmig:g<i>``, ``wasmig:mem0``) so the host can
  read them, and a byte per passive segment recording ``data.drop``/``elem.drop``;
- per function: a poll at entry and at every ``loop`` header (count a step, test the stop
  condition), a state test after every call, spill locals, and an unwind path that appends the
  frame record ``(site, func, all locals)`` and returns dummy results;
- the site map (``wasmig.sitemap`` custom section) to translate records into canonical frames.

The rewind half (restoring a stack into wasmtime) is the next piece of work; until then a
snapshot taken on wasmtime restores on the interpreter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from wasmig.binary.ir import (
    CustomSection,
    Data,
    Export,
    Function,
    FuncType,
    Global,
    GlobalType,
    Instr,
    Limits,
    MemType,
)
from wasmig.binary.ir import Module as IRModule
from wasmig.binary.opcodes import memarg
from wasmig.errors import WasmError
from wasmig.instrument.sites import SECTION_NAME, FunctionLayout, Site, SiteMap
from wasmig.interp.compile import match_blocks

# control memory layout
POLL = 0
WRITE_PTR = 8
READ_PTR = 12
DROPS_BASE = 1024
GLOBALS_BASE = 16384  # wasmig:dump writes global i's bits at GLOBALS_BASE + 8 * i
RECORDS_BASE = 32768
NEVER = 1 << 62

STATE_RUNNING, STATE_UNWINDING, STATE_REWINDING = 0, 1, 2

_STORE = {"i32": (0x36, 2), "i64": (0x37, 3), "f32": (0x38, 2), "f64": (0x39, 3)}
_CONST = {"i32": 0x41, "i64": 0x42, "f32": 0x43, "f64": 0x44}
_NUMERIC = ("i32", "i64", "f32", "f64")


class InstrumentError(WasmError):
    """The module uses something the instrumentation cannot make checkpointable."""


@dataclass
class Instrumented:
    ir: IRModule
    sitemap: SiteMap


@dataclass
class _Ctl:
    kind: str  # block | loop | if
    start: int
    base: int  # canonical stack height where this construct's level starts (its params included above)
    buried: list[tuple[int, str]] = field(default_factory=list)  # (depth, type) spilled at entry
    result_types: tuple[str, ...] = ()


class _FunctionRewriter:
    """Rewrites one function body; see the module docstring and docs/instrument.md."""

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
        self.site_local = self._new_local("i32")
        self.addr_local = self._new_local("i32")
        self.spills: dict[tuple[int, str], int] = {}
        self.temps: dict[str, list[int]] = {}
        self.out: list[Instr] = []

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
    def emit(self, op: int, imm: object = None) -> None:
        self.out.append(Instr(op, imm))

    def ctl_memarg(self, align: int, offset: int) -> tuple[int, ...]:
        return memarg(align, offset, self.p.ctl)

    def check_types(self, types: tuple[str | None, ...] | list[str | None], where: str) -> list[str]:
        for t in types:
            if t not in _NUMERIC:
                raise InstrumentError(f"{where} in {self.p.ir.func_name(self.func_idx)}: a {t} value on the "
                                      "operand stack cannot be checkpointed on the compiled engine")
        return list(types)  # type: ignore[arg-type]

    def pop_into(self, types: list[str], base_depth: int) -> None:
        """Pop values of canonical depths base_depth.. (top first) into their spill locals."""
        for k in range(len(types) - 1, -1, -1):
            self.emit(0x21, self.spill(base_depth + k, types[k]))

    def push_from(self, types: list[str], base_depth: int) -> None:
        for k, t in enumerate(types):
            self.emit(0x20, self.spill(base_depth + k, t))

    def add_site(self, kind: str, pc: int, stack: list[str], args: list[str] | None = None) -> int:
        site_id = len(self.p.sites)
        args = args or []
        self.p.sites.append(Site(site_id, self.func_idx, pc, kind, stack,
                                 [self.spill(d, t) for d, t in enumerate(stack)], args,
                                 [self.spill(len(stack) + k, t) for k, t in enumerate(args)]))
        return site_id

    def unwind_branch(self, site_id: int, open_constructs: int) -> None:
        """Inside a cold `if`: set $site and branch to $unwind."""
        self.emit(0x41, site_id)
        self.emit(0x21, self.site_local)
        self.emit(0x0C, open_constructs + 1)  # 0 = the cold if, 1..n = open constructs, n+1 = $unwind

    def stable_point(self, site_id: int, params: list[str], base: int, open_constructs: int) -> None:
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
        self.emit(0x2D, self.ctl_memarg(0, POLL))  # i32.load8_u $ctl
        if self.p.count_steps:
            self.emit(0x72)  # i32.or
        self.emit(0x04, self.p.block_type(params, params))
        self.pop_into(params, base)
        self.unwind_branch(site_id, open_constructs)
        self.emit(0x0B)

    # --- the walk -----------------------------------------------------------------------------
    def rewrite(self) -> Function:
        p = self.p
        body = self.func.body
        info = self.info
        stack_before = info.stack_before  # type: ignore[attr-defined]
        unreachable = info.unreachable  # type: ignore[attr-defined]
        end_of, _else_of = match_blocks(body)
        has_site = self._constructs_with_sites(body, end_of)
        ctl: list[_Ctl] = []
        results = list(self.ftype.results)

        self.emit(0x02, p.block_type([], results))  # $done
        self.emit(0x02, None)  # $unwind
        entry = self.add_site("entry", body[0].offset, [])
        self.stable_point(entry, [], 0, 0)

        for i, ins in enumerate(body[:-1]):
            op, imm = ins.op, ins.imm
            live = not unreachable[i]
            open_n = len(ctl)
            base = ctl[-1].base if ctl else 0
            if op in (0x02, 0x03, 0x04):
                nparams, result_types, _ = p.block_arity(imm)
                stack = list(stack_before[i])
                cond = 1 if op == 0x04 else 0
                entry_height = len(stack) - nparams - cond
                buried: list[tuple[int, str]] = []
                if live and has_site.get(i) and entry_height > base:
                    buried_types = self.check_types(stack[base:entry_height], "a value beneath a block")
                    top = self.check_types(stack[entry_height:], "a block parameter")
                    for k in range(len(top) - 1, -1, -1):
                        self.emit(0x21, self.temp(top[k], k))
                    self.pop_into(buried_types, base)
                    for k, t in enumerate(top):
                        self.emit(0x20, self.temp(t, k))
                    buried = [(base + k, t) for k, t in enumerate(buried_types)]
                self.out.append(Instr(op, imm))
                ctl.append(_Ctl("loop" if op == 0x03 else "block", i, entry_height, buried, tuple(result_types)))
                if op == 0x03 and live:
                    params = self.check_types(stack[entry_height:], "a loop parameter")
                    site = self.add_site("loop", ins.offset, self.check_types(stack, "a value at a loop"))
                    self.stable_point(site, params, entry_height, len(ctl))
            elif op == 0x0B:
                done = ctl.pop()
                self.out.append(Instr(op, imm))
                if done.buried:
                    rtypes = list(done.result_types)
                    for k in range(len(rtypes) - 1, -1, -1):
                        self.emit(0x21, self.temp(rtypes[k], k))
                    for depth, t in done.buried:
                        self.emit(0x20, self.spill(depth, t))
                    for k, t in enumerate(rtypes):
                        self.emit(0x20, self.temp(t, k))
            elif op in (0x0C, 0x0D):
                self.out.append(Instr(op, imm + 2 if imm == open_n else imm))
            elif op == 0x0E:
                labels, default = imm
                fixed = tuple(label + 2 if label == open_n else label for label in (*labels, default))
                self.out.append(Instr(op, (fixed[:-1], fixed[-1])))
            elif op in (0x10, 0x11) and live:
                self._call_site(i, ins, list(stack_before[i]), base, open_n)
            elif op in (0xFC09, 0xFC0D):
                self.out.append(Instr(op, imm))
                slot = DROPS_BASE + (imm if op == 0xFC09 else len(p.ir.datas) + imm)
                self.emit(0x41, 0)
                self.emit(0x41, 1)
                self.emit(0x3A, self.ctl_memarg(0, slot))  # i32.store8 $ctl
            else:
                self.out.append(Instr(op, imm))
        self.emit(0x0C, 1)  # the body's results to $done
        self.emit(0x0B)  # end $unwind
        self._write_record()
        for t in results:  # dummy results: the caller is unwinding and never looks at them
            if t in _CONST:
                self.emit(_CONST[t], 0)
            else:
                self.emit(0xD0, t)  # ref.null
        self.emit(0x0B)  # end $done
        self.emit(0x0B)  # end of function
        added = [(1, t) for t in self.local_types[self.num_locals:]]
        new = Function(self.func.type_idx, list(self.func.locals) + added, self.out)
        p.layouts[self.func_idx] = FunctionLayout(self.func_idx, self.num_locals, list(self.local_types),
                                                  8 + 8 * len(self.local_types))
        return new

    def _constructs_with_sites(self, body: list[Instr], end_of: dict[int, int]) -> dict[int, bool]:
        out: dict[int, bool] = {}
        for start, end in end_of.items():
            out[start] = body[start].op == 0x03 or any(body[k].op in (0x03, 0x10, 0x11) for k in range(start + 1, end))
        return out

    def _call_site(self, i: int, ins: Instr, stack: list[str | None], base: int, open_n: int) -> None:
        p = self.p
        if ins.op == 0x10:
            callee = p.ir.func_type(ins.imm)
            consumed = len(callee.params)
            kind = "import_call" if ins.imm < p.n_imported else "call"
        else:
            callee = p.ir.types[ins.imm[0]]
            consumed = len(callee.params) + 1
            kind = "call"
        full = self.check_types(stack, "a value live across a call")
        below = full[: len(full) - consumed]
        level = below[base:]
        args: list[str] = []
        if kind == "import_call" or ins.op == 0x11:
            # keep the arguments (and the table index) in their spill locals: an interrupted host
            # call is recorded with them and re-executed on restore
            args = full[len(below):]
            self.pop_into(args, len(below))
            self.push_from(args, len(below))
        self.out.append(Instr(ins.op, ins.imm))
        site = self.add_site(kind, ins.offset, below, args)
        carried = level + list(callee.results)
        self.emit(0x23, p.globals_base)  # $state
        self.emit(0x41, STATE_UNWINDING)
        self.emit(0x46)  # i32.eq
        self.emit(0x04, p.block_type(carried, carried))
        for _ in callee.results:
            self.emit(0x1A)
        self.pop_into(level, base)
        self.unwind_branch(site, open_n)
        self.emit(0x0B)

    def _write_record(self) -> None:
        a = self.addr_local
        size = 8 + 8 * len(self.local_types)
        self.emit(0x41, STATE_UNWINDING)  # callers see it after their call returns, and unwind too
        self.emit(0x24, self.p.globals_base)
        self.emit(0x41, 0)
        self.emit(0x28, self.ctl_memarg(2, WRITE_PTR))
        self.emit(0x21, a)
        # grow the control memory when the record would not fit
        self.emit(0x20, a)
        self.emit(0x41, size)
        self.emit(0x6A)
        self.emit(0x3F, self.p.ctl)
        self.emit(0x41, 16)
        self.emit(0x74)
        self.emit(0x4B)  # i32.gt_u
        self.emit(0x04, None)
        self.emit(0x41, size // 65536 + 1)
        self.emit(0x40, self.p.ctl)
        self.emit(0x1A)
        self.emit(0x0B)
        self.emit(0x20, a)
        self.emit(0x20, self.site_local)
        self.emit(0x36, self.ctl_memarg(2, 0))
        self.emit(0x20, a)
        self.emit(0x41, self.func_idx)
        self.emit(0x36, self.ctl_memarg(2, 4))
        for j, t in enumerate(self.local_types):
            op, align = _STORE[t]
            self.emit(0x20, a)
            self.emit(0x20, j)
            self.emit(op, self.ctl_memarg(align, 8 + 8 * j))
        self.emit(0x41, 0)
        self.emit(0x20, a)
        self.emit(0x41, size)
        self.emit(0x6A)
        self.emit(0x36, self.ctl_memarg(2, WRITE_PTR))


class _Pass:
    def __init__(self, ir: IRModule) -> None:
        self.ir = ir
        self.n_imported = ir.num_imported_funcs()
        self.sites: list[Site] = []
        self.layouts: dict[int, FunctionLayout] = {}
        self.ctl = len(ir.all_mems())
        self.globals_base = len(ir.all_globals())
        self._block_types: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
        self.count_steps = True

    def block_type(self, params: list[str], results: list[str]) -> object:
        if not params and not results:
            return None
        if not params and len(results) == 1:
            return results[0]
        key = (tuple(params), tuple(results))
        if key not in self._block_types:
            ft = FuncType(*key)
            if ft in self.ir.types:
                self._block_types[key] = self.ir.types.index(ft)
            else:
                self.ir.types.append(ft)
                self._block_types[key] = len(self.ir.types) - 1
        return self._block_types[key]

    def block_arity(self, bt: object) -> tuple[int, list[str], list[str]]:
        if bt is None:
            return 0, [], []
        if isinstance(bt, str):
            return 0, [bt], []
        ft = self.ir.types[bt]  # type: ignore[index]
        return len(ft.params), list(ft.results), list(ft.params)


def instrument(module: object, *, count_steps: bool = True) -> Instrumented:
    """Instrument a validated :class:`wasmig.Module` for checkpointing on a compiled engine.

    ``count_steps=False`` builds the poll-only variant: stable points test the poll byte but keep
    no step count (no ``--checkpoint-at-step``, and snapshots without a canonical step number);
    it exists to measure what the count costs (benchmarks/overhead.py).
    """
    ir: IRModule = copy.deepcopy(module.ir)  # type: ignore[attr-defined]
    validation = module.validation  # type: ignore[attr-defined]
    if len(ir.all_mems()) > 1:
        raise InstrumentError("modules with several memories are not supported")
    p = _Pass(ir)
    p.count_steps = count_steps
    n_imported = p.n_imported
    new_funcs = [_FunctionRewriter(p, n_imported + k, f, validation.functions[k]).rewrite()
                 for k, f in enumerate(ir.funcs)]
    ir.funcs = new_funcs
    ir.mems.append(MemType(Limits(1)))
    ir.datas.append(Data("active", RECORDS_BASE.to_bytes(4, "little") * 2, p.ctl, [Instr(0x41, WRITE_PTR),
                                                                                        Instr(0x0B)]))
    if ir.data_count is not None:
        ir.data_count = len(ir.datas)
    g = p.globals_base
    if g * 8 > RECORDS_BASE - GLOBALS_BASE:
        raise InstrumentError(f"too many globals ({g}) for the control memory layout")
    ir.funcs.append(_dump_globals(ir, p))
    ir.globals += [Global(GlobalType("i32", True), [Instr(0x41, 0), Instr(0x0B)]),
                   Global(GlobalType("i64", True), [Instr(0x42, 0), Instr(0x0B)]),
                   Global(GlobalType("i64", True), [Instr(0x42, NEVER), Instr(0x0B)])]
    taken = {e.name for e in ir.exports}
    dump_index = n_imported + len(ir.funcs) - 1
    extra = [Export("wasmig:dump", "func", dump_index), Export("wasmig:ctl", "memory", p.ctl),
             Export("wasmig:state", "global", g),
             Export("wasmig:steps", "global", g + 1), Export("wasmig:stop_at", "global", g + 2)]
    extra += [Export(f"wasmig:g{i}", "global", i) for i in range(g)]
    if p.ctl > 0:
        extra.append(Export("wasmig:mem0", "memory", 0))
    for e in extra:
        if e.name in taken:
            raise InstrumentError(f"the module already exports {e.name!r}")
    ir.exports += extra
    sitemap = SiteMap(p.ctl, g, p.sites, p.layouts)
    ir.customs = [c for c in ir.customs if c.name != SECTION_NAME]
    ir.customs.append(CustomSection(SECTION_NAME, sitemap.to_bytes(), 11))
    return Instrumented(ir, sitemap)


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
