"""Writing a file so that readers never see it half written."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old entry, no entry or the whole new one, never a partial file (no fsync:
    for caches, which a crash may lose but never corrupt)."""
    import tempfile  # imported when a cache entry is written, not by every run that reads one

    path.parent.mkdir(parents=True, exist_ok=True)
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
