"""Acceptance test of the instrumentation pass on the WebAssembly core spec testsuite.

For every non-SIMD ``.wast`` script, every ``module`` command whose module wasmig decodes and
validates is instrumented (:func:`wasmig.instrument.unwind.instrument`), encoded and checked:

1. wasmig's validator accepts the instrumented module (feature ``multi-memory``);
2. wasmtime compiles it;
3. when the original instantiates on wasmtime, so does the instrumented module, and every
   following ``action``/``assert_return``/``assert_trap``/``assert_exhaustion`` (and every
   ``assert_uninstantiable``) has the same outcome on both: the same result bits — NaN payloads
   included, the pass must not touch a float — or a trap of the same trap code. wasmtime was
   never seen to differ in NaN bits between the two, so there is no canonical/arithmetic-class
   leniency; a difference says "only NaN bits differ" when that is all it is. When the next
   module comes, the exported state of the previous one (memories byte for byte, globals bit for
   bit, table sizes) must be equal too.

The original's outcomes are also checked against the script's expectations (``assert_return``
values, traps, stack exhaustion): a mismatch there is a harness bug (values not seen bit-exactly),
not a bug of the pass, and fails the test as well.

Both modules run on wasmtime, each in its own *world* (a store with its own ``spectest`` externs
and its own registry of ``register``-ed exports): originals link against originals, instrumented
modules against instrumented ones. A module the pass refuses (or wasmig cannot load) runs as
itself in the instrumented world too, so modules importing from it are still tested; the
assertions on such a stand-in are run (keeping both worlds in the same state) but not counted
as compared.

Values cross the Python/wasm boundary as raw bits: wasmtime-py's ``Val`` goes through Python
floats, and an ``f32`` signalling NaN is quieted by the float->double conversion, so calls and
global reads use wasmtime's C API (``wasmtime._ffi``) with the bits in the value union.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import wasmig
from tests.spec.convert import DEFAULT_CACHE_ROOT, convert_wast, find_testsuite, wast2json
from tests.spec.runner import results_match
from wasmig.binary.encoder import encode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.binary.ir import Instr
from wasmig.engines.wasmtime.program_memory import program_exports
from wasmig.instrument.unwind import Instrumented, InstrumentError, instrument

wasmtime = pytest.importorskip("wasmtime")
from wasmtime import _ffi as ffi  # noqa: E402  (raw value unions: bit-exact floats)
from wasmtime._func import enter_wasm  # noqa: E402

SUITE = find_testsuite()
WASTS = sorted(p for p in SUITE.glob("*.wast") if not p.stem.startswith("simd_")) if SUITE.is_dir() else []

#: Why the pass may refuse a module (docs/instrument.md, "Not covered", and the pass's docstring):
#: pattern of the InstrumentError message -> the documented reason.
DOCUMENTED_REFUSALS = {
    r"has a (funcref|externref) local": "reference-typed local",
    r"a (funcref|externref) value on the operand stack": "reference-typed value on the operand stack",
    r"several memories": "several memories",
}

_KIND = {"i32": ffi.WASMTIME_I32.value, "i64": ffi.WASMTIME_I64.value,
         "f32": ffi.WASMTIME_F32.value, "f64": ffi.WASMTIME_F64.value}
_TYPE_OF_KIND = {v: k for k, v in _KIND.items()}
_BITS = {"i32": 32, "i64": 64, "f32": 32, "f64": 64}
_NAN_EXP = {"f32": (0x7F800000, 0x007FFFFF), "f64": (0x7FF0000000000000, 0x000FFFFFFFFFFFFF)}

_ENGINE: Any = None


def engine() -> Any:
    global _ENGINE
    if _ENGINE is None:
        config = wasmtime.Config()
        config.wasm_multi_memory = True
        config.wasm_threads = True
        _ENGINE = wasmtime.Engine(config)
    return _ENGINE


def refusal_reason(message: str) -> str | None:
    for pattern, reason in DOCUMENTED_REFUSALS.items():
        if re.search(pattern, message):
            return reason
    return None


# --------------------------------------------------------------------------------------------
# Calling wasmtime with raw bits
# --------------------------------------------------------------------------------------------


def _signed(bits: int, width: int) -> int:
    return bits - (1 << width) if bits >> (width - 1) else bits


def _raw_arg(store: Any, typ: str, value: Any) -> Any:
    if typ in _KIND:
        raw = ffi.wasmtime_val_t(kind=_KIND[typ])
        if _BITS[typ] == 32:
            raw.of.i32 = _signed(int(value), 32)
        else:
            raw.of.i64 = _signed(int(value), 64)
        return raw
    if typ == "externref":
        return wasmtime.Val.externref(None if value in (None, "null") else int(value))._new_raw(store)
    if typ == "funcref" and value in (None, "null"):
        return wasmtime.Val.funcref(None)._new_raw(store)
    raise ValueError(f"cannot pass a {typ} {value!r} from a script")


def _read_raw(store: Any, raw: Any) -> tuple[str, Any]:
    """One result as ``(type, bits)``; references as ``(type, host object | "func" | None)``."""
    typ = _TYPE_OF_KIND.get(raw.kind)
    if typ is not None:
        if _BITS[typ] == 32:
            return typ, raw.of.i32 & 0xFFFFFFFF
        return typ, raw.of.i64 & 0xFFFFFFFFFFFFFFFF
    val = wasmtime.Val._from_raw(store, raw)
    if raw.kind == ffi.WASMTIME_FUNCREF.value:
        return "funcref", None if val.value is None else "func"  # identity differs between worlds
    if raw.kind == ffi.WASMTIME_EXTERNREF.value:
        return "externref", val.value
    return f"kind{raw.kind}", "?"


def _trap_kind(exc: BaseException) -> str:
    code = getattr(exc, "trap_code", None)
    if code is not None:
        return code.name
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


Outcome = tuple[str, Any]  # ("return", ((type, bits), ...)) | ("trap", kind) | ("error", text)


def call_raw(store: Any, func: Any, args: list[tuple[str, Any]]) -> Outcome:
    n_results = len(func.type(store).results)
    params = (ffi.wasmtime_val_t * len(args))()
    made = 0
    try:
        for typ, value in args:
            params[made] = _raw_arg(store, typ, value)
            made += 1
        results = (ffi.wasmtime_val_t * n_results)()
        try:
            with enter_wasm(store) as trap:
                error = ffi.wasmtime_func_call(store._context(), ctypes.byref(func._func), params, len(args),
                                               results, n_results, trap)
                if error:
                    raise wasmtime.WasmtimeError._from_ptr(error)
        except wasmtime.Trap as exc:
            return "trap", _trap_kind(exc)
        except wasmtime.WasmtimeError as exc:
            return "error", str(exc).strip().splitlines()[0]
    finally:
        for i in range(made):
            ffi.wasmtime_val_unroot(ctypes.byref(params[i]))
    return "return", tuple(_read_raw(store, results[i]) for i in range(n_results))


def global_raw(store: Any, glob: Any) -> Outcome:
    raw = ffi.wasmtime_val_t()
    ffi.wasmtime_global_get(store._context(), ctypes.byref(glob._global), ctypes.byref(raw))
    return "return", (_read_raw(store, raw),)


def _is_nan(typ: str, bits: Any) -> bool:
    if typ not in _NAN_EXP or not isinstance(bits, int):
        return False
    exp, frac = _NAN_EXP[typ]
    return bits & exp == exp and bits & frac != 0


def only_nan_bits_differ(a: Outcome, b: Outcome) -> bool:
    """Both returned, and every differing value is a NaN on both sides (a payload or sign change)."""
    if a[0] != "return" or b[0] != "return" or len(a[1]) != len(b[1]):
        return False
    return all(x == y or (x[0] == y[0] and _is_nan(*x) and _is_nan(*y)) for x, y in zip(a[1], b[1], strict=True))


# --------------------------------------------------------------------------------------------
# A world: one store, spectest, registered exports, named instances
# --------------------------------------------------------------------------------------------


class Unsatisfiable(Exception):
    """An import that neither spectest nor a registered module provides."""


def spectest(store: Any) -> dict[str, Any]:
    """The spec interpreter's ``spectest`` module (see the testsuite's ``imports.wast``)."""
    V = wasmtime.ValType
    out: dict[str, Any] = {}
    prints = {"print": [], "print_i32": [V.i32()], "print_i64": [V.i64()], "print_f32": [V.f32()],
              "print_f64": [V.f64()], "print_i32_f32": [V.i32(), V.f32()], "print_f64_f64": [V.f64(), V.f64()]}
    for name, params in prints.items():
        out[name] = wasmtime.Func(store, wasmtime.FuncType(params, []), lambda *_args: None)
    out["global_i32"] = wasmtime.Global(store, wasmtime.GlobalType(V.i32(), False), 666)
    out["global_i64"] = wasmtime.Global(store, wasmtime.GlobalType(V.i64(), False), 666)
    out["global_f32"] = wasmtime.Global(store, wasmtime.GlobalType(V.f32(), False), 666.6)
    out["global_f64"] = wasmtime.Global(store, wasmtime.GlobalType(V.f64(), False), 666.6)
    out["table"] = wasmtime.Table(store, wasmtime.TableType(V.funcref(), wasmtime.Limits(10, 20)), None)
    out["memory"] = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, 2)))
    return out


@dataclass
class Loaded:
    """An instance in one world; ``instrumented`` is False for a stand-in original."""

    instance: Any
    exports: Mapping[str, Any]
    instrumented: bool


class World:
    def __init__(self) -> None:
        self.store = wasmtime.Store(engine())
        self.registry: dict[str, Mapping[str, Any]] = {"spectest": spectest(self.store)}
        self.named: dict[str, Loaded | None] = {}
        self.current: Loaded | None = None

    def instantiate(self, module: Any, instrumented: bool) -> Loaded:
        externs = []
        for imp in module.imports:
            provider = self.registry.get(imp.module)
            if provider is None or imp.name not in provider:
                raise Unsatisfiable(f"{imp.module}.{imp.name}")
            externs.append(provider[imp.name])
        inst = wasmtime.Instance(self.store, module, externs)
        # as the host sees them: memory 0 from the program's first byte (hidden_page.py)
        exports = program_exports(dict(inst.exports(self.store)))
        start = exports.get("wasmig:start")
        if isinstance(start, wasmtime.Func):  # the pass turns a start section into this export:
            start(self.store)  # the host runs it on a fresh instantiation (never on a restore)
        return Loaded(inst, exports, instrumented)

    def target(self, name: str | None) -> Loaded | None:
        return self.named.get(name) if name else self.current

    def act(self, loaded: Loaded, action: Mapping[str, Any]) -> Outcome:
        ext = loaded.exports.get(action["field"])
        if action["type"] == "get":
            if not isinstance(ext, wasmtime.Global):
                return "error", f"no global export {action['field']!r}"
            return global_raw(self.store, ext)
        if not isinstance(ext, wasmtime.Func):
            return "error", f"no function export {action['field']!r}"
        return call_raw(self.store, ext, [(a["type"], a.get("value")) for a in action.get("args", [])])


# --------------------------------------------------------------------------------------------
# One script
# --------------------------------------------------------------------------------------------


@dataclass
class FileStats:
    name: str
    modules: int = 0  # module commands (assert_uninstantiable modules included)
    instrumented: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # documented reason -> count
    skipped: Counter[str] = field(default_factory=Counter)  # why a module could not be tested at all
    compared: int = 0  # assertions on instrumented modules: same outcome required
    differing: int = 0
    standin: int = 0  # assertions on stand-in originals (run to keep both worlds in the same state)
    uncompared: int = 0  # assertions on a module that is missing in either world
    states: int = 0  # instances whose exported state (memories, globals, table sizes) was compared
    problems: list[str] = field(default_factory=list)  # bugs of the pass: crash, invalid, different
    refusals: list[str] = field(default_factory=list)  # every InstrumentError message, with its place
    undocumented: list[str] = field(default_factory=list)  # refusals for a reason not in DOCUMENTED_REFUSALS
    off_spec: list[str] = field(default_factory=list)  # the *original* disagrees with the script: harness bug

    def line(self) -> str:
        text = (f"{self.name}: modules {self.modules} (instrumented {self.instrumented}, "
                f"refused {sum(self.refused.values())}, skipped {sum(self.skipped.values())}); "
                f"assertions compared {self.compared}, differing {self.differing}")
        if self.standin or self.uncompared:
            text += f" (on stand-ins {self.standin}, not comparable {self.uncompared})"
        if self.refused:
            text += "\n    refused: " + ", ".join(f"{r} x{n}" for r, n in self.refused.most_common())
        if self.skipped:
            text += "\n    skipped: " + ", ".join(f"{r} x{n}" for r, n in self.skipped.most_common())
        return text

    def summary(self) -> dict[str, Any]:
        return {"line": self.line(), "modules": self.modules, "instrumented": self.instrumented,
                "refused": dict(self.refused), "skipped": sum(self.skipped.values()), "compared": self.compared,
                "differing": self.differing, "problems": len(self.problems)}


@dataclass
class Prepared:
    original: Any  # wasmtime.Module
    instrumented: Any  # wasmtime.Module of the instrumented module, or the original as a stand-in
    is_instrumented: bool


def registered_modules(commands: list[dict[str, Any]]) -> set[int]:
    """The indices of the ``module`` commands whose instance a later ``register`` names (by
    name, or the latest module)."""
    out: set[int] = set()
    named: dict[str, int] = {}
    latest = -1
    for k, cmd in enumerate(commands):
        if cmd["type"] == "module":
            latest = k
            if cmd.get("name"):
                named[cmd["name"]] = k
        elif cmd["type"] == "register":
            out.add(named.get(cmd["name"], -1) if cmd.get("name") else latest)
    return out


class ScriptCheck:
    """Replays one converted script in the two worlds and compares every outcome."""

    def __init__(self, json_path: Path, instrument_fn: Any = instrument) -> None:
        self.dir = json_path.parent
        self.name = json_path.stem
        self.commands: list[dict[str, Any]] = json.loads(json_path.read_text(encoding="utf-8"))["commands"]
        self.instrument = instrument_fn
        #: the module commands (by index) whose instance is ``register``-ed: other modules link
        #: to its memory, so it cannot have the hidden page (the importer would see the page)
        self.registered = registered_modules(self.commands)
        self.index = -1
        self.stats = FileStats(self.name)
        self.orig = World()
        self.inst = World()
        self.line = 0

    def problem(self, text: str) -> None:
        self.stats.problems.append(f"{self.name}.wast:{self.line}: {text}")

    def run(self) -> FileStats:
        for index, cmd in enumerate(self.commands):
            self.index = index
            self.line = int(cmd.get("line", 0))
            handler = getattr(self, "_cmd_" + cmd["type"], None)
            if handler is not None:  # assert_invalid/malformed/unlinkable: nothing to compare
                handler(cmd)
        self.compare_state()
        return self.stats

    # --- modules --------------------------------------------------------------------------------
    def prepare(self, cmd: Mapping[str, Any]) -> Prepared | None:
        """Compile the original; decode, instrument, validate and compile the instrumented module.

        ``None`` when wasmtime rejects the original. Whenever the module cannot be instrumented
        (wasmig cannot load it, the pass refuses it or fails on it) the original stands in.
        """
        st = self.stats
        st.modules += 1
        data = (self.dir / cmd["filename"]).read_bytes()
        try:
            original = wasmtime.Module(engine(), data)
        except wasmtime.WasmtimeError as exc:
            st.skipped[f"wasmtime rejects the original: {str(exc).splitlines()[0][:60]}"] += 1
            return None
        standin = Prepared(original, original, False)
        try:
            module = wasmig.Module.from_bytes(data)
        except wasmig.WasmError as exc:
            st.skipped[f"wasmig cannot load it ({type(exc).__name__})"] += 1
            return standin
        try:
            # the hidden page wherever it fits (small modules would not get it by default), but
            # for a module other modules link to
            data2 = self.instrument(module, hidden_page=self.index not in self.registered).data
        except InstrumentError as exc:
            st.refusals.append(f"{self.name}.wast:{self.line}: {exc}")
            reason = refusal_reason(str(exc))
            if reason is None:
                st.undocumented.append(f"{self.name}.wast:{self.line}: {exc}")
                reason = f"undocumented: {exc}"
            st.refused[reason] += 1
            return standin
        except Exception as exc:  # the pass crashed
            self.problem(f"instrument() raised {type(exc).__name__}: {exc}")
            return standin
        try:
            wasmig.Module.from_bytes(data2, features=INSTRUMENTED)
        except wasmig.WasmError as exc:
            self.problem(f"wasmig rejects the instrumented module: {type(exc).__name__}: {exc}")
            return standin
        try:
            compiled = wasmtime.Module(engine(), data2)
        except wasmtime.WasmtimeError as exc:
            self.problem(f"wasmtime rejects the instrumented module: {str(exc).strip()[:300]}")
            return standin
        st.instrumented += 1
        return Prepared(original, compiled, True)

    def _set_current(self, cmd: Mapping[str, Any], orig: Loaded | None, inst: Loaded | None) -> None:
        self.orig.current, self.inst.current = orig, inst
        name = cmd.get("name")
        if name:
            self.orig.named[name], self.inst.named[name] = orig, inst

    def _cmd_module(self, cmd: dict[str, Any]) -> None:
        self.compare_state()  # the assertions on the previous module are over
        prep = self.prepare(cmd)
        if prep is None:
            self._set_current(cmd, None, None)
            return
        try:
            orig = self.orig.instantiate(prep.original, False)
        except Unsatisfiable as exc:
            self.stats.skipped[f"unsatisfiable import {exc}"] += 1
            self._set_current(cmd, None, None)
            return
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self.stats.skipped[f"the original does not instantiate: {_trap_kind(exc)[:60]}"] += 1
            self._set_current(cmd, None, None)
            return
        inst = None
        try:
            inst = self.inst.instantiate(prep.instrumented, prep.is_instrumented)
        except (Unsatisfiable, wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            what = "instrumented module" if prep.is_instrumented else "stand-in original"
            self.problem(f"the original instantiates, the {what} does not: {_trap_kind(exc)}")
        self._set_current(cmd, orig, inst)

    def _cmd_register(self, cmd: dict[str, Any]) -> None:
        for world in (self.orig, self.inst):
            loaded = world.target(cmd.get("name"))
            if loaded is not None:
                world.registry[cmd["as"]] = loaded.exports
            else:
                world.registry.pop(cmd["as"], None)

    def _cmd_assert_uninstantiable(self, cmd: dict[str, Any]) -> None:
        """Instantiation traps (start function, segments); partial effects must match as well."""
        prep = self.prepare(cmd)
        if prep is None:
            return
        outcomes: list[Outcome] = []
        for world, module in ((self.orig, prep.original), (self.inst, prep.instrumented)):
            try:
                world.instantiate(module, False)
                outcomes.append(("instantiated", None))
            except Unsatisfiable as exc:
                self.stats.skipped[f"unsatisfiable import {exc}"] += 1
                return
            except wasmtime.Trap as exc:
                outcomes.append(("trap", _trap_kind(exc)))
            except wasmtime.WasmtimeError as exc:
                outcomes.append(("error", str(exc).strip().splitlines()[0]))
        if outcomes[0][0] != "trap":
            self.stats.off_spec.append(f"{self.name}.wast:{self.line}: the original {outcomes[0]}")
        self.compare(cmd, "instantiation", outcomes[0], outcomes[1], prep.is_instrumented)

    # --- assertions -----------------------------------------------------------------------------
    def compare(self, cmd: Mapping[str, Any], what: str, a: Outcome, b: Outcome, counted: bool) -> None:
        st = self.stats
        if counted:
            st.compared += 1
        else:
            st.standin += 1
        if a == b:
            return
        st.differing += 1
        note = " (only NaN bits differ)" if only_nan_bits_differ(a, b) else ""
        self.problem(f"{cmd['type']} {what}: original {a}, instrumented {b}{note}")

    def _assertion(self, cmd: dict[str, Any]) -> None:
        action = cmd["action"]
        orig = self.orig.target(action.get("module"))
        inst = self.inst.target(action.get("module"))
        if orig is None or inst is None:
            self.stats.uncompared += 1
            return
        a = self.orig.act(orig, action)
        b = self.inst.act(inst, action)
        self.check_original(cmd, a)
        args = ", ".join(f"{x['type']}:{x.get('value')}" for x in action.get("args", []))
        self.compare(cmd, f"{action['field']}({args})", a, b, inst.instrumented)

    _cmd_action = _assertion
    _cmd_assert_return = _assertion
    _cmd_assert_trap = _assertion
    _cmd_assert_exhaustion = _assertion

    def check_original(self, cmd: Mapping[str, Any], got: Outcome) -> None:
        """The original must do what the script says, or the harness is not seeing true values."""
        kind = cmd["type"]
        if kind == "assert_return":
            ok = got[0] == "return" and results_match(cmd.get("expected", []), list(got[1]))
        elif kind == "assert_exhaustion":
            ok = got == ("trap", "STACK_OVERFLOW")
        elif kind == "assert_trap":
            ok = got[0] == "trap"
        else:
            ok = got[0] != "error"
        if not ok:
            self.stats.off_spec.append(f"{self.name}.wast:{self.line}: {kind} on the original gave {got}")

    def compare_state(self) -> None:
        """Exported memories (every byte), globals (bits) and table sizes of the current instance."""
        orig, inst = self.orig.current, self.inst.current
        if orig is None or inst is None or not inst.instrumented:
            return
        self.stats.states += 1
        for name, ext in orig.exports.items():
            other = inst.exports.get(name)
            if isinstance(ext, wasmtime.Memory):
                a = bytes(ext.read(self.orig.store, 0, ext.data_len(self.orig.store)))
                b = bytes(other.read(self.inst.store, 0, other.data_len(self.inst.store)))
                if a != b:
                    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                    self.problem(f"exported memory {name!r} differs (sizes {len(a)}/{len(b)}, first at {first})")
            elif isinstance(ext, wasmtime.Global):
                a, b = global_raw(self.orig.store, ext), global_raw(self.inst.store, other)
                if a != b:
                    self.problem(f"exported global {name!r}: original {a}, instrumented {b}")
            elif isinstance(ext, wasmtime.Table):
                a, b = ext.size(self.orig.store), other.size(self.inst.store)
                if a != b:
                    self.problem(f"exported table {name!r}: size {a} vs {b}")


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

_RESULTS: dict[tuple[str, str], FileStats] = {}  # per process: the overall test reuses what this worker ran
#: both variants of the pass: the deterministic one counts steps at every loop header; the fast
#: one unrolls small loops without calls (docs/instrument.md)
VARIANTS: dict[str, Any] = {"deterministic": functools.partial(instrument, count_steps=True),
                            "fast": functools.partial(instrument, count_steps=False)}


def check_script(wast: Path, variant: str) -> FileStats:
    key = (wast.stem, variant)
    if key not in _RESULTS:
        _RESULTS[key] = ScriptCheck(convert_wast(wast, DEFAULT_CACHE_ROOT), VARIANTS[variant]).run()
    return _RESULTS[key]


needs_suite = pytest.mark.skipif(not WASTS or wast2json() is None,
                                 reason=f"needs the spec testsuite ({SUITE}) and wast2json (wabt)")


def _failures(st: FileStats) -> list[str]:
    out = [f"pass bug: {p}" for p in st.problems]
    out += [f"undocumented refusal: {r}" for r in st.undocumented]
    out += [f"harness: {o}" for o in st.off_spec]
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("wast", WASTS, ids=[w.stem for w in WASTS])
@needs_suite
def test_instrumented_spec_modules_behave_like_the_originals(wast: Path, variant: str,
                                                             request: pytest.FixtureRequest) -> None:
    start = time.perf_counter()
    st = check_script(wast, variant)
    print(f"{st.line()}  [{time.perf_counter() - start:.2f}s]")
    request.node.user_properties.append(("instrument_spec", st.summary()))
    failures = _failures(st)
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:60])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@needs_suite
def test_instrumented_spec_totals(variant: str) -> None:
    """The overall bound: nothing differs, refusals are documented, and the run really covered the suite."""
    stats = [check_script(w, variant) for w in WASTS]
    refused: Counter[str] = Counter()
    for st in stats:
        refused.update(st.refused)
    totals = {k: sum(getattr(st, k) for st in stats)
              for k in ("modules", "instrumented", "compared", "differing", "standin", "uncompared", "states")}
    skipped = sum(sum(st.skipped.values()) for st in stats)
    print(f"TOTAL ({variant}) {totals}, refused {dict(refused)}, skipped {skipped}")
    for st in stats:
        for r in st.refusals:
            print(f"  refusal {r}")
    failures = [f for st in stats for f in _failures(st)]
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:60])
    assert totals["differing"] == 0
    assert set(refused) <= set(DOCUMENTED_REFUSALS.values())
    # the run must really have exercised the suite (about 1150 modules and 23500 assertions)
    assert totals["instrumented"] >= 1000 and totals["compared"] >= 20000, totals
    assert sum(refused.values()) <= 20, refused


# --------------------------------------------------------------------------------------------
# The harness itself: it must see bits and differences
# --------------------------------------------------------------------------------------------


def test_raw_calls_keep_signalling_nan_bits() -> None:
    wat = """(module (func (export "id32") (param f32) (result f32) local.get 0)
                     (func (export "id64") (param f64) (result f64) local.get 0)
                     (global (export "g") f32 (f32.const nan:0x200001)))"""
    world = World()
    loaded = world.instantiate(wasmtime.Module(engine(), wasmtime.wat2wasm(wat)), False)
    assert call_raw(world.store, loaded.exports["id32"], [("f32", 0x7FA00001)]) == ("return", (("f32", 0x7FA00001),))
    assert call_raw(world.store, loaded.exports["id64"], [("f64", 0xFFF0000000000001)]) == (
        "return", (("f64", 0xFFF0000000000001),))
    assert global_raw(world.store, loaded.exports["g"]) == ("return", (("f32", 0x7FA00001),))
    assert only_nan_bits_differ(("return", (("f32", 0x7FC00000),)), ("return", (("f32", 0xFFC00000),)))
    assert not only_nan_bits_differ(("return", (("f32", 0x7F800000),)), ("return", (("f32", 0x7FC00000),)))


@needs_suite
def test_the_harness_sees_a_pass_that_changes_behaviour() -> None:
    """A deliberately broken pass (i32.add -> i32.sub after instrumenting) must be caught."""

    def broken(module: Any, **options: Any) -> Any:
        out = instrument(module, **options)
        ir = out.ir
        for func in ir.funcs:
            func.body = [Instr(0x6B) if ins.op == 0x6A else ins for ins in func.body]
        return Instrumented(encode_module(ir), out.sitemap)

    wast = next(w for w in WASTS if w.stem == "i32")
    st = ScriptCheck(convert_wast(wast, DEFAULT_CACHE_ROOT), broken).run()
    assert st.differing > 0 and st.compared > 300
    assert not st.off_spec  # the originals still behave
