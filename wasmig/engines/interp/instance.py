"""``wasmig.Instance``: an instantiated module on an engine, and its exports."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any

from wasmig.interp.instantiate import instantiate
from wasmig.interp.machine import Machine
from wasmig.interp.store import FuncInst, ModuleInstance, to_bits, to_internal, to_python
from wasmig.module import Module

#: The engines ``Instance`` and ``wasmig.restore`` know; :func:`available_engines` says which can run here.
ENGINES = ("interp", "wasmtime")


def available_engines() -> list[str]:
    """The engines usable in this Python: ``interp`` always, ``wasmtime`` when its package is installed."""
    return [e for e in ENGINES if e == "interp" or importlib.util.find_spec(e) is not None]


def check_engine(engine: str) -> None:
    """A ValueError unless ``engine`` can run here, listing those that can (and saying so when
    it is wasmtime whose package is missing)."""
    available = available_engines()
    if engine in available:
        return
    if engine in ENGINES:
        raise ValueError(f"engine {engine!r} needs the {engine} Python package, which is not installed "
                         f"(pip install {engine}); available: {', '.join(available)}")
    raise ValueError(f"unknown engine {engine!r} (available: {', '.join(available)})")


class Exports(Mapping[str, Any]):
    """Read-only view of an instance's exports: name -> function, table, memory or global."""

    def __init__(self, inst: ModuleInstance) -> None:
        self._inst = inst

    def __getitem__(self, name: str) -> Any:
        return self._inst.exports[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._inst.exports)

    def __len__(self) -> int:
        return len(self._inst.exports)


class Instance:
    """A running instance of a :class:`Module`.

    ``imports`` maps module name -> field name -> extern (``HostFunc``, ``Global``, ``Memory``,
    ``Table``, or any extern exported by another instance).

    ``engine="interp"`` (the default) is wasmig's interpreter, with everything below.
    ``engine="wasmtime"`` gives a :class:`wasmig.engines.wasmtime.api.WasmtimeApiInstance` (a
    subclass): the module compiled by wasmtime with the same ``exports``/``invoke`` conventions,
    host functions and immutable globals as imports, traps as :class:`wasmig.Trap`; ``stop_at``,
    ``checkpoint`` and ``resume`` are the interpreter's and raise ``NotImplementedError`` there
    (checkpointing on wasmtime: ``wasmig.restore(..., engine="wasmtime")`` and
    :class:`wasmig.engines.wasmtime.checkpointable.Checkpointable`, for WASI programs). Another engine,
    or wasmtime without its package, is a ``ValueError`` naming the available ones.
    """

    def __new__(cls, module: Module, imports: Mapping[str, Mapping[str, Any]] | None = None,
                engine: str = "interp", **options: Any) -> Instance:
        if cls is Instance and engine != "interp":
            check_engine(engine)
            from wasmig.engines.wasmtime.api import WasmtimeApiInstance

            return object.__new__(WasmtimeApiInstance)  # Python then calls its __init__
        return object.__new__(cls)

    def __init__(self, module: Module, imports: Mapping[str, Mapping[str, Any]] | None = None,
                 engine: str = "interp", *, max_frames: int | None = None, initialize: bool = True) -> None:
        if engine != "interp":
            check_engine(engine)
            raise ValueError(f"{type(self).__name__} is the interpreter's; use wasmig.Instance for {engine!r}")
        self.module = module
        self.engine = engine
        self.machine = Machine() if max_frames is None else Machine(max_frames)
        self._inst = instantiate(module, imports, self.machine, initialize=initialize)
        self.exports = Exports(self._inst)
        self.wasi: Any = None  # the WASI state, when instantiated with wasmig's WASI

    @property
    def store(self) -> ModuleInstance:
        """The interpreter's runtime objects (functions, memories, tables, globals) of this instance."""
        return self._inst

    def checkpoint(self) -> Any:
        """The canonical state (:class:`wasmig.snapshot.state.Snapshot`) of this instance: suspended
        at a point (after :class:`wasmig.Suspended` was raised) or idle between calls."""
        from wasmig.engines.interp.capture import capture

        return capture(self)

    def stop_at(self, *, step: int | None = None, instruction: int | None = None) -> None:
        """Make the running program suspend (raise :class:`wasmig.Suspended`) at stable point number
        ``step``, or after exactly ``instruction`` instructions (interpreter)."""
        from wasmig.interp.machine import NEVER

        self.machine.stop_at_step = NEVER if step is None else step
        self.machine.counting = instruction is not None
        self.machine.stop_at_instruction = NEVER if instruction is None else instruction

    def resume(self, *, raw: bool = False) -> Any:
        """Continue a suspended or restored program; returns what the interrupted export returns
        (a WASI command's ``_start`` ends in ``ProcExit`` or returns ``None``)."""
        if not self.machine.frames:
            raise RuntimeError("nothing to resume: the instance is not suspended")
        types = self.machine.frames[0].func.type.results
        results = self.machine.resume()
        return convert_results(types, results, raw)

    def invoke(self, name: str, *args: Any, raw: bool = False) -> Any:
        """Call the exported function ``name``.

        With ``raw=True`` the result is a list of ``(type, bits)`` pairs (unsigned bit patterns,
        references as themselves); otherwise ``None``, one Python value, or a tuple.
        """
        func = self._inst.exports.get(name)
        if not isinstance(func, FuncInst):
            raise KeyError(f"no exported function named {name!r}")
        return call_function(self.machine, func, args, raw=raw)


def call_function(machine: Machine, func: FuncInst, args: tuple[Any, ...], *, raw: bool = False) -> Any:
    params = func.type.params
    if len(args) != len(params):
        raise TypeError(f"{func!r} takes {len(params)} arguments, {len(args)} given")
    internal = [to_internal(t, a) for t, a in zip(params, args, strict=True)]
    return convert_results(func.type.results, machine.invoke(func, internal), raw)


def convert_results(types: tuple[str, ...], results: list[Any], raw: bool) -> Any:
    if raw:
        return [(t, to_bits(t, v)) for t, v in zip(types, results, strict=True)]
    values = [to_python(t, v) for t, v in zip(types, results, strict=True)]
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
