"""The canonical, engine-neutral, byte-order-neutral state of a running WASI program.

Every engine produces and consumes exactly these dataclasses (see docs/snapshot-format.md).
Values are ``(type, bits)`` with unsigned bit patterns; memory is raw little-endian bytes;
nothing engine-private appears here. ``to_plain``/``from_plain`` convert to and from plain
dicts/lists/ints/bytes (what msgpack stores), validating every field on the way in, so a
corrupt manifest is a :class:`SnapshotError`, never a crash deeper down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wasmig.errors import SnapshotError, WasmError  # noqa: F401 - SnapshotError: re-exported

if TYPE_CHECKING:
    from wasmig.snapshot.threads_state import ThreadsState

#: a single-threaded program's snapshot (unchanged since the format began)
FORMAT_VERSION = 1
#: a multi-threaded program's: the ``threads`` section (:mod:`wasmig.snapshot.threads_state`)
THREADS_FORMAT_VERSION = 2
#: the newest version this wasmig reads (and writes)
NEWEST_FORMAT_VERSION = THREADS_FORMAT_VERSION
PAGE_SIZE = 65536
#: ``wait``: a thread in ``memory.atomic.wait`` (version 2 only)
POINTS = ("entry", "loop", "import_call", "after_call", "instruction", "idle", "wait")
STABLE_POINTS = ("entry", "loop", "import_call", "after_call", "idle", "wait")
VALUE_TYPES = ("i32", "i64", "f32", "f64", "funcref", "externref")
_BITS = {"i32": 32, "i64": 64, "f32": 32, "f64": 64}

Value = tuple[str, int | None]


@dataclass
class FrameState:
    func: int  # function index in the module's index space
    pc: int  # byte offset of an instruction in the original function body (Instr.offset)
    locals: list[Value]
    stack: list[Value]


@dataclass
class MemoryState:
    min: int
    max: int | None
    #: size_pages * 64 KiB, little-endian, as the guest sees it; bytes, except in a snapshot
    #: captured ``memory_in_place`` to be written while the guest is stopped (a view of its memory)
    data: bytes


@dataclass
class TableState:
    elem_type: str
    min: int
    max: int | None
    elements: list[int | None]  # function indices (funcref) or None


@dataclass
class GlobalState:
    type: str
    mutable: bool
    value: Value


@dataclass
class FdSnapshot:
    fd: int
    kind: str  # stdio | file | dir | tcp_listener | tcp_stream
    filetype: int
    rights_base: int
    rights_inheriting: int
    fdflags: int
    readable: bool
    writable: bool
    offset: int = 0
    readdir_cookie: int = 0
    preopen: str | None = None  # guest name, if this fd *is* a preopen
    guest_path: str | None = None
    base_preopen: str | None = None  # the preopen (guest name) an opened file/dir lives beneath
    relpath: str | None = None  # its path relative to that preopen, re-read at checkpoint time
    host_path: str | None = None  # informational: where it was on the checkpointing host
    size: int | None = None  # files: size and mtime at checkpoint time (change detection)
    mtime_ns: int | None = None
    address: str | None = None  # tcp: "host:port" listened on / peer
    gateway: str | None = None  # behind a socket gateway: its control address
    gateway_key: bytes | None = None  # the sha256 of the gateway's key: pinned when reconnecting (no secret)
    gateway_conn: int | None = None  # a connection: the gateway's id of it
    pending: bytes = b""  # received, not yet read (in flight when the connection was quiesced)


@dataclass
class WasiSnapshot:
    args: list[str]
    env: dict[str, str]
    monotonic_ns: int  # the guest's monotonic clock reading at checkpoint time
    fds: list[FdSnapshot]
    cputime_ns: int = 0  # the guest's process CPU-time clock at checkpoint time (continues after a restore)
    #: preopens the guest closed (or renumbered another fd over) while files or directories opened
    #: beneath them stay open: guest name -> host directory, which a restore re-opens only to
    #: re-open those beneath it. Absent in older snapshots (and when there is none)
    closed_preopens: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    module_sha256: str
    #: stable points executed; None when the run did not count them (wasmtime's fast variant)
    steps: int | None
    point: str
    frames: list[FrameState]
    memories: list[MemoryState]
    tables: list[TableState]
    globals: list[GlobalState]
    dropped_data: list[bool]
    dropped_elems: list[bool]
    wasi: WasiSnapshot | None
    instructions: int | None = None
    engine: str = "interp"
    created_ns: int = 0
    format_version: int = FORMAT_VERSION
    meta: dict[str, Any] = field(default_factory=dict)  # informational only (module path, host, ...)
    #: a multi-threaded program's other threads, wait queues and scheduler (format version 2)
    threads: ThreadsState | None = None

    @property
    def stable(self) -> bool:
        return self.point in STABLE_POINTS


# --- plain conversion (for msgpack), with validation on the way in ------------------------------
def _check(cond: bool, what: str) -> None:
    if not cond:
        raise SnapshotError(f"corrupt snapshot: {what}")


def _int(v: Any, what: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    _check(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, f"{what} is not a valid integer")
    return v


def _opt_int(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _str(v: Any, what: str) -> str:
    _check(isinstance(v, str), f"{what} is not a string")
    return v


def _opt_str(v: Any, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _bool(v: Any, what: str) -> bool:
    _check(isinstance(v, bool), f"{what} is not a boolean")
    return v


def _list(v: Any, what: str) -> list[Any]:
    _check(isinstance(v, list), f"{what} is not a list")
    return v


def _dict(v: Any, what: str) -> dict[str, Any]:
    _check(isinstance(v, dict), f"{what} is not a map")
    return v


def value_from_plain(v: Any, what: str) -> Value:
    _check(isinstance(v, list) and len(v) == 2, f"{what} is not a (type, bits) pair")
    t, bits = v
    _check(t in VALUE_TYPES, f"{what} has unknown type {t!r}")
    if t in _BITS:
        return (t, _int(bits, what, 0, (1 << _BITS[t]) - 1))
    if t == "externref":
        _check(bits is None, f"{what}: a non-null externref cannot be restored")
        return (t, None)
    return (t, _opt_int(bits, what))


def _values(v: Any, what: str) -> list[Value]:
    return [value_from_plain(x, f"{what}[{i}]") for i, x in enumerate(_list(v, what))]


def frames_to_plain(frames: list[FrameState]) -> list[Any]:
    return [[f.func, f.pc, [list(v) for v in f.locals], [list(v) for v in f.stack]] for f in frames]


def tables_to_plain(tables: list[TableState]) -> list[Any]:
    return [{"elem_type": t.elem_type, "min": t.min, "max": t.max, "elements": t.elements} for t in tables]


def globals_to_plain(globals_: list[GlobalState]) -> list[Any]:
    return [[g.type, g.mutable, list(g.value)] for g in globals_]


def to_plain(s: Snapshot, memory_repr: Any = None) -> dict[str, Any]:
    """Plain form. ``memory_repr(mem_index, data)`` may replace each memory's bytes (e.g. by page hashes).
    A single-threaded snapshot's has no ``threads`` key at all (version 1, as ever)."""
    plain = {
        "format_version": s.format_version,
        "module_sha256": s.module_sha256,
        "engine": s.engine,
        "created_ns": s.created_ns,
        "steps": s.steps,
        "instructions": s.instructions,
        "point": s.point,
        "frames": frames_to_plain(s.frames),
        "memories": [
            {"min": m.min, "max": m.max, "size_pages": len(m.data) // PAGE_SIZE,
             "data": memory_repr(i, m.data) if memory_repr else m.data}
            for i, m in enumerate(s.memories)
        ],
        "tables": tables_to_plain(s.tables),
        "globals": globals_to_plain(s.globals),
        "dropped_data": s.dropped_data,
        "dropped_elems": s.dropped_elems,
        "wasi": None if s.wasi is None else {
            "args": s.wasi.args, "env": s.wasi.env, "monotonic_ns": s.wasi.monotonic_ns,
            "cputime_ns": s.wasi.cputime_ns,
            "fds": [fd.__dict__.copy() for fd in s.wasi.fds],
            **({"closed_preopens": dict(s.wasi.closed_preopens)} if s.wasi.closed_preopens else {}),
        },
        "meta": s.meta,
    }
    if s.threads is not None:
        from wasmig.snapshot.threads_state import threads_to_plain

        plain["threads"] = threads_to_plain(s.threads)
    return plain


def frames_from_plain(v: Any, what: str) -> list[FrameState]:
    frames = []
    for i, f in enumerate(_list(v, f"{what}s")):
        _check(isinstance(f, list) and len(f) == 4, f"{what} {i} is malformed")
        frames.append(FrameState(_int(f[0], f"{what} {i} function", hi=0xFFFFFFFF),
                                 _int(f[1], f"{what} {i} pc", hi=0xFFFFFFFF),
                                 _values(f[2], f"{what} {i} locals"), _values(f[3], f"{what} {i} stack")))
    return frames


def tables_from_plain(v: Any, what: str) -> list[TableState]:
    tables = []
    for i, t in enumerate(_list(v, f"{what}s")):
        t = _dict(t, f"{what} {i}")
        et = _str(t.get("elem_type"), f"{what} {i} type")
        _check(et in ("funcref", "externref"), f"{what} {i} has unknown element type")
        elements = [_opt_int(e, f"{what} {i} element") for e in _list(t.get("elements"), f"{what} {i} elements")]
        if et == "externref":
            _check(all(e is None for e in elements), f"{what} {i}: non-null externrefs cannot be restored")
        tables.append(TableState(et, _int(t.get("min"), f"{what} {i} min"), _opt_int(t.get("max"), f"{what} {i} max"),
                                 elements))
    return tables


def globals_from_plain(v: Any, what: str) -> list[GlobalState]:
    globals_ = []
    for i, g in enumerate(_list(v, f"{what}s")):
        _check(isinstance(g, list) and len(g) == 3, f"{what} {i} is malformed")
        value = value_from_plain(g[2], f"{what} {i}")
        _check(value[0] == g[0], f"{what} {i} type mismatch")
        globals_.append(GlobalState(_str(g[0], f"{what} {i} type"), _bool(g[1], f"{what} {i} mutability"), value))
    return globals_


def from_plain(d: Any, memory_data: Any = None) -> Snapshot:
    """Inverse of :func:`to_plain`; ``memory_data(mem_index, repr, size_pages)`` rebuilds each memory's bytes
    (or returns None: the memory is kept elsewhere, as a live migration's target writes it in place;
    its bytes are then left empty)."""
    d = _dict(d, "manifest")
    version = _int(d.get("format_version"), "format_version")
    if version > NEWEST_FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {version} is newer than this wasmig supports "
                            f"({NEWEST_FORMAT_VERSION}); upgrade wasmig to restore it")
    _check(version in (FORMAT_VERSION, THREADS_FORMAT_VERSION), f"unknown format version {version}")
    _check((version == THREADS_FORMAT_VERSION) == (d.get("threads") is not None),
           f"format version {version} {'without' if version == THREADS_FORMAT_VERSION else 'with'} a threads section")
    point = _str(d.get("point"), "point")
    _check(point in POINTS and (point != "wait" or version == THREADS_FORMAT_VERSION), f"unknown point {point!r}")
    frames = frames_from_plain(d.get("frames"), "frame")
    memories = []
    for i, m in enumerate(_list(d.get("memories"), "memories")):
        m = _dict(m, f"memory {i}")
        size_pages = _int(m.get("size_pages"), f"memory {i} size", hi=65536)
        raw = m.get("data")
        data = memory_data(i, raw, size_pages) if memory_data else raw
        if data is None and memory_data:
            data = b""
        else:
            _check(isinstance(data, (bytes, bytearray)) and len(data) == size_pages * PAGE_SIZE,
                   f"memory {i} has the wrong size")
        memories.append(MemoryState(_int(m.get("min"), f"memory {i} min", hi=65536),
                                    _opt_int(m.get("max"), f"memory {i} max"), bytes(data)))
    tables = tables_from_plain(d.get("tables"), "table")
    globals_ = globals_from_plain(d.get("globals"), "global")
    wasi = None
    if d.get("wasi") is not None:
        w = _dict(d["wasi"], "wasi")
        env = _dict(w.get("env"), "wasi env")
        _check(all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()), "wasi env entries")
        fds = []
        for i, fd in enumerate(_list(w.get("fds"), "wasi fds")):
            fd = _dict(fd, f"fd entry {i}")
            try:
                entry = FdSnapshot(**fd)
            except TypeError:
                raise SnapshotError(f"corrupt snapshot: fd entry {i} has unknown or missing fields") from None
            _int(entry.fd, f"fd entry {i} number", hi=0xFFFFFFFF)
            _check(entry.kind in ("stdio", "file", "dir", "tcp_listener", "tcp_stream"), f"fd {entry.fd} kind")
            for name in ("filetype", "rights_base", "rights_inheriting", "fdflags", "offset", "readdir_cookie"):
                _int(getattr(entry, name), f"fd {entry.fd} {name}")
            for name in ("readable", "writable"):
                _bool(getattr(entry, name), f"fd {entry.fd} {name}")
            for name in ("preopen", "guest_path", "base_preopen", "relpath", "host_path", "address"):
                _opt_str(getattr(entry, name), f"fd {entry.fd} {name}")
            for name in ("size", "mtime_ns", "gateway_conn"):
                _opt_int(getattr(entry, name), f"fd {entry.fd} {name}")
            _opt_str(entry.gateway, f"fd {entry.fd} gateway")
            _check(entry.gateway_key is None or isinstance(entry.gateway_key, bytes), f"fd {entry.fd} gateway key")
            _check(isinstance(entry.pending, bytes), f"fd {entry.fd} pending bytes")
            fds.append(entry)
        _check(len({f.fd for f in fds}) == len(fds), "duplicate fd numbers")
        closed = _dict(w.get("closed_preopens", {}), "wasi closed preopens")
        _check(all(isinstance(k, str) and isinstance(v, str) for k, v in closed.items()), "wasi closed preopens")
        wasi = WasiSnapshot([_str(a, "wasi arg") for a in _list(w.get("args"), "wasi args")], dict(env),
                            _int(w.get("monotonic_ns"), "wasi monotonic clock"), fds,
                            _int(w.get("cputime_ns", 0), "wasi cputime clock"), dict(closed))
    dropped_data = [_bool(x, "dropped data flag") for x in _list(d.get("dropped_data"), "dropped_data")]
    dropped_elems = [_bool(x, "dropped elem flag") for x in _list(d.get("dropped_elems"), "dropped_elems")]
    meta = d.get("meta") or {}
    _check(isinstance(meta, dict), "meta is not a map")
    sha = _str(d.get("module_sha256"), "module_sha256")
    _check(len(sha) == 64 and all(c in "0123456789abcdef" for c in sha), "module_sha256 is not a sha256")
    steps = _opt_int(d.get("steps"), "steps")
    threads = None
    if version == THREADS_FORMAT_VERSION:
        from wasmig.snapshot.threads_state import threads_from_plain

        threads = threads_from_plain(d["threads"], point, steps)
    return Snapshot(sha, steps, point, frames, memories, tables, globals_, dropped_data,
                    dropped_elems, wasi, _opt_int(d.get("instructions"), "instructions"),
                    _str(d.get("engine"), "engine"), _int(d.get("created_ns"), "created_ns"), version, meta, threads)
