"""wasi-threads commands on wasmtime: one OS thread per wasm thread, truly in parallel.

The host makes the program's one shared memory (a ``wasmtime.SharedMemory``, with the limits the
module declares for its import); every wasm thread is a ``wasmtime.Store`` and an instance of the
module of its own over that memory, run by a Python thread of its own (wasmtime-py calls into
wasmtime through ``ctypes``, which releases the GIL: threads computing in wasm run at once on as
many cores as there are; they take the GIL only in host calls). ``wasi.thread-spawn`` starts
``wasi_thread_start(tid, arg)`` in a new instance; tids count from 1; beyond
:data:`~wasmig.interp.threads.MAX_THREADS` live threads (the main one's included) a spawn returns
a negative number. ``memory.atomic.wait``/``notify`` go through the host
(:mod:`~wasmig.engines.wasmtime.host_waits`: the interpreter's wait queues).

Every thread calls the one :class:`~wasmig.wasi.preview1.Wasi` (one descriptor table, one exit).
Its state is not made for concurrent callers, so host calls run one at a time under a lock —
except those that may block for an unbounded time (:data:`~wasmig.interp.threads.BLOCKING_CALLS`:
reading stdin, ``poll_oneoff``'s sleep, accepting a connection), which run without it so that a
thread blocked in the host never stops the others: the same rule as the interpreter's scheduler,
whose baton host calls hold but for those.

The program ends when any thread ends it: ``proc_exit`` or a trap in any thread, or the main
thread returning from ``_start``. Then the run's engine bumps its *epoch*: each store traps at its
next epoch check (loop heads, function entries), so threads still computing stop; a thread that
comes back from a blocking host call stops there, and every waiter is woken and stops. Threads
still blocked in the host are abandoned (as on the interpreter). Each run has an engine of its
own (:data:`~wasmig.engines.wasmtime.runtime.THREADS_SETTINGS`), so ending one run stops no
other. As on the interpreter, every live thread waiting without a timeout while none is in a
blocking host call is a deadlock: a trap, not a hang.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import wasmtime

from wasmig.binary.decoder import decode_module
from wasmig.binary.encoder import encode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.engines.wasmtime.engine import RunsToEnd
from wasmig.engines.wasmtime.host_waits import TABLE_EXPORT, HostWaits, ProgramEnded, Waiter, route_waits_to_host
from wasmig.engines.wasmtime.runtime import THREADS_SETTINGS, WasmtimeInstance, compile_cached, new_engine
from wasmig.errors import LinkError, Trap
from wasmig.hashing import fast_digest
from wasmig.interp.threads import BLOCKING_CALLS, MAX_THREADS, MAX_TID
from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.preview1 import ProcExit
from wasmig.wasi.threads_abi import SPAWN, THREAD_START, THREADS_MODULE, check_threaded_imports

if TYPE_CHECKING:
    from pathlib import Path

    from wasmig.module import Module
    from wasmig.wasi.preview1 import Wasi

#: why a threaded program started without checkpoints cannot stop
NO_THREAD_CHECKPOINTS = ("this run cannot checkpoint: it was started without checkpoints (the plain module on "
                         "wasmtime's threads)")
#: the start function of an instrumented module (wasmig/instrument/unwind.py), for the host to run
_INSTRUMENTED_START = "wasmig:start"
#: how long the end of a run waits for its threads to stop (see ThreadedRun._settle)
_SETTLE_S = 10.0
#: seconds the main thread waits at most between looks at a running program (here and in
#: CheckpointableThreadedRun.go): a signal's Python handler runs only in the main thread, once its
#: wait returns, and a process-directed signal may land on a wasm thread
SIGNAL_WAIT = 0.25
#: what ``thread-spawn`` returns when no thread can be made: EAGAIN, negated (wasi-threads' convention)
_SPAWN_FAILED = -6


class SharedMemoryView:
    """The ``source`` of a :class:`GuestMemory` over a ``wasmtime.SharedMemory``: a writable
    ``memoryview`` of it, made again when its length changed (another thread's ``memory.grow``).
    A shared memory never moves (it is reserved to its maximum up front), so any thread may use
    the view it got while another grows the memory."""

    __slots__ = ("_memory", "_len", "_view", "base")

    def __init__(self, memory: wasmtime.SharedMemory) -> None:
        self._memory = memory
        self._len = -1
        self._view: memoryview = memoryview(bytearray())
        #: where the memory starts in this process (it never moves)
        self.base = ctypes.addressof(memory.data_ptr().contents)

    def __call__(self) -> memoryview:
        n = self._memory.data_len()
        if n != self._len:
            self._view = memoryview((ctypes.c_ubyte * n).from_address(self.base)).cast("B")
            self._len = n
        return self._view

    def extent(self) -> tuple[int, int]:
        """(base address, length in bytes) as they are now."""
        return self.base, self._memory.data_len()


class ThreadedRun:
    """One run of a wasi-threads command on wasmtime (see the module docstring); it is the
    :class:`~wasmig.engines.wasmtime.runtime.ExtraLinks` of every thread's instance."""

    def __init__(self, module: Module, wasi: Wasi, *, cache_dir: Path | None = None,
                 settings: Mapping[str, Any] = THREADS_SETTINGS, host_waits: bool = True,
                 code: bytes | None = None, prepared: bytes | None = None) -> None:
        """``settings``: the engine's; ``host_waits``: waits and notifies through the host
        (:mod:`~wasmig.engines.wasmtime.host_waits`). benchmarks/threads_parallel.py turns each
        off to measure what it costs (``ENGINE_SETTINGS``, without epoch interruption: the run
        cannot stop threads still computing when it ends; no host waits: wasmtime's own, which
        nobody wakes at the end and which hang on a deadlock). ``code``: bytes to run instead of
        the module's own, with its imports and exports (the benchmark's instrumented module);
        ``prepared``: code whose waits are rerouted already, run as it is (the checkpointable
        run's instrumented module, :mod:`~wasmig.engines.wasmtime.threads_checkpoint`)."""
        _wasi_names, memory_import = check_threaded_imports(module)
        self.module = module
        self.wasi = wasi
        self.settings = settings
        self.wasm_engine = new_engine(settings)
        if prepared is not None:
            self.code: bytes | None = prepared
        else:
            ir = module.ir if code is None else decode_module(code, features=INSTRUMENTED | {"threads"})
            routed = route_waits_to_host(ir) if host_waits else None
            self.code = encode_module(routed) if routed is not None else code
        self.compiled = _compile(module, self.code, self.wasm_engine, cache_dir, settings)
        limits = memory_import.desc.limits
        memory_type = wasmtime.MemoryType(wasmtime.Limits(limits.min, limits.max), shared=True)
        self.memory = wasmtime.SharedMemory(self.wasm_engine, memory_type)
        self.provides: Mapping[str, Collection[str]] = {memory_import.module: {memory_import.name},
                                                        THREADS_MODULE: {SPAWN}}
        self._memory_import = (memory_import.module, memory_import.name)
        view = self.view = SharedMemoryView(self.memory)
        wasi.bind_memory(GuestMemory(view))
        self._wasi_lock = threading.Lock()  # one non-blocking host call at a time
        self._lock = threading.RLock()  # the run's state; the waits' (an end may come from inside a wait)
        self._cond = threading.Condition(self._lock)
        self._outcome: tuple[str, Any] | None = None  # ("return", None) | ("raise", exception)
        self._live = 1  # threads not yet ended, the main one's included (the interpreter's count)
        self._in_host = 0  # threads inside a blocking host call
        self._running = 0  # Python threads started and not yet returned (see _settle)
        self._next_tid = 1
        self.waits = HostWaits(self._lock, view.extent, lambda: (self._live, self._in_host),
                               lambda exc: self._end(("raise", exc)), lambda: self._outcome is not None)
        #: the Python threads, main's first (for tests and for whoever wonders what a run left behind)
        self.python_threads: list[threading.Thread] = []
        #: each instance's waiter (its thread's, in the host's wait queues)
        self.waiter_of: dict[WasmtimeInstance, Waiter] = {}

    # --- ExtraLinks --------------------------------------------------------------------------------
    def define(self, inst: WasmtimeInstance, linker: wasmtime.Linker) -> None:
        """The shared memory and ``wasi.thread-spawn`` for a new thread's instance; its store
        traps at the first epoch check after the run's end."""
        _define_shared_memory(linker, inst.store, *self._memory_import, self.memory)
        inst.define_host(linker, THREADS_MODULE, SPAWN, self._spawn, ("i32",), ("i32",))
        if self.settings.get("epoch_interruption"):
            inst.store.set_epoch_deadline(1)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """WASI function ``name``: under the run's lock unless it may block; refused (the thread
        stops) once the program ended."""
        if name in BLOCKING_CALLS:
            def unlocked(*args: int) -> Any:
                with self._lock:
                    self._check_running()
                    self._in_host += 1
                try:
                    return fn(*args)
                finally:
                    with self._cond:
                        self._in_host -= 1
                        self._cond.notify_all()  # it runs again: _settle waits for it
                    self._check_running()  # the program ended while this thread was in the host
            return unlocked

        lock = self._wasi_lock

        def locked(*args: int) -> Any:
            with lock:
                self._check_running()
                return fn(*args)
        return locked

    # --- the program ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Run ``_start`` and its threads to the program's end: its exit code (``proc_exit``'s
        from any thread, else 0 when the main thread returns). A trap in any thread is raised as
        :class:`wasmig.Trap`; Ctrl-C (KeyboardInterrupt) ends the run and is raised."""
        main = self._instance()
        if "_start" not in main.exports:
            raise LinkError("the module has no `_start` export: it is not a WASI command")
        self._start_thread(main, "_start", (), main_thread=True)
        try:
            with self._cond:
                while self._outcome is None:
                    # timed, so that a signal landing on a wasm thread (Ctrl-C, SIGTERM) has its
                    # Python handler run here soon (see CheckpointableThreadedRun.go)
                    self._cond.wait(SIGNAL_WAIT)
        except BaseException as e:
            self._end(("raise", e))
            raise
        finally:
            self._settle()
        kind, value = self._outcome
        if kind == "raise":
            if isinstance(value, ProcExit):
                return value.code
            raise value
        return 0

    def _settle(self) -> None:
        """Once the program ended: wait until every thread has stopped but those still blocked in
        a blocking host call (abandoned, as on the interpreter), so that no store is still running
        or unwinding when the run returns and its objects may be collected by any thread. Threads
        computing stop at their next epoch check, waiters were woken, a host call other than a
        blocking one returns soon; without epoch interruption (a benchmark's setting) a thread
        computing would never stop, so nothing is waited for. Bounded (:data:`_SETTLE_S`): a thread
        stuck in a host call counted as non-blocking (an ``fd_write`` to a pipe nobody reads) is
        abandoned like one in a blocking call rather than holding the end of the run."""
        if not self.settings.get("epoch_interruption"):
            return
        deadline = time.monotonic() + _SETTLE_S
        with self._cond:
            while self._running > self._in_host:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _instance(self, *, run_start: bool = True) -> WasmtimeInstance:
        """A thread's instance: its own store, the table of host waits filled before it runs. (A
        trap's backtrace reads offsets in the module as compiled: in a function that waits or
        notifies, those after the first wait or notify are a few bytes past the original's.)
        ``run_start``: run the instrumented module's start function (not for a restored thread:
        the memory it initialises is the snapshot's)."""
        inst = WasmtimeInstance(self.module, self.wasi, compiled=self.compiled, links=self)
        waiter = self.waits.waiter()
        with self._lock:
            self.waiter_of[inst] = waiter
        table = inst.exports.get(TABLE_EXPORT)
        if isinstance(table, wasmtime.Table):
            for slot, (ft, fn) in self.waits.host_functions(waiter).items():
                table.set(inst.store, slot, inst.host_func(fn, ft.params, ft.results))
        if run_start and _INSTRUMENTED_START in inst.exports:  # the instrumented module's start, run by the host
            inst.invoke(_INSTRUMENTED_START)
        return inst

    def _spawn(self, arg: int) -> int:
        """``wasi.thread-spawn(arg)``: a new thread running ``wasi_thread_start(tid, arg)`` in an
        instance of its own; its tid, or a negative number when none can be made."""
        with self._cond:
            self._check_running()
            if self._live >= MAX_THREADS or self._next_tid > MAX_TID:
                return _SPAWN_FAILED
            tid = self._next_tid
            self._next_tid += 1
            self._live += 1
        try:
            inst = self._instance()
        except (LinkError, wasmtime.WasmtimeError, MemoryError):
            with self._cond:
                self._live -= 1
            return _SPAWN_FAILED
        if not isinstance(inst.exports.get(THREAD_START), wasmtime.Func):
            raise Trap(f"thread-spawn: the module exports no {THREAD_START} function")
        self._start_thread(inst, THREAD_START, (tid, arg), main_thread=False)
        return tid

    def _start_thread(self, inst: WasmtimeInstance, entry: str, args: tuple[int, ...], *, main_thread: bool) -> None:
        name = "wasm-thread-main" if main_thread else f"wasm-thread-{args[0]}"
        py = threading.Thread(target=self._thread_main, args=(inst, entry, args, main_thread), name=name, daemon=True)
        self.python_threads.append(py)
        with self._cond:
            self._running += 1
        try:
            py.start()
        except BaseException:
            with self._cond:
                self._running -= 1
            raise

    def _thread_main(self, inst: WasmtimeInstance, entry: str, args: tuple[int, ...], main_thread: bool) -> None:
        try:
            self._run_thread(inst, entry, args, main_thread)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _run_thread(self, inst: WasmtimeInstance, entry: str, args: tuple[int, ...], main_thread: bool) -> None:
        try:
            inst.invoke(entry, *args)
        except BaseException as e:  # proc_exit (ProcExit), a trap, anything: it ends the program
            self._end(("raise", e))
            return
        if main_thread:
            self._end(("return", None))
        else:
            with self._cond:
                self._live -= 1
                self.waits.check_deadlock()  # the others may all be waiting for what this one will never do

    def _end(self, outcome: tuple[str, Any]) -> None:
        """The program ends with ``outcome`` (the first one counts: what happens in other threads
        after it, epoch traps included, is their being stopped)."""
        with self._cond:
            if self._outcome is not None:
                return
            self._outcome = outcome
            if self.settings.get("epoch_interruption"):
                self.wasm_engine.increment_epoch()
            self.waits.wake_all()
            self._cond.notify_all()

    def _check_running(self) -> None:
        if self._outcome is not None:
            raise ProgramEnded("the program has ended")


class ThreadedProgram(RunsToEnd):
    """A wasi-threads command on wasmtime as a :class:`~wasmig.engines.base.Program` (what
    ``WasmtimeEngine.program`` gives for one, so a run loop runs it like any program): it runs
    to its end and never stops for a checkpoint (a run with checkpoints is
    :mod:`~wasmig.engines.wasmtime.threads_checkpoint`'s). Nothing is instantiated before :meth:`start`."""

    refusal = NO_THREAD_CHECKPOINTS

    def __init__(self, module: Module, wasi: Wasi) -> None:
        self.module = module
        self.wasi = wasi

    def start(self) -> bool:
        code = ThreadedRun(self.module, self.wasi).run()
        if code:
            raise ProcExit(code)
        return False

    def export_names(self) -> Collection[str]:
        return [export.name for export in self.module.interface.exports]


def _define_shared_memory(linker: wasmtime.Linker, store: wasmtime.Store, module: str, name: str,
                          memory: wasmtime.SharedMemory) -> None:
    """``linker.define(store, module, name, memory)``, which wasmtime-py 51 cannot do for a shared
    memory (its ``SharedMemory._as_extern`` hands ctypes a pointer to the pointer the C API wants:
    a TypeError), through the same C call."""
    from wasmtime import _ffi

    union = _ffi.wasmtime_extern_union(sharedmemory=memory.ptr())
    item = _ffi.wasmtime_extern_t(_ffi.WASMTIME_EXTERN_SHAREDMEMORY, union)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = _ffi.wasmtime_linker_define(linker.ptr(), store._context(), ctypes.create_string_buffer(module_bytes),
                                        len(module_bytes), ctypes.create_string_buffer(name_bytes), len(name_bytes),
                                        ctypes.byref(item))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def _compile(module: Module, code: bytes | None, wasm_engine: wasmtime.Engine, cache_dir: Path | None,
             settings: Mapping[str, Any]) -> wasmtime.Module:
    """``code`` (else ``module``) compiled for ``wasm_engine`` (made with ``settings``), through
    the artifact cache."""
    if code is None and module.has_bytes:
        return compile_cached(module.digest, lambda: module.data or b"", cache_dir, wasm_engine=wasm_engine,
                              settings=settings)
    data = code if code is not None else encode_module(module.ir)
    return compile_cached(fast_digest(data), lambda: data, cache_dir, wasm_engine=wasm_engine, settings=settings)


def run_threaded_command(module: Module, wasi: Wasi) -> int:
    """Run a wasi-threads command on wasmtime to its end; its exit code (see :meth:`ThreadedRun.run`)."""
    return ThreadedRun(module, wasi).run()
