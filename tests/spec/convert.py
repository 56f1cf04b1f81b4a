"""Convert spec ``.wast`` scripts to wabt's JSON + binary-module form, with an on-disk cache.

wasmig has no text-format parser, so ``wast2json`` (wabt) turns each script into a JSON command
list plus one ``.wasm`` file per binary module. Converting all of the testsuite takes a few
seconds, so results are cached under the repo's ``.cache`` and only redone when the ``.wast``
is newer than the cached JSON (or the cache is missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_ROOT = REPO_ROOT / ".cache" / "spec-json"


def find_testsuite() -> Path:
    """The spec testsuite's ``core`` directory: ``$WASMIG_TESTSUITE`` or ``<repo>/../shared/wasm-testsuite/core``."""
    override = os.environ.get("WASMIG_TESTSUITE")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "wasm-testsuite" / "core"


def wast2json() -> str | None:
    """Path of the ``wast2json`` executable, or ``None`` if wabt is not installed."""
    return shutil.which("wast2json")


def convert_wast(wast_path: Path, cache_root: Path = DEFAULT_CACHE_ROOT, extra_args: list[str] | None = None) -> Path:
    """Convert ``wast_path`` into ``cache_root/<stem>/<stem>.json`` (plus its modules); return the JSON path.

    Conversion goes into a temporary directory that is then renamed into place, so an
    interrupted run or a concurrent test worker never leaves a half-written cache entry behind.
    Raises ``RuntimeError`` if ``wast2json`` is missing or fails.
    """
    wast_path = Path(wast_path)
    stem = wast_path.stem
    out_dir = Path(cache_root) / stem
    json_path = out_dir / f"{stem}.json"
    if json_path.exists() and json_path.stat().st_mtime >= wast_path.stat().st_mtime:
        return json_path

    tool = wast2json()
    if tool is None:
        raise RuntimeError("wast2json (wabt) is not installed")
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=cache_root))
    try:
        proc = subprocess.run(
            [tool, *(extra_args or []), str(wast_path), "-o", str(tmp_dir / f"{stem}.json")],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"wast2json failed on {wast_path}: {proc.stderr.strip()}")
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            tmp_dir.rename(out_dir)
        except OSError:
            # another process installed the same entry first; theirs is just as good
            if not json_path.exists():
                raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_path
