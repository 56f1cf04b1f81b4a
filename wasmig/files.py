"""Writing files: so that readers never see one half written, and (what wasmig keeps of a program)
so that only their owner can read them."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old entry, no entry or the whole new one, never a partial file (no fsync:
    for caches, which a crash may lose but never corrupt). The file is 0600 (``mkstemp``), new
    directories 0700: a cache of a migrated program's pages holds its memory."""
    import tempfile  # imported when a cache entry is written, not by every run that reads one

    if not path.parent.is_dir():
        make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CACHE_ENV = "WASMIG_CACHE"


def wasmtime_cache_dir() -> Path:
    """``$WASMIG_CACHE/wasmtime``, else ``<repo>/.cache/wasmtime`` in a source checkout, else
    ``~/.cache/wasmig/wasmtime`` (the same rules as the C toolchain's cache): compiled and
    instrumented modules, site indexes, module facts, remembered digests."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "wasmtime"
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "wasmtime"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmig" / "wasmtime"


#: snapshots, pages, in-doubt records, module copies, keys: a program's memory may hold secrets,
#: so what wasmig writes of it is for its owner alone (issue 17)
PRIVATE_FILE_MODE = 0o600
#: the directories holding them: not even their names are listed for others
PRIVATE_DIR_MODE = 0o700


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
    """``os.open`` of a new file readable by its owner only from its first byte (no window in which
    another user could open it; the umask can only take bits away from 0600)."""
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)


def make_private_dir(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents with mode 0700; return those created, outermost
    first (a crash-safe writer fsyncs their parents). Existing directories are left as they are:
    they are the user's."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for m in reversed(missing):
        try:
            os.mkdir(m, PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by a concurrent writer
            pass
    if missing and not path.is_dir():
        raise NotADirectoryError(f"not a directory: {path}")
    return list(reversed(missing))
