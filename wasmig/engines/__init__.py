"""The execution engines wasmig runs modules on: their names, which of them this host can use,
and :func:`get`, the one place a name becomes an engine (``if engine == ...`` lives nowhere else).

Finding out must not import an engine: ``import wasmtime`` loads a 30 MB native library (tens of
milliseconds), which a ``wasmig --version`` or a run on the interpreter should not pay. So the
wasmtime check looks for the package *and* for the native library wasmtime-py would load (its
``any`` wheel, installed where no platform wheel exists, has none and fails at import); and each
engine's code is imported by :func:`get` when a run asks for it.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    from wasmig.engines.base import Engine

#: Every engine wasmig has, in the order of preference for a default.
ENGINES = ("wasmtime", "interp")
#: The engines that can stop after an exact number of instructions (and capture the state there).
INSTRUCTION_PRECISE = ("interp",)
#: Every engine by name, in the order the API lists them, and the module whose ``ENGINE`` it is.
_MODULES = {"interp": "wasmig.engines.interp.engine", "wasmtime": "wasmig.engines.wasmtime.engine"}
#: Every engine's name, in the API's order: what ``--engine`` and ``engine=`` take.
NAMES = tuple(_MODULES)
#: The Python package an engine needs beside wasmig, if any.
_PACKAGES = {"wasmtime": "wasmtime"}

_LIBRARY = {"linux": "_libwasmtime.so", "win32": "_wasmtime.dll", "darwin": "_libwasmtime.dylib"}
_MACHINE = {"AMD64": "x86_64", "arm64": "aarch64", "ARM64": "aarch64"}


@cache
def wasmtime_missing() -> str | None:
    """Why the wasmtime engine cannot run here, or None when it can."""
    import platform  # asked once per process, and only by a run that may use wasmtime

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


def missing(engine: str) -> str | None:
    """Why ``engine`` (one of :data:`ENGINES`) cannot run here, or None when it can."""
    return wasmtime_missing() if engine == "wasmtime" else None


def default(*, instruction_precise: bool = False) -> tuple[str, str, str | None]:
    """The engine to run on when none is asked for: (its name, why it, why the preferred engine
    was passed over or None). The preferred engine that runs here, unless the run needs an
    :data:`INSTRUCTION_PRECISE` one."""
    if instruction_precise:
        return INSTRUCTION_PRECISE[0], ("the default for what only the interpreter can do (an instruction-precise "
                                        "checkpoint or snapshot)"), None
    preferred = ENGINES[0]
    why_not = missing(preferred)
    if why_not is None:
        return preferred, "the default: the wasmtime package is installed", None
    return available_engines()[0], "fallback: wasmtime is not available", why_not


def available_engines() -> list[str]:
    """The engines this host can run, preferred first."""
    return [e for e in ENGINES if e != "wasmtime" or wasmtime_missing() is None]


def installed_engines() -> list[str]:
    """The engines whose Python package is installed, in the API's order (``interp`` first); asked
    afresh each time (no cache: the embedding API's answer follows the environment)."""
    return [e for e in _MODULES if e not in _PACKAGES or importlib.util.find_spec(_PACKAGES[e]) is not None]


def check_engine(engine: str) -> None:
    """A ValueError unless ``engine`` can run here, listing those that can (and saying so when
    it is one whose package is missing)."""
    available = installed_engines()
    if engine in available:
        return
    if engine in _MODULES:
        package = _PACKAGES[engine]
        raise ValueError(f"engine {engine!r} needs the {package} Python package, which is not installed "
                         f"(pip install {package}); available: {', '.join(available)}")
    raise ValueError(f"unknown engine {engine!r} (available: {', '.join(available)})")


def get(engine: str) -> Engine:
    """The engine named ``engine`` (its code imported now), or a ValueError as :func:`check_engine`."""
    check_engine(engine)
    return importlib.import_module(_MODULES[engine]).ENGINE  # type: ignore[no-any-return]


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
