"""The WebAssembly core spec testsuite as a pytest gate, plus tests of the spec runner itself.

The suite test runs ``python -m tests.spec.runner`` in a subprocess rather than in-process:
the runner forks worker processes, and forking a pytest-xdist worker (which has I/O threads)
is asking for deadlocks. The runner's own logic is tested in-process against
:mod:`tests.spec.fake_api`, so those tests need neither wabt nor the interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.spec import fake_api
from tests.spec import runner as spec_runner
from tests.spec.runner import (
    REPO_ROOT,
    TEXT_REASON,
    Failure,
    FileResult,
    Script,
    ScriptRunner,
    describe_command,
    failure_kind,
    format_value,
    is_skipped,
    parse_arg,
    results_match,
    run_scripts,
    value_matches,
)

MIN_PASS_RATE = 99.5

# --------------------------------------------------------------------------------------------
# Value comparison
# --------------------------------------------------------------------------------------------


def ev(typ: str, value: str | None = None) -> dict[str, Any]:
    return {"type": typ} if value is None else {"type": typ, "value": value}


@pytest.mark.parametrize(
    ("typ", "bits", "ok"),
    [
        ("f32", 0x7FC00000, True),
        ("f32", 0xFFC00000, True),  # either sign is canonical
        ("f32", 0x7FC00001, False),  # payload bits: arithmetic, not canonical
        ("f32", 0x7FA00000, False),  # signalling
        ("f32", 0x7F800000, False),  # infinity
        ("f64", 0x7FF8000000000000, True),
        ("f64", 0xFFF8000000000000, True),
        ("f64", 0x7FF8000000000001, False),
        ("f64", 0x7FC00000, False),  # an f32 canonical NaN pattern is just a small f64
    ],
)
def test_nan_canonical(typ: str, bits: int, ok: bool) -> None:
    assert value_matches(ev(typ, "nan:canonical"), (typ, bits)) is ok


@pytest.mark.parametrize(
    ("typ", "bits", "ok"),
    [
        ("f32", 0x7FC00000, True),
        ("f32", 0xFFC00000, True),
        ("f32", 0x7FC00001, True),
        ("f32", 0xFFFFFFFF, True),
        ("f32", 0x7FA00000, False),  # signalling NaN: quiet bit clear
        ("f32", 0x7F800000, False),
        ("f32", 0x3F800000, False),
        ("f64", 0x7FF8000000000000, True),
        ("f64", 0xFFFC000000000123, True),
        ("f64", 0x7FF4000000000000, False),
        ("f64", 0x7FF0000000000000, False),
    ],
)
def test_nan_arithmetic(typ: str, bits: int, ok: bool) -> None:
    assert value_matches(ev(typ, "nan:arithmetic"), (typ, bits)) is ok


def test_numbers_compare_bit_exactly() -> None:
    assert value_matches(ev("f32", "2147483648"), ("f32", 0x80000000))  # -0.0
    assert not value_matches(ev("f32", "0"), ("f32", 0x80000000))  # -0.0 is not +0.0
    assert value_matches(ev("f64", str(0x7FF8000000000123)), ("f64", 0x7FF8000000000123))  # exact payload
    assert not value_matches(ev("f64", str(0x7FF8000000000123)), ("f64", 0x7FF8000000000000))
    assert value_matches(ev("i32", "4294967295"), ("i32", 0xFFFFFFFF))
    assert not value_matches(ev("i32", "4294967295"), ("i32", -1))  # the API promises unsigned bits
    assert not value_matches(ev("i64", "1"), ("i32", 1))  # the type must match too
    assert not value_matches(ev("i32", "1"), ("i32", True))
    assert not value_matches(ev("i32", "1"), ("i32", 1.0))
    assert not value_matches(ev("i32", "1"), 1)  # not a (type, value) pair


def test_references() -> None:
    assert value_matches(ev("externref", "null"), ("externref", None))
    assert not value_matches(ev("externref", "null"), ("externref", 0))  # host ref 0 is not null
    assert value_matches(ev("externref", "7"), ("externref", 7))
    assert not value_matches(ev("externref", "7"), ("externref", 8))
    assert not value_matches(ev("externref", "7"), ("externref", None))
    assert value_matches(ev("funcref", "null"), ("funcref", None))
    assert value_matches(ev("funcref", "0"), ("funcref", object()))  # any non-null funcref
    assert not value_matches(ev("funcref", "0"), ("funcref", None))
    assert not value_matches(ev("funcref", "null"), ("externref", None))


def test_results_match_counts_results() -> None:
    expected = [ev("i32", "1"), ev("i64", "2")]
    assert results_match(expected, [("i32", 1), ("i64", 2)])
    assert not results_match(expected, [("i32", 1)])
    assert not results_match(expected, [("i32", 1), ("i64", 2), ("i32", 3)])
    assert results_match([], [])
    assert not results_match([], None)


# --------------------------------------------------------------------------------------------
# Parsing wast2json commands
# --------------------------------------------------------------------------------------------


def test_parse_arg() -> None:
    assert parse_arg(ev("i32", "4294967295")) == ("i32", 0xFFFFFFFF)
    assert parse_arg(ev("f64", "9221120237041090560")) == ("f64", 0x7FF8000000000000)
    assert parse_arg(ev("externref", "null")) == ("externref", None)
    assert parse_arg(ev("externref", "3")) == ("externref", 3)
    assert parse_arg(ev("funcref", "null")) == ("funcref", None)
    for bad in (ev("i32", str(1 << 32)), ev("i32", "-1"), ev("v128"), ev("i32")):
        with pytest.raises(ValueError):
            parse_arg(bad)


def test_describe_and_skip() -> None:
    cmd = {
        "type": "assert_return",
        "line": 3,
        "action": {"type": "invoke", "module": "$M", "field": "f\u00e9", "args": [ev("i32", "1"), ev("f32", "0")]},
        "expected": [],
    }
    assert describe_command(cmd) == 'assert_return $M.invoke "f\u00e9"(i32:1, f32:0.0(0x0))'
    get = {"type": "assert_return", "line": 4, "action": {"type": "get", "field": "g"}, "expected": []}
    assert describe_command(get) == 'assert_return get "g"'
    text = {
        "type": "assert_malformed",
        "line": 5,
        "filename": "x.1.wat",
        "text": "unknown operator",
        "module_type": "text",
    }
    binary = {**text, "filename": "x.2.wasm", "module_type": "binary"}
    assert is_skipped(text) == TEXT_REASON
    assert is_skipped(binary) is None
    assert format_value("f32", "nan:canonical") == "f32:nan:canonical"
    assert format_value("f32", str(0x7FC00000)) == "f32:nan(0x7fc00000)"


def test_failure_kind_buckets() -> None:
    f = Failure("i32", 1, 'assert_return invoke "f"()', "[i32:1]", "[i32:2]")
    assert failure_kind(f) == "assert_return: wrong result"
    f = Failure("i32", 1, 'assert_trap invoke "f"()', 'Trap "x"', "Trap: integer overflow")
    assert failure_kind(f) == "assert_trap: Trap(integer overflow)"
    f = Failure("i32", 1, "module i32.0.wasm", "module instantiates", "ValidationError: type mismatch")
    assert failure_kind(f) == "module: ValidationError"


# --------------------------------------------------------------------------------------------
# The runner against the fake API
# --------------------------------------------------------------------------------------------


def write_script(tmp_path: Path, modules: dict[str, str], commands: list[dict[str, Any]]) -> Path:
    """A wast2json-shaped script: ``modules`` maps file names to fake-module text."""
    for name, text in modules.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"source_filename": "fake.wast", "commands": commands}))
    return path


def invoke(field: str, *args: dict[str, Any], module: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"type": "invoke", "field": field, "args": list(args)}
    if module:
        action["module"] = module
    return action


def act(
    kind: str, line: int, action: dict[str, Any], expected: list[dict[str, Any]] | None = None, text: str | None = None
) -> dict[str, Any]:
    cmd: dict[str, Any] = {"type": kind, "line": line, "action": action, "expected": expected or []}
    if text is not None:
        cmd["text"] = text
    return cmd


def load(kind: str, line: int, filename: str, text: str, module_type: str = "binary") -> dict[str, Any]:
    return {"type": kind, "line": line, "filename": filename, "text": text, "module_type": module_type}


def run_fake(path: Path) -> tuple[list[Any], ScriptRunner]:
    runner = ScriptRunner(path, fake_api)
    return list(runner.run()), runner


def test_runner_commands(tmp_path: Path) -> None:
    modules = {
        "m0.wasm": "export g 42",
        "m1.wasm": "import reg g\nimport spectest print_i32",
        "bad.wasm": "malformed",
        "inv.wasm": "invalid",
        "unl.wasm": "unlinkable",
        "trap.wasm": "trap-start",
    }
    i1, i2 = ev("i32", "1"), ev("i32", "2")
    commands = [
        {"type": "module", "line": 1, "name": "$A", "filename": "m0.wasm"},  # 0 pass
        {"type": "register", "line": 2, "as": "reg"},  # 1 pass
        {"type": "module", "line": 3, "filename": "m1.wasm"},  # 2 pass (imports resolve)
        act("assert_return", 4, invoke("add", i1, i2), [ev("i32", "3")]),  # 3 pass
        act("assert_return", 5, invoke("add", i1, i2), [ev("i32", "4")]),  # 4 fail: wrong value
        act("assert_return", 6, {"type": "get", "module": "$A", "field": "g"}, [ev("i32", "42")]),  # 5 pass
        act("assert_trap", 7, invoke("div0"), text="integer divide by zero"),  # 6 pass
        act("assert_trap", 8, invoke("badmsg"), text="integer overflow"),  # 7 pass + message mismatch
        act("assert_trap", 9, invoke("echo"), text="x"),  # 8 fail: returned normally
        act("assert_exhaustion", 10, invoke("exhaust"), text="call stack exhausted"),  # 9 pass
        act("assert_exhaustion", 11, invoke("div0"), text="call stack exhausted"),  # 10 fail: plain trap
        load("assert_malformed", 12, "bad.wasm", "unexpected end"),  # 11 pass
        load("assert_malformed", 13, "inv.wasm", "x"),  # 12 fail: wrong class
        load("assert_invalid", 14, "inv.wasm", "type mismatch"),  # 13 pass
        load("assert_unlinkable", 15, "unl.wasm", "incompatible import type"),  # 14 pass
        load("assert_uninstantiable", 16, "trap.wasm", "unreachable"),  # 15 pass
        load("assert_malformed", 17, "x.wat", "y", "text"),  # 16 skip
        act("action", 18, invoke("boom")),  # 17 fail: Python exception
        act("assert_return", 19, invoke("signed"), [ev("i32", "4294967295")]),  # 18 fail: signed int
        act(
            "assert_return",
            20,
            invoke("echo", ev("externref", "5"), ev("funcref", "null")),
            [ev("externref", "5"), ev("funcref", "null")],
        ),  # 19 pass
        load("assert_trap", 21, "trap.wasm", "unreachable"),  # 20 pass: a module whose start traps
        load("assert_trap", 22, "m0.wasm", "unreachable"),  # 21 fail: instantiates fine
    ]
    outcomes, _ = run_fake(write_script(tmp_path, modules, commands))
    status = [o.status for o in outcomes]
    assert status == [
        "pass", "pass", "pass", "pass", "fail", "pass", "pass", "pass", "fail", "pass",
        "fail", "pass", "fail", "pass", "pass", "pass", "skip", "fail", "fail", "pass",
        "pass", "fail",
    ]  # fmt: skip
    failures = {o.index: o.failure for o in outcomes if o.failure}
    assert failures[4].got == "[i32:3]" and failures[4].expected == "[i32:4]"
    assert failures[8].got == "returned []"
    assert failures[10].got == "Trap: integer divide by zero"
    assert failures[12].got == "ValidationError: type mismatch" and failures[12].traceback is None
    assert failures[18].got == "[i32:-1]"
    assert failures[21].got == "instantiated without trapping"
    assert failures[17].got.startswith("ZeroDivisionError") and "fake_api.py" in (failures[17].traceback or "")
    mismatches = [o.mismatch for o in outcomes if o.mismatch]
    assert len(mismatches) == 1 and mismatches[0].line == 8 and mismatches[0].got_text == "something else entirely"


def test_failed_module_fails_later_commands(tmp_path: Path) -> None:
    modules = {"ok.wasm": "export g 1", "bad.wasm": "boom-decode", "imp.wasm": "import nowhere f"}
    commands = [
        {"type": "module", "line": 1, "name": "$ok", "filename": "ok.wasm"},
        {"type": "module", "line": 2, "name": "$bad", "filename": "bad.wasm"},  # IndexError in the decoder
        act("assert_return", 3, invoke("echo")),  # current is $bad
        act("assert_return", 4, invoke("echo", module="$ok")),
        {"type": "register", "line": 5, "name": "$bad", "as": "bad"},
        act("assert_return", 6, invoke("echo", module="$nope")),
        {"type": "module", "line": 7, "filename": "imp.wasm"},  # LinkError
        act("assert_return", 8, invoke("echo")),
    ]
    outcomes, _ = run_fake(write_script(tmp_path, modules, commands))
    assert [o.status for o in outcomes] == ["pass", "fail", "fail", "pass", "fail", "fail", "fail", "fail"]
    got = {o.index: o.failure.got for o in outcomes if o.failure}
    assert got[1].startswith("IndexError")
    assert got[2] == "module from line 2 failed: IndexError: bytearray index out of range"
    assert got[4].startswith("module from line 2 failed")
    assert got[5] == "no module named $nope"
    assert got[7] == "module from line 7 failed: LinkError: unknown import nowhere.f"


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_timeout_and_crash_are_reported(tmp_path: Path, start_method: str) -> None:
    """A hanging script is killed at the deadline and a dying worker is noticed; both keep their passes."""
    scripts = []
    for name, field in (("hangs", "hang"), ("crashes", "crash")):
        d = tmp_path / name
        d.mkdir()
        commands = [
            {"type": "module", "line": 1, "filename": "m.wasm"},
            act("assert_return", 2, invoke("echo")),
            act("assert_return", 3, invoke(field)),
            act("assert_return", 4, invoke("echo")),
            load("assert_malformed", 5, "t.wat", "", "text"),
        ]
        path = write_script(d, {"m.wasm": ""}, commands)
        scripts.append(Script(name, path, commands))
    results = run_scripts(
        scripts, jobs=2, timeout=3, memory_limit_mb=0, api_name="tests.spec.fake_api", start_method=start_method
    )
    by_name = {r.name: r for r in results}
    for name, why in (("hangs", "timed out after 3s"), ("crashes", "worker killed by SIGKILL")):
        res = by_name[name]
        assert (res.passed, res.total, res.skipped) == (2, 4, 1), res
        assert len(res.failures) == 1
        assert res.failures[0].line == 3
        assert res.failures[0].got == f"{why}; 2 command(s) not run"


def test_file_result_line() -> None:
    res = FileResult("f32", passed=2510, total=2512, skipped=2, skip_reason=TEXT_REASON)
    assert res.line(10) == "f32         2510/2512   (skipped 2: text format)"


# --------------------------------------------------------------------------------------------
# The suite itself
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [None, "1"], ids=["default", "all-compiled"])
def test_spec_suite(tmp_path: Path, threshold: str | None) -> None:
    """Every non-SIMD spec script through the public API: at least 99.5% of commands must pass.

    Twice: as the interpreter runs by default (most spec code runs too rarely to be compiled, so
    this is mostly the dispatch loop), and with every segment compiled at its first arrival
    (``WASMIG_SEGMENT_THRESHOLD=1``: the compiled segments and straight functions, see
    wasmig/interp/segments.py)."""
    if shutil.which("wast2json") is None:
        pytest.skip("wast2json (wabt) is not installed")
    if not spec_runner.testsuite_dir().is_dir():
        pytest.skip(f"spec testsuite not found at {spec_runner.testsuite_dir()} (set WASMIG_TESTSUITE)")
    out = tmp_path / "spec.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.spec.runner", "--json", str(out), "--min-pass-rate", str(MIN_PASS_RATE)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "WASMIG_SEGMENT_THRESHOLD": threshold} if threshold else None,
    )
    if not out.exists():
        pytest.fail(f"spec runner produced no results (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    totals = json.loads(out.read_text(encoding="utf-8"))["totals"]
    if totals["pass_rate"] < MIN_PASS_RATE:
        pytest.fail(
            f"spec pass rate {totals['pass_rate']:.2f}% < {MIN_PASS_RATE}% "
            f"({totals['passed']}/{totals['total']}):\n{proc.stdout}"
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr


#: the scripts that link host or another instance's memories, tables and globals
LINKING_SCRIPTS = ("imports", "linking", "data", "elem", "global", "table")


def test_linking_scripts_on_wasmtime(tmp_path: Path) -> None:
    """On wasmtime every command of the scripts that import memories, tables and globals passes:
    spectest's live in a wasmtime store its importers are made in (wasmig/engines/wasmtime/api.py)."""
    pytest.importorskip("wasmtime")
    if shutil.which("wast2json") is None:
        pytest.skip("wast2json (wabt) is not installed")
    if not spec_runner.testsuite_dir().is_dir():
        pytest.skip(f"spec testsuite not found at {spec_runner.testsuite_dir()} (set WASMIG_TESTSUITE)")
    out = tmp_path / "linking.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.spec.runner", "--engine", "wasmtime", "--memory-limit-mb", "0",
         "--json", str(out), "--min-pass-rate", "0", "--only", *LINKING_SCRIPTS],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.exists(), f"the spec runner wrote no results:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    results = json.loads(out.read_text(encoding="utf-8"))
    failures = [(f["file"], f["line"], f.get("got", "")) for r in results["files"] for f in r["failures"]]
    assert not failures, failures[:5]
    assert {r["name"] for r in results["files"]} == set(LINKING_SCRIPTS)
