"""The execution engines wasmig runs modules on, and which of them this host can use.

Finding out must not import an engine: ``import wasmtime`` loads a 30 MB native library (tens of
milliseconds), which a ``wasmig --version`` or a run on the interpreter should not pay. So the
wasmtime check looks for the package *and* for the native library wasmtime-py would load (its
``any`` wheel, installed where no platform wheel exists, has none and fails at import).
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from functools import cache
from pathlib import Path

#: Every engine wasmig has, in the order of preference for a default.
ENGINES = ("wasmtime", "interp")

_LIBRARY = {"linux": "_libwasmtime.so", "win32": "_wasmtime.dll", "darwin": "_libwasmtime.dylib"}
_MACHINE = {"AMD64": "x86_64", "arm64": "aarch64", "ARM64": "aarch64"}


@cache
def wasmtime_missing() -> str | None:
    """Why the wasmtime engine cannot run here, or None when it can."""
    spec = importlib.util.find_spec("wasmtime")
    if spec is None or not spec.submodule_search_locations:
        return "the wasmtime package is not installed (pip install wasmtime)"
    machine = platform.machine()
    machine = _MACHINE.get(machine, machine)
    library = _LIBRARY.get(sys.platform)
    if library is None or machine not in ("x86_64", "aarch64"):
        return f"wasmtime has no build for {sys.platform}/{platform.machine()}"
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / f"{sys.platform}-{machine}" / library).is_file():
        return f"the installed wasmtime package has no native library for {sys.platform}-{machine}"
    return None


def available_engines() -> list[str]:
    """The engines this host can run, preferred first."""
    return [e for e in ENGINES if e != "wasmtime" or wasmtime_missing() is None]


def describe_engines() -> str:
    """One line per engine for ``wasmig --version``: its version, whether it runs here, which is the default."""
    from importlib import metadata  # 20 ms to import: only --version needs it

    default = available_engines()[0]
    lines = []
    for name in ENGINES:
        mark = " (default)" if name == default else ""
        if name == "interp":
            lines.append(f"  interp: wasmig's interpreter{mark}")
            continue
        why = wasmtime_missing()
        if why is None:
            lines.append(f"  wasmtime {metadata.version('wasmtime')}: compiled{mark}")
        else:
            lines.append(f"  wasmtime: not available: {why}")
    return "\n".join(lines)
