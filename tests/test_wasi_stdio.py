"""The standard streams as the guest sees them, against wasmtime's own WASI, under each kind of host stdio.

``tests/programs/stdio_kinds.c`` reports, for fds 0, 1 and 2, ``fstat``'s file type, ``isatty()``
and the raw ``fd_fdstat_get`` / ``fd_filestat_get`` answers (filetype, flags, rights, every
filestat field) into a file under a preopen, so the streams themselves can be anything. It runs
with stdin, stdout and stderr all a terminal (a pty), a pipe, a regular file or ``/dev/null``,
under wasmtime-py's WASI inheriting the process's stdio (the reference, in a subprocess) and under
``wasmig run`` on both engines; the reports must be identical. A snapshot taken under one kind and
restored under another reports the kind the restored process has.
"""

from __future__ import annotations

import importlib.util
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wasi_harness import REPO, program
from wasmig import toolchain

_NO_ZIG = importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV)
_NO_WASMTIME = importlib.util.find_spec("wasmtime") is None
needs_programs = pytest.mark.skipif(_NO_ZIG or _NO_WASMTIME,
                                    reason="needs ziglang (pip install ziglang) and wasmtime")

KINDS = ("tty", "pipe", "file", "null")
ENGINES = ("interp", "wasmtime")

#: wasmtime-py's own WASI with the process's stdio inherited: argv[1] the module, argv[2] the
#: host directory preopened as /out
WASMTIME_REFERENCE = """
import sys, wasmtime
engine = wasmtime.Engine()
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
cfg = wasmtime.WasiConfig()
cfg.argv = ["stdio_kinds", "/out/report"]
cfg.inherit_stdin()
cfg.inherit_stdout()
cfg.inherit_stderr()
cfg.preopen_dir(sys.argv[2], "/out")
store.set_wasi(cfg)
module = wasmtime.Module.from_file(engine, sys.argv[1])
try:
    linker.instantiate(store, module).exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _under(kind: str, cmd: list[str], scratch: Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` with stdin, stdout and stderr all of ``kind``; what it wrote to them (pipe, file,
    pty) is returned as stdout."""
    scratch.mkdir(parents=True, exist_ok=True)
    if kind == "tty":
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=_env(), cwd=REPO)
            os.close(slave)
            slave = -1
            chunks = []
            while True:  # drain the terminal until the child has gone (EIO once no one holds the slave)
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            code = proc.wait(timeout=120)
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        return subprocess.CompletedProcess(cmd, code, b"".join(chunks), b"")
    if kind == "pipe":
        return subprocess.run(cmd, input=b"some input\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_env(), cwd=REPO, timeout=120)
    if kind == "file":
        path = scratch / "stdio-file"
        path.write_bytes(b"some input\n")
        with open(path, "r+b") as f:
            code = subprocess.run(cmd, stdin=f, stdout=f, stderr=f, env=_env(), cwd=REPO, timeout=120).returncode
        return subprocess.CompletedProcess(cmd, code, path.read_bytes(), b"")
    assert kind == "null"
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=_env(), cwd=REPO, timeout=120)


def _report(out: Path, proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout.decode(errors='replace')}"
    return (out / "report").read_text()


_REFERENCE: dict[str, str] = {}


def _reference(kind: str, tmp_path: Path) -> str:
    """wasmtime's report under ``kind`` (once per worker)."""
    if kind not in _REFERENCE:
        out = tmp_path / "wasmtime-out"
        out.mkdir()
        cmd = [sys.executable, "-c", WASMTIME_REFERENCE, str(program("stdio_kinds")), str(out)]
        _REFERENCE[kind] = _report(out, _under(kind, cmd, tmp_path / "wasmtime-stdio"))
    return _REFERENCE[kind]


def _wasmig(engine: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wasmig", "run", "--engine", engine, *extra, "--dir", f"{out}::/out",
            str(program("stdio_kinds")), "/out/report"]


@needs_programs
@pytest.mark.parametrize("kind", KINDS)
def test_wasmtime_reference_tells_a_terminal_from_the_rest(kind: str, tmp_path: Path) -> None:
    """The reference is meaningful: the pty really is a terminal to the guest and nothing else is."""
    report = _reference(kind, tmp_path)
    lines = [line for line in report.splitlines() if "isatty" in line]
    assert len(lines) == 3
    tty = kind == "tty"
    for line in lines:
        assert (f"isatty {int(tty)}," in line) and (f"filetype {2 if tty else 0} " in line), report


@needs_programs
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", KINDS)
def test_stdio_reports_what_wasmtime_reports(kind: str, engine: str, tmp_path: Path) -> None:
    expected = _reference(kind, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    got = _report(out, _under(kind, _wasmig(engine, out), tmp_path / "stdio"))
    assert got == expected, f"under a {kind}, wasmtime:\n{expected}\nwasmig --engine {engine}:\n{got}"


@needs_programs
@pytest.mark.parametrize(("taken", "restored", "engines"), [
    ("tty", "pipe", ("interp", "wasmtime")),
    ("pipe", "tty", ("wasmtime", "interp")),
    ("file", "null", ("wasmtime", "wasmtime")),
])
def test_restore_reports_the_stdio_it_has_now(taken: str, restored: str, engines: tuple[str, str],
                                              tmp_path: Path) -> None:
    """Checkpointed under one kind of stdio before the report, restored under another: the
    program sees the streams its restored process has."""
    out = tmp_path / "out"
    out.mkdir()
    ck = tmp_path / "ck"
    first = _under(taken, _wasmig(engines[0], out, "--checkpoint-dir", str(ck), "--checkpoint-at-step", "1",
                                  "--checkpoint-then", "exit"), tmp_path / "stdio-1")
    assert first.returncode == 0, first.stdout.decode(errors="replace")
    assert not (out / "report").exists(), "the checkpoint came after the report"
    restore = [sys.executable, "-m", "wasmig", "restore", "--engine", engines[1], str(ck)]
    got = _report(out, _under(restored, restore, tmp_path / "stdio-2"))
    expected = _reference(restored, tmp_path)
    assert got == expected, f"restored under a {restored}, wasmtime:\n{expected}\nwasmig:\n{got}"


def test_fresh_stdio_takes_its_filetype_from_the_stream() -> None:
    """An embedder's streams: a terminal only if the stream says so."""
    import io

    from wasmig.wasi import constants as C
    from wasmig.wasi.preview1 import Wasi

    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    wasi = Wasi(stdin=b"x", stdout=Terminal(), stderr=io.BytesIO())
    types = [wasi.fds.get(fd).filetype for fd in (0, 1, 2)]
    assert types == [C.FILETYPE_UNKNOWN, C.FILETYPE_CHARACTER_DEVICE, C.FILETYPE_UNKNOWN]
    rights = [(wasi.fds.get(fd).rights_base, wasi.fds.get(fd).rights_inheriting) for fd in (0, 1, 2)]
    assert rights == [(C.RIGHT_FD_READ,) * 2, (C.RIGHT_FD_WRITE,) * 2, (C.RIGHT_FD_WRITE,) * 2]
    wasi.close()


def test_an_older_snapshots_stdio_restores_with_todays_rights_and_filetype() -> None:
    """Snapshots of earlier wasmig gave every standard stream a character device's filetype and
    fd_read | fd_write | fd_fdstat_set_flags | fd_filestat_get | poll_fd_readwrite, none inheriting:
    restored, each gets the filetype of the stream it now has and keeps the rights it shares with
    it; a right the program dropped stays dropped."""
    import io

    from wasmig.snapshot.state import FdSnapshot, WasiSnapshot
    from wasmig.wasi import constants as C
    from wasmig.wasi.preview1 import STDIO_NAMES
    from wasmig.wasi.snapshot import restore_wasi

    old_tty = (C.RIGHT_FD_READ | C.RIGHT_FD_WRITE | C.RIGHT_FD_FDSTAT_SET_FLAGS | C.RIGHT_FD_FILESTAT_GET
               | C.RIGHT_POLL_FD_READWRITE)
    fds = [FdSnapshot(fd, "stdio", C.FILETYPE_CHARACTER_DEVICE, old_tty, 0, 0, fd == 0, fd != 0,
                      guest_path=STDIO_NAMES[fd]) for fd in (0, 1, 2)]
    fds[2].rights_base &= ~C.RIGHT_FD_WRITE  # the program dropped stderr's fd_write
    ws = WasiSnapshot(["prog"], {}, 0, fds)
    wasi = restore_wasi(ws, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    got = [(e.filetype, e.rights_base, e.rights_inheriting) for e in (wasi.fds.get(fd) for fd in (0, 1, 2))]
    assert got == [(C.FILETYPE_UNKNOWN, C.RIGHT_FD_READ, 0), (C.FILETYPE_UNKNOWN, C.RIGHT_FD_WRITE, 0),
                   (C.FILETYPE_UNKNOWN, 0, 0)]
    wasi.close()
