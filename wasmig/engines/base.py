"""What an engine is: the one interface the run loop (:mod:`wasmig.session.loop`), live migration
(:mod:`wasmig.migrate`), the command line and the Python API talk to, so that a third engine is
one new folder under ``wasmig/engines/`` (docs/architecture.md, "How to add an engine").

- :class:`Engine`: instantiate a module (the embedding API's :class:`Instance`, or a WASI command
  as a :class:`Program`), restore a canonical snapshot into a running program, and receive a live
  migration's pages (:class:`Landing`).
- :class:`Program`: one WASI program on one engine: run it, stop it at its next stable point on
  request (from any thread), capture its canonical :class:`~wasmig.snapshot.state.Snapshot`, let
  pre-copy read its memories while it runs, go on.
- :class:`Instance`: ``wasmig.Instance(module, imports, engine=...)``, the same API on every engine.

Only names from :mod:`wasmig.engines` are imported at run time here: an engine's code is imported
when :func:`wasmig.engines.get` is asked for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from wasmig.grants import Granted
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot
    from wasmig.snapshot.store import PagedMemory
    from wasmig.wasi.preview1 import Wasi

#: A guest memory as pre-copy reads it: its size in bytes and a function reading page ``i`` as it is now.
MemoryReader = tuple[int, Callable[[int], "bytes | memoryview"]]
#: An import object: module name -> field name -> extern.
Imports = Mapping[str, Mapping[str, Any]]


class WasiInstance(Protocol):
    """A module instantiated with wasmig's WASI, for calling its exports (:meth:`Engine.instantiate_wasi`)."""

    module: Module
    exports: Mapping[str, Any]

    def invoke(self, name: str, *args: Any) -> Any:
        """Call export ``name``."""


class Program(ABC):
    """One WASI program (``_start``) on one engine, able to stop and be captured.

    ``start``/``resume`` return True when the program stopped at a checkpointable point (a trigger
    of :meth:`arm` or a :meth:`request`), False when ``_start`` returned; ``ProcExit`` carries
    the program's exit code and a trap is a :class:`wasmig.Trap`."""

    module: Module
    wasi: Wasi
    #: whether Python runs between the guest's instructions, so that Ctrl-C reaches it as
    #: ``KeyboardInterrupt`` (False: a guest computing without host calls would ignore it, so the
    #: run gives SIGINT its default action)
    interruptible: bool = True

    @property
    @abstractmethod
    def steps(self) -> int | None:
        """Stable points passed so far (None when this run does not count them)."""

    @abstractmethod
    def arm(self, *, at_step: int | None, at_instruction: int | None = None, stable_only: bool = False) -> None:
        """Set the triggers still ahead — stable point ``at_step``, after exactly ``at_instruction``
        instructions (an engine that cannot says so with a SnapshotError), and with
        ``stable_only`` an instruction stop goes on to the next stable point first — and clear a
        pending :meth:`request`. A trigger that already fired stays off."""

    @abstractmethod
    def request(self) -> None:
        """Stop at the next stable point, or at once if blocked in a WASI call: safe from a signal
        handler and from any thread."""

    @abstractmethod
    def start(self) -> bool:
        """Run ``_start`` from the beginning; True if it stopped (see the class)."""

    @abstractmethod
    def resume(self) -> bool:
        """Go on after a stop, or from the snapshot a restore loaded; True if it stopped again."""

    def when_under_way(self, prepare: Callable[[], None], by: float | None = None) -> bool:
        """Have ``prepare`` called once, in the thread that called :meth:`start` (or
        :meth:`resume`), while the guest runs beside it, once the program is under way
        (:mod:`wasmig.engines.under_way`; ``by``: after that many seconds at the latest): what its
        first checkpoint needs, made ready without delaying the start or a short program (nor a
        checkpoint: not when the guest stopped meanwhile; then later, if at all). False when this
        engine cannot (its guest runs in that thread): the caller then does it at the first
        checkpoint. (Not in another thread of the caller's: two threads importing
        overlapping modules at once may see a partially initialised one.)"""
        return False

    def ready_on_request(self, prepare: Callable[[], None] | None) -> bool:
        """For a run whose stops come only on request (:meth:`request`: ``wasmig checkpoint PID``,
        a migration): make nothing ready ahead, not even the engine's own checkpoint code, and
        have the first request make it ready -- and call ``prepare``, if any -- in the thread that
        called :meth:`start` (or :meth:`resume`), while the guest runs, before the guest is asked
        to stop: a run never stopped pays nothing, the first stop's pause is as short as with
        :meth:`when_under_way`. False when this engine cannot (its guest runs in that thread):
        the caller then does it at the first checkpoint."""
        return False

    @abstractmethod
    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        """The canonical state of the stopped program. ``with_memory=False`` leaves the memories'
        bytes empty (a live migration sends them page by page itself); ``memory_in_place`` makes
        them the guest's memory itself, not a copy: valid only until the program goes on (a
        checkpoint staged before it does)."""

    @abstractmethod
    def export_names(self) -> Collection[str]:
        """The names the module exports (``_start`` among them, for a WASI command)."""

    @abstractmethod
    def guest_memories(self) -> list[MemoryReader]:
        """Per memory: its size in bytes and a function reading page ``i`` as it is now (while the
        program runs: a migration's pre-copy rounds)."""

    def warm_up(self) -> None:
        """Compute now, while the program runs, what capturing it stopped would compute in the
        downtime (a migration's source calls it before the stop). Nothing, where nothing is."""
        return None

    def resumed(self) -> bool:
        """Whether a restored program got past its snapshot (any thread): a migration's target
        answers only then. True where going on needs no rewind."""
        return True


class Landing(ABC):
    """Where a live migration's pages land on the target until the program is restored."""

    @abstractmethod
    def pages(self, m: int) -> int:
        """The pages memory ``m`` has now."""

    @abstractmethod
    def write(self, m: int, i: int, data: bytes) -> None:
        """Page ``i`` of memory ``m`` is ``data``."""

    @abstractmethod
    def read(self, m: int, i: int) -> bytes:
        """Page ``i`` of memory ``m`` as it is here."""

    @abstractmethod
    def memory(self, i: int, _repr: Any, size_pages: int) -> bytes | bytearray | None:
        """Memory ``i`` has ``size_pages`` pages: its bytes for the snapshot (None: they are in
        place already and the restore keeps them)."""

    @abstractmethod
    def prepare(self, snap: Snapshot, granted: Granted, *, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None) -> Program:
        """Restore ``snap`` (its memories as :meth:`memory` gave them) without running anything,
        its WASI state given only the host resources ``granted``; ``stdout``/``stderr``: where its
        standard streams go (None: this process's own, as a daemon's program; a fleet job's log)."""


class Engine(ABC):
    """An engine (see the module docstring). One object per engine: ``ENGINE`` in its module."""

    #: the name ``--engine`` and ``engine=`` take
    name: str
    #: whether it runs from the decoded, validated IR (else it compiles the bytes itself, and a
    #: module is decoded only when something else needs it)
    needs_ir: bool

    @abstractmethod
    def instance_class(self, imports: Imports | Wasi | None) -> type[Instance]:
        """The class ``wasmig.Instance(module, imports, engine=name)`` makes (``imports`` may be a
        :class:`~wasmig.wasi.preview1.Wasi`: a WASI program)."""

    @abstractmethod
    def instantiate_wasi(self, module: Module, wasi: Wasi, **options: Any) -> WasiInstance:
        """``module`` instantiated with ``wasi`` as its WASI, for calling exports (``--invoke``,
        :func:`wasmig.session.command.run_command`): an object with ``module``, ``exports`` and
        ``invoke(name, *args)``."""

    @abstractmethod
    def program(self, module: Module, wasi: Wasi, *, checkpoints: bool, count_steps: bool = False,
                announce: str | None = None) -> Program:
        """A WASI command ready to :meth:`Program.start`. ``checkpoints``: it may be stopped and
        captured (else an engine may run it at full speed, and it never stops);
        ``count_steps``: it counts stable points (needed to stop at one); ``announce``: the
        module's name, for what the engine prints on stderr while it prepares a big module."""

    @abstractmethod
    def restore(self, module: Module, snap: Snapshot, wasi: Wasi, *, pages: list[PagedMemory] | None = None,
                count_steps: bool = False, announce: str | None = None) -> Program:
        """A program in ``snap``'s state (``wasi`` already restored), ready to :meth:`Program.resume`.
        ``pages``: the memories, when ``snap`` was read without them; ``count_steps``: keep counting
        stable points (the snapshot must have a count)."""

    @abstractmethod
    def restore_instance(self, module: Module, snap: Snapshot, imports: Imports | None, wasi: Wasi | None, *,
                         count_steps: bool = False) -> Instance:
        """What :func:`wasmig.restore` returns: the program in ``snap``'s state, continued by ``resume()``."""

    @abstractmethod
    def landing(self, module: Module) -> Landing:
        """A fresh place for a migration's pages, made when the module arrives (before the stop)."""

    #: whether :meth:`run_threaded_command` runs wasi-threads programs (docs/threads.md)
    runs_threads: bool = False
    #: whether it also runs them as a :class:`Program` that stops every thread and captures a
    #: format-version-2 snapshot (checkpoints, and the source of a live migration) and restores
    #: one (:meth:`restore`)
    captures_threads: bool = False
    #: whether its :meth:`landing` takes a live migration of a wasi-threads program (a daemon's
    #: engine: ``wasmig serve`` refuses a threaded program in one line where it does not)
    lands_threads: bool = False

    def run_threaded_command(self, module: Module, wasi: Wasi, *, seed: int = 0) -> int:
        """Run a wasi-threads command (it imports ``wasi.thread-spawn``; ``module`` decoded with the
        ``threads`` feature) to its end; its exit code. Traps propagate as :class:`wasmig.Trap`.
        ``seed`` picks the interleaving where the engine schedules threads itself."""
        raise NotImplementedError(f"wasi-threads programs do not run on the {self.name} engine yet")


class Instance:
    """A running instance of a :class:`wasmig.Module`, on the engine ``engine`` names.

    ``imports`` maps module name -> field name -> extern (``HostFunc``, ``Global``, ``Memory``,
    ``Table``, or any extern exported by another instance); or it is a
    :class:`wasmig.wasi.Wasi`, for a WASI program (its imports, its memory bound to it).

    ``engine="interp"`` (the default) is wasmig's interpreter: every import kind; ``stop_at``,
    ``checkpoint`` and ``resume``. ``engine="wasmtime"``: the module compiled by wasmtime with the
    same ``exports``/``invoke`` conventions, host functions and immutable globals as imports,
    traps as :class:`wasmig.Trap`; there ``stop_at``, ``checkpoint`` and ``resume`` need a WASI
    program (``imports`` a ``Wasi``: the instrumented module runs, and ``invoke("_start")``
    stops at the step asked for as on the interpreter); with other imports they raise
    ``NotImplementedError``. Another engine, or one whose package is missing, is a
    ``ValueError`` naming the available ones.
    """

    engine: str
    module: Module
    exports: Mapping[str, Any]
    wasi: Wasi | None

    def __new__(cls, module: Module, imports: Imports | None = None, engine: str = "interp",
                **options: Any) -> Instance:
        if cls is Instance:
            from wasmig.engines import get

            cls = get(engine).instance_class(imports)
        return object.__new__(cls)  # Python then calls the class's __init__

    @property
    def steps(self) -> int | None:
        """Stable points passed so far (None where they are not counted)."""
        raise NotImplementedError

    def invoke(self, name: str, *args: Any, raw: bool = False) -> Any:
        """Call the exported function ``name``. With ``raw=True`` the result is a list of
        ``(type, bits)`` pairs (unsigned bit patterns, references as themselves); otherwise
        ``None``, one Python value, or a tuple."""
        raise NotImplementedError

    def stop_at(self, *, step: int | None = None, instruction: int | None = None) -> None:
        """Make the running program suspend (raise :class:`wasmig.Suspended`) at stable point
        number ``step``, or after exactly ``instruction`` instructions."""
        raise NotImplementedError

    def checkpoint(self) -> Snapshot:
        """The canonical state of this instance: suspended at a point, or idle between calls."""
        raise NotImplementedError

    def resume(self, *, raw: bool = False) -> Any:
        """Continue a suspended or restored program; returns what the interrupted export returns."""
        raise NotImplementedError
