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
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


# --- 1b. the parser (argparse's declarations, click's rules: wasmig/cli/parser.py's Parser) -----------------
def parsed(command: str, *args: str) -> dict[str, object]:
    """What ``wasmig COMMAND ARGS`` would call the command with (nothing runs)."""
    from wasmig.cli import COMMANDS

    return COMMANDS[command].parser(f"wasmig {command}").parse(args)


@pytest.mark.parametrize("args, program, guest_args, options", [
    (["prog.wasm", "--foo", "-x", "-h"], "prog.wasm", ("--foo", "-x", "-h"), {}),
    (["--", "prog.wasm", "--", "--help"], "prog.wasm", ("--", "--help"), {}),  # `--` before PROGRAM ends options
    (["--", "-odd.wasm", "1"], "-odd.wasm", ("1",), {}),
    (["--dir", "x.wasm", "prog.wasm", "--dir", "y"], "prog.wasm", ("--dir", "y"), {"dirs": ("x.wasm",)}),
    (["--dir=a", "--dir", "b", "--env", "-x", "--env=A=B", "p.wasm"], "p.wasm", (), {"dirs": ("a", "b"),
                                                                                     "envs": ("-x", "A=B")}),
    (["--invoke", "add", "m.wasm", "1", "-5"], "m.wasm", ("1", "-5"), {"invoke": "add"}),
    (["--invoke", "prog.wasm", "m.wasm"], "m.wasm", (), {"invoke": "prog.wasm"}),
    (["--engine=interp", "--checkpoint-at-step", "+3", "--stable-only", "p"], "p", (),
     {"engine": "interp", "checkpoint_at_step": 3, "stable_only": True, "count_steps": False}),
    (["-", "x"], "-", ("x",), {"dirs": (), "engine": None, "migrate_after": 0.0, "checkpoint_then": "continue"}),
])
def test_run_takes_options_up_to_the_program_and_passes_the_rest(args: list[str], program: str,
                                                                  guest_args: tuple[str, ...],
                                                                  options: dict[str, object]) -> None:
    values = parsed("run", *args)
    assert (values["program"], values["args"]) == (program, guest_args)
    assert {name: values[name] for name in options} == options


def test_other_commands_take_options_anywhere() -> None:
    assert parsed("inspect", "ck", "--json") == {"as_json": True, "module_path": None, "verify": False,
                                                 "trust_files": (), "max_memory": None, "snapshot": "ck"}
    assert parsed("export", "-oout.wsnap", "ck")["output"] == "out.wsnap"
    assert parsed("checkpoint", "--timeout", "2.5", "--", "42") == {"timeout": 2.5, "pid": 42}


@pytest.mark.parametrize("argv, message", [
    (["run", "--bogus", "x.wasm"], "No such option '--bogus'."),
    (["run", "--engin", "interp", "x"], "No such option '--engin'. (Did you mean one of: '--engine', '--env'?)"),
    (["run", "-vx", "x"], "No such option '-v'."),
    (["run"], "Missing argument 'PROGRAM'."),
    (["run", "--dir"], "Option '--dir' requires an argument."),
    (["run", "--migratable=1", "x"], "Option '--migratable' does not take a value."),
    (["run", "--engine", "nope", "x"], "Invalid value for '--engine': 'nope' is not one of 'interp', 'wasmtime'."),
    (["run", "--checkpoint-at-step", "0", "x"],
     "Invalid value for '--checkpoint-at-step': 0 is not in the range x>=1."),
    (["run", "--checkpoint-at-step", "1.5", "x"],
     "Invalid value for '--checkpoint-at-step': '1.5' is not a valid integer range."),
    (["run", "--migrate-after", "-1", "x"], "Invalid value for '--migrate-after': -1.0 is not in the range x>=0."),
    # nan passes every bound check and inf (or 1e400, or just a large period) overflowed setitimer: tracebacks
    (["run", "--checkpoint-every", "nan", "x"],
     "Invalid value for '--checkpoint-every': 'nan' is not a finite number."),
    (["run", "--checkpoint-every", "1e400", "x"],
     "Invalid value for '--checkpoint-every': '1e400' is not a finite number."),
    (["restore", "--checkpoint-every", "-inf", "s"],
     "Invalid value for '--checkpoint-every': '-inf' is not a finite number."),
    (["run", "--checkpoint-every", "1e12", "x"],
     "Invalid value for '--checkpoint-every': 1000000000000.0 is not in the range 0.001<=x<=1000000000.0."),
    (["run", "--migrate-after", "inf", "x"], "Invalid value for '--migrate-after': 'inf' is not a finite number."),
    (["gc", "--grace", "nan", "d"], "Invalid value for '--grace': 'nan' is not a finite number."),
    (["checkpoint", "--timeout", "-1", "1"], "Invalid value for '--timeout': -1.0 is not in the range x>=0."),
    (["checkpoint", "--timeout", "NaN", "1"], "Invalid value for '--timeout': 'NaN' is not a finite number."),
    (["run", "--checkpoint-dir", "{file}", "x"], "Invalid value for '--checkpoint-dir': Directory '{file}' is a file."),
    (["serve", "--listen", "h:1", "--token-file", "{dir}"], "Invalid value for '--token-file': File '{dir}' is a "
                                                             "directory."),
    (["restore", "--on-file-change", "x", "s"],
     "Invalid value for '--on-file-change': 'x' is not one of 'fail', 'warn', 'ignore'."),
    (["checkpoint", "x"], "Invalid value for 'PID': 'x' is not a valid integer."),
    (["checkpoint", "1", "2", "3"], "Got unexpected extra arguments (2 3)"),
    (["serve", "--token-file", "t"], "Missing option '--listen'."),
    (["export", "ck"], "Missing option '-o' / '--output'."),
    (["diff", "a"], "Missing argument 'B'."),
    (["-v"], "Missing command."),
    (["runn"], "No such command 'runn'. Did you mean 'run'?"),
    (["-x", "run"], "No such option '-x'."),
])
def test_usage_errors_say_usage_and_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], message: str) -> None:
    from wasmig.cli import main

    (tmp_path / "f").write_text("")
    argv = [a.format(file=tmp_path / "f", dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    command = " ".join(["wasmig", *argv[:1]]) if argv[0] not in ("-v", "runn", "-x") else "wasmig"
    usage, hint, blank, error = err.splitlines()
    assert (e.value.code, out) == (2, ""), err
    assert usage.startswith(f"Usage: {command} [OPTIONS]") and hint == f"Try '{command} --help' for help."
    assert (blank, error) == ("", f"Error: {message.format(file=tmp_path / 'f', dir=tmp_path)}")


def test_help_on_every_command_and_no_click(capsys: pytest.CaptureFixture[str]) -> None:
    from wasmig.cli import COMMANDS, main

    for argv in [["--help"], ["-v", "-h"], *([name, "--help"] for name in COMMANDS), ["run", "-h", "--engine", "x"]]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        out, err = capsys.readouterr()
        assert (e.value.code, err) == (0, ""), argv
        assert out.startswith(f"Usage: wasmig {argv[0] + ' ' if argv[0] in COMMANDS else ''}[OPTIONS]"), out
        assert "  -h, --help " in out
    with pytest.raises(SystemExit) as e:
        main([])  # no command: the help, on stderr, exit 2
    assert e.value.code == 2 and "Commands:\n  checkpoint  " in capsys.readouterr().err
    p = subprocess.run([sys.executable, "-c", "import sys, wasmig.cli; print(sorted(m for m in sys.modules if "
                        "m.split('.')[0] in ('click', 'socket')))"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout == "[]\n", p.stderr  # start-up: nor the command line library nor sockets


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


@pytest.mark.parametrize("command", [
    ["run"], ["restore"], ["serve", "--listen", "127.0.0.1:1", "--trust-peer", "sha256:" + "ab" * 32],
    ["cluster", "submit", "--store", "{tmp}/store"]])
def test_two_dirs_at_one_guest_path_are_refused(tmp_path: Path, command: list[str]) -> None:
    """Two host directories preopened at one guest path (or one --dir given twice) were accepted in
    silence: the guest reached one of them only (run kept the first, restore and serve the last)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "m.wasm").write_bytes(b"\0asm\1\0\0\0")
    argv = [a.format(tmp=tmp_path) for a in command]
    last = [] if command[0] == "serve" else [tmp_path / "m.wasm"]
    a, b = f"{tmp_path / 'a'}::/x", f"{tmp_path / 'b'}::/x/"
    err = one_line_error(wasmig(*argv, "--dir", a, "--dir", b, *last))
    assert err == f"wasmig: error: --dir '{b}': guest path '/x/' is already --dir '{a}' (one host directory " \
                  "per guest path)", err
    assert one_line_error(wasmig(*argv, "--dir", a, "--dir", a, *last)) == f"wasmig: error: --dir '{a}' is given twice"


# --- 3. errors that name the real cause --------------------------------------------------------------
@contextmanager
def foreign_server(answer: bytes, *, banner: bool = False) -> Iterator[str]:
    """A TCP server that is not wasmig's: it answers ``answer`` (after reading what the client
    sent, or at once with ``banner``, as SSH does) and closes. Yields its HOST:PORT."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    if not banner:
                        conn.recv(1024)
                    conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


HTTP_ANSWER = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def test_a_peer_that_is_not_wasmig_is_named_as_such() -> None:
    from wasmig.keys import KeyPair
    from wasmig.migrate.channel import Identity
    from wasmig.migrate.protocol import MigrationError, connect

    token = Identity(KeyPair.generate(), frozenset({"sha256:" + "ab" * 32}))  # never reached: the hello fails
    with foreign_server(HTTP_ANSWER) as address:
        with pytest.raises(MigrationError) as e:
            connect(address, token)
        assert str(e.value) == f"{address} is not a wasmig daemon (it answered 'HTTP/1.1 400 Bad Request')"
        with pytest.raises(MigrationError) as e:
            connect(address, token, what="gateway")
        assert str(e.value).startswith(f"{address} is not a wasmig gateway (it answered 'HTTP/1.1 400")
    with foreign_server(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", banner=True) as address:
        with pytest.raises(MigrationError, match=r"is not a wasmig daemon \(it answered 'SSH-2.0-OpenSSH_9.2p1"):
            connect(address, token)
    with foreign_server(b"\x16\x03\x01\x02\x00\x01\x00") as address:  # binary, not text: shown as bytes
        with pytest.raises(MigrationError, match=r"is not a wasmig daemon \(it answered bytes 16 03 01 02"):
            connect(address, token)
    with foreign_server(b"") as address:  # closes without a word
        with pytest.raises(MigrationError, match=rf"connection closed, without an answer \(is {address} a wasmig"):
            connect(address, token)


def test_run_names_a_foreign_gateway_and_migration_target(tmp_path: Path) -> None:
    from tests.wasi_harness import program

    fingerprint = "sha256:" + "ab" * 32
    env = {"WASMIG_KEY_DIR": str(tmp_path / "key"), "WASMIG_RUNTIME_DIR": str(tmp_path / "run")}
    with foreign_server(HTTP_ANSWER) as address:
        err = one_line_error(wasmig("run", "--engine", "interp", "--gateway", address, "--gateway-fingerprint",
                                    fingerprint, "--key", _key_dir(tmp_path), program("hello"), env=env))
        assert f"{address} is not a wasmig gateway (it answered 'HTTP/1.1 400 Bad Request')" in err, err
        p = wasmig("run", "--engine", "interp", "--migrate-to", address, "--migrate-peer-fingerprint", fingerprint,
                   "--key", _key_dir(tmp_path), program("migrate_work"), "25", "64", "20", env=env)
        assert p.returncode == 0 and "done " in p.stdout, p.stderr
        assert f"migration to {address} failed, the program goes on here: {address} is not a wasmig daemon " \
               "(it answered 'HTTP/1.1 400 Bad Request')" in p.stderr, p.stderr


def _key_dir(tmp_path: Path) -> Path:
    from wasmig.keys import KeyPair, write_key_pair

    directory = tmp_path / "key"
    if not directory.exists():
        write_key_pair(KeyPair.generate(), directory)
    return directory


COMPONENT = b"\0asm\x0d\x00\x01\x00" + bytes([0x01, 0x00])  # the component model's preamble, then a section


def test_a_component_is_named_as_such(tmp_path: Path) -> None:
    comp = tmp_path / "app.wasm"
    comp.write_bytes(COMPONENT)
    expected = f"wasmig: error: {comp} is a WebAssembly component, not a core module: wasmig runs core modules " \
               "(wasm32-wasip1)"
    assert one_line_error(wasmig("run", comp)) == expected
    assert one_line_error(wasmig("restore", "--module", comp, tmp_path / "x.snap")) == expected
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x02\x00\x00\x00")  # an unknown core version is still just that
    err = one_line_error(wasmig("run", bad))
    assert "WebAssembly component" not in err and "unknown binary version" in err, err


@pytest.mark.parametrize("spec, problem", [
    ("127.0.0.1:99999", "port 99999 is out of range (0-65535)"),
    (":abc", "the port 'abc' is not a number"),
    ("127.0.0.1:", "no port after the ':'"),
    (":8080", "no host before the port"),
    ("localhost", "expected HOST:PORT"),
])
def test_a_bad_tcplisten_names_the_problem(tmp_path: Path, spec: str, problem: str) -> None:
    err = one_line_error(wasmig("run", "--tcplisten", spec, tmp_path / "x.wasm"))
    assert err.startswith(f"wasmig: error: bad --tcplisten {spec!r}: ") and problem in err, err


def test_restore_names_a_missing_module(tmp_path: Path) -> None:
    err = one_line_error(wasmig("restore", "--module", tmp_path / "gone.wasm", tmp_path / "x.snap"))
    assert err == f"wasmig: error: --module {tmp_path / 'gone.wasm'}: no such file"


@pytest.mark.parametrize(("options", "clash"), [
    (["--checkpoint-dir", "{ck}"], "--checkpoint-dir"),
    (["--count-steps"], "--count-steps"),
    (["--migratable"], "--migratable"),
    (["--migrate-to", "127.0.0.1:1"], "--migrate-to"),
])
def test_plain_refuses_the_options_that_ask_for_checkpoints(tmp_path: Path, options: list[str], clash: str) -> None:
    """``run --plain`` never checkpoints: an option asking for checkpoints is one line, exit 1,
    before anything is made (the checkpoint directory is not created)."""
    from tests.wasi_harness import program

    options = [o.replace("{ck}", str(tmp_path / "ck")) for o in options]
    err = one_line_error(wasmig("run", "--plain", *options, program("hello"), env={"HOME": str(tmp_path)}))
    assert err == f"wasmig: error: --plain cannot be combined with {clash} (a plain run never checkpoints)"
    assert not (tmp_path / "ck").exists()


def test_a_run_that_asked_for_no_checkpoints_survives_an_unusable_runtime_directory(tmp_path: Path) -> None:
    """Every run is checkpointable on request, which needs the runtime directory (status file,
    control socket); one that is not this user's alone does not stop a run that asked for nothing:
    one warning line, the program runs. A run that asked for checkpoints is refused as before."""
    from tests.wasi_harness import program

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    env = {"WASMIG_RUNTIME_DIR": str(shared)}
    plain = wasmig("run", "--plain", program("hello"), env=env)
    p = wasmig("run", program("hello"), env=env)
    assert p.returncode == 0 and p.stdout == plain.stdout and "hello from wasm" in p.stdout, p.stderr
    first, *rest = p.stderr.splitlines()
    assert first == (f"wasmig: warning: runtime directory {shared} is writable by others (mode 777): chmod 700 "
                     "it; this run cannot be checkpointed or migrated on request"), p.stderr
    assert rest == plain.stderr.splitlines()
    one_line_error(wasmig("run", "--checkpoint-dir", tmp_path / "ck", program("hello"), env=env))


def test_checkpoint_of_a_process_that_is_gone_or_not_wasmig(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    err = one_line_error(wasmig("checkpoint", str(gone.pid), env={"WASMIG_RUNTIME_DIR": str(tmp_path)}))
    assert err == f"wasmig: error: no process {gone.pid}"
    other = subprocess.Popen(["sleep", "60"])
    try:
        err = one_line_error(wasmig("checkpoint", str(other.pid), env={"WASMIG_RUNTIME_DIR": str(tmp_path)}))
        assert err == (f"wasmig: error: process {other.pid} is not a checkpointable wasmig run (not wasmig, or started "
                       "with --plain)")
    finally:
        other.kill()
        other.wait()


# --- 4. no silent failures ----------------------------------------------------------------------------
def test_an_unwritable_checkpoint_dir_is_an_error_before_the_program_runs(tmp_path: Path) -> None:
    from tests.wasi_harness import program

    blocker = tmp_path / "file"
    blocker.write_text("")  # a directory cannot be made beneath a file, not even by root
    ck = blocker / "ck"
    err = one_line_error(wasmig("run", "--engine", "interp", "--checkpoint-dir", ck, program("hello")))
    assert err == f"wasmig: error: --checkpoint-dir {ck}: cannot write there (Not a directory)"
    err = one_line_error(wasmig("restore", "--checkpoint-dir", ck, tmp_path / "x.snap"))
    assert err == f"wasmig: error: --checkpoint-dir {ck}: cannot write there (Not a directory)"
    p = wasmig("run", "--engine", "interp", "--checkpoint-dir", tmp_path / "new" / "ck", program("hello"))
    assert p.returncode == 0 and "wasmig" not in p.stderr, p.stderr  # a directory that can be made is made
    assert (tmp_path / "new" / "ck").is_dir() and not list((tmp_path / "new" / "ck").iterdir())


LONG = "x" * 300  # one name over NAME_MAX (255): stat fails with ENAMETOOLONG, which Path.exists/is_dir raise


@pytest.mark.parametrize("argv, needle", [
    (["restore", "--trust", "{long}", "ck"], "--trust: cannot read public key {long}: File name too long"),
    (["inspect", "--trust", "{tmp}/{long}/x", "ck"], "cannot read public key {tmp}/{long}/x: File name too long"),
    (["serve", "--listen", "127.0.0.1:{port}", "--trust-peer", "{long}"],
     "'{long}' is neither a key fingerprint (sha256:<64 hex digits>) nor a public key file"),
    (["migrate", "1", "--to", "127.0.0.1:{port}", "--peer-fingerprint", "{long}"], "is neither a key fingerprint"),
    (["run", "--migrate-to", "127.0.0.1:{port}", "--migrate-peer-fingerprint", "{long}", "x.wasm"],
     "is neither a key fingerprint"),
    (["serve", "--listen", "127.0.0.1:{port}", "--trust-peer", "{pub}", "--key", "{long}"],
     "cannot read private key {long}: File name too long"),
    (["serve", "--listen", "127.0.0.1:{port}", "--trust-peer", "{pub}", "--state-dir", "{long}"],
     "--state-dir {long}: cannot create it (File name too long)"),
    # beneath a file: serve started, and failed at each migration's first write
    (["serve", "--listen", "127.0.0.1:{port}", "--trust-peer", "{pub}", "--state-dir", "{tmp}/file/state"],
     "--state-dir {tmp}/file/state: cannot create it (Not a directory)"),
])
def test_unusable_key_and_state_paths_are_one_line(tmp_path: Path, argv: list[str], needle: str) -> None:
    """Paths that stat cannot even look at (a name over NAME_MAX, a file on the way) were tracebacks
    from pathlib; the refusal names the option's path and why."""
    (tmp_path / "file").write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing is ever contacted (each case fails before)
    fill = {"long": LONG, "tmp": tmp_path, "port": port, "pub": _key_dir(tmp_path) / "wasmig.pub"}
    p = subprocess.run([sys.executable, "-m", "wasmig", *(a.format(**fill) for a in argv)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO),
                                                                         "HOME": str(tmp_path)})
    assert needle.format(**fill) in one_line_error(p), p.stderr


def test_inspect_says_why_a_module_it_was_given_is_not_used(tmp_path: Path,
                                                             snapshot_pair: tuple[Path, Path]) -> None:
    """``inspect --module`` only adds function names, so a wrong one does not fail the summary; it
    was ignored in silence (the names just missing), now a warning says why."""
    snap = snapshot_pair[0]
    wat(tmp_path, FUNCS, "other.wasm")
    for module, why in [(tmp_path / "nothing", "no such file"), (tmp_path, "is a directory"),
                        (tmp_path / "other.wasm", "is not the module this snapshot was taken of")]:
        p = wasmig("inspect", "--module", module, snap)
        assert p.returncode == 0 and "call stack" in p.stdout, p.stderr
        (line,) = p.stderr.splitlines()
        assert line.startswith("wasmig: warning: ") and why in line and line.endswith("; function names left out")


def test_gc_of_a_file_store_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    """A mistyped file:// root was 'collected' with exit 0 ('0 snapshots, 0 pages kept'), where a
    mistyped checkpoint directory is an error; both are now."""
    missing = tmp_path / "no such root"
    err = one_line_error(wasmig("gc", f"file://{missing}"))
    assert err == f"wasmig: error: file://{missing}: no such directory"
    (tmp_path / "root").mkdir()
    p = wasmig("gc", f"file://{tmp_path / 'root'}")
    assert p.returncode == 0 and "0 snapshots" in p.stdout, p.stderr


def test_a_file_store_that_is_not_there_says_so_to_gc_and_readers(tmp_path: Path) -> None:
    """The store, not the CLI, finds its root missing: gc and a read of its latest snapshot say
    'no such directory' (a read said 'has no snapshots'); asking for the latest is still None (a
    job's store before its first checkpoint), and a store below a root that is there has no snapshots."""
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores import open_store

    missing = open_store(f"file://{tmp_path / 'gone'}")
    for op in (missing.gc, missing.load, missing.read_sealed):
        with pytest.raises(SnapshotError, match=f"^file://{tmp_path / 'gone'}: no such directory$"):
            op()
    assert missing.latest() is None
    assert one_line_error(wasmig("restore", f"file://{tmp_path / 'gone'}")).endswith(": no such directory")
    (tmp_path / "root" / ".wasmig").mkdir(parents=True)
    with pytest.raises(SnapshotError, match="has no snapshots"):
        open_store(f"file://{tmp_path / 'root' / 'job'}").load()
    # a checkpoint directory's own check, the one gc makes (the CLI no longer repeats it)
    with pytest.raises(SnapshotError, match=f"^{tmp_path / 'root'}: not a checkpoint directory"):
        open_store(str(tmp_path / "root")).check_root()
    (tmp_path / "root" / "snapshots").mkdir()
    open_store(str(tmp_path / "root")).check_root()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_damaged_module_copy_falls_back_to_the_recorded_path_or_is_named(tmp_path: Path, engine: str) -> None:
    """The checkpoint directory's module copy with a flipped byte: its decode error ('malformed value
    type') stopped the restore, naming neither the file nor the intact module at the recorded path."""
    from tests.wasi_harness import program

    prog = tmp_path / "prog.wasm"
    shutil.copyfile(program("ticker"), prog)
    ck = tmp_path / "ck"
    p = wasmig("run", "--engine", engine, "--checkpoint-dir", ck, "--checkpoint-at-step", "50",
               "--checkpoint-then", "exit", prog, "3", "0", env={"HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    (copy,) = ck.glob("module-*.wasm")
    data = bytearray(copy.read_bytes())
    data[100] ^= 1  # in the type section: a decode error, not only another hash
    copy.chmod(0o600)
    copy.write_bytes(bytes(data))
    p = wasmig("restore", "--engine", engine, ck, env={"HOME": str(tmp_path)})
    assert p.returncode == 0 and p.stdout.endswith("done\n"), p.stderr
    prog.unlink()
    err = one_line_error(wasmig("restore", "--engine", engine, ck, env={"HOME": str(tmp_path)}))
    assert err.startswith(f"wasmig: error: cannot find the module this snapshot was taken of ({copy}: "), err
    assert err.endswith("; give it with --module PATH"), err


@pytest.mark.parametrize("engine", ENGINES)
def test_checkpoint_says_at_once_why_the_run_could_not_write_it(tmp_path: Path, engine: str) -> None:
    """A snapshot the run cannot write (a file where its page store goes; a full disk alike) was
    a warning on the run's stderr only: ``wasmig checkpoint PID`` waited out its whole timeout and
    said 'wrote no snapshot within 30 s'. The run's status file now carries the failure."""
    import time

    from tests.wasi_harness import program
    from wasmig.session.status import status_path

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "pages").write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    run = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", engine, "--checkpoint-dir", str(ck),
                            str(program("ticker")), "600", "100"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env=env)
    try:
        # until the run answers requests (its status file): a fixed 2 s pause was shorter than a
        # loaded machine's start-up (a fresh HOME: the module instrumented and compiled anew), and
        # `wasmig checkpoint` then said "not a checkpointable wasmig run"
        status = status_path(run.pid, create=False)
        deadline = time.monotonic() + 60
        while not status.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run never wrote its status file"
            time.sleep(0.02)
        started = time.monotonic()
        err = one_line_error(wasmig("checkpoint", "--timeout", "60", str(run.pid), env={"HOME": str(tmp_path)}))
        assert time.monotonic() - started < 30
        assert err == (f"wasmig: error: process {run.pid} could not write the snapshot: {ck}: cannot write snapshot: "
                       f"Not a directory ({ck}/pages) (it goes on)")
        assert run.poll() is None  # the program goes on
    finally:
        run.kill()
        _, stderr = run.communicate()
    assert stderr.count("wasmig: warning: checkpoint failed, continuing: ") == 1, stderr


def closed(fds: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``wasmig ARGS`` started with the shell redirections ``fds`` (``<&-``: no fd 0 at all)."""
    return subprocess.run(["sh", "-c", f'exec "$@" {fds}', "sh", sys.executable, "-m", "wasmig", *map(str, args)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_started_without_stdin_reads_end_of_file(engine: str) -> None:
    """With fd 0 closed, wasmig's own wake-up pipe took fd 0 and the guest read its stdin from it:
    the run never ended. /dev/null goes on a missing fd 0-2 first."""
    from tests.wasi_harness import program

    p = closed("<&-", "run", "--engine", engine, program("hello"))
    assert p.returncode == 0 and "stdin: 0 bytes, 0 lines" in p.stdout, p.stderr


def test_commands_started_without_stdout_or_stderr_say_nothing_and_succeed(
        snapshot_pair: tuple[Path, Path]) -> None:
    """Python leaves ``sys.stdout`` None for a closed fd 1: each output line was an AttributeError
    traceback (inspect, diff, keygen, --version). The output now goes to /dev/null, as ``print``'s."""
    a, b = snapshot_pair
    for args in (["inspect", a], ["diff", a, a], ["--version"]):
        p = closed(">&-", *args)
        assert (p.returncode, p.stderr) == (0, ""), (args, p.stderr)
    p = closed(">&- 2>&-", "inspect", a)
    assert p.returncode == 0
    p = closed("2>&-", "inspect", a.parent / "missing.snap")
    assert p.returncode == 1 and p.stdout == ""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_checkpoint_step_never_reached_is_reported_at_exit(tmp_path: Path, engine: str) -> None:
    from tests.wasi_harness import program

    p = wasmig("run", "--engine", engine, "--checkpoint-dir", tmp_path / "ck", "--checkpoint-at-step", "1000000000",
               program("exitcode"), "3")
    assert p.returncode == 3 and p.stdout == "exiting with 3\n"  # the guest's exit code is kept
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "wasmig: warning: --checkpoint-at-step 1000000000 was never reached (the program ended at step "), p.stderr
    ended_at = int(lines[0].rsplit(" ", 1)[1].rstrip(")"))
    assert 0 < ended_at < 1000000000
    assert not (tmp_path / "ck" / "snapshots").exists() or not list((tmp_path / "ck" / "snapshots").iterdir())
    # a step that is reached: no warning
    p = wasmig("run", "--engine", engine, "--checkpoint-dir", tmp_path / "ck2", "--checkpoint-at-step",
               str(ended_at), program("exitcode"), "3")
    assert p.returncode == 3 and "never reached" not in p.stderr, p.stderr
    assert len(list((tmp_path / "ck2" / "snapshots").iterdir())) == 1


def test_restore_refuses_a_guest_directory_the_snapshot_does_not_have(tmp_path: Path) -> None:
    from tests.wasi_harness import program

    box = tmp_path / "box"
    box.mkdir()
    ck = tmp_path / "ck"
    p = wasmig("run", "--engine", "interp", "--dir", f"{box}::/box", "--checkpoint-dir", ck,
               "--checkpoint-at-step", "5", "--checkpoint-then", "exit", program("hello"))
    assert p.returncode == 0, p.stderr
    err = one_line_error(wasmig("restore", "--dir", f"{box}::/data", ck))
    assert err == f"wasmig: error: --dir {box}::/data: the snapshot has no guest directory '/data' " \
                  "(its guest directories: /box)"
    ck2 = tmp_path / "ck2"
    p = wasmig("run", "--engine", "interp", "--checkpoint-dir", ck2, "--checkpoint-at-step", "5",
               "--checkpoint-then", "exit", program("hello"))
    assert p.returncode == 0, p.stderr
    err = one_line_error(wasmig("restore", "--dir", f"{box}::/box", ck2))
    assert err.endswith("the snapshot has no guest directory '/box' (its guest directories: none)"), err
    p = wasmig("restore", "--dir", f"{box}::/box", ck)  # the directory it has: fine
    assert p.returncode == 0, p.stderr


# --- 5. exit codes as docs/cli.md's table says; one unit per quantity in inspect and diff ---------------
def test_exit_code_table_rows(tmp_path: Path) -> None:
    """0, the guest's own code, 1 (error), 2 (usage), 134 (trap): each row of the table."""
    from tests.wasi_harness import program

    assert wasmig("run", "--engine", "interp", program("exitcode"), "0").returncode == 0
    assert wasmig("run", "--engine", "interp", program("exitcode"), "42").returncode == 42
    one_line_error(wasmig("run", tmp_path / "missing.wasm"), code=1)
    one_line_error(wasmig("gc", tmp_path), code=1)
    for usage in (["run", "--bogus", "x.wasm"], ["no-such-command"], ["run"], ["checkpoint", "not-a-pid"],
                  ["run", "--engine", "nope", "x.wasm"]):
        p = wasmig(*usage)
        assert p.returncode == 2 and "Usage:" in p.stderr, (usage, p.returncode, p.stderr)
    p = wasmig("run", "--engine", "interp", program("trap"), "unreachable")
    assert p.returncode == 134 and "wasm trap" in p.stderr, p.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_exit_code_130_on_ctrl_c(engine: str) -> None:
    import signal

    from tests.wasi_harness import program

    def as_from_a_terminal() -> None:  # SIGINT at its default and unblocked, as a shell starts a command
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([sys.executable, "-m", "wasmig", "run", "--engine", engine, str(program("stdin_wait"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=as_from_a_terminal)
    try:
        proc.stdout.read(6)  # "name? ": started and blocked reading stdin
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        proc.kill()
        proc.communicate()
    # both engines exit 130 (on wasmtime the default run is the instrumented module: a --plain run
    # ends by SIGINT's default action instead, tests/test_engine_wasmtime.py)
    assert code == 130


def test_exit_code_75_for_an_in_doubt_migration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The in-doubt row (tests/test_migrate.py provokes a real one); here, the mapping itself."""
    from wasmig.cli.common import guarded
    from wasmig.session.policy import CheckpointPolicy, MigrationInDoubt

    class Closable:
        closed = False

        def close(self) -> None:
            self.closed = True

    def body() -> int:
        raise MigrationInDoubt(str(tmp_path / "in-doubt-1.snap"))

    wasi = Closable()
    assert guarded(body, wasi, CheckpointPolicy(), None) == 75 and wasi.closed
    assert "in-doubt-1.snap" in capsys.readouterr().err


@pytest.fixture()
def snapshot_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two snapshot files of the same synthetic program: memory grown, a file grown, time passed."""
    from tests.snapshot_synth import make_snapshot
    from wasmig.snapshot.state import PAGE_SIZE
    from wasmig.snapshot.store import write_single_file

    a = make_snapshot(7, pages=4)
    b = make_snapshot(7, pages=4)
    b.memories[0].data = b.memories[0].data + bytes(PAGE_SIZE)
    b.wasi.monotonic_ns += 2_500_000_000  # type: ignore[union-attr]
    fd = b.wasi.fds[3]  # type: ignore[union-attr]
    fd.size, fd.mtime_ns = 4096, 1_700_000_000_500_000_000
    paths = tmp_path / "a.snap", tmp_path / "b.snap"
    write_single_file(a, paths[0])
    write_single_file(b, paths[1])
    return paths


def test_diff_exit_status_and_json_like_diff1(tmp_path: Path, snapshot_pair: tuple[Path, Path]) -> None:
    import json

    a, b = snapshot_pair
    same = wasmig("diff", a, a)
    assert (same.returncode, same.stdout, same.stderr) == (0, "", "")
    differ = wasmig("diff", a, b)
    assert differ.returncode == 1 and differ.stderr == "" and differ.stdout, differ
    js = wasmig("diff", "--json", a, b)
    assert js.returncode == 1
    doc = json.loads(js.stdout)
    assert doc["same"] is False and doc["differences"] == differ.stdout.splitlines()
    assert json.loads(wasmig("diff", "--json", a, a).stdout) == {"a": str(a), "b": str(a), "same": True,
                                                                  "differences": []}
    trouble = wasmig("diff", a, tmp_path / "missing.snap")
    assert trouble.returncode == 2 and trouble.stderr.startswith("wasmig: error:"), trouble


def test_diff_says_seconds_and_bytes(snapshot_pair: tuple[Path, Path]) -> None:
    a, b = snapshot_pair
    text = wasmig("diff", a, b).stdout
    assert "monotonic clock: 0.123457 s -> 2.623457 s (+2.500000 s)" in text, text
    assert "size 100 -> 4096 bytes" in text and "mtime 0.000000005 s -> 1700000000.500000000 s" in text, text
    assert "memory 0: size 4 -> 5 pages (+1; 262144 -> 327680 bytes)" in text, text
    assert " ns" not in text and "KiB" not in text and "MiB" not in text, text


def test_inspect_says_seconds_and_bytes(snapshot_pair: tuple[Path, Path]) -> None:
    import json
    import re

    a, _ = snapshot_pair
    text = wasmig("inspect", a).stdout
    assert "memory 0: 4 pages (262144 bytes; min 1, max 65536)" in text, text
    assert re.search(r"snapshot \d+ bytes", text) and "monotonic clock: 0.123457 s" in text, text
    assert not re.search(r"\b(KiB|MiB|GiB|B|ns|ms)\b", text), text
    summary = json.loads(wasmig("inspect", "--json", a).stdout)

    def keys(obj: object, inside_meta: bool = False) -> set[str]:
        if isinstance(obj, dict):
            return {k for k, v in obj.items() for k in (k, *keys(v, k == "meta"))} if not inside_meta else set()
        if isinstance(obj, list):
            return {k for v in obj for k in keys(v)}
        return set()

    names = keys(summary)
    assert {"created_s", "monotonic_s", "size_bytes", "mtime_s", "snapshot_bytes"} <= names, names
    assert not [k for k in names if k.endswith(("_ns", "_ms", "_kib", "_mib")) or k in ("size", "seconds")], names
    assert summary["wasi"]["monotonic_s"] == pytest.approx(0.123456789)


# --- 6. -v / WASMIG_LOG: what wasmig decides and how long it takes, only when asked ------------------
def test_verbose_logs_the_engine_and_nothing_extra_without_it(tmp_path: Path) -> None:
    from tests.wasi_harness import program

    hello = program("hello")
    quiet = wasmig("run", "--engine", "interp", hello)
    assert quiet.returncode == 0 and quiet.stderr == "this goes to stderr\n", quiet.stderr  # only the guest's
    loud = wasmig("-v", "run", "--engine", "interp", hello)
    assert loud.returncode == 0 and loud.stdout == quiet.stdout
    assert loud.stderr.splitlines() == ["wasmig: info: engine: interp (--engine interp)", "this goes to stderr"]
    by_env = wasmig("run", "--engine", "interp", hello, env={"WASMIG_LOG": "info"})
    assert by_env.stderr == loud.stderr
    assert wasmig("run", "--engine", "interp", hello, env={"WASMIG_LOG": "warning"}).stderr == quiet.stderr
    p = wasmig("-v", "run", "--checkpoint-dir", tmp_path / "ck", "--checkpoint-at-instruction", "5", hello)
    assert "wasmig: info: engine: interp (the default for what only the interpreter can do" in p.stderr, p.stderr
    p = wasmig("run", "--engine", "interp", hello, env={"WASMIG_LOG": "loud"})
    assert p.stderr.splitlines()[0] == "wasmig: warning: WASMIG_LOG='loud' is not a level (debug, info, warning, " \
                                       "error); ignored"


@pytest.mark.skipif(not HAVE_WASMTIME, reason="wasmtime is not installed")
def test_debug_logs_cache_misses_then_hits(tmp_path: Path) -> None:
    from tests.wasi_harness import program

    env = {"WASMIG_CACHE": str(tmp_path / "cache"), "WASMIG_LOG": "debug"}
    first = wasmig("run", program("hello"), env=env)
    assert "wasmig: info: engine: wasmtime (the default: the wasmtime package is installed)" in first.stderr
    assert "wasmig: debug: compiled-module cache miss: compiled " in first.stderr, first.stderr
    second = wasmig("run", program("hello"), env=env)
    assert "wasmig: debug: compiled-module cache hit: " in second.stderr, second.stderr
    ck = tmp_path / "ck"
    p = wasmig("-vv", "run", "--checkpoint-dir", ck, "--checkpoint-at-step", "20", program("exitcode"), "0", env=env)
    assert "wasmig: debug: instrumented-module cache miss: instrumented in " in p.stderr, p.stderr
    p = wasmig("-vv", "run", "--checkpoint-dir", tmp_path / "ck2", "--checkpoint-at-step", "20", program("exitcode"),
               "0", env=env)
    assert "wasmig: debug: instrumented-module cache hit: " in p.stderr, p.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_verbose_logs_checkpoint_and_restore_times(tmp_path: Path, engine: str) -> None:
    import re

    from tests.wasi_harness import program

    ck = tmp_path / "ck"
    p = wasmig("-v", "run", "--engine", engine, "--checkpoint-dir", ck, "--checkpoint-at-step", "20",
               program("exitcode"), "0")
    assert p.returncode == 0, p.stderr
    assert re.search(rf"^wasmig: info: checkpoint {re.escape(str(ck))}/snapshots/000001\.snap at step 20: capture "
                     r"\d+\.\d{3} s, write \d+\.\d{3} s \(guest stopped for \d+\.\d{3} s of it\), "
                     r"\d+ bytes written \(\d+ pages, \d+ new\)$", p.stderr, re.M), \
        p.stderr
    p = wasmig("-v", "restore", "--engine", engine, ck)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^wasmig: info: restore: snapshot read in \d+\.\d{3} s", p.stderr, re.M), p.stderr
    last = {"interp": r"state restored on the interpreter", "wasmtime": r"state loaded on wasmtime"}[engine]
    assert re.search(rf"^wasmig: info: restore: .*{last} in \d+\.\d{{3}} s( \(.*\))?$", p.stderr, re.M), p.stderr
    assert "wasmig: info" not in wasmig("restore", "--engine", engine, ck).stderr
