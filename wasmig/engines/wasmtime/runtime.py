"""The compiled engine: wasmtime (the ``wasmtime`` PyPI package) running a module natively,
with wasmig's own Python WASI (:class:`wasmig.wasi.preview1.Wasi`), not wasmtime's.

Why wasmig's WASI: the WASI state (fd table, preopens, offsets, clocks) is what a snapshot
captures and a restore rebuilds, so it must live in Python and be the same on every engine.
wasmtime only runs the guest's code; every WASI import is a Python host function.

The pieces:

- one process-wide :func:`engine` (``wasm_multi_memory`` and ``wasm_threads`` on: the
  instrumentation pass that makes a module checkpointable adds a second memory and polls with an
  atomic load) and a compiled-artifact cache
  (:func:`compile_module`): ``Module.serialize()`` output keyed by the BLAKE3 of (the module
  bytes' BLAKE3, wasmtime version, engine settings, host), each entry checksummed so a damaged
  entry is recompiled, never loaded, and mapped into memory by wasmtime rather than copied
  (a wasi-threads run makes an engine of its own, :func:`new_engine` with
  :data:`THREADS_SETTINGS`, and compiles through the same cache under its settings' key);
- :class:`WasmtimeInstance`: links the WASI imports with their exact preview1 types (through
  wasmtime's raw C callback, arguments read as the unsigned bit patterns the WASI layer expects;
  wasmtime-py's public ``define_func``, whose signed ints are masked, as the fallback), re-raises
  host functions' exceptions as themselves, binds the WASI
  :class:`~wasmig.wasi.memory.GuestMemory` to the exported ``memory`` through a ctypes view of
  wasmtime's linear memory (re-derived whenever its length changes: ``memory.grow`` may move it),
  and turns wasmtime traps into :class:`wasmig.Trap` with the spec's wording and the
  interpreter's backtrace format.

Running a command (``_start`` to completion) is :func:`wasmig.session.command.run_command` with
``engine="wasmtime"``, for every engine alike.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import struct
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import wasmtime

try:  # wasmtime-py's ctypes bindings, for the fast host-call path
    from wasmtime import _ffi
except ImportError:  # pragma: no cover - another wasmtime-py layout
    _ffi = None

from wasmig import checked, log
from wasmig.engines import trap_signals as signals
from wasmig.engines.wasmtime.program_memory import program_exports
from wasmig.engines.wasmtime.traps import _Code, _one_line, convert_trap
from wasmig.errors import HostCallInterrupted, LinkError, ValidationError, WasmError
from wasmig.hashing import fast_digest, fast_hash
from wasmig.instrument.linking import LINK_PREFIX, RUN_MODULE_NAME
from wasmig.module import Module
from wasmig.wasi.memory import GuestMemory
from wasmig.wasi.preview1 import WASI_MODULE, Wasi, check_wasi_imports

if TYPE_CHECKING:
    pass

#: Engine settings: applied to the ``wasmtime.Config`` and part of the artifact cache key.
#: ``memory_may_move`` off: a linear memory keeps its address when it grows (it is reserved up
#: front), so another thread may write the control memory's poll byte at any time.
#: ``max_wasm_stack`` 4 MiB (wasmtime's default is 512 KiB): room for 10,000-frame recursions of
#: ordinary C code *and* their rewind copies, whose frames hold every local (deeprec.c's take 240
#: bytes each), still well inside a main thread's usual 8 MiB stack (the session's worker thread
#: has 64 MiB). wasmtime refuses a wasm stack above its async stack size (2 MiB), which it uses
#: only for async calls (wasmig makes none): that is raised to match through the C API.
#: ``shared_memory`` on: modules of the threads proposal (shared memories) instantiate.
#: ``wasm_tail_call`` on: rewind copies hand a frame to its normal body with ``return_call``
#: (:mod:`wasmig.instrument.transfer`; wasmtime 51 has it on by default, set here to be explicit).
ENGINE_SETTINGS: dict[str, Any] = {"wasm_multi_memory": True, "wasm_threads": True, "wasm_tail_call": True,
                                   "shared_memory": True,
                                   "memory_may_move": False, "max_wasm_stack": 4 << 20}
#: wasmtime's own limit where its C API cannot raise the async stack size
_DEFAULT_ASYNC_STACK = 2 << 20

CACHE_ENV = "WASMIG_CACHE"
#: A compiled artifact is ``KEY.cwasm``, exactly ``Module.serialize()``'s bytes, which wasmtime
#: maps into memory (``Module.deserialize_file``: no copy, ~10 ms for 116 MB where reading and
#: deserializing the bytes cost ~0.4 s), and its sidecar ``KEY.cwasm.sum`` (:mod:`wasmig.checked`:
#: the digest, checked before wasmtime sees the file unless the file is the very one checked).
_artifact_hash = fast_hash

_MASK = {"i32": 0xFFFFFFFF, "i64": 0xFFFF_FFFF_FFFF_FFFF}
#: One ``wasmtime_val_raw_t`` slot (16 bytes) per value; integers little-endian at its start
#: (wasmtime runs on little-endian x86-64 and aarch64 only).
_RAW_SLOT = {"i32": "I12x", "i64": "Q8x", "f32": "f12x", "f64": "d8x"}
_RAW_RESULT = {"i32": ctypes.c_uint32, "i64": ctypes.c_uint64, "f32": ctypes.c_float, "f64": ctypes.c_double}
#: ``wasmtime_func_unchecked_callback_t`` with the slots as a plain address.
_RAW_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # a NULL finalizer: the instance owns the callbacks
_HOST_EXCEPTION = b"wasmig: a host function raised a Python exception"
#: The fast host-call path needs these from wasmtime-py's ctypes bindings; without them (another
#: wasmtime-py layout) host functions go through the public, slower ``Linker.define_func``.
_RAW_CALLS = _ffi is not None and all(hasattr(_ffi, name) for name in (
    "wasmtime_linker_define_func_unchecked", "wasmtime_func_unchecked_callback_t", "wasmtime_trap_new"))
_VALTYPE = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64,
            "f32": wasmtime.ValType.f32, "f64": wasmtime.ValType.f64}

# --- the engine and the artifact cache ---------------------------------------------------------
_ENGINE: wasmtime.Engine | None = None
#: The settings of a wasi-threads run's engine (:mod:`wasmig.engines.wasmtime.threads`): epoch
#: interruption besides, so that the program's end (``proc_exit`` or a trap in any thread) stops
#: threads still computing in wasm. A run has an engine of its own, whose epoch only its own
#: threads watch: single-threaded runs keep the engine without the epoch checks.
THREADS_SETTINGS: dict[str, Any] = {**ENGINE_SETTINGS, "epoch_interruption": True}


def engine() -> wasmtime.Engine:
    """The process-wide wasmtime engine (compiled modules are only valid with the engine, or an
    identically configured one, that made them)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = new_engine(ENGINE_SETTINGS)
    return _ENGINE


def new_engine(settings: Mapping[str, Any]) -> wasmtime.Engine:
    """A wasmtime engine configured with ``settings`` (:data:`ENGINE_SETTINGS` or :data:`THREADS_SETTINGS`)."""
    config = wasmtime.Config()
    settings = dict(settings)
    setter = getattr(_ffi, "wasmtime_config_async_stack_size_set", None) if _ffi is not None else None
    if setter is not None:
        setter(config.ptr(), settings["max_wasm_stack"])
    else:  # pragma: no cover - another wasmtime-py layout
        settings["max_wasm_stack"] = min(settings["max_wasm_stack"], _DEFAULT_ASYNC_STACK)
    for name, value in settings.items():
        # a plain attribute set on a Config without that property would be silently ignored
        # (memory_may_move is what makes the poll byte safe to write from another thread)
        if not isinstance(getattr(type(config), name, None), property):
            raise WasmError(f"wasmtime-py {wasmtime_version()} has no engine setting {name!r}: "
                            "wasmig needs wasmtime 45 or newer")
        setattr(config, name, value)
    made = wasmtime.Engine(config)
    signals.remember()  # wasmtime installs its signal handlers with its first engine
    return made


@functools.cache
def wasmtime_version() -> str:
    """wasmtime-py's version (part of the artifact cache key), read from the name of its dist-info
    folder beside the package: importlib.metadata would add ~15 ms of imports to every run."""
    site = Path(wasmtime.__file__).resolve().parent.parent
    for info in site.glob("wasmtime-*.dist-info"):
        return info.name[len("wasmtime-"):-len(".dist-info")]
    from importlib import metadata  # pragma: no cover - another installer's layout

    try:  # pragma: no cover
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:  # pragma: no cover - a wasmtime not installed by pip
        return getattr(wasmtime, "__version__", "unknown")


def config_description(settings: Mapping[str, Any] = ENGINE_SETTINGS) -> str:
    """Everything besides the module bytes that decides what the compiled artifact is."""
    described = ",".join(f"{k}={v!r}" for k, v in sorted(settings.items()))
    return f"{described};{platform.system()}-{platform.machine()}"


def default_cache_dir() -> Path:
    """``$WASMIG_CACHE/wasmtime``, else ``<repo>/.cache/wasmtime`` in a source checkout, else
    ``~/.cache/wasmig/wasmtime`` (the same rules as the C toolchain's cache)."""
    from wasmig.files import wasmtime_cache_dir

    return wasmtime_cache_dir()


def artifact_key(digest: str, settings: Mapping[str, Any] = ENGINE_SETTINGS) -> str:
    """The cache key of the compiled artifact of a module whose bytes have the :func:`fast_digest`
    ``digest``: that digest, wasmtime's version and the engine ``settings`` (a caller that knows a
    module's digest without its bytes, as for a cached instrumented module, needs no bytes)."""
    h = _artifact_hash()
    parts = (b"wasmig-wasmtime-artifact-v3", _artifact_hash.__name__.encode(), digest.encode(),
             wasmtime_version().encode(), config_description(settings).encode())
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # length-prefixed: no two part lists collide
        h.update(part)
    return h.hexdigest()


def cache_key(data: bytes) -> str:
    """The cache key of ``data``'s compiled artifact."""
    return artifact_key(fast_digest(data))


#: What :func:`compile_module` did, per outcome ("hit", "miss", "corrupt", "unwritable"): for tests
#: and for anyone wondering whether the cache works.
cache_stats: dict[str, int] = {"hit": 0, "miss": 0, "corrupt": 0, "unwritable": 0}


def compile_module(data: bytes, cache_dir: Path | None = None, *, use_cache: bool = True) -> wasmtime.Module:
    """Compile ``data`` for :func:`engine`, through the artifact cache.

    An entry that is truncated, fails its checksum, or that wasmtime refuses to deserialize
    (another wasmtime build, another CPU) is counted as ``corrupt``, recompiled and replaced. A
    cache directory that cannot be written only costs the compile next time. Raises
    :class:`ValidationError` when wasmtime rejects the module.
    """
    if not use_cache:
        return _compile(data)
    digest = fast_digest(data)
    return compile_cached(digest, lambda: data, cache_dir)


def compile_cached(digest: str, source: Callable[[], bytes], cache_dir: Path | None = None, *,
                   wasm_engine: wasmtime.Engine | None = None,
                   settings: Mapping[str, Any] = ENGINE_SETTINGS) -> wasmtime.Module:
    """:func:`compile_module` for a module known by its :func:`fast_digest`: ``source()`` gives
    its bytes, asked only on a cache miss (and if their digest is not ``digest`` after all, the
    artifact is cached under theirs: an entry always holds the code of the bytes it is keyed by).
    ``wasm_engine``: an engine :func:`new_engine` made with ``settings``, instead of :func:`engine`."""
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    wasm_engine = wasm_engine if wasm_engine is not None else engine()
    path = folder / f"{artifact_key(digest, settings)}.cwasm"
    compiled, found = _load(path, wasm_engine)
    if compiled is not None:
        cache_stats["hit"] += 1
        log.debug(__name__, "compiled-module cache hit: %s", path)
        return compiled
    cache_stats["corrupt" if found else "miss"] += 1
    data = source()
    actual = fast_digest(data)
    if actual != digest:
        path = folder / f"{artifact_key(actual, settings)}.cwasm"
    started = time.perf_counter()
    compiled = _compile(data, wasm_engine)
    log.debug(__name__, "compiled-module cache %s: compiled %d bytes in %.3f s -> %s",
              "entry damaged" if found else "miss", len(data), time.perf_counter() - started, path)
    try:
        checked.write(path, bytes(compiled.serialize()))
    except OSError:
        cache_stats["unwritable"] += 1
        log.debug(__name__, "compiled-module cache: cannot write %s", path)
    return compiled


def _compile(data: bytes, wasm_engine: wasmtime.Engine | None = None) -> wasmtime.Module:
    try:
        return wasmtime.Module(wasm_engine if wasm_engine is not None else engine(), data)
    except wasmtime.WasmtimeError as e:
        raise ValidationError(f"wasmtime cannot compile the module: {_one_line(e)}") from None


def _load(path: Path, wasm_engine: wasmtime.Engine | None = None) -> tuple[wasmtime.Module | None, bool]:
    """(the compiled module cached at ``path``, or None; whether an entry was there at all).

    The checksum matters: deserializing is only safe for artifacts wasmtime itself produced, so
    a flipped bit must never reach ``Module.deserialize_file``. :func:`wasmig.checked.open_checked`
    computes it over a read-only mapping of the file unless the file is the very one last checked
    (its stamp); wasmtime then maps the same file itself."""
    mapped, found = checked.open_checked(path)
    if mapped is None:
        return None, found
    mapped.close()
    try:
        return wasmtime.Module.deserialize_file(wasm_engine if wasm_engine is not None else engine(), str(path)), True
    except wasmtime.WasmtimeError:
        return None, True


def _own_exports(store: wasmtime.Store, instance: wasmtime.Instance) -> dict[str, Any]:
    """The instance's exports by name, but for an instrumented run module's exports to its rewind
    module (every function, table, memory and global by index: :data:`LINK_PREFIX`), which come
    last: read one at a time up to the first of those (wasmtime-py's ``exports`` wraps every one
    of them, 11,000 for CPython, at every start)."""
    nth = getattr(_ffi, "wasmtime_instance_export_nth", None) if _ffi is not None else None
    try:
        from wasmtime._extern import wrap_extern
    except ImportError:  # pragma: no cover - another wasmtime-py layout
        nth = None
    if nth is None:  # pragma: no cover - another wasmtime-py layout
        return {k: v for k, v in instance.exports(store).items() if not k.startswith(LINK_PREFIX)}
    out: dict[str, Any] = {}
    name_ptr = ctypes.POINTER(ctypes.c_char)()
    name_len = ctypes.c_size_t(0)
    prefix = LINK_PREFIX.encode()
    i = 0
    while True:
        item = _ffi.wasmtime_extern_t()
        if not nth(store._context(), ctypes.byref(instance._instance), i, ctypes.byref(name_ptr),
                   ctypes.byref(name_len), ctypes.byref(item)):
            return out
        name = ctypes.string_at(name_ptr, name_len.value)
        if name.startswith(prefix):
            return out
        out[name.decode()] = wrap_extern(item)
        i += 1


# --- guest memory ------------------------------------------------------------------------------
class LinearMemoryView:
    """The ``source`` of a :class:`GuestMemory` over a wasmtime memory: a writable ``memoryview``
    of the live linear memory, rebuilt (base address asked again) whenever its length changed:
    a memory moves only when ``memory.grow`` grows it, so the WASI layer never touches a stale
    mapping.

    Asking wasmtime for the length is a foreign call, so during one host call (bracketed by
    :meth:`enter`/:meth:`leave`, in which the guest cannot run and so cannot grow its memory) it
    is asked once; outside host calls, on every access."""

    __slots__ = ("_store", "_memory", "_addr", "_len", "_view", "_in_call", "_fresh")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._memory = memory
        self._addr = -1
        self._len = -1
        self._view: memoryview = memoryview(bytearray())
        self._in_call = False
        self._fresh = False

    def __call__(self) -> memoryview:
        if self._fresh:
            return self._view
        n = self._memory.data_len(self._store)
        if n != self._len:  # a memory moves only when it grows
            addr = ctypes.addressof(self._memory.data_ptr(self._store).contents) if n else 0
            self._view = memoryview((ctypes.c_ubyte * n).from_address(addr)).cast("B") if n else memoryview(bytearray())
            self._addr, self._len = addr, n
        self._fresh = self._in_call
        return self._view

    def enter(self) -> None:
        self._in_call, self._fresh = True, False

    def leave(self) -> None:
        self._in_call, self._fresh = False, False


class Exports(Mapping[str, Any]):
    """The instance's exports by name: wasmtime ``Func``/``Memory``/``Table``/``Global`` objects
    (use them with :attr:`WasmtimeInstance.store`; call functions through ``invoke``)."""

    def __init__(self, items: dict[str, Any]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class ExtraLinks(Protocol):
    """What a wasi-threads run adds to each thread's :class:`WasmtimeInstance`
    (:mod:`wasmig.engines.wasmtime.threads`): its own engine, the imports WASI does not serve
    (the shared memory, ``wasi.thread-spawn``), and a wrapper around every WASI function."""

    #: the engine the instance's store and linker belong to (the compiled module's engine)
    wasm_engine: wasmtime.Engine
    #: module name -> field names of the imports :meth:`define` provides
    provides: Mapping[str, Collection[str]]

    def define(self, inst: WasmtimeInstance, linker: wasmtime.Linker) -> None:
        """Define the imports in :attr:`provides` in ``linker`` (``inst.store`` is the new store)."""

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The WASI function ``name`` (``fn``) as this run calls it."""


class WasmtimeInstance:
    """A module instantiated on wasmtime, with ``wasi`` (wasmig's own WASI) as its
    ``wasi_snapshot_preview1``; the WASI memory is bound to the exported ``memory``.

    A Python exception raised by a host function (``ProcExit``, ``HostCallInterrupted``, a
    ``KeyboardInterrupt``...) comes out of :meth:`invoke` as itself; a trap as :class:`wasmig.Trap`.
    """

    engine = "wasmtime"

    def __init__(self, module: Module, wasi: Wasi | None = None, *, cache_dir: Path | None = None,
                 use_cache: bool = True, fast_host_calls: bool | None = None,
                 code: bytes | Callable[[], bytes] | None = None, compiled: wasmtime.Module | None = None,
                 host_imports: Mapping[str, Mapping[str, Any]] | None = None,
                 links: ExtraLinks | None = None, store: wasmtime.Store | None = None) -> None:
        """``code``: the bytes to run instead of ``module``'s own — the instrumented module, which
        has the same imports and function indices (traps then name the original's functions); a
        callable giving them when first needed (a trap's offsets), with ``compiled``: those bytes,
        compiled already (the cached instrumented module: its bytes are never read on a cache hit).
        ``host_imports``: wasmig externs (``HostFunc``, immutable ``Global``) by module and field,
        for imports ``wasi`` does not serve (``wasmig.Instance(..., engine="wasmtime")``, see
        :mod:`wasmig.engines.wasmtime.api`). ``links``: a wasi-threads thread's engine, imports and
        WASI wrapper (``compiled`` then made by that engine). ``store``: the store to instantiate in
        (one whose memories, tables or globals the module imports: wasmtime links within a store
        only); a fresh one by default."""
        self.module = module
        self.wasi = wasi
        self._code = _Code(module, code)
        self._raised: list[BaseException] = []  # what host functions raised, newest last
        #: set by the checkpointing layer on an instrumented module: a host call that raises
        #: HostCallInterrupted then sets this global (``wasmig:state``) to 1 and returns at once,
        #: so the guest unwinds from the import call site instead of trapping
        self.interrupt_state: wasmtime.Global | None = None
        #: and this byte (the poll byte) to 1: the fast variant's post-call checks test it first
        self.interrupt_flag: ctypes.c_uint8 | None = None
        ir = module.interface
        if host_imports:  # the embedding API's imports; the module's others must be WASI's
            from wasmig.engines.wasmtime.api import without_provided

            ir = without_provided(ir, host_imports)
        if links is not None:
            kept = [imp for imp in ir.imports if imp.name not in links.provides.get(imp.module, ())]
            # the decoded module, or its interface alone (a NamedTuple: a restore's module not decoded)
            if isinstance(ir, tuple):
                ir = ir._replace(imports=kept)
            else:  # a dataclass, whose module imported dataclasses (inspect, ast: ~9 ms a start need not pay)
                from dataclasses import replace

                ir = replace(ir, imports=kept)
        imports = check_wasi_imports(ir)
        if imports and wasi is None:
            raise LinkError(f"unknown import: {imports[0].module}.{imports[0].name} was not provided")
        if links is not None and compiled is None:
            raise ValueError("an instance with links runs a module compiled by the links' engine: pass `compiled`")
        if compiled is None:
            try:
                if code is None and use_cache and module.has_bytes:
                    # by the module's digest (remembered: its bytes may never be read), bytes on a miss
                    compiled = compile_cached(module.digest, lambda: module.data or b"", cache_dir)
                else:
                    data = (code() if callable(code) else code) if code is not None else module.data
                    if data is None:
                        from wasmig.binary.encoder import encode_module

                        data = encode_module(module.ir)
                    compiled = compile_module(data, cache_dir, use_cache=use_cache)
            except ValidationError:
                if code is None:
                    _ = module.validation  # wasmig's own words for what is wrong with the module, if it finds it
                raise
        wasm_engine = links.wasm_engine if links is not None else engine()
        self.store = store if store is not None else wasmtime.Store(wasm_engine)
        self._wasm_engine = wasm_engine
        linker = wasmtime.Linker(wasm_engine)
        self.memory_view: LinearMemoryView | None = None
        self._callbacks: list[Any] = []  # the ctypes callbacks wasmtime calls: alive as long as the store
        fast = _RAW_CALLS if fast_host_calls is None else fast_host_calls
        if wasi is not None:
            wrap = links.wrap if links is not None else (lambda name, fn: fn)
            host = wasi.imports(lambda params, results, fn, name: wrap(name, fn),
                                [imp.name for imp in imports])[WASI_MODULE]
            defined: set[str] = set()
            for imp in imports:
                if imp.name in defined:
                    continue  # a module may import one function twice: the linker takes each name once
                defined.add(imp.name)  # (check_wasi_imports checked that every copy has the same type)
                ft = ir.types[imp.desc]
                ty = wasmtime.FuncType([_VALTYPE[t]() for t in ft.params], [_VALTYPE[t]() for t in ft.results])
                if fast:
                    self._define_raw(linker, imp.name, ty, host[imp.name], ft.params, ft.results)
                else:
                    linker.define_func(WASI_MODULE, imp.name, ty,
                                       self._host_func(host[imp.name], ft.params, ft.results))
        if host_imports:
            from wasmig.engines.wasmtime.api import define_host_imports

            define_host_imports(self, linker, host_imports)
        if links is not None:
            links.define(self, linker)
        signals.restore()  # a trap in wasm must stay a trap, whatever library was loaded since
        self._instance = self._guard(lambda: linker.instantiate(self.store, compiled), instantiating=True)
        # memory 0 as the program sees it (an instrumented module's may have a hidden page first)
        self.exports = Exports(program_exports(_own_exports(self.store, self._instance)))
        memory = self.exports.get("memory")
        self.memory_view = LinearMemoryView(self.store, memory) if isinstance(memory, wasmtime.Memory) else None
        if wasi is not None and self.memory_view is not None:
            wasi.bind_memory(GuestMemory(self.memory_view))

    def link(self, compiled: wasmtime.Module, code: bytes | Callable[[], bytes]) -> None:
        """Instantiate ``compiled`` (an instrumented module's rewind module, whose bytes ``code``
        gives when a trap needs them) in this instance's store, its imports served by this
        instance's exports (module name :data:`RUN_MODULE_NAME`); its own exports join
        :attr:`exports`, and a trap in its functions is reported like one in this module's."""
        linker = wasmtime.Linker(self._wasm_engine)
        linker.define_instance(self.store, RUN_MODULE_NAME, self._instance)
        linked = self._guard(lambda: linker.instantiate(self.store, compiled), instantiating=True)
        self._code.rewind = code
        self.exports = Exports({**self.exports, **linked.exports(self.store)})

    def _define_raw(self, linker: wasmtime.Linker, name: str, ty: wasmtime.FuncType, fn: Callable[..., Any],
                    params: tuple[str, ...], results: tuple[str, ...], module_name: str = WASI_MODULE) -> None:
        """Define ``fn`` through wasmtime's unchecked C callback (:meth:`_raw_callback`)."""
        raw = self._raw_callback(fn, params, results)
        module_bytes, field = module_name.encode(), name.encode()
        error = _ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(), ctypes.create_string_buffer(module_bytes), len(module_bytes),
            ctypes.create_string_buffer(field), len(field), ty.ptr(),
            ctypes.cast(raw, _ffi.wasmtime_func_unchecked_callback_t), None, _NO_FINALIZER)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)

    def _raw_callback(self, fn: Callable[..., Any], params: tuple[str, ...], results: tuple[str, ...]) -> Any:
        """``fn`` as wasmtime's unchecked C callback: arguments are read straight from the raw
        value slots as unsigned ints (one ``struct.unpack``) and the result written back, instead
        of wasmtime-py's per-value ``Val`` conversions (several times slower per call). An
        exception goes to this instance's own list (:meth:`_guard` raises it as itself), never
        through wasmtime-py's trampoline, which hands it over in one process-wide variable that
        any thread's next trap may take (another thread's exception raised in this one: a
        wasi-threads run saw its main thread's ``ProgramEnded`` come out of another thread's
        trap). Kept alive with the instance (its store calls it)."""
        args_format = struct.Struct("<" + "".join(_RAW_SLOT[t] for t in params))
        result = _RAW_RESULT[results[0]] if results else None
        size = args_format.size
        raised = self._raised
        inst = self

        def callback(env: Any, caller: Any, slots: int, count: int) -> int:
            view = inst.memory_view
            if view is not None:
                view.enter()
            try:
                out = fn(*args_format.unpack(ctypes.string_at(slots, size))) if size else fn()
                if result is not None:
                    result.from_address(slots).value = out
                return 0
            except HostCallInterrupted as e:
                if not inst._interrupt():
                    raised.append(e)
                    return ctypes.cast(_ffi.wasmtime_trap_new(_HOST_EXCEPTION, len(_HOST_EXCEPTION)),
                                       ctypes.c_void_p).value
                if result is not None:
                    result.from_address(slots).value = 0
                return 0
            except BaseException as e:  # a ctypes callback must not raise: hand it over as a trap
                raised.append(e)
                return ctypes.cast(_ffi.wasmtime_trap_new(_HOST_EXCEPTION, len(_HOST_EXCEPTION)), ctypes.c_void_p).value
            finally:
                if view is not None:
                    view.leave()

        raw = _RAW_CALLBACK(callback)
        self._callbacks.append(raw)
        return raw

    def define_host(self, linker: wasmtime.Linker, module_name: str, name: str, fn: Callable[..., Any],
                    params: tuple[str, ...], results: tuple[str, ...]) -> None:
        """Define host function ``module_name.name`` (unsigned ints in) in ``linker`` for this
        instance: the raw path where wasmtime-py has it, else its public ``define_func``."""
        ty = wasmtime.FuncType([_VALTYPE[t]() for t in params], [_VALTYPE[t]() for t in results])
        if _RAW_CALLS:
            self._define_raw(linker, name, ty, fn, params, results, module_name)
        else:  # pragma: no cover - another wasmtime-py layout
            linker.define_func(module_name, name, ty, self._host_func(fn, params, results))

    def host_func(self, fn: Callable[..., Any], params: tuple[str, ...], results: tuple[str, ...]) -> wasmtime.Func:
        """``fn`` as a ``wasmtime.Func`` of this instance's store (to put in a table), by the raw
        path where wasmtime-py has it (see :meth:`_raw_callback`)."""
        ty = wasmtime.FuncType([_VALTYPE[t]() for t in params], [_VALTYPE[t]() for t in results])
        if not _RAW_CALLS or not hasattr(_ffi, "wasmtime_func_new_unchecked"):  # pragma: no cover
            return wasmtime.Func(self.store, ty, self._host_func(fn, params, results))
        raw = self._raw_callback(fn, params, results)
        out = _ffi.wasmtime_func_t()
        _ffi.wasmtime_func_new_unchecked(self.store._context(), ty.ptr(),
                                         ctypes.cast(raw, _ffi.wasmtime_func_unchecked_callback_t), None,
                                         _NO_FINALIZER, ctypes.byref(out))
        return wasmtime.Func._from_raw(out)

    def _host_func(self, fn: Callable[..., Any], params: tuple[str, ...], results: tuple[str, ...]
                   ) -> Callable[..., Any]:
        """The portable path (wasmtime-py's public ``Linker.define_func``): ``fn`` (raw unsigned
        ints in, errno out) as a callback that receives signed ints."""
        raised = self._raised
        masks = tuple(_MASK[t] for t in params)

        def call(*args: int) -> Any:
            view = self.memory_view
            if view is not None:
                view.enter()
            try:
                return fn(*[a & m for a, m in zip(args, masks, strict=True)])
            except HostCallInterrupted as e:
                if not self._interrupt():
                    raised.append(e)
                    raise
                return 0 if results else None
            except BaseException as e:
                raised.append(e)
                raise
            finally:
                if view is not None:
                    view.leave()
        return call

    def _interrupt(self) -> bool:
        """A host call gave up for a checkpoint: make the instrumented module unwind from its
        call site (``$state`` = 1, and the poll byte, which the fast variant tests first).
        False when the module cannot unwind (not instrumented)."""
        if self.interrupt_state is None:
            return False
        self.interrupt_state.set_value(self.store, 1)
        if self.interrupt_flag is not None:
            self.interrupt_flag.value = 1
        return True

    def _guard(self, thunk: Callable[[], Any], *, instantiating: bool = False) -> Any:
        """Run wasm: a host function's exception comes out as itself, a trap as wasmig.Trap."""
        self._raised.clear()
        try:
            return thunk()
        except BaseException as e:
            original = self._raised[-1] if self._raised else None
            self._raised.clear()
            if original is not None:
                if original is e:
                    raise
                raise original from None  # wasmtime-py wrapped it into a trap
            if isinstance(e, wasmtime.Trap):
                raise convert_trap(e, self.module, self._code) from None
            if isinstance(e, wasmtime.WasmtimeError):
                if instantiating:
                    raise LinkError(f"cannot instantiate on wasmtime: {_one_line(e)}") from None
                raise WasmError(_one_line(e)) from None
            raise

    def invoke(self, name: str, *args: Any) -> Any:
        """Call the exported function ``name``: ``None``, one value or a list (wasmtime-py's
        conventions: integers come back signed)."""
        func = self.exports.get(name)
        if not isinstance(func, wasmtime.Func):
            raise KeyError(f"no exported function named {name!r}")
        wanted = len(func.type(self.store).params)
        if len(args) != wanted:
            raise TypeError(f"{name} takes {wanted} arguments, {len(args)} given")
        return self._guard(lambda: func(self.store, *args))

