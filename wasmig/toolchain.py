"""Compile C to ``wasm32-wasi`` with the ``ziglang`` PyPI package, cached and concurrency-safe.

Why zig: ``pip install ziglang`` ships a complete clang + wasi-libc + lld, so tests and the demo
can build real C programs on any machine with nothing but pip -- no wasi-sdk download, no system
clang with the right target.

Why a cache: the first build of wasi-libc inside zig's own cache takes tens of seconds and every
later compile still costs a process start; test suites compile the same handful of programs
over and over. Outputs are keyed by the sha256 of (source bytes, every flag, the zig version),
so editing a program or upgrading zig rebuilds it and nothing else does. Only the source file
itself is hashed: a program that includes a local header must fold that header into the key
through ``extra_flags`` (e.g. ``-DHEADER_HASH=...``) or be a single file, as all of wasmig's
programs are.

Why atomic renames: ``pytest -n 2`` runs two workers that may want the same program at the same
time. Each compiles in its own temporary directory inside the cache directory and renames the
result onto the final name with ``os.replace``; both results are identical, so whichever rename
lands last is fine and no reader ever sees a half-written module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "ToolchainError",
    "compile_c",
    "compile_c_library",
    "default_cache_dir",
    "strip_debug_sections",
    "zig_version",
]

#: The target every wasmig program is built for: the interpreter implements WASI preview1.
TARGET = "--target=wasm32-wasi"

#: Override the compiler command (e.g. ``WASMIG_ZIG="zig"`` for a system zig); split with shlex.
ZIG_ENV = "WASMIG_ZIG"
#: Override the cache directory.
CACHE_ENV = "WASMIG_CACHE"

#: Generous: the very first compile on a machine builds wasi-libc, which takes ~30 s or more.
COMPILE_TIMEOUT_S = 900


class ToolchainError(RuntimeError):
    """Compiling a C program failed or no compiler is available.

    Not a :class:`wasmig.errors.WasmError`: it says nothing about a WebAssembly module, and a
    caller catching ``WasmError`` around a run should not silently swallow a broken build.
    ``stderr`` holds the compiler's diagnostics verbatim so a test failure shows them.
    """

    def __init__(self, message: str, stderr: str = "", command: Sequence[str] = ()) -> None:
        self.stderr = stderr
        self.command = list(command)
        full = message
        if command:
            full += f"\ncommand: {shlex.join(self.command)}"
        if stderr:
            full += f"\ncompiler output:\n{stderr.rstrip()}"
        super().__init__(full)


def _zig_command() -> list[str]:
    """The argv prefix that runs ``zig``; the ziglang package by default."""
    override = os.environ.get(ZIG_ENV)
    if override:
        return shlex.split(override)
    if importlib.util.find_spec("ziglang") is None:
        raise ToolchainError(
            "the 'ziglang' package is not installed in this Python environment "
            f"({sys.executable}); install it with `pip install ziglang` (or `pip install -e '.[dev]'`), "
            f"or set {ZIG_ENV} to a zig executable"
        )
    return [sys.executable, "-m", "ziglang"]


@functools.lru_cache(maxsize=4)
def _zig_version_for(command: tuple[str, ...]) -> str:
    try:
        proc = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"cannot run zig: {exc}", command=[*command, "version"]) from exc
    if proc.returncode != 0:
        raise ToolchainError("`zig version` failed", stderr=proc.stderr, command=[*command, "version"])
    return proc.stdout.strip()


def zig_version() -> str:
    """The version string of the zig that :func:`compile_c` would use (part of the cache key)."""
    return _zig_version_for(tuple(_zig_command()))


def default_cache_dir() -> Path:
    """``$WASMIG_CACHE``, else ``<repo>/.cache/wasm`` in a source checkout, else ``~/.cache/wasmig/wasm``.

    The repo-root location keeps build products next to the checkout (``make clean`` removes
    them, ``.gitignore`` already ignores ``.cache/``); an installed package has no repo root, so
    it falls back to the user's cache directory instead of writing into site-packages.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "wasm"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmig" / "wasm"


def _cache_key(source_bytes: bytes, flags: Sequence[str], version: str) -> str:
    h = hashlib.sha256()
    # Length-prefix every part so ("-O2", "x") and ("-O2x",) cannot collide.
    for part in (b"wasmig-toolchain-v2", version.encode(), source_bytes, *(f.encode() for f in flags)):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _read_leb_u32(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated LEB128")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise ValueError("LEB128 too long")


def strip_debug_sections(wasm: bytes) -> bytes:
    """Drop the DWARF custom sections (``.debug_*``) and keep everything else, ``name`` included.

    Why not ``-s``/``--strip-debug``: zig's linker then drops the ``name`` section too, and the
    function names are what make interpreter backtraces readable. Why strip at all: wasi-libc
    is built with debug info, which makes a hello-world 1 MB instead of 20 KB -- a waste to
    decode in pure Python on every run. A self-contained section walk (not the decoder) so the
    toolchain does not depend on the rest of wasmig.
    """
    if wasm[:4] != b"\0asm":
        return wasm
    out = bytearray(wasm[:8])
    pos = 8
    while pos < len(wasm):
        start = pos
        section_id = wasm[pos]
        size, body = _read_leb_u32(wasm, pos + 1)
        end = body + size
        if end > len(wasm):
            raise ValueError("section extends past the end of the module")
        keep = True
        if section_id == 0:
            name_len, name_at = _read_leb_u32(wasm, body)
            keep = not wasm[name_at : name_at + name_len].startswith(b".debug")
        if keep:
            out += wasm[start:end]
        pos = end
    return bytes(out)


def _compile(source: Path, flags: list[str], cache_dir: Path | None, strip_debug: bool = True) -> Path:
    source = Path(source)
    try:
        source_bytes = source.read_bytes()
    except OSError as exc:
        raise ToolchainError(f"cannot read C source {source}: {exc}") from exc
    zig = _zig_command()
    version = _zig_version_for(tuple(zig))
    digest = _cache_key(source_bytes, [*flags, f"strip_debug={strip_debug}"], version)
    out_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = out_dir / f"{source.stem}-{digest[:20]}.wasm"
    if out.is_file():
        return out

    out_dir.mkdir(parents=True, exist_ok=True)
    # Build in a private temporary directory inside the cache directory, so the final os.replace
    # is an atomic same-filesystem rename. The file inside keeps the plain name ``<stem>.wasm``
    # because the linker records it as the module name in the ``name`` section.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{source.stem}-", suffix=".tmp", dir=out_dir))
    tmp = tmp_dir / f"{source.stem}.wasm"
    cmd = [*zig, "cc", TARGET, *flags, "-o", str(tmp), str(source.resolve())]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise ToolchainError(f"compiling {source} timed out after {COMPILE_TIMEOUT_S} s", command=cmd) from exc
        except OSError as exc:
            raise ToolchainError(f"cannot run the compiler: {exc}", command=cmd) from exc
        if proc.returncode != 0:
            raise ToolchainError(
                f"compiling {source} failed (exit {proc.returncode})", stderr=proc.stderr + proc.stdout, command=cmd
            )
        if not tmp.is_file() or tmp.stat().st_size < 8:
            raise ToolchainError(f"the compiler produced no module for {source}", stderr=proc.stderr, command=cmd)
        if strip_debug:
            tmp.write_bytes(strip_debug_sections(tmp.read_bytes()))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def compile_c(
    source: Path | str,
    *,
    opt: str = "-O2",
    extra_flags: Sequence[str] = (),
    cache_dir: Path | str | None = None,
    strip_debug: bool = True,
) -> Path:
    """Compile a C *command* (a program with ``main``) to a WASI module; return the cached path.

    The module exports ``_start`` and ``memory`` and imports only ``wasi_snapshot_preview1``.
    ``strip_debug`` removes the DWARF sections wasi-libc brings along (see
    :func:`strip_debug_sections`); the ``name`` section stays. Raises :class:`ToolchainError`
    (with the compiler's stderr) when the build fails.
    """
    flags = [opt, *extra_flags]
    return _compile(Path(source), flags, Path(cache_dir) if cache_dir is not None else None, strip_debug)


def compile_c_library(
    source: Path | str,
    exports: Sequence[str],
    *,
    opt: str = "-O2",
    libc: bool = True,
    extra_flags: Sequence[str] = (),
    cache_dir: Path | str | None = None,
    strip_debug: bool = True,
) -> Path:
    """Compile C with no ``main`` into a module exporting the named functions.

    With ``libc=True`` it is a WASI *reactor* (``-mexec-model=reactor``): wasi-libc is linked and
    the module exports ``_initialize``, which the embedder must call once before anything else.
    With ``libc=False`` it is a freestanding module (``-nostdlib -Wl,--no-entry``) with no
    imports at all -- handy for benchmarks and hand-checked interpreter tests, since every
    executed instruction is the program's own.
    """
    flags = [opt]
    if libc:
        flags.append("-mexec-model=reactor")
    else:
        flags += ["-nostdlib", "-Wl,--no-entry"]
    flags += [f"-Wl,--export={name}" for name in exports]
    flags += list(extra_flags)
    return _compile(Path(source), flags, Path(cache_dir) if cache_dir is not None else None, strip_debug)
