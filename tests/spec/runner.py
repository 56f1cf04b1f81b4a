"""Run the WebAssembly core spec testsuite against wasmig's public embedding API.

Usage::

    python -m tests.spec.runner [--only NAME ...] [--json OUT] [--min-pass-rate 99.5]

Each ``.wast`` script is converted by ``wast2json`` (see :mod:`tests.spec.convert`) into a JSON
command list plus one ``.wasm`` per module, and the commands are replayed through
``wasmig.Module`` / ``wasmig.Instance`` exactly as an embedder would use them. Nothing here
touches wasmig internals: the point of the suite is to prove the *public* API.

Design decisions (and why):

* Every command is one assertion. ``module``/``register``/``action`` count too, because a module
  that fails to instantiate is as much a bug as a wrong result.
* One script runs in one worker process (forked, or from a fork server when the caller has
  threads), two at a time. A worker streams one outcome per
  command back to the parent, so when a script hangs (an interpreter bug looping forever) the
  parent kills it after ``--timeout`` seconds and still knows exactly which command hung and
  which ones had passed; the same holds when the worker dies (a C-stack overflow, the OOM
  killer). A soft address-space limit turns a runaway allocation into a ``MemoryError`` that is
  reported instead of taking the machine down.
* Any Python exception that is not the one an assertion expects is a *failure* with a traceback
  summary, never a crash of the run: the report must list every problem in one pass.
* A trap with the right exception class passes even if its message differs from the spec's; the
  differing messages are collected separately ("message mismatches") because wording is a much
  weaker requirement than trapping at all.
* Text-format modules (``module_type: text``, i.e. ``.wat`` files from ``assert_malformed
  (module quote ...)``) test the text parser, which wasmig does not have: they are counted as
  skipped. ``simd_*.wast`` scripts are skipped as a whole (wasmig has no SIMD) but still
  converted, so the report says how many commands that is.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.spec.convert import convert_wast

# Only ``convert_wast`` is the agreed interface of the converter module; the locations are
# restated here so that renaming a helper there cannot break the runner.
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO_ROOT / ".cache" / "spec-json"

#: Commands whose expected exception is a trap, so their message comparison is meaningful.
TRAP_COMMANDS = ("assert_trap", "assert_exhaustion", "assert_uninstantiable")

SIMD_REASON = "SIMD not supported"
TEXT_REASON = "text format"
#: Commands slower than this are remembered (a few per file) and the slowest listed in the report.
SLOW_COMMAND_SECONDS = 0.25
SLOWEST_KEPT = 5

# --------------------------------------------------------------------------------------------
# Values: parsing wast2json's encoding and comparing results bit-exactly
# --------------------------------------------------------------------------------------------

#: The canonical NaNs (either sign): exactly the quiet bit set in the payload.
CANONICAL_NAN = {
    "f32": (0x7FC00000, 0xFFC00000),
    "f64": (0x7FF8000000000000, 0xFFF8000000000000),
}
#: Exponent all ones plus the quiet bit: an *arithmetic* NaN has at least these bits set.
ARITHMETIC_NAN_MASK = {"f32": 0x7FC00000, "f64": 0x7FF8000000000000}
BIT_WIDTH = {"i32": 32, "i64": 64, "f32": 32, "f64": 64}
REF_TYPES = ("funcref", "externref")


def parse_arg(arg: Mapping[str, Any]) -> tuple[str, Any]:
    """Turn a wast2json argument into ``(type, value)`` for ``wasmig.Val``.

    Numbers stay unsigned bit patterns (which is what wast2json writes and what the API takes),
    so no float rounding can happen on the way in. ``externref`` host references are the plain
    ``int`` from the script, which is hashable and comes back unchanged from the engine, so
    ``assert_return`` can compare identities by value.
    """
    typ = arg["type"]
    value = arg.get("value")
    if typ in REF_TYPES:
        if value is None or value == "null":
            return typ, None
        if typ == "funcref":
            raise ValueError("a non-null funcref cannot be passed from a script")
        return typ, int(value)
    if typ in BIT_WIDTH:
        if not isinstance(value, str):
            raise ValueError(f"{typ} argument without a value: {arg!r}")
        bits = int(value)
        if not 0 <= bits < (1 << BIT_WIDTH[typ]):
            raise ValueError(f"{typ} argument {value} is not an unsigned {BIT_WIDTH[typ]}-bit pattern")
        return typ, bits
    raise ValueError(f"unsupported value type {typ!r}")


def value_matches(expected: Mapping[str, Any], got: Any) -> bool:
    """Does one result ``(type, value)`` from ``invoke(..., raw=True)`` satisfy one expected value?

    Integers and floats compare as bit patterns (so ``-0.0`` differs from ``0.0`` and NaN
    payloads matter), except for the two NaN patterns of the spec: ``nan:canonical`` accepts
    only the canonical NaN of either sign, ``nan:arithmetic`` any NaN with the quiet bit set.
    A ``funcref`` expectation that is not ``null`` matches any non-null funcref, because a
    script cannot name a particular function.
    """
    if not isinstance(got, tuple) or len(got) != 2:
        return False
    got_type, got_value = got
    typ = expected["type"]
    if got_type != typ:
        return False
    value = expected.get("value")
    if typ in REF_TYPES:
        if value is None or value == "null":
            return got_value is None
        if typ == "funcref":
            return got_value is not None
        return got_value is not None and not isinstance(got_value, bool) and got_value == int(value)
    if typ not in BIT_WIDTH or not isinstance(got_value, int) or isinstance(got_value, bool):
        return False
    if not 0 <= got_value < (1 << BIT_WIDTH[typ]):
        return False  # the API promises unsigned bit patterns; a signed int is a bug too
    if value == "nan:canonical":
        return typ in CANONICAL_NAN and got_value in CANONICAL_NAN[typ]
    if value == "nan:arithmetic":
        mask = ARITHMETIC_NAN_MASK.get(typ)
        return mask is not None and got_value & mask == mask
    return got_value == int(value)


def results_match(expected: list[Mapping[str, Any]], got: Any) -> bool:
    """All results match, and there are exactly as many as expected."""
    if not isinstance(got, list | tuple) or len(got) != len(expected):
        return False
    return all(value_matches(e, g) for e, g in zip(expected, got, strict=True))


def _float_text(typ: str, bits: int) -> str:
    """A float bit pattern as a readable number, so failure reports need no hex decoding."""
    try:
        if typ == "f32":
            f = struct.unpack("<f", struct.pack("<I", bits))[0]
        else:
            f = struct.unpack("<d", struct.pack("<Q", bits))[0]
    except (struct.error, OverflowError, TypeError):
        return "?"
    return "nan" if math.isnan(f) else repr(f)


def format_value(typ: str, value: Any) -> str:
    """``i32:42``, ``f32:1.5(0x3fc00000)``, ``externref:null``: one value for a report line."""
    if value is None or value == "null":
        return f"{typ}:null"
    if isinstance(value, str) and value.startswith("nan:"):
        return f"{typ}:{value}"
    if typ in ("f32", "f64"):
        try:
            bits = int(value)
        except (TypeError, ValueError):
            return f"{typ}:{value!r}"
        return f"{typ}:{_float_text(typ, bits)}({bits:#x})"
    if typ in ("i32", "i64"):
        try:
            bits = int(value)
        except (TypeError, ValueError):
            return f"{typ}:{value!r}"
        return f"{typ}:{bits}" if bits < 0x10000 else f"{typ}:{bits}({bits:#x})"
    if typ == "funcref":
        return f"{typ}:<func>" if not isinstance(value, str) else f"{typ}:{value}"
    return f"{typ}:{value!r}" if not isinstance(value, str) else f"{typ}:{value}"


def format_expected(values: Iterable[Mapping[str, Any]]) -> str:
    return "[" + ", ".join(format_value(v["type"], v.get("value")) for v in values) + "]"


def format_got(values: Any) -> str:
    if not isinstance(values, list | tuple):
        return f"non-list result {values!r}"
    parts = []
    for v in values:
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
            parts.append(format_value(v[0], v[1]))
        else:
            parts.append(f"<malformed result {v!r}>")
    return "[" + ", ".join(parts) + "]"


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------


@dataclass
class Failure:
    """One failed command, with enough context to reproduce it without opening the JSON."""

    file: str
    line: int
    command: str
    expected: str
    got: str
    traceback: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}.wast:{self.line}: {self.command}: expected {self.expected}, got {self.got}"
        if self.traceback:
            text += "\n      " + self.traceback.replace("\n", "\n      ")
        return text


@dataclass
class Mismatch:
    """The right exception class with different wording than the spec (informational only)."""

    file: str
    line: int
    command: str
    expected_text: str
    got_text: str


@dataclass
class Outcome:
    """What one command did; streamed from a worker to the parent as soon as it is known."""

    index: int
    status: str  # "pass" | "fail" | "skip"
    failure: Failure | None = None
    mismatch: Mismatch | None = None
    seconds: float = 0.0


@dataclass
class FileResult:
    """The per-script line of the report (and of ``--json``)."""

    name: str
    passed: int = 0
    total: int = 0  # commands that were supposed to run (skipped ones excluded)
    skipped: int = 0
    skip_reason: str | None = None
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    #: the slowest commands as (seconds, line, command): where the interpreter's time goes
    slowest: list[tuple[float, int, str]] = field(default_factory=list)

    def line(self, width: int = 28) -> str:
        text = f"{self.name:<{width}} {self.passed:>5}/{self.total:<5}"
        if self.skipped:
            text += f"  (skipped {self.skipped}" + (f": {self.skip_reason})" if self.skip_reason else ")")
        if self.seconds >= 0.05:
            text += f"  [{self.seconds:.1f}s]"
        return text


# --------------------------------------------------------------------------------------------
# Running one script
# --------------------------------------------------------------------------------------------


class ModuleUnavailable(Exception):
    """A command refers to a module whose own ``module`` command failed (or never existed)."""


class _FailedModule:
    """Stands in for an instance whose ``module`` command failed, so later uses fail cleanly."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason


class _Expectation(Exception):
    """Internal: the command ran but did not do what the script expects."""

    def __init__(self, expected: str, got: str, tb: str | None = None) -> None:
        super().__init__(got)
        self.expected = expected
        self.got = got
        self.tb = tb


def _short_traceback(exc: BaseException, frames: int = 4) -> str:
    """The last few frames of an unexpected exception: enough to locate the bug, short enough to list."""
    summary = traceback.extract_tb(exc.__traceback__)[-frames:]
    lines = [f"{Path(fs.filename).name}:{fs.lineno} in {fs.name}: {(fs.line or '').strip()}" for fs in summary]
    return "\n".join(lines)


def _exc_message(exc: BaseException, limit: int = 300) -> str:
    """A trap's ``reason`` (else ``str``) on one line: report lines must stay one per failure."""
    reason = getattr(exc, "reason", None)
    msg = reason if isinstance(reason, str) else str(exc)
    msg = " | ".join(part.strip() for part in msg.splitlines() if part.strip())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _describe_exc(exc: BaseException) -> str:
    msg = _exc_message(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def make_spectest(api: Any, features: frozenset[str] = frozenset(), engine: str = "interp") -> dict[str, Any]:
    """The ``spectest`` host module every script may import from (as the reference interpreter has it).

    On wasmtime its memory and table live in a wasmtime store made here (wasmtime links within a
    store only): the script's instances that import them are instantiated in that store; its
    shared memory is a wasmtime shared memory, which any store can import."""

    def nothing(*_args: Any) -> None:
        return None

    prints = {
        "print": [],
        "print_i32": ["i32"],
        "print_i64": ["i64"],
        "print_f32": ["f32"],
        "print_f64": ["f64"],
        "print_i32_f32": ["i32", "f32"],
        "print_f64_f64": ["f64", "f64"],
    }
    module: dict[str, Any] = {name: api.HostFunc(params, [], nothing) for name, params in prints.items()}
    module["global_i32"] = api.Global("i32", 666, mutable=False)
    module["global_i64"] = api.Global("i64", 666, mutable=False)
    module["global_f32"] = api.Global("f32", 666.6, mutable=False)
    module["global_f64"] = api.Global("f64", 666.6, mutable=False)
    if engine == "wasmtime":
        from wasmig.engines.wasmtime.api import WasmtimeMemory, WasmtimeTable, new_store

        store = new_store()
        module["table"] = WasmtimeTable.create(store, "funcref", 10, 20)
        module["memory"] = WasmtimeMemory.create(store, 1, 2)
    else:
        module["table"] = api.Table("funcref", 10, 20)
        module["memory"] = api.Memory(1, 2)
    if "threads" in features and engine == "wasmtime":  # the threads proposal's testsuite imports a shared memory
        from wasmig.engines.wasmtime.api import WasmtimeSharedMemory

        module["shared_memory"] = WasmtimeSharedMemory.create(1, 2)
    elif "threads" in features:
        module["shared_memory"] = api.Memory(1, 2, shared=True)
    return module


def describe_command(cmd: Mapping[str, Any]) -> str:
    """``assert_return $M.invoke "add"(i32:1, i32:2)`` / ``module binary.3.wasm``."""
    kind = cmd["type"]
    action = cmd.get("action")
    if action is not None:
        target = f"{action['module']}." if action.get("module") else ""
        if action.get("type") == "get":
            return f"{kind} {target}get {json.dumps(action.get('field'), ensure_ascii=False)}"
        args = ", ".join(format_value(a["type"], a.get("value")) for a in action.get("args", []))
        return f"{kind} {target}invoke {json.dumps(action.get('field'), ensure_ascii=False)}({args})"
    if kind == "register":
        return f"register {cmd.get('name') or '<current>'} as {json.dumps(cmd.get('as'), ensure_ascii=False)}"
    text = f"{kind} {cmd.get('filename', '')}"
    if cmd.get("name"):
        text += f" ({cmd['name']})"
    return text


def is_skipped(cmd: Mapping[str, Any]) -> str | None:
    """The skip reason for one command, or ``None`` if it should run."""
    if cmd.get("module_type") == "text" or str(cmd.get("filename", "")).endswith(".wat"):
        return TEXT_REASON
    return None


class ScriptRunner:
    """Replays one wast2json script against an engine; yields one :class:`Outcome` per command.

    ``api`` is the ``wasmig`` module (or anything with the same names): injecting it lets the
    harness itself be unit-tested without an interpreter.
    """

    def __init__(self, json_path: Path, api: Any, engine: str = "interp",
                 features: frozenset[str] = frozenset()) -> None:
        self.json_path = Path(json_path)
        self.features = frozenset(features)
        self.name = self.json_path.stem
        self.api = api
        self.engine = engine
        self.commands: list[dict[str, Any]] = json.loads(self.json_path.read_text(encoding="utf-8"))["commands"]
        self.current: Any = None
        self.named: dict[str, Any] = {}
        self.registered: dict[str, dict[str, Any]] = {}
        self._spectest: dict[str, Any] | None = None

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> Iterator[Outcome]:
        for index, cmd in enumerate(self.commands):
            start = time.perf_counter()
            outcome = self.run_command(index, cmd)
            outcome.seconds = time.perf_counter() - start
            yield outcome

    def run_command(self, index: int, cmd: dict[str, Any]) -> Outcome:
        line = int(cmd.get("line", 0))
        if is_skipped(cmd):
            return Outcome(index, "skip")
        handler: Callable[[dict[str, Any]], Mismatch | None] | None = getattr(self, "_cmd_" + cmd["type"], None)
        try:
            if handler is None:
                raise _Expectation("a known command", f"unknown command type {cmd['type']!r}")
            mismatch = handler(cmd)
        except _Expectation as exp:
            return Outcome(
                index, "fail", Failure(self.name, line, describe_command(cmd), exp.expected, exp.got, exp.tb)
            )
        except ModuleUnavailable as exc:
            return Outcome(index, "fail", Failure(self.name, line, describe_command(cmd), "a usable module", str(exc)))
        except Exception as exc:  # a harness or API-shape bug: record it and carry on
            return Outcome(
                index,
                "fail",
                Failure(
                    self.name,
                    line,
                    describe_command(cmd),
                    "no Python exception",
                    _describe_exc(exc),
                    _short_traceback(exc),
                ),
            )
        if mismatch is not None:
            mismatch.line = line
            mismatch.command = describe_command(cmd)
        return Outcome(index, "pass", mismatch=mismatch)

    # --- helpers ------------------------------------------------------------------------------
    def _imports(self) -> dict[str, dict[str, Any]]:
        """``spectest`` plus everything registered so far; ``spectest`` is built on first use, once."""
        if self._spectest is None:
            try:
                self._spectest = make_spectest(self.api, self.features, self.engine)
            except Exception as exc:  # the host externs are API under test too: fail the command
                raise _Expectation("spectest host externs", _describe_exc(exc), _short_traceback(exc)) from exc
        imports: dict[str, dict[str, Any]] = {"spectest": self._spectest}
        imports.update(self.registered)
        return imports

    def _load(self, cmd: Mapping[str, Any]) -> Any:
        data = (self.json_path.parent / cmd["filename"]).read_bytes()
        if self.features:
            return self.api.Module.from_bytes(data, features=self.features)
        return self.api.Module.from_bytes(data)

    def _instantiate(self, module: Any) -> Any:
        return self.api.Instance(module, imports=self._imports(), engine=self.engine)

    def _instance(self, name: str | None) -> Any:
        inst = self.named.get(name) if name else self.current
        if name and name not in self.named:
            raise ModuleUnavailable(f"no module named {name}")
        if inst is None:
            raise ModuleUnavailable("no module instantiated yet")
        if isinstance(inst, _FailedModule):
            raise ModuleUnavailable(f"module from line {inst.line} failed: {inst.reason}")
        return inst

    def _unexpected(self, expected: str, exc: BaseException) -> _Expectation:
        """A wasmig error of the wrong class is a plain failure; anything else gets a traceback."""
        tb = None if isinstance(exc, self.api.WasmError) else _short_traceback(exc)
        return _Expectation(expected, _describe_exc(exc), tb)

    def _mismatch(self, cmd: Mapping[str, Any], exc: BaseException) -> Mismatch | None:
        """Spec interpreters match the message as a prefix; substring is as lenient as wasmig needs."""
        text = cmd.get("text")
        got = _exc_message(exc)
        if not text or text in got:
            return None
        return Mismatch(self.name, 0, "", text, got)

    def _do_action(self, action: Mapping[str, Any]) -> Any:
        inst = self._instance(action.get("module"))
        field_name = action["field"]
        if action["type"] == "invoke":
            args = [self.api.Val(*parse_arg(a)) for a in action.get("args", [])]
            return inst.invoke(field_name, *args, raw=True)
        if action["type"] == "get":
            glob = inst.exports[field_name]
            raw = getattr(glob, "raw", None)
            return [tuple(raw)] if raw is not None else [glob.value]
        raise _Expectation("invoke or get", f"unknown action type {action['type']!r}")

    # --- commands -----------------------------------------------------------------------------
    def _cmd_module(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("name")
        self.current = _FailedModule(int(cmd.get("line", 0)), "not loaded")
        if name:
            self.named[name] = self.current
        try:
            inst = self._instantiate(self._load(cmd))
        except Exception as exc:
            reason = exc.got if isinstance(exc, _Expectation) else _describe_exc(exc)
            self.current = _FailedModule(int(cmd.get("line", 0)), reason)
            if name:
                self.named[name] = self.current
            if isinstance(exc, _Expectation):
                raise
            raise self._unexpected("module instantiates", exc) from exc
        self.current = inst
        if name:
            self.named[name] = inst

    def _cmd_register(self, cmd: dict[str, Any]) -> None:
        inst = self._instance(cmd.get("name"))
        exports = inst.exports
        self.registered[cmd["as"]] = {key: exports[key] for key in exports}

    def _cmd_action(self, cmd: dict[str, Any]) -> None:
        try:
            self._do_action(cmd["action"])
        except (ModuleUnavailable, _Expectation):
            raise
        except Exception as exc:
            raise self._unexpected("runs without error", exc) from exc

    def _cmd_assert_return(self, cmd: dict[str, Any]) -> None:
        expected = cmd.get("expected", [])
        try:
            got = self._do_action(cmd["action"])
        except (ModuleUnavailable, _Expectation):
            raise
        except Exception as exc:
            raise self._unexpected(format_expected(expected), exc) from exc
        if not results_match(expected, got):
            raise _Expectation(format_expected(expected), format_got(got))

    def _expect_trap(self, cmd: dict[str, Any], exc_class: type[BaseException], what: str) -> Mismatch | None:
        expected = f"{what} {json.dumps(cmd.get('text', ''))}"
        try:
            if "filename" in cmd:  # a module whose instantiation traps (start function, segments)
                module = self._load(cmd)
                self._instantiate(module)
                got = "instantiated without trapping"
            else:
                got = "returned " + format_got(self._do_action(cmd["action"]))
        except (ModuleUnavailable, _Expectation):
            raise
        except exc_class as exc:
            return self._mismatch(cmd, exc)
        except Exception as exc:
            raise self._unexpected(expected, exc) from exc
        raise _Expectation(expected, got)

    def _cmd_assert_trap(self, cmd: dict[str, Any]) -> Mismatch | None:
        return self._expect_trap(cmd, self.api.Trap, "Trap")

    def _cmd_assert_exhaustion(self, cmd: dict[str, Any]) -> Mismatch | None:
        return self._expect_trap(cmd, self.api.Exhaustion, "Exhaustion")

    def _cmd_assert_uninstantiable(self, cmd: dict[str, Any]) -> Mismatch | None:
        return self._expect_trap(cmd, self.api.Trap, "Trap at instantiation")

    def _expect_load_error(self, cmd: dict[str, Any], exc_class: type[BaseException], what: str) -> Mismatch | None:
        expected = f"{what} {json.dumps(cmd.get('text', ''))}"
        try:
            self._load(cmd)
        except exc_class as exc:
            return self._mismatch(cmd, exc)
        except Exception as exc:
            raise self._unexpected(expected, exc) from exc
        raise _Expectation(expected, "module loaded")

    def _cmd_assert_invalid(self, cmd: dict[str, Any]) -> Mismatch | None:
        return self._expect_load_error(cmd, self.api.ValidationError, "ValidationError")

    def _cmd_assert_malformed(self, cmd: dict[str, Any]) -> Mismatch | None:
        return self._expect_load_error(cmd, self.api.DecodeError, "DecodeError")

    def _cmd_assert_unlinkable(self, cmd: dict[str, Any]) -> Mismatch | None:
        expected = f"LinkError {json.dumps(cmd.get('text', ''))}"
        try:
            module = self._load(cmd)
        except Exception as exc:
            raise self._unexpected(f"module loads, then {expected}", exc) from exc
        try:
            self._instantiate(module)
        except self.api.LinkError as exc:
            return self._mismatch(cmd, exc)
        except Exception as exc:
            raise self._unexpected(expected, exc) from exc
        raise _Expectation(expected, "instantiated")


# --------------------------------------------------------------------------------------------
# Running many scripts: forked workers, per-file timeout
# --------------------------------------------------------------------------------------------


@dataclass
class Script:
    """One ``.wast`` file as the parent sees it: converted, counted, maybe skipped."""

    name: str
    json_path: Path | None
    commands: list[dict[str, Any]]
    skip_reason: str | None = None  # the whole file
    error: str | None = None  # conversion failed
    features: frozenset[str] = frozenset()  # proposals its modules are decoded with ("threads")

    @property
    def runnable(self) -> int:
        return sum(1 for c in self.commands if not is_skipped(c))


def testsuite_dir() -> Path:
    """``$WASMIG_TESTSUITE``, else the shared checkout next to the repo (``../shared/wasm-testsuite/core``)."""
    override = os.environ.get("WASMIG_TESTSUITE")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "wasm-testsuite" / "core"


def discover(suite: Path, only: list[str] | None) -> list[Path]:
    """The ``.wast`` files to run, in name order; ``--only`` takes stems with or without ``.wast``."""
    files = sorted(suite.glob("*.wast"))
    if only:
        wanted = {Path(n).name.removesuffix(".wast") for n in only}
        missing = wanted - {f.stem for f in files}
        if missing:
            raise SystemExit(f"no such spec script(s) in {suite}: {', '.join(sorted(missing))}")
        files = [f for f in files if f.stem in wanted]
    return files


def prepare(wast: Path, cache_root: Path, features: frozenset[str] = frozenset()) -> Script:
    """Convert one script (cached) and decide whether it runs at all. With the ``threads`` feature
    the script is converted with ``--enable-threads`` into a cache of its own (the threads suite
    reuses the core suite's file names)."""
    skip = SIMD_REASON if wast.stem.startswith("simd_") else None
    extra = ["--enable-threads"] if "threads" in features else []
    if extra:
        cache_root = Path(cache_root).with_name(Path(cache_root).name + "-threads")
    try:
        json_path = convert_wast(wast, cache_root, extra)
        commands = json.loads(json_path.read_text(encoding="utf-8"))["commands"]
    except Exception as exc:
        return Script(wast.stem, None, [], skip, f"conversion failed: {_describe_exc(exc)}", features)
    return Script(wast.stem, json_path, commands, skip, features=features)


def _limit_memory(limit_mb: int) -> None:
    """Cap the worker's address space so a runaway allocation raises MemoryError instead of OOM-killing."""
    if limit_mb <= 0:
        return
    try:
        import resource

        limit = limit_mb * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def _worker(
    json_path: Path, api_name: str, engine: str, memory_limit_mb: int, conn: multiprocessing.connection.Connection,
    features: frozenset[str] = frozenset(),
) -> None:
    """Child process: run one script and stream outcomes; the parent does all bookkeeping."""
    _limit_memory(memory_limit_mb)
    try:
        api = importlib.import_module(api_name)
        runner = ScriptRunner(json_path, api, engine, features)
        for outcome in runner.run():
            conn.send(outcome)
        conn.send("done")
    except BaseException as exc:  # report instead of dying silently
        try:
            conn.send(("error", _describe_exc(exc), _short_traceback(exc, 8)))
        except Exception:
            pass
    finally:
        conn.close()


class _Job:
    """Parent-side state of one running script."""

    def __init__(self, script: Script, proc: multiprocessing.process.BaseProcess, conn: Any, timeout: float) -> None:
        self.script = script
        self.proc = proc
        self.conn = conn
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.result = FileResult(script.name, total=script.runnable, skipped=len(script.commands) - script.runnable)
        if self.result.skipped:
            self.result.skip_reason = TEXT_REASON
        self.next_index = 0  # the first command without an outcome yet
        self.done = False

    def apply(self, outcome: Outcome) -> None:
        self.next_index = outcome.index + 1
        if outcome.status == "pass":
            self.result.passed += 1
        elif outcome.status == "fail" and outcome.failure is not None:
            self.result.failures.append(outcome.failure)
        if outcome.mismatch is not None:
            self.result.mismatches.append(outcome.mismatch)
        if outcome.seconds >= SLOW_COMMAND_SECONDS:
            cmd = self.script.commands[outcome.index]
            slowest = self.result.slowest
            slowest.append((round(outcome.seconds, 3), int(cmd.get("line", 0)), describe_command(cmd)))
            slowest.sort(reverse=True)
            del slowest[SLOWEST_KEPT:]

    def abort(self, why: str, tb: str | None = None) -> None:
        """The worker stopped early: everything it did not report on is failed, with one record."""
        commands = self.script.commands
        remaining = sum(1 for c in commands[self.next_index :] if not is_skipped(c))
        if self.next_index < len(commands):
            cmd = commands[self.next_index]
            where, what = int(cmd.get("line", 0)), describe_command(cmd)
        else:
            where, what = 0, "(after the last command)"
        got = f"{why}; {remaining} command(s) not run" if remaining else why
        self.result.failures.append(Failure(self.script.name, where, what, "the script to finish", got, tb))
        self.done = True


def run_scripts(
    scripts: list[Script],
    jobs: int = 2,
    timeout: float = 240.0,
    engine: str = "interp",
    memory_limit_mb: int = 4096,
    on_result: Callable[[FileResult], None] | None = None,
    api_name: str = "wasmig",
    start_method: str | None = None,
) -> list[FileResult]:
    """Run the scripts in worker processes, at most ``jobs`` at a time, biggest first.

    ``api_name`` is the module the workers import as the engine API: ``wasmig`` except in the
    runner's own tests, which substitute a fake that hangs or crashes on purpose.

    Biggest first because the few large scripts (``memory_copy``, ``f32``, ...) dominate the
    wall time; starting them early keeps both cores busy until the end.
    """
    results: dict[str, FileResult] = {}
    pending: list[Script] = []
    for script in scripts:
        if script.error is not None:
            res = FileResult(script.name, total=1)
            res.failures.append(Failure(script.name, 0, "convert", "wast2json output", script.error))
            results[script.name] = res
        elif script.skip_reason is not None:
            res = FileResult(script.name, skipped=len(script.commands), skip_reason=script.skip_reason)
            results[script.name] = res
        else:
            pending.append(script)
        if script.name in results and on_result is not None:
            on_result(results[script.name])
    pending.sort(key=lambda s: -len(s.commands))

    ctx = _mp_context(api_name, start_method)
    running: list[_Job] = []

    def finish(job: _Job) -> None:
        job.proc.join(5)
        if job.proc.is_alive():
            job.proc.kill()
            job.proc.join()
        job.conn.close()
        job.result.seconds = time.monotonic() - job.start
        results[job.script.name] = job.result
        if on_result is not None:
            on_result(job.result)

    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                script = pending.pop(0)
                parent_conn, child_conn = ctx.Pipe(duplex=False)
                assert script.json_path is not None
                proc = ctx.Process(
                    target=_worker,
                    args=(script.json_path, api_name, engine, memory_limit_mb, child_conn, script.features),
                    name=f"spec-{script.name}",
                    daemon=True,
                )
                proc.start()
                child_conn.close()
                running.append(_Job(script, proc, parent_conn, timeout))

            now = time.monotonic()
            wait_for = max(0.0, min(job.deadline for job in running) - now)
            ready = multiprocessing.connection.wait([job.conn for job in running], timeout=wait_for)
            for job in list(running):
                if job.conn in ready:
                    _drain(job)
                if not job.done and time.monotonic() >= job.deadline:
                    _drain(job)  # keep the outcomes already in the pipe (before the kill, so EOF means a crash)
                    if not job.done:
                        job.proc.kill()
                        job.abort(f"timed out after {timeout:.0f}s")
                if job.done:
                    running.remove(job)
                    finish(job)
    finally:
        for job in running:
            job.proc.kill()
            job.proc.join()
    return [results[s.name] for s in scripts]


def _mp_context(api_name: str, start_method: str | None) -> multiprocessing.context.BaseContext:
    """``fork`` when it is safe, because workers then inherit the imported interpreter for free.

    Forking a process that has other threads (a pytest-xdist worker, an embedding app) can
    leave a lock held forever in the child, so then a fork server is used instead, preloaded
    with the runner and the API so each worker still starts without re-importing them.
    """
    methods = multiprocessing.get_all_start_methods()
    if start_method is None:
        if "fork" in methods and threading.active_count() == 1:
            start_method = "fork"
        else:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        runner_module = __name__ if __name__ != "__main__" else "tests.spec.runner"
        ctx.set_forkserver_preload([runner_module, api_name])
    return ctx


def _drain(job: _Job) -> None:
    """Read everything the worker has sent; notice a clean end, an error report or a dead worker."""
    try:
        while job.conn.poll():
            msg = job.conn.recv()
            if isinstance(msg, Outcome):
                job.apply(msg)
            elif msg == "done":
                job.done = True
                return
            elif isinstance(msg, tuple) and msg and msg[0] == "error":
                job.abort(f"worker error {msg[1]}", msg[2])
                return
    except (EOFError, OSError):
        job.proc.join(5)
        code = job.proc.exitcode
        if code is not None and code < 0:
            import signal

            try:
                why = f"worker killed by {signal.Signals(-code).name}"
            except ValueError:
                why = f"worker killed by signal {-code}"
        else:
            why = f"worker exited with code {code}"
        job.abort(why)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def failure_kind(failure: Failure) -> str:
    """A coarse cause bucket (command type + what happened) for the summary table."""
    kind = failure.command.split(" ", 1)[0]
    got = failure.got
    if got.startswith("[") or got.startswith("returned ["):
        what = "wrong result"
    elif ":" in got:
        what = got.split(":", 1)[0]
        if what == "Trap":
            what = f"Trap({_exc_text(got)})"
    else:
        what = got.split(";", 1)[0]
    return f"{kind}: {what}"


def _exc_text(got: str) -> str:
    return got.split(":", 1)[1].strip()[:60]


@dataclass
class Totals:
    passed: int
    total: int
    skipped_text: int
    skipped_simd: int
    mismatches: int
    failures: int
    seconds: float

    @property
    def pass_rate(self) -> float:
        return 100.0 * self.passed / self.total if self.total else 0.0


def totals(results: list[FileResult], seconds: float) -> Totals:
    return Totals(
        passed=sum(r.passed for r in results),
        total=sum(r.total for r in results),
        skipped_text=sum(r.skipped for r in results if r.skip_reason == TEXT_REASON),
        skipped_simd=sum(r.skipped for r in results if r.skip_reason == SIMD_REASON),
        mismatches=sum(len(r.mismatches) for r in results),
        failures=sum(len(r.failures) for r in results),
        seconds=seconds,
    )


def report(results: list[FileResult], tot: Totals, max_failures: int, out: Any = sys.stdout) -> None:
    """Totals, failures (grouped counts, then each one) and message mismatches, after the per-file lines."""
    p = out.write
    p(
        f"\nTOTAL {tot.passed}/{tot.total} passed ({tot.pass_rate:.2f}%), {tot.failures} failure(s); "
        f"skipped {tot.skipped_text} text-format + {tot.skipped_simd} SIMD command(s); {tot.seconds:.1f}s\n"
    )
    failures = [f for r in results for f in r.failures]
    if failures:
        p("\nFailures by kind:\n")
        for kind, n in Counter(failure_kind(f) for f in failures).most_common():
            p(f"  {n:6}  {kind}\n")
        p(f"\nFailures ({len(failures)}):\n")
        for f in failures[:max_failures]:
            p(f"  {f}\n")
        if len(failures) > max_failures:
            p(f"  ... and {len(failures) - max_failures} more (see --json, or raise --max-failures)\n")
    slow = sorted(((t, r.name, line, c) for r in results for t, line, c in r.slowest), reverse=True)[:10]
    if slow:
        p("\nSlowest commands:\n")
        for t, name, line, c in slow:
            p(f"  {t:7.2f}s  {name}.wast:{line}: {c[:100]}\n")
    mismatches = [m for r in results for m in r.mismatches]
    p(f"\nMessage mismatches: {len(mismatches)}")
    if mismatches:
        by_kind = Counter(m.command.split(" ", 1)[0] for m in mismatches)
        p(" (" + ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items())) + ")\n")
        traps = [m for m in mismatches if m.command.split(" ", 1)[0] in TRAP_COMMANDS]
        pairs = Counter((m.expected_text, m.got_text) for m in traps)
        for (exp, got), n in pairs.most_common(20):
            p(f"  {n:6}  trap expected {exp!r}, got {got!r}\n")
    else:
        p("\n")


def write_json(path: Path, results: list[FileResult], tot: Totals) -> None:
    data = {
        "totals": {**asdict(tot), "pass_rate": tot.pass_rate},
        "files": [
            {
                "name": r.name,
                "passed": r.passed,
                "total": r.total,
                "skipped": r.skipped,
                "skip_reason": r.skip_reason,
                "seconds": round(r.seconds, 3),
                "failures": [asdict(f) for f in r.failures],
                "message_mismatches": [asdict(m) for m in r.mismatches],
                "slowest": [{"seconds": t, "line": line, "command": c} for t, line, c in r.slowest],
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def check_api(api_name: str = "wasmig") -> str | None:
    """Why the public API cannot be used yet, or ``None``. Checked once, before forking anything.

    Importing it here also means every forked worker inherits the already-imported package.
    """
    try:
        wasmig = importlib.import_module(api_name)
    except Exception as exc:
        return f"cannot import {api_name}: {_describe_exc(exc)}"
    names = ("Module", "Instance", "Val", "HostFunc", "Global", "Memory", "Table")
    names += ("WasmError", "DecodeError", "ValidationError", "LinkError", "Trap", "Exhaustion")
    missing = [n for n in names if not hasattr(wasmig, n)]
    if missing:
        return f"{api_name} does not export {', '.join(missing)} yet"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.spec.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts (e.g. i32 br_table)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write per-file results and failures as JSON")
    parser.add_argument("--min-pass-rate", type=float, default=99.5, metavar="PCT", help="exit 1 below this")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per script before it is killed")
    parser.add_argument("--engine", default="interp", help="engine= passed to wasmig.Instance")
    parser.add_argument("--api", default="wasmig", metavar="MODULE", help="module providing the embedding API")
    parser.add_argument("--max-failures", type=int, default=200, help="failures to print (all go to --json)")
    parser.add_argument("--memory-limit-mb", type=int, default=4096, help="worker address-space cap; 0 = none")
    parser.add_argument("--suite", type=Path, default=None, help="testsuite dir (default: $WASMIG_TESTSUITE)")
    parser.add_argument("--cache", type=Path, default=CACHE_ROOT, help="wast2json output cache")
    parser.add_argument("--features", default="", metavar="NAMES",
                        help="comma-separated proposals to decode with, e.g. threads (with --suite .../threads)")
    args = parser.parse_args(argv)

    problem = check_api(args.api)
    if problem:
        print(f"spec runner: {problem}", file=sys.stderr)
        return 2
    suite = args.suite or testsuite_dir()
    if not suite.is_dir():
        print(f"spec runner: testsuite not found at {suite} (set WASMIG_TESTSUITE)", file=sys.stderr)
        return 2

    start = time.monotonic()
    features = frozenset(f.strip() for f in args.features.split(",") if f.strip())
    scripts = [prepare(w, args.cache, features) for w in discover(suite, args.only)]
    width = max([len(s.name) for s in scripts] + [10])

    finished = 0

    def progress(result: FileResult) -> None:
        # stderr, in completion order, so a long run shows signs of life; the table comes sorted
        nonlocal finished
        finished += 1
        print(f"[{finished}/{len(scripts)}] {result.line(width)}", file=sys.stderr, flush=True)

    results = run_scripts(
        scripts, args.jobs, args.timeout, args.engine, args.memory_limit_mb, on_result=progress, api_name=args.api
    )
    tot = totals(results, time.monotonic() - start)
    for result in results:
        print(result.line(width))
    report(results, tot, args.max_failures)
    if args.json:
        write_json(args.json, results, tot)
    if tot.total == 0:  # everything selected was skipped: nothing to hold to a pass rate
        return 0 if tot.failures == 0 else 1
    return 0 if tot.pass_rate >= args.min_pass_rate else 1


if __name__ == "__main__":
    sys.exit(main())
