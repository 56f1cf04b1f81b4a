"""The instrumented variant of a module (docs/instrument.md), through a cache: the pass is pure
Python and costs minutes on big modules, which a restore should not pay. :func:`instrumented`
gives its site index and compiled code (its bytes only when something needs them);
:class:`InstrumentNotice` is what a run prints while a big module is instrumented."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wasmig import checked, log
from wasmig.engines.wasmtime import site_index
from wasmig.engines.wasmtime.site_index import SiteIndex
from wasmig.errors import WasmError
from wasmig.hashing import fast_hash
from wasmig.module import Module

if TYPE_CHECKING:
    from wasmig.instrument.sites import SiteMap

try:  # the key's sha256s (the pass's source, ~100 KB; a line) without hashlib's OpenSSL set-up (2.5 ms)
    from _sha256 import sha256 as _sha256  # CPython 3.11
except ImportError:  # pragma: no cover - 3.12 renamed it; other implementations
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment]

#: Bumped whenever the pass changes what it emits: part of the instrumented-module cache key.
PASS_VERSION = "wasmig-instrument-27"


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
    neither the instrumented module (96 MB for CPython) nor its JSON site map. The variant is two
    modules (docs/instrument.md, "Two modules"): the run module every run executes and the
    rewind module with the rewind copies, compiled (:meth:`compiled_rewind`) only when a frame is
    to be rewound; a module whose code uses its own segments has one module holding both."""

    def __init__(self, module: Module, path: Path, index_path: Path, sites: SiteIndex, data: bytes | None,
                 count_steps: bool, announce: str | None, cache_dir: Path | None,
                 host_tables: frozenset[int] = frozenset(), rewind: bytes | None = None) -> None:
        self.module = module
        self.path = path
        self.index_path = index_path
        self.sites = sites
        self._data = data
        self._rewind = rewind
        self._count_steps = count_steps
        self._announce = announce
        self._cache_dir = cache_dir
        self._host_tables = host_tables

    @property
    def data(self) -> bytes:
        """The instrumented module's bytes, read from the cache when first asked; instrumented
        again if that entry is gone or damaged (then :attr:`sites` is that run's, whatever the
        index said)."""
        if self._data is None:
            from wasmig.checked import cache_payload

            try:
                blob = self.path.read_bytes()
            except OSError:
                blob = None
            data = cache_payload(blob) if blob is not None else None
            if data is None or fast_hash(data).digest() != self.sites.module_digest:
                self._redo("entry damaged" if blob is not None else "miss")
            else:
                self._data = data
        assert self._data is not None
        return self._data

    @property
    def rewind_data(self) -> bytes | None:
        """The rewind module's bytes (None: the run module holds the copies), read from the cache
        when first asked; instrumented again if that entry is gone or damaged."""
        if self.sites.rewind is None:
            return None
        if self._rewind is None:
            from wasmig.checked import cache_payload

            try:
                blob = _rewind_path(self.path).read_bytes()
            except OSError:
                blob = None
            data = cache_payload(blob) if blob is not None else None
            if data is None or fast_hash(data).digest() != self.sites.rewind[0]:
                self._redo("rewind module damaged" if blob is not None else "rewind module missing")
            else:
                self._rewind = data
        return self._rewind

    def _redo(self, why: str) -> None:
        done = _instrument(self.module, self.path, self.index_path, self._count_steps, self._announce, why,
                           self._host_tables)
        self._data, self._rewind, self.sites = done

    def compiled(self) -> Any:
        """The compiled instrumented module (a ``wasmtime.Module``), from the artifact cache by the
        digest the site index records; the bytes are read (or made) only on a miss."""
        from wasmig.engines.wasmtime.runtime import compile_cached

        started: list[float] = []

        def source() -> bytes:  # asked only on a miss: then a big module's compile is announced
            data = self.data
            if self._announce is not None and InstrumentNotice.worth_it(self.module):
                _say(f"wasmig: compiling the instrumented {self._announce} ({len(data)} bytes); cached for next time\n")
                started.append(time.monotonic())
            return data

        compiled = compile_cached(self.sites.module_digest.hex(), source, self._cache_dir)
        if started:  # Cranelift gives no progress; the time taken, at least, as the pass's notice does
            _say(f"wasmig: compiled the instrumented {self._announce} in {time.monotonic() - started[0]:.1f} s\n")
        return compiled

    def compiled_rewind(self) -> Any:
        """The compiled rewind module (a ``wasmtime.Module``), or None when the run module holds
        the rewind copies; through the artifact cache like :meth:`compiled`."""
        if self.sites.rewind is None:
            return None
        from wasmig.engines.wasmtime.runtime import compile_cached

        return compile_cached(self.sites.rewind[0].hex(), lambda: self.rewind_data or b"", self._cache_dir)


def _rewind_path(path: Path) -> Path:
    """Where the rewind module of the cached run module at ``path`` is cached."""
    return path.with_suffix(".rewind")


def _say(text: str) -> None:
    """A line on stderr about a slow first run (a courtesy: a closed stderr is not an error)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _cache_key(module: Module, count_steps: bool, host_tables: frozenset[int] = frozenset()) -> str:
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = _pass_fingerprint()
    if module.sha256 is not None:
        sha = module.sha256
    else:
        from wasmig.binary.encoder import encode_module

        sha = _sha256(encode_module(module.ir)).hexdigest()
    tables = "".join(f"/host-table{t}" for t in sorted(host_tables)).encode()
    return _sha256(_FINGERPRINT + sha.encode() + (b"/steps" if count_steps else b"/fast") + tables).hexdigest()


def _write_index(index_path: Path, sitemap: SiteMap, data: bytes, rewind: bytes | None) -> SiteIndex:
    """Write (best effort) and return the site index of the instrumented module ``data`` and its
    rewind module ``rewind`` (None: none)."""
    raw = site_index.encode(sitemap, fast_hash(data).digest(), len(data),
                            None if rewind is None else (fast_hash(rewind).digest(), len(rewind)))
    try:
        checked.write(index_path, raw)
    except OSError:
        log.debug(__name__, "instrumented-module cache: cannot write %s", index_path)
    return SiteIndex(raw)


def _instrument(module: Module, path: Path, index_path: Path, count_steps: bool, announce: str | None,
                why: str, host_tables: frozenset[int] = frozenset()) -> tuple[bytes, bytes | None, SiteIndex]:
    """Run the pass (announced on stderr for a big module), cache its modules and site index."""
    from wasmig.checked import cache_entry
    from wasmig.files import write_atomically
    from wasmig.instrument.unwind import instrument

    started = time.perf_counter()
    notice = InstrumentNotice(announce) if announce is not None and InstrumentNotice.worth_it(module) else None
    if notice is not None:
        notice.start(module)
    try:
        done = instrument(module, count_steps=count_steps, progress=notice.progress if notice else None,
                          host_tables=host_tables)
        data, rewind = done.data, done.rewind
    except BaseException:
        if notice is not None:
            notice.end(ok=False)
        raise
    if notice is not None:
        notice.end(ok=True)
    log.debug(__name__, "instrumented-module cache %s: instrumented in %.3f s (%s variant) -> %s", why,
              time.perf_counter() - started, "counting" if count_steps else "fast", path)
    try:
        if rewind is not None:  # before the run module: an entry found has its rewind module
            write_atomically(_rewind_path(path), cache_entry(rewind))
        write_atomically(path, cache_entry(data))
    except OSError:
        log.debug(__name__, "instrumented-module cache: cannot write %s", path)
    return data, rewind, _write_index(index_path, done.sitemap, data, rewind)


def instrumented(module: Module, cache_dir: Path | None = None, *, count_steps: bool = False,
                 announce: str | None = None, host_tables: frozenset[int] = frozenset()) -> Instrumented:
    """The instrumented module (the fast variant, or with ``count_steps`` the deterministic one),
    through a cache keyed by the original module's sha256, the variant and the pass's fingerprint
    (the pass is pure Python and costs minutes on big modules; a restore should not pay it).
    A cache entry is the module (``instrumented-KEY.wasm``) and its site index
    (``instrumented-KEY.sites``, :mod:`wasmig.engines.wasmtime.site_index`); an index missing beside a
    valid module (an entry of an older wasmig) is made from the module's site map section, a
    damaged entry is rebuilt. ``host_tables``: see :func:`wasmig.instrument.unwind.instrument`
    (part of the key). ``announce``: the module's name for the lines
    :class:`InstrumentNotice` prints on stderr when a big module has to be instrumented (a cache
    hit, or a small module, prints nothing); None, silent."""
    from wasmig.checked import cache_payload
    from wasmig.engines.wasmtime.runtime import default_cache_dir

    key = _cache_key(module, count_steps, host_tables)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    path, index_path = folder / f"instrumented-{key}.wasm", folder / f"instrumented-{key}.sites"
    mapped, _ = checked.open_checked(index_path)  # checked once per file, read in place
    try:
        sites = SiteIndex(mapped) if mapped is not None else None
    except ValueError:
        sites = None
    if sites is not None and sites.counts_steps == count_steps:
        log.debug(__name__, "instrumented-module cache hit: %s", index_path)
        return Instrumented(module, path, index_path, sites, None, count_steps, announce, cache_dir, host_tables)
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
        rewind = _cached_rewind(path) if sitemap is not None else None
        if sitemap is not None and sitemap.counts_steps == count_steps and rewind is not None:
            log.debug(__name__, "instrumented-module cache hit: %s (its site index made now)", path)
            return Instrumented(module, path, index_path, _write_index(index_path, sitemap, data, rewind), data,
                                count_steps, announce, cache_dir, host_tables, rewind)
    data, rewind_data, sites = _instrument(module, path, index_path, count_steps, announce,
                                           "miss" if blob is None else "entry damaged", host_tables)
    return Instrumented(module, path, index_path, sites, data, count_steps, announce, cache_dir, host_tables,
                        rewind_data)


def _cached_rewind(path: Path) -> bytes | None:
    """The cached rewind module beside the cached run module at ``path``, if it is there and whole
    (an entry found without its site index is used only with it; else it is made again)."""
    from wasmig.checked import cache_payload

    try:
        blob = _rewind_path(path).read_bytes()
    except OSError:
        return None
    return cache_payload(blob)


def instrumented_bytes(module: Module, cache_dir: Path | None = None, *, count_steps: bool = False,
                       announce: str | None = None) -> tuple[bytes, SiteIndex]:
    """The instrumented module's bytes and site map (see :func:`instrumented`)."""
    art = instrumented(module, cache_dir, count_steps=count_steps, announce=announce)
    data = art.data
    return data, art.sites
