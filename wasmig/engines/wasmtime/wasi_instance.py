"""``wasmig.Instance(module, wasi, engine="wasmtime")``: a WASI program on wasmtime with the
interpreter's checkpoint API — ``stop_at(step=...)``, ``invoke("_start")`` raising
:class:`wasmig.Suspended` where it stopped, ``checkpoint()``, ``resume()`` — by running the
*instrumented* module (:class:`~wasmig.engines.wasmtime.checkpointable.Checkpointable`, kept as
:attr:`WasmtimeWasiInstance.runner` for what only it does: ``request()`` from another thread).
``wasmig.restore(..., engine="wasmtime")`` gives one too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wasmig.engines.base import Instance
from wasmig.engines.wasmtime.checkpointable import Checkpointable
from wasmig.errors import SnapshotError
from wasmig.interp.machine import Suspended
from wasmig.wasi.preview1 import Wasi

if TYPE_CHECKING:
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot


class WasmtimeWasiInstance(Instance):
    """A WASI command on wasmtime, checkpointable (see the module docstring). ``count_steps``
    (default True, as the interpreter always counts): the deterministic variant, which can stop
    at a step number and puts it into its snapshots; False: the fast variant, which stops only
    on ``runner.request()``."""

    engine = "wasmtime"

    def __init__(self, module: Module, imports: Wasi | None = None, engine: str = "wasmtime", *,
                 count_steps: bool = True, runner: Checkpointable | None = None) -> None:
        if engine != "wasmtime":
            raise ValueError(f"WasmtimeWasiInstance runs on wasmtime, not {engine!r}")
        if runner is None:
            if not isinstance(imports, Wasi):
                raise TypeError("a checkpointable instance on wasmtime takes a wasmig.wasi.Wasi as its imports")
            runner = Checkpointable(module, imports, count_steps=count_steps)
        self.runner = runner
        self.module = module
        self.wasi = runner.wasi
        self.exports: Mapping[str, Any] = runner.instance.exports

    @classmethod
    def restored(cls, runner: Checkpointable) -> WasmtimeWasiInstance:
        """The instance around ``runner``, a snapshot loaded into it (:func:`wasmig.restore`)."""
        return cls(runner.module, runner.wasi, runner=runner)

    @property
    def steps(self) -> int | None:
        """Stable points passed so far (None in the fast variant, which does not count them)."""
        return self.runner.steps

    def request(self) -> None:
        """Stop at the next stable point (from another thread, or a signal handler): the running
        ``invoke``/``resume`` then raises :class:`wasmig.Suspended`."""
        self.runner.request()

    def _stopped(self) -> None:
        if self.runner.unwound:
            raise Suspended("unwound")

    def invoke(self, name: str, *args: Any, raw: bool = False) -> Any:
        """Run ``_start`` (a WASI command's one entry here); raises :class:`wasmig.Suspended` when
        it stopped at the step :meth:`stop_at` asked for, ``ProcExit`` when it exits."""
        if name != "_start" or args:
            raise NotImplementedError("a checkpointable instance on wasmtime runs its `_start` only; call other "
                                      "exports on wasmig.Instance(module, imports, engine='wasmtime')")
        self.runner.start()
        self._stopped()

    def stop_at(self, *, step: int | None = None, instruction: int | None = None) -> None:
        """Stop at stable point ``step`` (the deterministic variant only); ``instruction`` is the
        interpreter's."""
        if instruction is not None:
            raise SnapshotError("a stop at an instruction count is available on the interpreter only")
        self.runner.arm(step)

    def checkpoint(self) -> Snapshot:
        """The canonical snapshot of the stopped program (after :class:`wasmig.Suspended`)."""
        if not self.runner.unwound:
            raise SnapshotError("cannot checkpoint: the program on wasmtime is not stopped at a stable point")
        return self.runner.capture()

    def resume(self, *, raw: bool = False) -> Any:
        """Go on (after a stop, or from the snapshot a restore loaded) until the program ends
        (``ProcExit``, or None when ``_start`` returns) or stops again (:class:`wasmig.Suspended`)."""
        self.runner.resume()
        self._stopped()

    def __repr__(self) -> str:
        return f"<wasmig.Instance on wasmtime (checkpointable), steps {self.runner.steps}>"
