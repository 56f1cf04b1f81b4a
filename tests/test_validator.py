"""Tests for :mod:`wasmig.binary.validator`.

Two halves:

* hand-built IR whose per-instruction operand stacks are checked exactly, because the
  instrumentation pass and the interpreter's branch compiler derive label heights from
  ``stack_before`` and a wrong height there corrupts state silently rather than failing loudly;
* the WebAssembly spec testsuite: every module a ``.wast`` script expects to be valid must
  validate, and every binary ``assert_invalid`` module must decode and then fail validation.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wasmig.binary import opcodes as ops
from wasmig.binary.decoder import decode_module
from wasmig.binary.ir import (
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
    Module,
    TableType,
)
from wasmig.binary.validator import FunctionInfo, validate_module
from wasmig.errors import ValidationError

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = REPO_ROOT / ".cache" / "spec-json"

OP = {name: code for code, name in ops.NAMES.items() if code != 0x1C}  # 0x1C is the typed select
OP["select_t"] = 0x1C


def ins(name: str, imm: object = None) -> Instr:
    """An instruction by its text-format mnemonic, so test bodies read like the text format."""
    return Instr(OP[name], imm)


def func_module(
    params: tuple[str, ...],
    results: tuple[str, ...],
    body: list[Instr],
    *,
    extra_types: tuple[FuncType, ...] = (),
    locals_: list[tuple[int, str]] | None = None,
    **module_fields: object,
) -> Module:
    """A module with one function of type ``params -> results`` (type 0) plus ``extra_types``."""
    types = [FuncType(params, results), *extra_types]
    return Module(types=types, funcs=[Function(0, locals_ or [], body)], **module_fields)  # type: ignore[arg-type]


def info_of(module: Module) -> FunctionInfo:
    return validate_module(module).functions[0]


def label_height(info: FunctionInfo, module: Module, body: list[Instr], i: int) -> int:
    """Where the label of the block/loop/if at ``i`` sits, as the consumers compute it."""
    bt = body[i].imm
    nparams = len(module.types[bt].params) if isinstance(bt, int) else 0
    return len(info.stack_before[i]) - nparams - (1 if body[i].op == OP["if"] else 0)


# --- stack_before on hand-built functions ---------------------------------------------------


def test_straight_line() -> None:
    body = [ins("local.get", 0), ins("local.get", 1), ins("i32.add"), ins("end")]
    info = info_of(func_module(("i32", "i32"), ("i32",), body))
    assert info.stack_before == [(), ("i32",), ("i32", "i32"), ("i32",)]
    assert info.unreachable == [False] * 4
    assert info.max_stack == 2
    assert info.local_types == ("i32", "i32")


def test_local_types_params_then_locals() -> None:
    body = [ins("local.get", 2), ins("drop"), ins("end")]
    info = info_of(func_module(("f32",), (), body, locals_=[(2, "i64"), (1, "externref")]))
    assert info.local_types == ("f32", "i64", "i64", "externref")
    assert info.stack_before[1] == ("i64",)


def test_block_with_params_concatenates_outer_stack() -> None:
    body = [
        ins("i32.const", 1),
        ins("i32.const", 2),
        ins("block", 1),  # [i32] -> [i32]
        ins("i32.const", 3),
        ins("i32.add"),
        ins("end"),
        ins("i32.add"),
        ins("drop"),
        ins("end"),
    ]
    m = func_module((), (), body, extra_types=(FuncType(("i32",), ("i32",)),))
    info = info_of(m)
    assert info.stack_before == [
        (),
        ("i32",),
        ("i32", "i32"),
        ("i32", "i32"),
        ("i32", "i32", "i32"),
        ("i32", "i32"),
        ("i32", "i32"),
        ("i32",),
        (),
    ]
    assert label_height(info, m, body, 2) == 1
    assert info.max_stack == 3
    assert not any(info.unreachable)


def test_if_else_with_result() -> None:
    body = [
        ins("f64.const", 0),
        ins("local.get", 0),
        ins("if", "i64"),
        ins("i64.const", 1),
        ins("else"),
        ins("i64.const", 2),
        ins("end"),
        ins("drop"),
        ins("drop"),
        ins("end"),
    ]
    m = func_module(("i32",), (), body)
    info = info_of(m)
    assert info.stack_before == [
        (),
        ("f64",),
        ("f64", "i32"),
        ("f64",),
        ("f64", "i64"),
        ("f64",),
        ("f64", "i64"),
        ("f64", "i64"),
        ("f64",),
        (),
    ]
    assert label_height(info, m, body, 2) == 1


def test_if_with_params_and_multi_value() -> None:
    # (i32 i32) -> (i32 i32): swap in the then branch, pass through in the else branch
    body = [
        ins("i32.const", 1),
        ins("i32.const", 2),
        ins("local.get", 0),
        ins("if", 1),
        ins("local.set", 1),
        ins("local.set", 2),
        ins("local.get", 1),
        ins("local.get", 2),
        ins("else"),
        ins("end"),
        ins("end"),
    ]
    pair = FuncType(("i32", "i32"), ("i32", "i32"))
    m = func_module(("i32",), ("i32", "i32"), body, extra_types=(pair,), locals_=[(2, "i32")])
    info = info_of(m)
    assert info.stack_before[3] == ("i32", "i32", "i32")
    assert label_height(info, m, body, 3) == 0
    assert info.stack_before[4] == ("i32", "i32")  # the block params, inside the then branch
    assert info.stack_before[9] == ("i32", "i32")  # else branch starts with the params again
    assert info.stack_before[10] == ("i32", "i32")


def test_br_makes_rest_of_block_unreachable() -> None:
    body = [
        ins("i64.const", 7),
        ins("block", "i32"),
        ins("i32.const", 1),
        ins("br", 0),
        ins("i32.const", 2),  # dead
        ins("i32.add"),  # dead: pops the known i32 and an unknown operand
        ins("end"),
        ins("drop"),
        ins("drop"),
        ins("end"),
    ]
    info = info_of(func_module((), (), body))
    assert info.stack_before == [
        (),
        ("i64",),
        ("i64",),
        ("i64", "i32"),
        ("i64",),
        ("i64", "i32"),
        ("i64", "i32"),
        ("i64", "i32"),
        ("i64",),
        (),
    ]
    assert info.unreachable == [False, False, False, False, True, True, True, False, False, False]


def test_unknown_operands_in_dead_code() -> None:
    body = [ins("unreachable"), ins("select"), ins("i32.eqz"), ins("drop"), ins("end")]
    info = info_of(func_module((), (), body))
    assert info.stack_before == [(), (), (None,), ("i32",), ()]
    assert info.unreachable == [False, True, True, True, True]


def test_block_inside_dead_code_is_marked_dead() -> None:
    body = [
        ins("return"),
        ins("block"),
        ins("i32.const", 0),
        ins("drop"),
        ins("end"),
        ins("end"),
    ]
    info = info_of(func_module((), (), body))
    assert info.unreachable == [False, True, True, True, True, True]


def test_loop_label_uses_params() -> None:
    # (loop (param i32) (result i32) local.tee 0, local.get 0, br_if 0)
    body = [
        ins("local.get", 0),
        ins("loop", 1),
        ins("local.tee", 0),
        ins("local.get", 0),
        ins("br_if", 0),
        ins("end"),
        ins("end"),
    ]
    m = func_module(("i32",), ("i32",), body, extra_types=(FuncType(("i32",), ("i32",)),))
    info = info_of(m)
    assert info.stack_before == [(), ("i32",), ("i32",), ("i32",), ("i32", "i32"), ("i32",), ("i32",)]
    assert label_height(info, m, body, 1) == 0


def test_br_table_and_nested_labels() -> None:
    body = [
        ins("block"),
        ins("block", "i32"),
        ins("i32.const", 5),
        ins("local.get", 0),
        ins("br_table", ((0,), 0)),
        ins("end"),
        ins("drop"),
        ins("end"),
        ins("end"),
    ]
    info = info_of(func_module(("i32",), (), body))
    assert info.stack_before[4] == ("i32", "i32")
    assert info.stack_before[5] == ()
    assert info.unreachable[5]
    assert info.stack_before[6] == ("i32",)


def test_unchanged_stack_reuses_tuple() -> None:
    body = [ins("i32.const", 0), ins("nop"), ins("i32.clz"), ins("local.tee", 0), ins("drop"), ins("end")]
    info = info_of(func_module(("i32",), (), body))
    sb = info.stack_before
    assert sb[1] is sb[2] is sb[3] is sb[4]


def test_large_function_is_fast() -> None:
    n = 25_000
    body: list[Instr] = [ins("i32.const", 0)]
    for _ in range(n):
        body += [ins("local.get", 0), ins("i32.add"), ins("block"), ins("end")]
    body += [ins("drop"), ins("end")]
    start = time.perf_counter()
    info = info_of(func_module(("i32",), (), body))
    elapsed = time.perf_counter() - start
    assert len(info.stack_before) == len(body) > 100_000
    assert elapsed < 2.0, f"validating {len(body)} instructions took {elapsed:.2f}s"


# --- rejections -----------------------------------------------------------------------------


def rejects(module: Module, message: str) -> str:
    with pytest.raises(ValidationError) as exc:
        validate_module(module)
    text = str(exc.value)
    assert text.startswith(message), text
    return text


def test_error_names_function_instruction_offset_and_mnemonic() -> None:
    body = [Instr(OP["i32.const"], 0, 1), Instr(OP["f32.neg"], None, 3), Instr(OP["end"], None, 4)]
    m = Module(
        types=[FuncType((), ())],
        imports=[Import("env", "f", "func", 0)],
        funcs=[Function(0, [], body)],
    )
    text = rejects(m, "type mismatch")
    assert "function 1" in text and "instruction 1" in text and "0x3" in text and "f32.neg" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([ins("local.get", 3), ins("drop"), ins("end")], "unknown local"),
        ([ins("global.get", 3), ins("drop"), ins("end")], "unknown global 3"),
        ([ins("call", 9), ins("end")], "unknown function"),
        ([ins("br", 1), ins("end")], "unknown label"),
        ([ins("i32.const", 0), ins("i32.load", (0, 0)), ins("drop"), ins("end")], "unknown memory"),
        ([ins("i32.const", 0), ins("call_indirect", (0, 0)), ins("end")], "unknown table"),
        ([ins("block", 5), ins("end"), ins("end")], "unknown type"),
        ([ins("elem.drop", 0), ins("end")], "unknown elem segment"),
        ([ins("data.drop", 0), ins("end")], "unknown data segment"),
        ([ins("ref.func", 0), ins("drop"), ins("end")], "undeclared function reference"),
        (
            [ins("ref.null", "funcref"), ins("ref.null", "funcref"), ins("i32.const", 1), ins("select")]
            + [ins("drop"), ins("end")],
            "type mismatch",
        ),
        (
            [ins("i32.const", 1), ins("if", "i32"), ins("i32.const", 1), ins("end"), ins("drop"), ins("end")],
            "type mismatch",
        ),
        ([ins("i32.const", 1), ins("end")], "type mismatch"),
        ([ins("i64.const", 1), ins("i32.eqz"), ins("drop"), ins("end")], "type mismatch"),
        ([ins("i32.const", 0), ins("i32.const", 0), ins("i32.const", 0), ins("select_t", ()), ins("end")],
         "invalid result arity"),
    ],
)
def test_function_body_errors(body: list[Instr], message: str) -> None:
    rejects(func_module((), (), body), message)


def test_br_table_arity_mismatch() -> None:
    body = [
        ins("block", "i32"),
        ins("block"),
        ins("i32.const", 0),
        ins("i32.const", 0),
        ins("br_table", ((0,), 1)),
        ins("end"),
        ins("i32.const", 0),
        ins("end"),
        ins("drop"),
        ins("end"),
    ]
    rejects(func_module((), (), body), "type mismatch")


def test_global_set_immutable() -> None:
    body = [ins("i32.const", 0), ins("global.set", 0), ins("end")]
    g = Global(GlobalType("i32", False), [ins("i32.const", 0), ins("end")])
    rejects(func_module((), (), body, globals=[g]), "global is immutable")


def test_alignment() -> None:
    body = [ins("i32.const", 0), ins("i32.load16_u", (2, 0)), ins("drop"), ins("end")]
    rejects(func_module((), (), body, mems=[MemType(Limits(1))]), "alignment must not be larger than natural")


def test_memory_init_needs_data_count() -> None:
    body = [ins("i32.const", 0), ins("i32.const", 0), ins("i32.const", 0), ins("memory.init", (0, 0)), ins("end")]
    m = func_module((), (), body, mems=[MemType(Limits(1))], datas=[Data("passive", b"x")])
    rejects(m, "data count section required")
    m.data_count = 1
    validate_module(m)


def test_declared_function_reference_accepted() -> None:
    body = [ins("ref.func", 0), ins("drop"), ins("end")]
    m = func_module((), (), body, elems=[Elem("declarative", "funcref", [[ins("ref.func", 0), ins("end")]])])
    validate_module(m)
    m2 = func_module((), (), body, exports=[Export("f", "func", 0)])
    validate_module(m2)


def empty_fn_module(**fields: object) -> Module:
    return func_module((), (), [ins("end")], **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mems": [MemType(Limits(1)), MemType(Limits(1))]}, "multiple memories"),
        ({"mems": [MemType(Limits(2, 1))]}, "size minimum must not be greater than maximum"),
        ({"mems": [MemType(Limits(65537))]}, "memory size must be at most 65536 pages (4GiB)"),
        ({"tables": [TableType("funcref", Limits(3, 2))]}, "size minimum must not be greater than maximum"),
        ({"exports": [Export("a", "func", 0), Export("a", "func", 0)]}, "duplicate export name"),
        ({"exports": [Export("a", "global", 0)]}, "unknown global"),
        ({"start": 5}, "unknown function"),
        (
            {
                "globals": [
                    Global(GlobalType("i32"), [ins("i32.const", 0), ins("i32.const", 0), ins("i32.add"), ins("end")])
                ]
            },
            "constant expression required",
        ),
        ({"globals": [Global(GlobalType("i32"), [ins("i64.const", 0), ins("end")])]}, "type mismatch"),
        ({"globals": [Global(GlobalType("i32"), [ins("i32.const", 0), ins("end")]),
                      Global(GlobalType("i32"), [ins("global.get", 0), ins("end")])]}, "unknown global"),
        ({"imports": [Import("m", "g", "global", GlobalType("i32", True))],
          "globals": [Global(GlobalType("i32"), [ins("global.get", 0), ins("end")])]}, "constant expression required"),
        ({"elems": [Elem("active", "funcref", [], 0, [ins("i32.const", 0), ins("end")])]}, "unknown table"),
        ({"tables": [TableType("externref", Limits(1))],
          "elems": [Elem("active", "funcref", [], 0, [ins("i32.const", 0), ins("end")])]}, "type mismatch"),
        ({"elems": [Elem("passive", "funcref", [[ins("ref.null", "externref"), ins("end")]])]}, "type mismatch"),
        ({"datas": [Data("active", b"", 0, [ins("i32.const", 0), ins("end")])]}, "unknown memory"),
        ({"mems": [MemType(Limits(1))], "datas": [Data("active", b"", 0, [ins("i64.const", 0), ins("end")])]},
         "type mismatch"),
        ({"datas": [Data("passive", b"")], "data_count": 2}, "data count and data section have inconsistent lengths"),
    ],
)
def test_module_errors(fields: dict[str, object], message: str) -> None:
    rejects(empty_fn_module(**fields), message)


def test_start_function_type() -> None:
    m = func_module(("i32",), (), [ins("end")], start=0)
    rejects(m, "start function")


def test_mutable_global_import_export_and_const_global_get() -> None:
    m = empty_fn_module(
        imports=[
            Import("m", "g", "global", GlobalType("i32", False)),
            Import("m", "h", "global", GlobalType("f32", True)),
        ],
        globals=[Global(GlobalType("i32", True), [ins("global.get", 0), ins("end")])],
        exports=[Export("h", "global", 1), Export("g", "global", 2)],
    )
    validate_module(m)


# --- the spec testsuite ---------------------------------------------------------------------


def _testsuite_dir() -> Path:
    override = os.environ.get("WASMIG_TESTSUITE")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "wasm-testsuite" / "core"


def _local_convert(wast_path: Path, cache_root: Path) -> Path:
    """Fallback when ``tests/spec/convert.py`` is absent: run wast2json into the cache directory."""
    out_dir = cache_root / wast_path.stem
    json_path = out_dir / f"{wast_path.stem}.json"
    if json_path.exists() and json_path.stat().st_mtime >= wast_path.stat().st_mtime:
        return json_path
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["wast2json", str(wast_path), "-o", str(json_path)], check=True, capture_output=True)
    return json_path


@functools.cache
def _converter() -> Callable[[Path, Path], Path]:
    """Prefer the shared converter (one cache for every spec-based test), else the local fallback.

    Loaded by path so this file does not depend on how pytest puts the repo on ``sys.path``.
    """
    shared = REPO_ROOT / "tests" / "spec" / "convert.py"
    if not shared.exists():
        return _local_convert
    spec = importlib.util.spec_from_file_location("_wasmig_spec_convert", shared)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.convert_wast


def convert(wast_path: Path) -> Path:
    return Path(_converter()(wast_path, CACHE_ROOT))


def _wast_files() -> list[Path]:
    root = _testsuite_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*.wast") if not p.name.startswith("simd_"))


#: commands whose module must decode and validate (unlinkable/uninstantiable only fail later)
VALID_COMMANDS = ("module", "assert_unlinkable", "assert_uninstantiable")


@pytest.mark.skipif(shutil.which("wast2json") is None, reason="wast2json (wabt) not installed")
@pytest.mark.skipif(not _wast_files(), reason="spec testsuite not found (set WASMIG_TESTSUITE)")
@pytest.mark.parametrize("wast", _wast_files(), ids=lambda p: p.stem)
def test_spec_validation(wast: Path) -> None:
    json_path = convert(wast)
    commands = json.loads(json_path.read_text())["commands"]
    problems: list[str] = []
    for cmd in commands:
        kind = cmd["type"]
        if "filename" not in cmd or cmd.get("module_type", "binary") != "binary":
            continue
        where = f"{wast.name}:{cmd['line']} {kind}"
        data = (json_path.parent / cmd["filename"]).read_bytes()
        if kind in VALID_COMMANDS:
            try:
                validate_module(decode_module(data))
            except Exception as e:  # every failure is reported with its location
                problems.append(f"{where}: valid module rejected: {type(e).__name__}: {e}")
        elif kind == "assert_invalid":
            try:
                module = decode_module(data)
            except Exception as e:
                problems.append(f"{where}: invalid module failed to decode: {type(e).__name__}: {e}")
                continue
            try:
                validate_module(module)
            except ValidationError:
                continue
            except Exception as e:
                problems.append(f"{where}: validator crashed: {type(e).__name__}: {e}")
                continue
            problems.append(f"{where}: invalid module accepted (expected {cmd['text']!r})")
    assert not problems, "\n".join(problems)


def test_pathologically_deep_stack_is_refused_cleanly() -> None:
    """A hostile function piling up 30k values would record ~450M stack entries: refuse it."""
    from wasmig.binary.ir import Function, FuncType, Instr, Module
    from wasmig.binary.validator import validate_module
    from wasmig.errors import ValidationError

    n = 30_000
    body = [Instr(0x41, 0)] * n + [Instr(0x1A)] * n + [Instr(0x0B)]
    module = Module(types=[FuncType((), ())], funcs=[Function(0, [], body)])
    with pytest.raises(ValidationError, match="implementation limit"):
        validate_module(module)
