"""Checkpointing on the wasmtime engine, through the instrumentation pass (docs/instrument.md).

:class:`Checkpointable` runs the *instrumented* module on wasmtime with wasmig's WASI and gives
it the interpreter's checkpoint vocabulary:

- run ``_start`` from the beginning, or *rewind* a canonical snapshot's frames into it (a restore,
  or going on after a checkpoint);
- stop deterministically at stable point N (``wasmig:stop_at``; only the deterministic variant of
  the pass, ``count_steps=True``, counts steps), or asynchronously: the guest runs
  in a worker thread (ctypes releases the GIL while wasm runs) and :meth:`request` — safe from a
  signal handler in the main thread — writes the control memory's poll byte, which the guest
  tests at its next function entry or loop header, and wakes a blocked WASI call, which returns
  at once with ``$state = unwinding`` so the guest unwinds from that import call;
- capture the canonical :class:`Snapshot` once the guest unwound (:func:`capture_wasmtime`), equal
  to the interpreter's at the same step (the fast variant's snapshots have ``steps = None``).

:class:`WasmtimeSession` is :class:`~wasmig.snapshot.session.Session`'s counterpart: the same
policy (step, timer, SIGUSR1, then exit/continue), the same status file and snapshot files.
"""

from __future__ import annotations

import ctypes
import struct
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig import checked, log
from wasmig.errors import SnapshotError, WasmError
from wasmig.hashing import fast_hash
from wasmig.module import Module
from wasmig.snapshot import site_index
from wasmig.snapshot.capture_wasmtime import capture_wasmtime, memory_export, static_tables
from wasmig.snapshot.session import CheckpointExit, CheckpointPolicy, SessionBase
from wasmig.snapshot.site_index import SiteIndex
from wasmig.wasi.preview1 import ProcExit, Wasi

if TYPE_CHECKING:
    # imported where a checkpoint, a rewind or an instrumentation needs them, not by a start: the
    # pass, the IR classes it is written with, the snapshot classes, the store (msgpack, zstandard)
    # would add 20 ms to every start (docs/instrument.md, "Start-up")
    from wasmig.instrument.sites import SiteMap
    from wasmig.snapshot.state import FrameState, Snapshot
    from wasmig.snapshot.store import PagedMemory

try:  # the key's sha256s (the pass's source, ~100 KB; a line) without hashlib's OpenSSL set-up (2.5 ms)
    from _sha256 import sha256 as _sha256  # CPython 3.11
except ImportError:  # pragma: no cover - 3.12 renamed it; other implementations
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment]

#: Bumped whenever the pass changes what it emits: part of the instrumented-module cache key.
PASS_VERSION = "wasmig-instrument-13"
WORKER_STACK = 64 << 20


def _pass_fingerprint() -> bytes:
    """The pass version and the source of every module of the pass, so an edited pass never
    reuses a stale cached module."""
    import wasmig.instrument as package

    h = _sha256(PASS_VERSION.encode())
    for path in sorted(Path(package.__path__[0]).glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.digest()


_FINGERPRINT: bytes | None = None


def _function_count(module: Module) -> int | None:
    """The module's defined functions, read from its function section without decoding the code."""
    if module.data is None:
        return len(module.ir.funcs)
    from wasmig.binary.leb128 import decode_u

    data, pos = module.data, 8
    try:
        while pos < len(data):
            section = data[pos]
            size, pos = decode_u(data, pos + 1)
            if section == 3:
                return decode_u(data, pos)[0]
            pos += size
    except (IndexError, ValueError, WasmError):
        return None
    return 0


class InstrumentNotice:
    """What ``wasmig run``/``restore`` print on stderr while a big module (:meth:`worth_it`) missing
    from the cache is instrumented (minutes for the biggest): a line when it starts; after ``QUIET_S``, the functions
    done so far, redrawn in place at most once a second on a terminal, else a line every
    ``LINE_EVERY_S``; and a line with the time taken. A thread draws it, so phases without
    per-function progress (decoding, encoding) show their time too."""

    QUIET_S = 2.0
    LINE_EVERY_S = 10.0
    #: announced only from this many defined functions or bytes of module: smaller ones take a
    #: second or less (the C test programs: 25-80 KB, 0.2-0.6 s), where lines on stderr would only
    #: be noise in the program's own output
    BIG_FUNCTIONS = 1000
    BIG_BYTES = 256 << 10

    def __init__(self, name: str, stream: Any = None) -> None:
        self.name = name
        self.stream = stream
        self.done = 0
        self.total: int | None = None
        self.phase = "decoding and analysing the module"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0  # length of the progress text on the terminal's current line, if any
        self._started = 0.0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: the notice is only a courtesy
            pass

    @classmethod
    def worth_it(cls, module: Module) -> bool:
        """Whether instrumenting ``module`` takes long enough to be announced."""
        if module.data is not None and len(module.data) >= cls.BIG_BYTES:
            return True
        return (_function_count(module) or 0) >= cls.BIG_FUNCTIONS

    def start(self, module: Module) -> None:
        if self.stream is None:
            self.stream = sys.stderr
        try:
            self._tty = self.stream.isatty()
        except (AttributeError, OSError, ValueError):
            self._tty = False
        count = _function_count(module)
        facts = ([] if count is None else [f"{count} functions"]) + (
            [] if module.data is None else [f"{len(module.data)} bytes"])
        about = f" ({', '.join(facts)})" if facts else ""
        self._write(f"wasmig: instrumenting {self.name}{about} for checkpoints; cached for next time\n")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._draw, name="wasmig-instrument-progress", daemon=True)
        self._thread.start()

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self.phase = "rewriting functions" if done < total else "encoding the instrumented module"

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        if self.total and self.done < self.total:
            what = f"{self.done} of {self.total} functions ({100 * self.done // self.total}%)"
        else:
            what = self.phase
        return f"wasmig: instrumenting {self.name}: {what}, {elapsed:.0f} s"

    def _draw(self) -> None:
        if self._stop.wait(self.QUIET_S):
            return
        last_line = -self.LINE_EVERY_S
        while True:
            now = time.monotonic()
            if self._tty:
                text = self._line()
                self._write("\r" + text.ljust(self._drawn))
                self._drawn = len(text)
            elif now - last_line >= self.LINE_EVERY_S:
                self._write(self._line() + "\n")
                last_line = now
            if self._stop.wait(1.0):
                return

    def end(self, ok: bool) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end = ("\r" + " " * self._drawn + "\r") if self._drawn else ""
        if ok:
            end += f"wasmig: instrumented {self.name} in {time.monotonic() - self._started:.1f} s\n"
        self._write(end)


class Instrumented:
    """A module's instrumented variant, through the cache (:func:`instrumented`): its site index,
    its compiled code, and its bytes only when something needs them — a cached start reads
    neither the instrumented module (96 MB for CPython) nor its JSON site map."""

    def __init__(self, module: Module, path: Path, index_path: Path, sites: SiteIndex, data: bytes | None,
                 count_steps: bool, announce: str | None, cache_dir: Path | None) -> None:
        self.module = module
        self.path = path
        self.index_path = index_path
        self.sites = sites
        self._data = data
        self._count_steps = count_steps
        self._announce = announce
        self._cache_dir = cache_dir

    @property
    def data(self) -> bytes:
        """The instrumented module's bytes, read from the cache when first asked; instrumented
        again if that entry is gone or damaged (then :attr:`sites` is that run's, whatever the
        index said)."""
        if self._data is None:
            from wasmig.engines.wasmtime import cache_payload

            try:
                blob = self.path.read_bytes()
            except OSError:
                blob = None
            data = cache_payload(blob) if blob is not None else None
            if data is None or fast_hash(data).digest() != self.sites.module_digest:
                data, self.sites = _instrument(self.module, self.path, self.index_path, self._count_steps,
                                               self._announce, "entry damaged" if blob is not None else "miss")
            self._data = data
        return self._data

    def compiled(self) -> Any:
        """The compiled instrumented module (a ``wasmtime.Module``), from the artifact cache by the
        digest the site index records; the bytes are read (or made) only on a miss."""
        from wasmig.engines.wasmtime import compile_cached

        return compile_cached(self.sites.module_digest.hex(), lambda: self.data, self._cache_dir)


def _cache_key(module: Module, count_steps: bool) -> str:
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = _pass_fingerprint()
    if module.sha256 is not None:
        sha = module.sha256
    else:
        from wasmig.binary.encoder import encode_module

        sha = _sha256(encode_module(module.ir)).hexdigest()
    return _sha256(_FINGERPRINT + sha.encode() + (b"/steps" if count_steps else b"/fast")).hexdigest()


def _write_index(index_path: Path, sitemap: SiteMap, data: bytes) -> SiteIndex:
    """Write (best effort) and return the site index of the instrumented module ``data``."""
    raw = site_index.encode(sitemap, fast_hash(data).digest(), len(data))
    try:
        checked.write(index_path, raw)
    except OSError:
        log.debug(__name__, "instrumented-module cache: cannot write %s", index_path)
    return SiteIndex(raw)


def _instrument(module: Module, path: Path, index_path: Path, count_steps: bool, announce: str | None,
                why: str) -> tuple[bytes, SiteIndex]:
    """Run the pass (announced on stderr for a big module), cache its module and site index."""
    from wasmig.engines.wasmtime import cache_entry
    from wasmig.files import write_atomically
    from wasmig.instrument.unwind import instrument

    started = time.perf_counter()
    notice = InstrumentNotice(announce) if announce is not None and InstrumentNotice.worth_it(module) else None
    if notice is not None:
        notice.start(module)
    try:
        done = instrument(module, count_steps=count_steps, progress=notice.progress if notice else None)
        data = done.data
    except BaseException:
        if notice is not None:
            notice.end(ok=False)
        raise
    if notice is not None:
        notice.end(ok=True)
    log.debug(__name__, "instrumented-module cache %s: instrumented in %.3f s (%s variant) -> %s", why,
              time.perf_counter() - started, "counting" if count_steps else "fast", path)
    try:
        write_atomically(path, cache_entry(data))
    except OSError:
        log.debug(__name__, "instrumented-module cache: cannot write %s", path)
    return data, _write_index(index_path, done.sitemap, data)


def instrumented(module: Module, cache_dir: Path | None = None, *, count_steps: bool = False,
                 announce: str | None = None) -> Instrumented:
    """The instrumented module (the fast variant, or with ``count_steps`` the deterministic one),
    through a cache keyed by the original module's sha256, the variant and the pass's fingerprint
    (the pass is pure Python and costs minutes on big modules; a restore should not pay it).
    A cache entry is the module (``instrumented-KEY.wasm``) and its site index
    (``instrumented-KEY.sites``, :mod:`wasmig.snapshot.site_index`); an index missing beside a
    valid module (an entry of an older wasmig) is made from the module's site map section, a
    damaged entry is rebuilt. ``announce``: the module's name for the lines
    :class:`InstrumentNotice` prints on stderr when a big module has to be instrumented (a cache
    hit, or a small module, prints nothing); None, silent."""
    from wasmig.engines.wasmtime import cache_payload, default_cache_dir

    key = _cache_key(module, count_steps)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    path, index_path = folder / f"instrumented-{key}.wasm", folder / f"instrumented-{key}.sites"
    mapped, _ = checked.open_checked(index_path)  # checked once per file, read in place
    try:
        sites = SiteIndex(mapped) if mapped is not None else None
    except ValueError:
        sites = None
    if sites is not None and sites.counts_steps == count_steps:
        log.debug(__name__, "instrumented-module cache hit: %s", index_path)
        return Instrumented(module, path, index_path, sites, None, count_steps, announce, cache_dir)
    try:
        blob = path.read_bytes()
    except OSError:
        blob = None
    data = cache_payload(blob) if blob is not None else None
    if data is not None:
        from wasmig.binary.decoder import read_custom_section
        from wasmig.instrument.sites import SECTION_NAME, SiteMap

        try:
            raw = read_custom_section(data, SECTION_NAME)
            sitemap = SiteMap.from_bytes(raw) if raw is not None else None
        except (WasmError, ValueError, TypeError, KeyError):  # a damaged entry is rebuilt
            sitemap = None
        if sitemap is not None and sitemap.counts_steps == count_steps:
            log.debug(__name__, "instrumented-module cache hit: %s (its site index made now)", path)
            return Instrumented(module, path, index_path, _write_index(index_path, sitemap, data), data,
                                count_steps, announce, cache_dir)
    data, sites = _instrument(module, path, index_path, count_steps, announce,
                              "miss" if blob is None else "entry damaged")
    return Instrumented(module, path, index_path, sites, data, count_steps, announce, cache_dir)


def instrumented_bytes(module: Module, cache_dir: Path | None = None, *, count_steps: bool = False,
                       announce: str | None = None) -> tuple[bytes, SiteIndex]:
    """The instrumented module's bytes and site map (see :func:`instrumented`)."""
    art = instrumented(module, cache_dir, count_steps=count_steps, announce=announce)
    data = art.data
    return data, art.sites


_CHECKPOINT_CODE_IMPORTED = False
#: how long a guest runs before the main thread imports the checkpoint code beside it
IMPORT_AFTER_S = 0.1


def _import_checkpoint_code() -> None:
    """Import what a capture or a rewind runs (the pass's layout constants, which bring the IR
    classes, the records and snapshot classes: 15-20 ms), in the main thread once the guest has
    run :data:`IMPORT_AFTER_S` in its worker: a start does not wait for it (docs/design.md,
    "Start-up"), a program that ends sooner never pays it, and the first checkpoint of a longer
    one does not wait for it either (one in the first 0.1 s does)."""
    global _CHECKPOINT_CODE_IMPORTED
    if not _CHECKPOINT_CODE_IMPORTED:
        _CHECKPOINT_CODE_IMPORTED = True
        import wasmig.instrument.unwind  # noqa: F401
        import wasmig.snapshot.records  # noqa: F401
        import wasmig.snapshot.state  # noqa: F401


class Checkpointable:
    """The instrumented module on wasmtime, able to stop, be captured and be rewound.

    ``count_steps``: run the deterministic variant, which counts stable points like the
    interpreter (needed by :meth:`arm` with a step, and for snapshots with a step number); the
    default fast variant only polls, at a fraction of the cost (docs/instrument.md)."""

    def __init__(self, module: Module, wasi: Wasi | None, *, count_steps: bool = False,
                 announce: str | None = None) -> None:
        from wasmig.engines.wasmtime import WasmtimeInstance

        self.module = module
        self.wasi = wasi
        # a cached entry of the module's facts gives its sha256 too, the instrumented module's key
        known = module.cached_facts()
        self.instrumented = instrumented(module, count_steps=count_steps, announce=announce)
        compiled = self.instrumented.compiled()
        self.sitemap = self.instrumented.sites
        #: what the checkpoint code reads of the module (learnt once by decoding it when not cached;
        #: after an instrumentation, from the IR the pass decoded)
        self.facts = known if known is not None else module.facts
        self.instance = WasmtimeInstance(module, wasi, code=lambda: self.instrumented.data, compiled=compiled)
        ex = self.instance.exports
        self.store = self.instance.store
        self._state = ex["wasmig:state"]
        self._steps = ex["wasmig:steps"]
        self._stop_at = ex["wasmig:stop_at"]
        self.ctl = ex["wasmig:ctl"]
        self.instance.interrupt_state = self._state
        # the control memory never moves (memory_may_move is off): a plain address, writable
        # from any thread
        poll_base = ctypes.addressof(ex["wasmig:poll"].data_ptr(self.store).contents)
        self._poll = ctypes.c_uint8.from_address(poll_base + self.sitemap.poll)
        self.instance.interrupt_flag = self._poll
        # memory 0's size, which the module itself keeps up to date after every memory.grow, and
        # its address (it never moves): another thread reads the live memory through these two
        # without calling into wasmtime's store while the guest runs (a migration's pre-copy)
        self._pages = ctypes.c_uint32.from_address(poll_base + self.sitemap.memory_pages)  # little-endian hosts
        self._memory_base = 0
        if self.facts.mems:
            self._memory_base = ctypes.addressof(self._memory(0).data_ptr(self.store).contents)
            self._publish_pages()
        self._tables: list[Any] | None = None
        self._slots: dict[tuple[int, int, int], int] = {}
        self._pending: tuple[list[FrameState], str] | None = None  # what resume() continues by default
        self._rewind_watch: tuple[ctypes.c_uint32, int] | None = None  # see rewind_ended()

    # --- control ---------------------------------------------------------------------------
    @property
    def count_steps(self) -> bool:
        """Whether this is the deterministic variant (its site map says so)."""
        return self.sitemap.counts_steps

    @property
    def steps(self) -> int | None:
        """Stable points executed (the canonical step count); None in the fast variant."""
        return self._steps.value(self.store) & _I64 if self.count_steps else None

    @property
    def unwound(self) -> bool:
        return self._state.value(self.store) == self.sitemap.state_unwinding

    def request(self) -> None:
        """Stop at the next stable point, or now if blocked in a WASI call (any thread)."""
        self._poll.value = 1
        if self.wasi is not None:
            self.wasi.waiter.request()

    def arm(self, at_step: int | None) -> None:
        """Clear any pending request; stop at stable point ``at_step`` if it is still ahead (the
        deterministic variant only)."""
        self._poll.value = 0
        if self.wasi is not None:
            self.wasi.waiter.clear()
        if not self.count_steps:
            if at_step is not None:
                raise SnapshotError("stopping at a step needs the step count: "
                                    "Checkpointable(..., count_steps=True)")
            return
        steps = self._steps.value(self.store) & _I64
        self._stop_at.set_value(self.store, at_step if at_step is not None and at_step > steps else self.sitemap.never)

    # --- running -----------------------------------------------------------------------------
    def start(self) -> None:
        """Run the program from the beginning (its start function, then ``_start``)."""
        from wasmig.errors import LinkError

        if "_start" not in self.instance.exports:
            raise LinkError("the module has no `_start` export: it is not a WASI command")
        if "wasmig:start" in self.instance.exports:
            self._call("wasmig:start")
            if self.unwound:
                raise SnapshotError("cannot checkpoint inside the module's start function")
        self._call("_start")

    def resume(self, frames: list[FrameState] | None = None, point: str | None = None) -> None:
        """Rewind ``frames`` (canonical, outermost first; default: those of the snapshot given to
        :meth:`load`, else of the last unwind) and run on from there until the program ends
        (``ProcExit``), unwinds again (:attr:`unwound`) or traps."""
        if frames is None:
            if self._pending is None:
                raise SnapshotError("nothing to resume: no snapshot loaded and no unwind taken")
            frames, point = self._pending
        self._pending = None
        assert point is not None
        if not frames:  # an idle snapshot: nothing was running
            return
        from wasmig.instrument.unwind import READ_PTR, RECORDS_BASE, STATE_REWINDING, WRITE_PTR
        from wasmig.snapshot.records import records_from_frames

        records = records_from_frames(frames, point, self.sitemap, self._indirect_slot)
        name = self._rewind_export(frames[0].func)
        need = RECORDS_BASE + len(records)
        have = self.ctl.data_len(self.store)
        if need > have:
            self.ctl.grow(self.store, (need - have + 65535) // 65536)
        self.ctl.write(self.store, records, RECORDS_BASE)
        self.ctl.write(self.store, struct.pack("<I", need), WRITE_PTR)
        self.ctl.write(self.store, struct.pack("<I", RECORDS_BASE), READ_PTR)
        self._state.set_value(self.store, STATE_REWINDING)
        base = ctypes.addressof(self.ctl.data_ptr(self.store).contents)  # never moves (memory_may_move is off)
        self._rewind_watch = (ctypes.c_uint32.from_address(base + WRITE_PTR), need)
        # the outermost frame's rewind copy: it pops its record and calls the next frame's copy
        self._call(name)
        if self._state.value(self.store) == STATE_REWINDING:
            raise SnapshotError("internal error: the rewind did not reach the snapshot's innermost frame")

    def rewind_ended(self) -> bool:
        """Whether the rewind :meth:`resume` started has reached the snapshot's innermost frame
        (``$state`` is back to running and the program goes on), read from any thread while the
        guest runs: the end of a rewind resets the records' write pointer, which :meth:`resume`
        set past the records, in the control memory (plain memory that never moves). False
        before :meth:`resume` wrote its records. A live migration's target answers only once this
        is true; it latches the answer (a later unwind moves the pointer again)."""
        watch = self._rewind_watch
        return watch is not None and watch[0].value != watch[1]

    # --- memory in place (a live migration's target) ------------------------------------------
    def _memory(self, i: int) -> Any:
        return memory_export(self.instance.exports, i)

    def memory_pages(self, i: int) -> int:
        return self._memory(i).size(self.store)

    def _publish_pages(self) -> None:
        """Tell :meth:`live_memory` the size after the host grew the memory itself."""
        self._pages.value = self._memory(0).size(self.store)

    def live_memory(self) -> tuple[int, int]:
        """(address, size in bytes) of memory 0, safe to call from any thread while the guest
        runs: both come from plain memory, not from wasmtime (whose store belongs to the thread
        running the guest)."""
        return self._memory_base, self._pages.value * 65536

    def memory_address(self, i: int, pages: int) -> int:
        """The address of memory ``i``, grown first to at least ``pages`` pages (the guest is
        not running; a memory never moves, see ``memory_may_move``)."""
        mem = self._memory(i)
        have = mem.size(self.store)
        if pages > have:
            try:
                mem.grow(self.store, pages - have)
            except Exception as e:  # noqa: BLE001 - wasmtime's error for a limit or an allocation failure
                raise SnapshotError(f"memory {i} cannot grow to {pages} pages: {e}") from None
            self._publish_pages()
        return ctypes.addressof(mem.data_ptr(self.store).contents)

    def _indirect_slot(self, func: int, pc: int, callee: int) -> int:
        """A slot of the table a ``call_indirect`` at (func, pc) uses that holds ``callee``
        (remembered: a deep recursion through one function pointer asks the same thing per frame)."""
        key = (func, pc, callee)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._find_indirect_slot(func, pc, callee)
        return slot

    def _find_indirect_slot(self, func: int, pc: int, callee: int) -> int:
        module, defined = self.module, func - self.facts.imported_funcs
        table = None
        if module.has_bytes and module.data is not None:  # that one instruction, not the function decoded
            table = self.facts.indirect_call_table(module.data, defined, pc)
        elif 0 <= defined < self.facts.defined_funcs:
            ins = next((x for x in module.ir.funcs[defined].body if x.offset == pc), None)
            table = ins.imm[1] if ins is not None and ins.op == 0x11 else None
        if table is None:
            raise SnapshotError(f"snapshot does not fit the module: no indirect call at {pc:#x} in function {func}")
        if self._tables is None:
            self._tables = static_tables(self.module)
        elements = self._tables[table].elements
        try:
            return elements.index(callee)
        except ValueError:
            raise SnapshotError(f"snapshot does not fit the module: function {callee} is not in table "
                                f"{table}") from None

    def _rewind_export(self, func: int) -> str:
        """The export of the rewind copy of ``func``, the outermost frame's function."""
        name = f"wasmig:rewind{func}"
        if name not in self.instance.exports:
            raise SnapshotError(f"cannot resume on wasmtime: the outermost frame's function {func} is not exported")
        return name

    def _call(self, name: str, *args: Any) -> None:
        """Call an export in a worker thread, so the main thread stays free for signals and timers
        (a guest spinning in compiled code would never let a handler run otherwise)."""
        outcome: list[BaseException] = []

        def work() -> None:
            try:
                self.instance.invoke(name, *args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller as itself
                outcome.append(e)

        old_size = threading.stack_size(WORKER_STACK)  # room for wasmtime's max_wasm_stack and the host calls
        try:
            worker = threading.Thread(target=work, name="wasmig-guest", daemon=True)
            worker.start()
        finally:
            threading.stack_size(old_size)
        if not _CHECKPOINT_CODE_IMPORTED:
            worker.join(IMPORT_AFTER_S)  # a short program ends first: it never needs that code
            if worker.is_alive():
                _import_checkpoint_code()  # while the guest runs: the first checkpoint does not wait for it
        while worker.is_alive():
            worker.join(0.25)  # signal handlers run between the waits
        if outcome:
            raise outcome[0]

    # --- state -----------------------------------------------------------------------------------
    def frames(self) -> tuple[list[FrameState], str]:
        """The canonical frames and point, after the guest unwound."""
        from wasmig.snapshot.records import frames_from_records

        ctl = bytes(self.ctl.read(self.store, 0, self.ctl.data_len(self.store)))
        self._pending = frames_from_records(ctl, self.sitemap)
        return self._pending

    def capture(self, *, with_memory: bool = True, memory_in_place: bool = False) -> Snapshot:
        """The canonical snapshot, after the guest unwound (``memory_in_place``: see
        :func:`capture_wasmtime`; for a checkpoint written before :meth:`resume`)."""
        snap = capture_wasmtime(self.instance, self.module, self.sitemap, with_memory=with_memory,
                                memory_in_place=memory_in_place)
        self._pending = (snap.frames, snap.point)
        return snap

    def load(self, snap: Snapshot, *, memory_in_place: bool = False, pages: list[PagedMemory] | None = None) -> None:
        """Put a snapshot's memory, globals, tables, dropped segments and step count into this
        (fresh) instance; the frames follow with :meth:`resume`. ``memory_in_place``: the
        memories already hold the snapshot's contents (a live migration's target wrote them
        page by page, see :meth:`memory_address`). ``pages``: the memories' pages, read on demand
        (:func:`wasmig.snapshot.store.load_snapshot_deferred`; the snapshot's memory bytes are
        then empty): only the pages the fresh instance does not already hold are read and written."""
        from wasmig.instrument.unwind import DROPS_BASE, GLOBALS_BASE
        from wasmig.snapshot.records import MASKS

        module, facts = self.module, self.facts
        store = self.store
        if module.sha256 != snap.module_sha256:
            raise SnapshotError(f"the snapshot is of another module (sha256 {snap.module_sha256[:16]}..., "
                                f"this module is {str(module.sha256)[:16]}...)")
        mems, globals_ = facts.mems, facts.globals
        if (len(snap.memories), len(snap.globals), len(snap.tables)) != (len(mems), len(globals_),
                                                                          len(facts.tables)):
            raise SnapshotError("snapshot does not fit the module: memory, table or global counts differ")
        if (len(snap.dropped_data), len(snap.dropped_elems)) != (len(facts.data_modes), len(facts.elem_modes)):
            raise SnapshotError("snapshot does not fit the module: segment counts differ")
        if pages is not None and (memory_in_place or len(pages) != len(snap.memories)):
            raise SnapshotError("internal error: the snapshot's pages do not match its memories")
        sources: list[Any] = [ms.data for ms in snap.memories] if pages is None else list(pages)
        self.pages_written = 0
        for i, src in enumerate(sources if not memory_in_place else ()):
            mem = self._memory(i)
            size = len(src) // _PAGE if isinstance(src, (bytes, bytearray)) else len(src)
            have = mem.size(store)
            limit = mems[i][1] if mems[i][1] is not None else 65536
            if size < have or size > limit:
                raise SnapshotError(f"snapshot does not fit the module: memory {i} has {size} pages")
            if size > have:
                mem.grow(store, size - have)
            if not size:
                continue
            address = ctypes.addressof(mem.data_ptr(store).contents)
            if isinstance(src, (bytes, bytearray)):
                _copy_pages(address, src, facts.page_set(i))
            else:
                self.pages_written += _write_pages(address, src, facts.page_set(i))
        if mems:
            self._publish_pages()
        if memory_in_place and snap.memories:
            for i, (_, most) in enumerate(mems):
                if most is not None and self.memory_pages(i) > most:
                    raise SnapshotError(f"snapshot does not fit the module: memory {i} is too large")
        if snap.tables != static_tables(module):
            raise SnapshotError("cannot restore on wasmtime: the snapshot's tables differ from the module's element "
                                "segments (a table changed at run time); restore it on the interpreter")
        self.instance.invoke("wasmig:dump")
        ctl_view = bytes(self.ctl.read(store, GLOBALS_BASE, GLOBALS_BASE + 8 * len(globals_)))
        for i, ((gtype, gmutable), gs) in enumerate(zip(globals_, snap.globals, strict=True)):
            t, bits = gs.value
            if gs.type != gtype or gs.mutable != gmutable or t != gtype or t not in MASKS \
                    or not isinstance(bits, int) or not 0 <= bits <= MASKS[t]:
                raise SnapshotError(f"snapshot does not fit the module: global {i}")
            if gmutable:
                self.ctl.write(store, struct.pack("<Q", bits), GLOBALS_BASE + 8 * i)
            elif struct.unpack_from("<Q", ctl_view, 8 * i)[0] & MASKS[t] != bits:
                raise SnapshotError(f"snapshot does not fit the module: immutable global {i} has another value")
        # a flag byte per *passive* segment only (wasmig:load reads no others): a module with more
        # than GLOBALS_BASE - DROPS_BASE segments (CPython's WLR build has 24,171 data segments)
        # would otherwise have its flags written over the globals just put there
        n_data = len(facts.data_modes)
        flags = {DROPS_BASE + i: dropped for i, (mode, dropped) in
                 enumerate(zip(facts.data_modes, snap.dropped_data, strict=True)) if mode == "p"}
        flags.update({DROPS_BASE + n_data + i: dropped for i, (mode, dropped) in
                      enumerate(zip(facts.elem_modes, snap.dropped_elems, strict=True)) if mode == "p"})
        if flags and max(flags) >= GLOBALS_BASE:
            raise SnapshotError(f"cannot restore on wasmtime: the module has {n_data + len(facts.elem_modes)} data and "
                                f"element segments, more than the control memory has room for beside a passive one "
                                f"({GLOBALS_BASE - DROPS_BASE}); restore it on the interpreter")
        area = bytearray(max(flags) + 1 - DROPS_BASE) if flags else bytearray()
        for at, dropped in flags.items():
            area[at - DROPS_BASE] = dropped
        if area:
            self.ctl.write(store, bytes(area), DROPS_BASE)
        self.instance.invoke("wasmig:load")
        if area:
            self.ctl.write(store, bytes(len(area)), DROPS_BASE)  # the guest's own drops start from zero
        if self.count_steps:
            if snap.steps is None:
                raise SnapshotError("the snapshot has no step count (it was taken without counting steps): "
                                    "it cannot continue a step count")
            self._steps.set_value(store, snap.steps)
        self._pending = (snap.frames, snap.point)


_PAGE = 65536
_ZERO_PAGE = bytes(_PAGE)
_I64 = 0xFFFF_FFFF_FFFF_FFFF


def _write_pages(address: int, pages: PagedMemory, dirty: set[int] | None) -> int:
    """Write a deferred snapshot memory over a fresh memory at ``address``, reading only the pages
    that differ from what it holds: a page zero in both is skipped, and so is a page whose hash
    in the snapshot is that of the fresh page (module data the program never changed: no read,
    no decompression, no copy). ``dirty``: the fresh memory's pages that may be non-zero (its data
    segments'; None: any). Returns the pages written."""
    from wasmig.hashing import blake3

    fresh = memoryview((ctypes.c_ubyte * (len(pages) * _PAGE)).from_address(address)).cast("B")
    written = 0
    copy: list[int] = []
    for j, entry in enumerate(pages.entries):
        held = dirty is None or j in dirty  # the fresh page may be non-zero
        lo = j * _PAGE
        if entry is None:
            if held:  # zeroed by the program
                ctypes.memset(address + lo, 0, _PAGE)
                written += 1
            continue
        digest = pages.digest(j)
        if held and digest is not None and blake3(fresh[lo : lo + _PAGE]).hexdigest() == digest:
            continue
        copy.append(j)
    pages.copy_into(address, copy)  # read, decompressed and verified into place, on all cores
    return written + len(copy)


def _copy_pages(address: int, data: bytes, dirty: set[int] | None) -> None:
    """Copy ``data`` over a fresh memory at ``address``, skipping pages that are zero in both (most
    of a C program's memory: its stack and unused heap). ``dirty``: the fresh memory's pages that
    may be non-zero (its data segments'; None: any)."""
    run_start = None
    n = len(data)
    for page in range(n // _PAGE + 1):
        lo = page * _PAGE
        copy = lo < n and (not data.startswith(_ZERO_PAGE, lo) or dirty is None or page in dirty)  # memcmp
        if copy and run_start is None:
            run_start = lo
        elif not copy and run_start is not None:
            ctypes.memmove(address + run_start, data[run_start:lo], lo - run_start)
            run_start = None


class WasmtimeSession(SessionBase):
    """A run on wasmtime under a checkpoint policy: the counterpart of the interpreter's Session."""

    def __init__(self, runner: Checkpointable, wasi: Wasi, policy: CheckpointPolicy, module_path: str | None = None):
        super().__init__(wasi, policy, runner.module, module_path)
        self.runner = runner

    @property
    def steps(self) -> int | None:
        """Stable points passed so far (None when the fast variant runs, which does not count)."""
        return self.runner.steps

    def request(self, *_: Any) -> None:
        """Checkpoint as soon as possible (signal handler / timer)."""
        self.runner.request()

    def guest_memories(self) -> list[tuple[int, Any]]:
        """A live view of the guest's memory (read while it runs: a migration's pre-copy rounds),
        made without calling into wasmtime (see :meth:`Checkpointable.live_memory`). The pass
        refuses modules with more than one memory."""
        if not self.runner.facts.mems:
            return []
        address, size = self.runner.live_memory()
        view = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B") if size else memoryview(b"")
        return [(size, lambda k: view[k * _PAGE:(k + 1) * _PAGE])]

    def run(self, snapshot: Snapshot | None = None) -> int:
        """Run ``_start`` from the beginning (or on from ``snapshot``, already loaded) to the end;
        return the exit code."""
        try:
            return self._run(snapshot)
        finally:
            if self.handoff is not None:
                self.handoff.ended()

    def _run(self, snapshot: Snapshot | None) -> int:
        runner = self.runner
        self._install()
        try:
            runner.arm(self.policy.at_step)
            frames, point = (snapshot.frames, snapshot.point) if snapshot is not None else ([], "idle")
            first = snapshot is None
            while True:
                try:
                    if first:
                        first = False
                        runner.start()
                    else:
                        runner.resume(frames, point)
                except ProcExit as e:
                    return e.code
                if not runner.unwound:
                    return 0
                if self._hand_over(lambda: runner.capture(with_memory=False)):
                    frames, point = runner.frames()
                    runner.arm(self.policy.at_step)
                    continue
                snap = None
                try:
                    started = time.perf_counter()
                    snap = runner.capture(memory_in_place=True)  # written below, before the guest resumes
                    frames, point = snap.frames, snap.point
                    self._save(snap, time.perf_counter() - started)
                except (SnapshotError, OSError) as e:
                    if snap is None:  # the capture failed (e.g. the WASI state): go on from the frames alone
                        frames, point = runner.frames()
                    print(f"wasmig: warning: checkpoint failed, continuing: {e}", file=sys.stderr)
                else:
                    if self.policy.then == "exit":
                        raise CheckpointExit() from None
                runner.arm(self.policy.at_step)  # a step already passed stays off
        finally:
            self._uninstall()

