"""``wasmig.Instance(module, imports)`` on wasmig's interpreter, and linking wasmig's WASI into it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from wasmig.engines.base import Instance
from wasmig.interp.calls import call_function, convert_results
from wasmig.interp.instantiate import instantiate
from wasmig.interp.machine import NEVER, Machine
from wasmig.interp.store import FuncInst, HostFunc, Memory, ModuleInstance
from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.preview1 import WASI_MODULE, Wasi, check_wasi_imports

if TYPE_CHECKING:
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot


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


class InterpInstance(Instance):
    """``wasmig.Instance(module, imports)`` on the interpreter (see :class:`wasmig.Instance`):
    ``max_frames`` bounds the call depth; ``initialize=False`` skips the data/element segments and
    the start function (an instance a snapshot's state is put into)."""

    engine = "interp"

    def __init__(self, module: Module, imports: Mapping[str, Mapping[str, Any]] | Wasi | None = None,
                 engine: str = "interp", *, max_frames: int | None = None, initialize: bool = True) -> None:
        if engine != "interp":
            from wasmig.engines import check_engine

            check_engine(engine)
            raise ValueError(f"{type(self).__name__} is the interpreter's; use wasmig.Instance for {engine!r}")
        wasi = imports if isinstance(imports, Wasi) else None
        self.module = module
        self.machine = Machine() if max_frames is None else Machine(max_frames)
        self._inst = instantiate(module, wasi_imports(module, wasi) if wasi is not None else imports, self.machine,
                                 initialize=initialize)
        self.exports = Exports(self._inst)
        self.wasi: Wasi | None = None  # the WASI state, when instantiated with wasmig's WASI
        if wasi is not None:
            bind_wasi(self, wasi)

    @property
    def steps(self) -> int | None:
        """Stable points passed so far (None when the count is unknown: restored from a snapshot
        without one)."""
        return self.machine.steps if self.machine.steps_counted else None

    @property
    def store(self) -> ModuleInstance:
        """The interpreter's runtime objects (functions, memories, tables, globals) of this instance."""
        return self._inst

    def checkpoint(self) -> Snapshot:
        """The canonical state (:class:`wasmig.snapshot.state.Snapshot`) of this instance: suspended
        at a point (after :class:`wasmig.Suspended` was raised) or idle between calls."""
        from wasmig.engines.interp.capture import capture

        return capture(self)

    def stop_at(self, *, step: int | None = None, instruction: int | None = None) -> None:
        """Make the running program suspend (raise :class:`wasmig.Suspended`) at stable point number
        ``step``, or after exactly ``instruction`` instructions (interpreter)."""
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


def _host_func(params: tuple[str, ...], results: tuple[str, ...], fn: Any, name: str) -> HostFunc:
    return HostFunc(params, results, fn, raw=True, name=f"{WASI_MODULE}.{name}")


def wasi_imports(module: Module, wasi: Wasi) -> dict[str, dict[str, Any]]:
    """The import object for ``module``: the WASI functions it imports, nothing else (LinkError otherwise)."""
    return wasi.imports(_host_func, [imp.name for imp in check_wasi_imports(module.interface)])


def bind_wasi(inst: InterpInstance, wasi: Wasi) -> InterpInstance:
    """Attach ``wasi`` to an interpreter instance: WASI reaches the exported ``memory`` (the live
    bytearray, so growth is seen) and the instance knows its WASI state (for checkpoints)."""
    inst.wasi = wasi
    memory = inst.exports.get("memory")
    if isinstance(memory, Memory):
        wasi.bind_memory(GuestMemory(lambda: memory.data))
    return inst


def instantiate_wasi(module: Module, wasi: Wasi, **options: Any) -> InterpInstance:
    """``module`` on the interpreter with ``wasi`` as its WASI, its memory bound."""
    return InterpInstance(module, wasi, "interp", **options)
