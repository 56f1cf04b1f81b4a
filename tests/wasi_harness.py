"""Differential harness: run a WASI program under ``wasmig run`` and under wasmtime, compare.

Why differential: WASI preview1 is specified loosely (which errno for ``open("../x")``? does
``readdir`` return ``.``? what does ``read`` on a directory fd do?) and wasi-libc's behaviour on
top of it is what real programs see. wasmtime is the de-facto reference implementation, so
every observable -- stdout, stderr, exit code and the files the program leaves behind -- is
compared against it instead of against hand-written expectations.

Why wasmig through a subprocess: the thing under test is the user-facing ``wasmig run`` CLI
(argument parsing, stdio passthrough, exit code), not an in-process API, and a subprocess
gives a hard timeout for free. wasmtime runs in-process through wasmtime-py's own WASI, with
stdio redirected to files, because that is all wasmtime-py offers and it runs natively fast.

Why fresh copies: each engine gets its own copy of the prepared directory tree, so the two
runs cannot see each other's side effects and the trees they leave behind can be diffed.

No tests live here; ``tests/test_wasi_programs.py`` drives it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PROGRAMS",
    "REPO",
    "DirSpec",
    "RunResult",
    "compare",
    "copy_tree",
    "program",
    "run_both",
    "run_wasmig",
    "run_wasmtime",
    "snapshot",
    "wasmig_command",
]

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"

#: The engine ``wasmig run`` is asked for: the point is to test wasmig's own WASI on its own
#: interpreter, whatever the CLI's default engine becomes later.
WASMIG_ENGINE = "interp"

#: Files up to this size are kept verbatim in a snapshot (so a diff can show them); larger ones
#: by size and sha256 only, so a 10 MB file does not end up in an assertion message.
INLINE_LIMIT = 4096


def program(name: str) -> Path:
    """The compiled (cached) module for ``tests/programs/<name>.c``."""
    from wasmig.toolchain import compile_c

    return compile_c(PROGRAMS / f"{name}.c")


@dataclass(frozen=True)
class DirSpec:
    """One preopened directory: ``host`` relative to the tree root, mounted as ``guest``.

    ``guest=None`` means the CLI form ``--dir HOST`` (guest name = HOST exactly as given), which
    only makes sense with a relative HOST; the harness then runs wasmig with the tree root as
    its working directory, and gives wasmtime the same guest name.
    """

    host: str
    guest: str | None = None

    @property
    def guest_name(self) -> str:
        return self.host if self.guest is None else self.guest


@dataclass
class RunResult:
    """What one engine did: exit code, both output streams, the tree afterwards, wall time.

    ``trap`` is wasmtime's trap message when the program trapped (wasmtime-py raises rather
    than exiting); wasmig only reports traps through its exit code and stderr.
    """

    engine: str
    exit_code: int
    stdout: bytes
    stderr: bytes
    files: dict[str, tuple] = field(default_factory=dict)
    wall_s: float = 0.0
    trap: str | None = None


# --- directory trees ---------------------------------------------------------------------------
def copy_tree(src: Path, dst: Path) -> None:
    """Copy a prepared tree, symlinks as symlinks (never followed: some point outside on purpose)."""
    shutil.copytree(src, dst, symlinks=True)


def snapshot(root: Path, *, modes: bool = False, mtimes: bool = False) -> dict[str, tuple]:
    """Everything observable about a tree except timestamps: relative path -> description.

    Directories: ``("dir",)``; symlinks: ``("symlink", target)`` (never followed); regular files:
    ``("file", contents)`` or, above :data:`INLINE_LIMIT`, ``("file", size, sha256)``; anything
    else ``("other", S_IFMT)``. ``modes`` adds permission bits and ``mtimes`` the nanosecond
    mtime -- the sandbox test uses both to prove the outside tree was not touched at all.
    """
    out: dict[str, tuple] = {}

    def visit(path: Path, rel: str) -> None:
        st = path.lstat()
        extra: tuple = ()
        if modes:
            extra += (oct(stat.S_IMODE(st.st_mode)),)
        if mtimes and not stat.S_ISLNK(st.st_mode):
            extra += (st.st_mtime_ns,)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path), *extra)
        elif stat.S_ISDIR(st.st_mode):
            if rel:
                out[rel] = ("dir", *extra)
            for child in sorted(os.listdir(path)):
                visit(path / child, f"{rel}/{child}" if rel else child)
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
            if len(data) <= INLINE_LIMIT:
                out[rel] = ("file", data, *extra)
            else:
                out[rel] = ("file", len(data), hashlib.sha256(data).hexdigest(), *extra)
        else:
            out[rel] = ("other", stat.S_IFMT(st.st_mode), *extra)

    visit(root, "")
    return out


# --- the two engines ---------------------------------------------------------------------------
def wasmig_command(engine: str = WASMIG_ENGINE) -> list[str]:
    """``python -m wasmig run --engine ENGINE``: the CLI from this checkout, on this interpreter."""
    return [sys.executable, "-m", "wasmig", "run", "--engine", engine]


def _subprocess_env() -> dict[str, str]:
    """The test process's environment with this checkout first on PYTHONPATH.

    Needed because the subprocess may start in a temporary directory (``--dir .`` cases), where
    ``-m wasmig`` would otherwise not find the package unless it is installed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_wasmig(
    wasm: Path | str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    dirs: Sequence[DirSpec] = (),
    tree: Path | None = None,
    stdin: bytes = b"",
    timeout: float = 60.0,
    extra_options: Sequence[str] = (),
    argv0: str | None = None,
    engine: str = WASMIG_ENGINE,
) -> RunResult:
    """Run ``wasmig run --engine ENGINE`` on ``wasm`` in a subprocess; ``tree`` is the root the
    DirSpecs refer to.

    ``argv0`` is the program path as passed on the command line (and therefore the guest's
    ``argv[0]``); by default the module's path as given. The tree is snapshotted afterwards.
    Raises ``subprocess.TimeoutExpired`` (after killing the child) when ``timeout`` passes.
    The result's ``engine`` is ``"wasmig"`` for the interpreter, ``"wasmig-ENGINE"`` otherwise.
    """
    cmd = [*wasmig_command(engine), *extra_options]
    for d in dirs:
        if d.guest is None:
            cmd += ["--dir", d.host]
        else:
            assert tree is not None
            cmd += ["--dir", f"{tree / d.host}::{d.guest}"]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    cmd += [argv0 or str(wasm), *args]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, input=stdin, capture_output=True, timeout=timeout, cwd=tree or None, env=_subprocess_env()
    )
    wall = time.perf_counter() - start
    return RunResult(
        "wasmig" if engine == "interp" else f"wasmig-{engine}",
        proc.returncode,
        proc.stdout,
        proc.stderr,
        snapshot(tree) if tree is not None else {},
        wall,
    )


def run_wasmtime(
    wasm: Path | str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    dirs: Sequence[DirSpec] = (),
    tree: Path | None = None,
    stdin: bytes = b"",
    scratch: Path,
    argv0: str | None = None,
) -> RunResult:
    """The reference: the same module under wasmtime-py's own WASI, stdio through files in ``scratch``.

    Exit codes come from ``wasmtime.ExitTrap.code``. wasmtime refuses ``proc_exit`` codes of
    126 and above (it traps instead), so programs compared with it must stay below that. A trap
    is reported with exit code 134 (what a native abort gives) and the message in ``trap``.
    """
    import wasmtime

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    cfg = wasmtime.WasiConfig()
    cfg.argv = [argv0 or str(wasm), *args]
    cfg.env = list((env or {}).items())
    for d in dirs:
        assert tree is not None
        cfg.preopen_dir(str(tree / d.host), d.guest_name)
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "stdin").write_bytes(stdin)
    cfg.stdin_file = str(scratch / "stdin")
    cfg.stdout_file = str(scratch / "stdout")
    cfg.stderr_file = str(scratch / "stderr")
    store.set_wasi(cfg)
    module = wasmtime.Module.from_file(engine, str(wasm))
    code, trap = 0, None
    start = time.perf_counter()
    # wasmtime resolves relative host paths against the process's cwd at preopen time only;
    # no chdir is needed because every preopen above is absolute.
    try:
        instance = linker.instantiate(store, module)
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:
        code = exc.code
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:  # a host-call error is a trap too
        code, trap = 134, str(exc)
    wall = time.perf_counter() - start
    return RunResult(
        "wasmtime",
        code,
        (scratch / "stdout").read_bytes(),
        (scratch / "stderr").read_bytes(),
        snapshot(tree) if tree is not None else {},
        wall,
        trap,
    )


# --- comparison --------------------------------------------------------------------------------
def _show(data: bytes, limit: int = 3000) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def _line_diff(a: bytes, b: bytes, names: tuple[str, str] = ("wasmtime", "wasmig")) -> str:
    import difflib

    diff = difflib.unified_diff(
        a.decode("utf-8", "backslashreplace").splitlines(),
        b.decode("utf-8", "backslashreplace").splitlines(),
        *names,
        lineterm="",
        n=1,
    )
    return "\n".join(diff)


def compare(
    expected: RunResult, got: RunResult, *, files: bool = True, names: tuple[str, str] = ("wasmtime", "wasmig")
) -> list[str]:
    """Human-readable differences between the reference run and wasmig's; empty when they agree.

    Returned as text rather than asserted here so a test can fail with every difference at
    once (exit code, both streams as a unified diff, and each differing path of the tree).
    ``names`` labels the two runs in the text.
    """
    ref, new = names
    problems: list[str] = []
    if expected.exit_code != got.exit_code:
        problems.append(f"exit code: {ref} {expected.exit_code}, {new} {got.exit_code}")
    for stream in ("stdout", "stderr"):
        a, b = getattr(expected, stream), getattr(got, stream)
        if a != b:
            problems.append(f"{stream} differs:\n{_line_diff(a, b, names)}")
    if files and expected.files != got.files:
        for path in sorted(set(expected.files) | set(got.files)):
            a, b = expected.files.get(path), got.files.get(path)
            if a != b:
                problems.append(f"file {path!r}: {ref} {a!r}, {new} {b!r}")
    if problems and got.stderr and "stderr differs" not in "".join(problems):
        problems.append(f"{new} stderr:\n{_show(got.stderr)}")
    return problems


def run_both(
    name: str,
    args: Sequence[str] = (),
    *,
    work: Path,
    env: Mapping[str, str] | None = None,
    dirs: Sequence[DirSpec] = (),
    prepare: Callable[[Path], None] | None = None,
    stdin: bytes = b"",
    timeout: float = 60.0,
) -> tuple[RunResult, RunResult]:
    """Build ``tests/programs/<name>.c`` and run it under wasmtime and wasmig, each in a fresh tree.

    ``prepare(root)`` populates the initial tree once (under ``work/prepared``); each engine
    gets its own copy (``work/wasmtime``, ``work/wasmig``) so paths inside the tree are the same
    relative to each root and the snapshots compare directly. Returns (wasmtime, wasmig).
    """
    wasm = program(name)
    prepared = work / "prepared"
    prepared.mkdir(parents=True)
    if prepare is not None:
        prepare(prepared)
    trees = {}
    for engine in ("wasmtime", "wasmig"):
        trees[engine] = work / engine
        copy_tree(prepared, trees[engine])
    use_tree = bool(dirs) or prepare is not None
    expected = run_wasmtime(
        wasm,
        args,
        env=env,
        dirs=dirs,
        tree=trees["wasmtime"] if use_tree else None,
        stdin=stdin,
        scratch=work / "wasmtime-stdio",
    )
    got = run_wasmig(
        wasm, args, env=env, dirs=dirs, tree=trees["wasmig"] if use_tree else None, stdin=stdin, timeout=timeout
    )
    return expected, got
