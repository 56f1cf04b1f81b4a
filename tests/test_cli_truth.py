"""A command line that tells the truth (issue 14, item 6): what new users tripped over.

Each test runs ``python -m wasmig`` from this checkout in a subprocess (the thing under test is
the command a user types: parsing, messages on stderr, exit codes), on hand-written modules
assembled by ``wat2wasm`` and on the C programs of ``tests/programs`` where a real WASI program
is needed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HAVE_WASMTIME = importlib.util.find_spec("wasmtime") is not None
ENGINES = ["interp", pytest.param("wasmtime", marks=pytest.mark.skipif(not HAVE_WASMTIME,
                                                                       reason="wasmtime is not installed"))]


def wasmig(*args: str | Path, env: dict[str, str] | None = None, stdin: bytes = b"",
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "WASMIG_LOG"}
    return subprocess.run([sys.executable, "-m", "wasmig", *map(str, args)], input=stdin.decode(),
                          capture_output=True, text=True, timeout=timeout,
                          env={**base, "PYTHONPATH": str(REPO), **(env or {})})


def one_line_error(p: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single ``wasmig: error:`` line of a failed command (and nothing on stdout)."""
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wasmig: error: "), p.stderr
    return lines[0]


def wat(tmp_path: Path, text: str, name: str = "m.wasm") -> Path:
    if shutil.which("wat2wasm") is None:
        pytest.skip("wat2wasm missing")
    out = tmp_path / name
    subprocess.run(["wat2wasm", "-", "-o", str(out)], input=text.encode(), check=True)
    return out


FUNCS = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "mix") (param i64 f32 f64) (result i64 f32 f64) local.get 0 local.get 1 local.get 2)
  (func (export "nothing"))
  (func (export "leave") (param i32) local.get 0 call $exit)
  (func (export "trap") unreachable))
"""


# --- 1. options before PROGRAM are wasmig's, everything after it the program's ----------------------
def test_an_unknown_option_before_the_program_is_a_usage_error(tmp_path: Path) -> None:
    module = wat(tmp_path, FUNCS)
    p = wasmig("run", "--no-such-option", module)
    assert p.returncode == 2 and "No such option" in p.stderr and "--no-such-option" in p.stderr, p.stderr


def test_options_after_the_program_are_the_programs(tmp_path: Path) -> None:
    from tests.wasi_harness import program

    p = wasmig("run", "--engine", "interp", program("args_env"), "--invoke", "x", "--dir", "/")
    assert p.returncode == 0, p.stderr
    for arg in ("[--invoke]", "[x]", "[--dir]", "[/]"):
        assert arg in p.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_invoke_calls_an_export_and_prints_its_results_like_wasmtime(tmp_path: Path, engine: str) -> None:
    module = wat(tmp_path, FUNCS)
    p = wasmig("run", "--engine", engine, "--invoke", "add", module, "2", "-5")
    assert (p.returncode, p.stdout, p.stderr) == (0, "-3\n", "")
    p = wasmig("run", "--engine", engine, "--invoke", "add", module, "0x7fffffff", "1")
    assert p.stdout == "-2147483648\n", p.stderr  # i32 results are signed, as wasmtime prints them
    # each result on a line of its own; floats as Rust prints them (shortest, no exponent)
    p = wasmig("run", "--engine", engine, "--invoke", "mix", module, "0xffffffffffffffff", "0.1", "1e21")
    assert (p.returncode, p.stdout) == (0, "-1\n0.1\n1000000000000000000000\n"), p.stderr
    p = wasmig("run", "--engine", engine, "--invoke", "mix", module, "3", "-0", "nan")
    assert p.stdout == "3\n-0\nNaN\n", p.stderr
    p = wasmig("run", "--engine", engine, "--invoke", "mix", module, "1", "inf", "2.5")
    assert p.stdout == "1\ninf\n2.5\n", p.stderr
    p = wasmig("run", "--engine", engine, "--invoke", "nothing", module)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


@pytest.mark.parametrize("engine", ENGINES)
def test_invoke_exit_codes_and_traps(tmp_path: Path, engine: str) -> None:
    module = wat(tmp_path, FUNCS)
    p = wasmig("run", "--engine", engine, "--invoke", "leave", module, "7")
    assert (p.returncode, p.stdout) == (7, ""), p.stderr  # WASI is there: proc_exit ends the run
    p = wasmig("run", "--engine", engine, "--invoke", "trap", module)
    assert p.returncode == 134 and "wasm trap: unreachable" in p.stderr


@pytest.mark.parametrize("args, needle", [
    (["--invoke", "nope", "{m}"], "--invoke nope: the module exports no function of that name (its functions: "
                                  "add, leave, mix, nothing, trap)"),
    (["--invoke", "add", "{m}", "1"], "--invoke add: the function takes 2 arguments (i32 i32), 1 given"),
    (["--invoke", "add", "{m}", "1", "2", "3"], "takes 2 arguments (i32 i32), 3 given"),
    (["--invoke", "add", "{m}", "1", "x"], "--invoke add: argument 2 ('x') is not an i32"),
    (["--invoke", "add", "{m}", "1", "4294967296"], "argument 2 ('4294967296') is out of range for an i32"),
    (["--invoke", "mix", "{m}", "1", "one", "2"], "argument 2 ('one') is not an f32"),
    (["--invoke", "add", "--checkpoint-dir", "{tmp}/ck", "{m}", "1", "2"], "--invoke cannot be combined"),
    (["{m}"], "no `_start` export: it is not a WASI command (to call one of its functions, use --invoke NAME)"),
])
def test_invoke_refuses_what_it_cannot_call_in_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    module = wat(tmp_path, FUNCS)
    err = one_line_error(wasmig("run", "--engine", "interp", *(a.format(m=module, tmp=tmp_path) for a in args)))
    assert needle in err, err


# --- 2. one --dir syntax: HOST::GUEST on run, restore and serve -------------------------------------
def test_serve_takes_dir_as_host_then_guest(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    serve = ["serve", "--listen", "127.0.0.1:1", "--token-file", token]
    err = one_line_error(wasmig(*serve, "--dir", f"/data={tmp_path}"))
    assert f"--dir takes HOST::GUEST (host directory first); write --dir {tmp_path}::/data" in err, err
    err = one_line_error(wasmig(*serve, "--dir", f"{tmp_path / 'missing'}::/data"))
    assert "not a directory" in err and "missing" in err, err
    assert "HOST::GUEST" in wasmig("serve", "--help").stdout
    # run (and restore) say the same about the old form
    err = one_line_error(wasmig("run", "--dir", f"/data={tmp_path}", tmp_path / "x.wasm"))
    assert f"write --dir {tmp_path}::/data" in err, err
