"""wasmig's WASI preview1 and ``wasmig run`` CLI, proven against wasmtime with real C programs.

Every program in ``tests/programs`` listed in :data:`CASES` runs twice -- under ``python -m
wasmig run`` and under wasmtime-py's own WASI -- in fresh copies of the same prepared
directory tree, and stdout, stderr, exit code and the resulting tree must be identical (see
``tests/wasi_harness.py`` for why differential). On top of that:

* the sandbox test also checks the *host*: nothing outside the preopen was created, changed
  or leaked into the output, whatever the reference engine did;
* the TCP echo test drives ``--tcplisten`` with real loopback clients (wasmtime-py has no
  socket preopens, so there is no reference run, only the protocol);
* the CLI tests pin down the user-facing contract: one-line errors, trap backtraces with C
  function names, exit code passthrough.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.wasi_harness import (
    REPO,
    DirSpec,
    RunResult,
    compare,
    copy_tree,
    program,
    run_both,
    run_wasmig,
    run_wasmtime,
    snapshot,
    wasmig_command,
)
from wasmig import toolchain

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV),
        reason="ziglang is not installed (pip install ziglang)",
    ),
    pytest.mark.skipif(importlib.util.find_spec("wasmtime") is None, reason="wasmtime is not installed"),
]

SANDBOX = DirSpec("sandbox", "/sandbox")


def _assert_same(expected: RunResult, got: RunResult, *, files: bool = True) -> None:
    problems = compare(expected, got, files=files)
    assert not problems, "wasmig diverges from wasmtime:\n" + "\n".join(problems)


def _wasmtime_major() -> int:
    from importlib.metadata import version

    return int(version("wasmtime").split(".")[0])


#: Behaviour that changed between the wasmtime versions pyproject allows, per program: (the
#: output line before the change, the line since, the tree path only the old behaviour leaves
#: behind, the first version with the new behaviour). wasmig follows the newest wasmtime, so
#: these lines are compared against the fixed newest answer instead of the live one: with an
#: older wasmtime installed, the reference run is pinned to it before comparing, and wasmig's
#: own output must hold the fixed line whatever wasmtime is installed.
CHANGED_BETWEEN_VERSIONS: dict[str, list[tuple[bytes, bytes, str | None, int]]] = {
    "fileops": [
        # rmdir("dir/") removes dir since wasmtime 51 (POSIX); before, EINVAL
        (b"rmdir newdir/                  ret=-1 errno=EINVAL(28)\n",
         b"rmdir newdir/                  ret=0 errno=OK(0)\n", "sandbox/newdir", 51),
    ],
}


def _pin_changed_behaviour(case: str, expected: RunResult, got: RunResult) -> RunResult:
    major = _wasmtime_major()
    for old, new, leftover, since in CHANGED_BETWEEN_VERSIONS.get(case, []):
        assert new in got.stdout, f"wasmig does not answer like wasmtime {since}+: {new!r} missing"
        if major < since:
            assert old in expected.stdout, f"wasmtime {major} no longer answers {old!r}"
            files = dict(expected.files)
            if leftover is not None:
                files.pop(leftover, None)
            expected = RunResult(expected.engine, expected.exit_code, expected.stdout.replace(old, new),
                                 expected.stderr, files, expected.wall_s, expected.trap)
    return expected


# --- prepared trees ----------------------------------------------------------------------------
def empty_sandbox(root: Path) -> None:
    (root / "sandbox").mkdir()


def listing_tree(root: Path) -> None:
    """A few entries of each type, listed by listdir before it adds its own."""
    (root / "hello.txt").write_text("hi\n")
    (root / "d").mkdir()
    (root / "d" / "x").write_text("x")
    (root / "ln").symlink_to("hello.txt")


def data_tree(root: Path) -> None:
    (root / "data").mkdir()
    listing_tree(root / "data")


SECRET = "TOPSECRET-4f9a0c-never-print-me\n"
CANARY = "listing_canary_q8z7"


def escape_tree(root: Path) -> None:
    """The preopen ``sandbox/`` with host-made escaping symlinks, and ``outside/`` next to it."""
    s = root / "sandbox"
    (s / "a" / "b").mkdir(parents=True)
    (s / "inside.txt").write_text("inside\n")
    os.symlink("/etc", s / "host_abs")
    os.symlink("..", s / "host_up")
    os.symlink("../outside/created_via_host_link", s / "host_esc")
    os.symlink("../outside/secret.txt", s / "host_secret")
    o = root / "outside"
    (o / "sub").mkdir(parents=True)
    (o / "secret.txt").write_text(SECRET)
    (o / CANARY).write_text("canary\n")


FILTER_INPUT = (
    b"the quick brown fox\n"
    + b"jumps over the lazy dog, "
    + b"and keeps on running for quite a while so this line is longer than one buffer\n"
    + "ünïcödé bytes pass through unchanged\n".encode()
    + b"\n"
    + b"".join(b"line %d of the bulk part\n" % i for i in range(150))
    + b"no newline at the end"
)

# (test id, program, args, env, stdin, dirs, prepare)
Case = tuple[str, str, list[str], dict[str, str], bytes, list[DirSpec], Callable[[Path], None] | None]
CASES: list[Case] = [
    ("fileops", "fileops", ["/sandbox"], {}, b"", [SANDBOX], empty_sandbox),
    ("listdir-dot", "listdir", ["."], {}, b"", [DirSpec(".")], listing_tree),
    ("listdir-named", "listdir", ["data"], {}, b"", [DirSpec("data")], data_tree),
    (
        "args_env",
        "args_env",
        ["one", "", "two words", "ünïcödé 😀", "--dir", "-x"],
        {"GREETING": "hello there", "EMPTY": "", "WITH_EQUALS": "a=b=c", "UNICODE": "ñ😀"},
        b"",
        [],
        None,
    ),
    ("args_env-exit9", "args_env", ["fail"], {}, b"", [], None),
    (
        "args_env-preopens",
        "args_env",
        [],
        {},
        b"",
        [SANDBOX, DirSpec("data"), DirSpec("sandbox", "/again"), DirSpec("data", "./rel/ünï")],
        lambda root: (empty_sandbox(root), data_tree(root)),
    ),
    ("clockrand", "clockrand", [], {}, b"", [], None),
    ("filter", "filter", ["> "], {}, FILTER_INPUT, [], None),
    ("filter-empty-stdin", "filter", [], {}, b"", [], None),
    ("exitcode-0", "exitcode", [], {}, b"", [], None),
    ("exitcode-42-exit", "exitcode", ["42", "exit"], {}, b"", [], None),
    ("exitcode-125", "exitcode", ["125"], {}, b"", [], None),
    ("checksum", "checksum", [], {}, b"", [], None),
]


@pytest.mark.parametrize(
    ("case", "program_name", "args", "env", "stdin", "dirs", "prepare"), CASES, ids=[c[0] for c in CASES]
)
def test_program_matches_wasmtime(
    case: str,
    program_name: str,
    args: list[str],
    env: dict[str, str],
    stdin: bytes,
    dirs: list[DirSpec],
    prepare: Callable[[Path], None] | None,
    tmp_path: Path,
) -> None:
    expected, got = run_both(program_name, args, work=tmp_path, env=env, dirs=dirs, prepare=prepare, stdin=stdin)
    assert expected.trap is None, f"the reference itself trapped: {expected.trap}"
    _assert_same(_pin_changed_behaviour(case, expected, got), got)


def test_reference_runs_are_meaningful(tmp_path: Path) -> None:
    """Guards the oracle: a differential test passes vacuously if both engines fail the same way."""
    expected = run_wasmtime(
        program("fileops"),
        ["/sandbox"],
        dirs=[SANDBOX],
        tree=_prepared(tmp_path, empty_sandbox),
        scratch=tmp_path / "s",
    )
    assert expected.exit_code == 0 and expected.stdout.endswith(b"done\n")
    assert {"sandbox/b.txt", "sandbox/log.txt", "sandbox/sub2/inner.txt", "sandbox/soft.txt"} <= set(expected.files)
    clock = run_wasmtime(program("clockrand"), scratch=tmp_path / "c")
    assert clock.exit_code == 0 and b"FAIL" not in clock.stdout and clock.stdout.endswith(b"all checks passed\n")


def _prepared(tmp_path: Path, prepare: Callable[[Path], None]) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    prepare(root)
    return root


# --- sandbox -----------------------------------------------------------------------------------
#: Attempts in sandbox_escape.c that may succeed without escaping: the controls, reading or
#: touching a symlink itself (never its target), and creating symlinks inside the sandbox
#: whatever they point to (following them is what must fail). The host-side checks below
#: catch it if any of these did reach outside after all.
MAY_SUCCEED = (
    "control:",
    "open the preopen itself",
    "chdir root",
    "readlink host_",
    "readlink up",
    "lstat host_secret",
    "utimensat host_secret NOFOLLOW",
    "link host_secret -> stolen2",
    "symlink /etc -> abs",
    "symlink .. -> up",
    "symlink ../outside/new -> esc",
    "symlink ../../outside/secret.txt -> a/deep",
    "symlink loop -> loop",
)


def test_sandbox_escape_attempts_fail_and_touch_nothing_outside(tmp_path: Path) -> None:
    expected, got = run_both(
        "sandbox_escape", ["/sandbox"], work=tmp_path, dirs=[SANDBOX], prepare=escape_tree, timeout=60
    )
    pristine = tmp_path / "prepared"
    for result, root in ((expected, tmp_path / "wasmtime"), (got, tmp_path / "wasmig")):
        # The host's view, not the engine's: the outside tree is byte-for-byte and
        # mtime-for-mtime what it was, and nothing new appeared next to the preopen.
        assert snapshot(root / "outside", modes=True, mtimes=True) == snapshot(
            pristine / "outside", modes=True, mtimes=True
        ), f"{result.engine} changed the tree outside the preopen"
        assert sorted(os.listdir(root)) == ["outside", "sandbox"], f"{result.engine} created something outside"
        for stream in (result.stdout, result.stderr):
            assert SECRET.strip().encode() not in stream, f"{result.engine} leaked the secret"
            assert CANARY.encode() not in stream, f"{result.engine} listed the outside directory"
        assert result.stdout.count(b"control:") >= 6, f"{result.engine} did not run to the end"
    assert not os.path.exists("/newdir")
    # Whatever wasmtime did: under wasmig every attempt not known to be harmless failed.
    for line in got.stdout.decode().splitlines():
        if "ret=" in line and not line.startswith(MAY_SUCCEED):
            assert "ret=-1" in line, f"escape attempt succeeded under wasmig: {line}"
        if "wasi errno=" in line and not line.startswith(MAY_SUCCEED):
            assert "(opened)" not in line, f"a malformed path was opened under wasmig: {line}"
    _assert_same(expected, got)


# --- TCP ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, deadline: float) -> socket.socket:
    """Connect, retrying while the server is still starting (the listener opens after spawn)."""
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_tcp_echo_serves_clients_one_after_another(engine: str, tmp_path: Path) -> None:
    if engine == "wasmtime":
        pytest.importorskip("wasmtime")
    wasm = program("tcp_echo")
    port = _free_port()
    (tmp_path / "dir").mkdir()
    # A --dir too: listening sockets must come first (fd 3), before the preopened directory.
    cmd = [*wasmig_command(engine), "--tcplisten", f"127.0.0.1:{port}", "--dir", f"{tmp_path / 'dir'}::/d",
           str(wasm), "3"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        deadline = time.monotonic() + 30
        for client in range(3):
            with _connect(port, deadline) as sock:
                messages = [f"client {client} message {i}\n".encode() for i in range(3)]
                messages.append(bytes(range(256)) * 256)  # 64 KiB of every byte value
                for msg in messages:
                    sock.sendall(msg)
                    assert _recv_exactly(sock, len(msg)) == msg
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b"", "the server did not close after the client shut down"
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out == b""
    assert err.decode().count("bytes echoed") == 3 and "connection 3 done" in err.decode()


# --- CLI contract ------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wasmig", "run", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, f"expected a one-line error, got:\n{err}"
    return err


def test_missing_program_is_a_one_line_error(tmp_path: Path) -> None:
    err = _one_line_error(_cli(str(tmp_path / "nope.wasm")))
    assert "nope.wasm" in err


@pytest.mark.parametrize(
    "content",
    [b"", b"not wasm at all", b"\0asm\x01\0\0\0\x01\xff\xff", b"\0asm\x02\0\0\0"],
    ids=["empty", "text", "truncated-section", "bad-version"],
)
def test_malformed_module_is_a_one_line_error(content: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(content)
    err = _one_line_error(_cli(str(bad)))
    assert "bad.wasm" in err


EMPTY_MODULE = b"\0asm\x01\0\0\0"
#: A valid module whose only content is an import of ``env.foo: () -> ()``.
IMPORTS_ENV_FOO = EMPTY_MODULE + b"\x01\x04\x01\x60\x00\x00" + b"\x02\x0b\x01\x03env\x03foo\x00\x00"


@pytest.mark.parametrize(
    ("content", "needle"), [(EMPTY_MODULE, "_start"), (IMPORTS_ENV_FOO, "foo")], ids=["no-start", "unknown-import"]
)
def test_valid_module_that_cannot_run_is_a_one_line_error(content: bytes, needle: str, tmp_path: Path) -> None:
    """Valid wasm that is not a runnable WASI command: still one line, naming what is missing."""
    mod = tmp_path / "mod.wasm"
    mod.write_bytes(content)
    err = _one_line_error(_cli(str(mod)))
    assert needle in err


def test_directory_as_program_is_a_one_line_error(tmp_path: Path) -> None:
    _one_line_error(_cli(str(tmp_path)))


def test_bad_dir_is_a_clear_error(tmp_path: Path) -> None:
    wasm = str(program("exitcode"))
    err = _one_line_error(_cli("--dir", str(tmp_path / "missing"), wasm))
    assert "missing" in err
    (tmp_path / "file").write_text("")
    _one_line_error(_cli("--dir", f"{tmp_path / 'file'}::/x", wasm))
    _one_line_error(_cli("--dir", f"{tmp_path}::", wasm))


@pytest.mark.parametrize("spec", ["=value", "=", "WASMIG_SURELY_UNSET_VARIABLE_X"])
def test_bad_env_is_a_clear_error(spec: str) -> None:
    err = _one_line_error(_cli("--env", spec, str(program("exitcode"))))
    assert "--env" in err or "env" in err.lower()


def test_bad_tcplisten_is_a_clear_error() -> None:
    wasm = str(program("exitcode"))
    _one_line_error(_cli("--tcplisten", "nonsense", wasm))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        _one_line_error(_cli("--tcplisten", f"127.0.0.1:{busy.getsockname()[1]}", wasm))


@pytest.mark.parametrize("code", [0, 1, 3, 42, 125, 126, 200, 255])
def test_exit_code_passes_through(code: int) -> None:
    """Including codes >= 126, which wasmtime-py refuses but a CLI must pass on like wasmtime's."""
    wasm = str(program("exitcode"))
    for how in ([], ["exit"]):
        proc = _cli(wasm, str(code), *how)
        assert (proc.returncode, proc.stdout, proc.stderr) == (code, f"exiting with {code}\n".encode(), b"")


def test_argv0_is_the_program_path_as_given(tmp_path: Path) -> None:
    shutil.copy(program("args_env"), tmp_path / "prog.wasm")
    proc = _cli("prog.wasm", "x", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"argv[0] len=9 [prog.wasm]" in proc.stdout and b"argv[1] len=1 [x]" in proc.stdout
    assert b"environ count=0" in proc.stdout, "the host environment must not leak into the guest"


def test_env_without_value_inherits_from_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREETING", "from the host")
    proc = _cli("--env", "GREETING", str(program("args_env")))
    assert b"getenv(GREETING) len=13 [from the host]" in proc.stdout


def test_program_arguments_are_not_wasmig_options(tmp_path: Path) -> None:
    """Everything after PROGRAM belongs to the guest, even things that look like options."""
    proc = _cli(str(program("args_env")), "--dir", "/", "--help", "-x")
    assert proc.returncode == 0, proc.stderr
    for arg in (b"[--dir]", b"[/]", b"[--help]", b"[-x]"):
        assert arg in proc.stdout


TRAP_KINDS = ["unreachable", "divzero", "oob", "abort"]


@pytest.mark.parametrize("kind", TRAP_KINDS)
def test_trap_prints_a_backtrace_with_c_names(kind: str, tmp_path: Path) -> None:
    wasm = program("trap")
    expected = run_wasmtime(wasm, [kind], scratch=tmp_path)
    got = run_wasmig(wasm, [kind])
    assert expected.trap is not None
    assert got.exit_code != 0 and got.exit_code == 134
    assert got.stdout == expected.stdout == f"about to trap: {kind}\n".encode()
    err = got.stderr.decode()
    assert "Traceback" not in err
    # The C function names, innermost first, in the order wasmtime reports them, each with the
    # same code offset: the call instruction for callers, the trapping instruction for the
    # innermost frame. (For a bare __builtin_trap wasmtime names the br_if that Cranelift
    # folded into a conditional trap, so that one offset is not comparable.)
    reference = re.findall(r"(0x[0-9a-f]+) - trap\.wasm!(\w+)", expected.trap)
    assert [name for _, name in reference[:2]] in (["innermost_trap", "middle_frame"], ["abort", "innermost_trap"])
    frames = [line for line in err.splitlines() if any(re.search(rf"\b{n}\b", line) for _, n in reference)]
    assert len(frames) == len(reference), f"backtrace frames differ from wasmtime's {reference}:\n{err}"
    for i, ((offset, name), line) in enumerate(zip(reference, frames, strict=True)):
        assert re.search(rf"\b{name}\b", line), f"frame {i} should be {name}:\n{err}"
        if not (i == 0 and kind == "unreachable"):
            assert re.search(rf"\b0x0*{offset[2:]}\b", line), f"frame {i} ({name}) should be at {offset}:\n{err}"


# --- big I/O -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_bigio_matches_wasmtime(tmp_path: Path) -> None:
    expected, got = run_both("bigio", ["/sandbox"], work=tmp_path, dirs=[SANDBOX], prepare=empty_sandbox, timeout=900)
    print(f"\nbigio: wasmig {got.wall_s:.1f} s, wasmtime {expected.wall_s:.2f} s")
    assert expected.exit_code == 0 and b"0 bad" in expected.stdout
    assert expected.files["sandbox/big.bin"][1] == 10 * 1024 * 1024
    _assert_same(expected, got)


def test_copy_tree_keeps_symlinks_unresolved(tmp_path: Path) -> None:
    """The harness itself: an escaping symlink in a prepared tree must not be followed by the copy."""
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("/etc", src / "abs")
    copy_tree(src, tmp_path / "dst")
    assert snapshot(tmp_path / "dst") == {"abs": ("symlink", "/etc")}
