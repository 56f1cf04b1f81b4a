"""Human- and machine-readable views of snapshots: ``wasmig inspect`` and ``wasmig diff``.

A snapshot is opaque bytes on disk; when a migration goes wrong, the first questions are "where
was the program?", "what did it have open?" and "what changed between these two checkpoints?".
:func:`summarize` answers the first two as a JSON-able dict (``--json`` output, stable enough for
scripts), :func:`format_summary` renders that dict for people, and :func:`diff` lists changes.
Values stay as ``[type, bits]`` in the JSON (exact, and NaN payloads survive JSON); only the
text rendering decodes them into signed integers and floats.

One unit per quantity, everywhere: times in seconds (JSON keys ending in ``_s``, text ``12.5 s``),
sizes in bytes (keys ending in ``_bytes``, text ``123456 bytes``); counts of pages say ``pages``.
``meta`` is shown as it was recorded.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from wasmig.snapshot.state import PAGE_SIZE, FdSnapshot, FrameState, Snapshot, Value

_STDIO_NAMES = {0: "<stdin>", 1: "<stdout>", 2: "<stderr>"}
_MAX_RANGES = 20  # index ranges (pages, elements, segments) listed in a line of text before "..."


# --- values ----------------------------------------------------------------------------------------
def format_value(v: Value | list[Any]) -> str:
    """``i32 -1``, ``f64 0.5``, ``f32 nan:0x7fc00001``, ``funcref 3``, ``externref null``."""
    t, bits = v[0], v[1]
    if bits is None:
        return f"{t} null"
    if t in ("i32", "i64"):
        width = 32 if t == "i32" else 64
        signed = bits - (1 << width) if bits >> (width - 1) else bits
        return f"{t} {signed}"
    if t in ("f32", "f64"):
        fmt, size = ("<f", 4) if t == "f32" else ("<d", 8)
        x = struct.unpack(fmt, bits.to_bytes(size, "little"))[0]
        if math.isnan(x):
            return f"{t} {'-' if bits >> (size * 8 - 1) else ''}nan:{bits:#x}"
        return f"{t} {x!r}"
    return f"{t} {bits}"


def _jsonable(x: Any) -> Any:
    """``meta`` is free-form: make sure ``json.dumps`` accepts whatever a capture put there."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    if isinstance(x, (bytes, bytearray)):
        return x.hex()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return repr(x)


# --- index ranges --------------------------------------------------------------------------------
def index_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Ascending indices as inclusive ``[start, end]`` ranges: ``[1, 2, 3, 7]`` -> ``[[1, 3], [7, 7]]``."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return spans


def format_ranges(spans: list[list[int]], noun: str = "indices", limit: int = _MAX_RANGES) -> str:
    """``[[0, 41], [43, 43], [50, 1023]]`` -> ``"0-41, 43, 50-1023"``; ``none`` when empty. Beyond
    ``limit`` ranges the rest are counted, not listed: ``"0-41, 43, ... and 1204 more ranges (5000
    pages)"`` (``noun`` names what they are), so a line stays readable whatever the snapshot's size."""
    if not spans:
        return "none"
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:limit])
    if len(spans) > limit:
        rest = spans[limit:]
        text += f", ... and {len(rest)} more ranges ({sum(b - a + 1 for a, b in rest)} {noun})"
    return text


def _ranges(indices: list[int], noun: str = "indices") -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (see :func:`format_ranges`)."""
    return format_ranges(index_ranges(indices), noun)


def _page_ranges(data: bytes) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """A memory's pages as ranges: (zero, non-zero, repeated). A repeated page holds the same
    (non-zero) contents as an earlier page of the memory: stored once, as the snapshot store does."""
    import hashlib

    zero_page = bytes(PAGE_SIZE)
    view = memoryview(data)
    zero, nonzero, repeated = [], [], []
    seen: set[bytes] = set()
    for page, off in enumerate(range(0, len(data), PAGE_SIZE)):
        if data.startswith(zero_page, off):
            zero.append(page)
            continue
        nonzero.append(page)
        key = hashlib.blake2b(view[off:off + PAGE_SIZE], digest_size=16).digest()
        if key in seen:
            repeated.append(page)
        seen.add(key)
    return index_ranges(zero), index_ranges(nonzero), index_ranges(repeated)


def _count(spans: list[list[int]]) -> int:
    return sum(b - a + 1 for a, b in spans)


def _fd_path(fd: FdSnapshot) -> str | None:
    if fd.kind == "stdio":
        return _STDIO_NAMES.get(fd.fd, fd.guest_path)
    if fd.kind in ("tcp_listener", "tcp_stream"):
        return fd.address
    return fd.guest_path or fd.preopen or fd.relpath or fd.host_path


# --- summary ---------------------------------------------------------------------------------------
def summarize(snapshot: Snapshot, module_ir: Any = None, stats: Any = None,
              chain: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A JSON-able description of ``snapshot``.

    ``module_ir`` (a ``wasmig.binary.ir.Module``) adds function names; ``stats`` (a
    :class:`~wasmig.snapshot.store.WriteStats`, or the dict from
    :func:`~wasmig.snapshot.store_stats.storage_stats`) adds how the pages were stored; ``chain``
    (:func:`~wasmig.snapshot.store_stats.checkpoint_chain`) the snapshots of its checkpoint directory.
    """
    def name(i: int) -> str | None:
        if module_ir is None:
            return None
        try:
            return module_ir.func_name(i)
        except (IndexError, AttributeError, KeyError):
            return None

    frames = []
    for depth, f in enumerate(reversed(snapshot.frames)):
        frames.append({"depth": depth, "func": f.func, "name": name(f.func), "pc": f.pc,
                       "locals": [list(v) for v in f.locals], "stack": [list(v) for v in f.stack]})
    memories = []
    for i, m in enumerate(snapshot.memories):
        pages = len(m.data) // PAGE_SIZE
        zero, nonzero, repeated = _page_ranges(m.data)
        memories.append({"index": i, "min": m.min, "max": m.max, "size_pages": pages, "size_bytes": len(m.data),
                         "zero_pages": _count(zero), "nonzero_pages": pages - _count(zero),
                         "zero_page_ranges": zero, "nonzero_page_ranges": nonzero,
                         "repeated_page_ranges": repeated})
    summary: dict[str, Any] = {
        "format_version": snapshot.format_version,
        "module_sha256": snapshot.module_sha256,
        "engine": snapshot.engine,
        "created_s": _seconds(snapshot.created_ns),
        "point": snapshot.point,
        "stable": snapshot.stable,
        "steps": snapshot.steps,
        "instructions": snapshot.instructions,
        "call_stack": frames,
        "memories": memories,
        "pages": _stats_dict(stats),
        "chain": chain,
        "tables": [{"index": i, "elem_type": t.elem_type, "min": t.min, "max": t.max, "elements": len(t.elements),
                    "non_null": sum(e is not None for e in t.elements)} for i, t in enumerate(snapshot.tables)],
        "globals": [{"index": i, "type": g.type, "mutable": g.mutable, "value": list(g.value)}
                    for i, g in enumerate(snapshot.globals)],
        "dropped_data": [i for i, d in enumerate(snapshot.dropped_data) if d],
        "dropped_elems": [i for i, d in enumerate(snapshot.dropped_elems) if d],
        "wasi": None,
        "meta": _jsonable(snapshot.meta),
    }
    if snapshot.threads is not None:
        from wasmig.snapshot.inspect_threads import summarize_threads

        summary["threads"] = summarize_threads(snapshot, name)
    w = snapshot.wasi
    if w is not None:
        summary["wasi"] = {
            "args": list(w.args),
            "env": dict(w.env),
            "monotonic_s": _seconds(w.monotonic_ns),
            "fds": [{"fd": fd.fd, "kind": fd.kind, "path": _fd_path(fd), "offset": fd.offset,
                     "readable": fd.readable, "writable": fd.writable, "preopen": fd.preopen,
                     "base_preopen": fd.base_preopen, "relpath": fd.relpath, "host_path": fd.host_path,
                     "size_bytes": fd.size, "mtime_s": _seconds(fd.mtime_ns)} for fd in w.fds],
        }
    return summary


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def _stats_dict(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    if hasattr(stats, "as_dict"):
        stats = stats.as_dict()
    stats = dict(stats)
    if "seconds" in stats:  # a WriteStats: how long the write took
        stats["write_s"] = stats.pop("seconds")
    return _jsonable(stats)


def _size(n: int) -> str:
    return f"{n} bytes"


def _quantity(key: str, value: Any) -> str:
    """``stored_bytes`` 12 -> ``stored 12 bytes``; ``write_s`` 0.5 -> ``write 0.500 s``; else ``key value``."""
    if key.endswith("_bytes") and isinstance(value, int):
        return f"{key[:-6].replace('_', ' ')} {value} bytes"
    if key.endswith("_s") and isinstance(value, (int, float)):
        return f"{key[:-2].replace('_', ' ')} {value:.3f} s"
    return f"{key.replace('_', ' ')} {value}"


def _format_trust(s: dict[str, Any]) -> list[str]:
    """First, what a user must know before restoring: who signed it, what it would ask of the host."""
    out = []
    if "signature" in s:
        out.append(f"signature: {s['signature']['description']}")
    if "host_resources" in s:
        resources = s["host_resources"]
        if not resources:
            out.append("host resources a restore needs: none")
        else:
            out.append(f"host resources a restore needs ({len(resources)}; each granted only by the restoring user, "
                       "or reused when signed with their own key):")
            for r in resources:
                was = f" (was {r['recorded']})" if r["recorded"] else ""
                out.append(f"  {r['kind']} {r['guest']}{was}: {r['option']}")
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize`'s dict as text for a terminal."""
    s = summary
    out = _format_trust(s)
    out += [
        f"snapshot format {s['format_version']}, engine {s['engine']}, module sha256 {s['module_sha256']}",
        f"point: {s['point']} ({'stable: portable to every engine' if s['stable'] else 'interpreter only'})",
        f"steps: {'not counted' if s['steps'] is None else s['steps']}"
        + (f", instructions: {s['instructions']}" if s["instructions"] is not None else ""),
        f"call stack ({len(s['call_stack'])} frames, innermost first):",
    ]
    for f in s["call_stack"]:
        label = f"func {f['func']}" + (f" <{f['name']}>" if f["name"] else "")
        out.append(f"  #{f['depth']} {label} at pc {f['pc']:#x}")
        if f["locals"]:
            out.append("      locals: " + ", ".join(format_value(v) for v in f["locals"]))
        if f["stack"]:
            out.append("      stack:  " + ", ".join(format_value(v) for v in f["stack"]))
    for m in s["memories"]:
        limits = f"min {m['min']}" + (f", max {m['max']}" if m["max"] is not None else "")
        out.append(f"memory {m['index']}: {m['size_pages']} pages ({_size(m['size_bytes'])}; {limits}), "
                   f"{m['nonzero_pages']} non-zero, {m['zero_pages']} zero")
        if "nonzero_page_ranges" in m and m["size_pages"]:
            out.append(f"  non-zero pages: {format_ranges(m['nonzero_page_ranges'], 'pages')}")
            out.append(f"  zero pages: {format_ranges(m['zero_page_ranges'], 'pages')}")
            if m["repeated_page_ranges"]:
                out.append(f"  repeated pages ({_count(m['repeated_page_ranges'])}, each the contents of an earlier "
                           f"page, stored once): {format_ranges(m['repeated_page_ranges'], 'pages')}")
    p = s.get("pages")
    if p:
        out.append("pages: " + ", ".join(_quantity(k, v) for k, v in p.items()))
    chain = s.get("chain")
    if chain:
        out.append(f"checkpoint directory ({len(chain)} snapshots, oldest first; each names the pages it shares "
                   "with earlier ones and adds the rest):")
        for c in chain:
            steps = "" if c["steps"] is None else f"step {c['steps']}, "
            out.append(f"  {'*' if c['this'] else ' '} {c['snapshot']}: {steps}{c['pages_total']} pages, "
                       f"{c['pages_new']} new ({_size(c['new_bytes'])}), file {_size(c['snapshot_bytes'])}")
    for t in s["tables"]:
        out.append(f"table {t['index']}: {t['elem_type']}, {t['elements']} elements ({t['non_null']} non-null)")
    if s["globals"]:
        out.append("globals:")
        for g in s["globals"]:
            out.append(f"  {g['index']}: {'mut ' if g['mutable'] else ''}{format_value(g['value'])}")
    if s["dropped_data"]:
        out.append("dropped data segments: " + _ranges(s["dropped_data"], "segments"))
    if s["dropped_elems"]:
        out.append("dropped element segments: " + _ranges(s["dropped_elems"], "segments"))
    if s.get("threads"):
        from wasmig.snapshot.inspect_threads import format_threads

        out += format_threads(s["threads"])
    w = s.get("wasi")
    if w:
        out.append("args: " + " ".join(_quote(a) for a in w["args"]))
        if w["env"]:
            out.append("env: " + " ".join(f"{k}={_quote(v)}" for k, v in w["env"].items()))
        out.append(f"monotonic clock: {w['monotonic_s']:.6f} s")
        out.append(f"open fds ({len(w['fds'])}):")
        for fd in w["fds"]:
            mode = ("r" if fd["readable"] else "-") + ("w" if fd["writable"] else "-")
            extra = f" offset {fd['offset']}" if fd["kind"] == "file" else ""
            if fd["kind"] == "file" and fd["size_bytes"] is not None:
                extra += f" (size {fd['size_bytes']} bytes when checkpointed)"
            if fd["preopen"]:
                extra += f" (preopen {fd['preopen']})"
            out.append(f"  {fd['fd']:>3} {fd['kind']:<12} {mode} {fd['path'] or '?'}{extra}")
    return "\n".join(out)


def _quote(s: str) -> str:
    return repr(s) if not s or any(c.isspace() or not c.isprintable() or c in "'\"" for c in s) else s


# --- diff ------------------------------------------------------------------------------------------
def _values(vs: list[Value]) -> str:
    return "[" + ", ".join(format_value(v) for v in vs) + "]"


def _changed(label: str, a: Any, b: Any) -> list[str]:
    return [] if a == b else [f"{label}: {a} -> {b}"]


def _count_changed(label: str, a: int | None, b: int | None) -> list[str]:
    """:func:`_changed` for a count that may be unknown (None): with the difference when both are known."""
    if a == b:
        return []
    delta = f" ({b - a:+d})" if a is not None and b is not None else ""
    return [f"{label}: {a} -> {b}{delta}"]


def diff(a: Snapshot, b: Snapshot) -> list[str]:
    """What changed from ``a`` to ``b``, one line per difference; ``[]`` if they are the same state.

    Frames are numbered from the outermost (0). ``created_ns`` and ``meta`` are bookkeeping, not
    program state, and are not compared.
    """
    out: list[str] = []
    out += _changed("module", a.module_sha256, b.module_sha256)
    out += _changed("engine", a.engine, b.engine)
    out += _count_changed("steps", a.steps, b.steps)
    out += _count_changed("instructions", a.instructions, b.instructions)
    out += _changed("point", a.point, b.point)
    out += _diff_frames(a, b)
    out += _diff_memories(a, b)
    out += _diff_tables(a, b)
    for i in range(max(len(a.globals), len(b.globals))):
        ga = a.globals[i] if i < len(a.globals) else None
        gb = b.globals[i] if i < len(b.globals) else None
        if ga is None or gb is None:
            out.append(f"global {i}: {'added' if ga is None else 'removed'}")
        elif ga != gb:
            out.append(f"global {i}: {format_value(ga.value)} -> {format_value(gb.value)}")
    for what, da, db in (("data", a.dropped_data, b.dropped_data), ("element", a.dropped_elems, b.dropped_elems)):
        newly = [i for i, d in enumerate(db) if d and not (i < len(da) and da[i])]
        if newly:
            out.append(f"{what} segments dropped: {_ranges(newly, 'segments')}")
        if len(da) != len(db) or any(x and not y for x, y in zip(da, db, strict=False)):
            dropped_a = _ranges([i for i, d in enumerate(da) if d], "segments")
            dropped_b = _ranges([i for i, d in enumerate(db) if d], "segments")
            out.append(f"{what} segment drop flags: {len(da)} segments, dropped {dropped_a} -> "
                       f"{len(db)} segments, dropped {dropped_b}")
    out += _diff_wasi(a, b)
    if a.threads is not None or b.threads is not None:
        from wasmig.snapshot.inspect_threads import diff_threads

        out += diff_threads(a, b)
    return out


def _diff_frames(a: Snapshot, b: Snapshot) -> list[str]:
    return diff_frame_lists(a.frames, b.frames)


def diff_frame_lists(fa: list[FrameState], fb: list[FrameState], prefix: str = "") -> list[str]:
    """What changed from call stack ``fa`` to ``fb``; each line starts with ``prefix`` (a thread's)."""
    out: list[str] = []
    if len(fa) != len(fb):
        out.append(f"call stack depth: {len(fa)} -> {len(fb)} frames")
    # Frames are compared and numbered from the outermost (0): a deeper call shares its outer
    # frames, so numbering from the innermost would make every frame look changed.
    for i in range(max(len(fa), len(fb))):
        if i >= len(fa):
            out.append(f"frame {i}: new call into func {fb[i].func} (pc {fb[i].pc:#x})")
            continue
        if i >= len(fb):
            out.append(f"frame {i}: func {fa[i].func} returned")
            continue
        x, y = fa[i], fb[i]
        if x.func != y.func:
            out.append(f"frame {i}: func {x.func} -> func {y.func} (pc {y.pc:#x})")
            continue
        where = f"frame {i} (func {x.func})"
        if x.pc != y.pc:
            out.append(f"{where}: pc {x.pc:#x} -> {y.pc:#x}")
        changed = [j for j in range(max(len(x.locals), len(y.locals)))
                   if (x.locals[j] if j < len(x.locals) else None) != (y.locals[j] if j < len(y.locals) else None)]
        if changed:
            detail = "; ".join(
                f"{j}: {format_value(x.locals[j]) if j < len(x.locals) else '-'} -> "
                f"{format_value(y.locals[j]) if j < len(y.locals) else '-'}" for j in changed[:8])
            out.append(f"{where}: {len(changed)} locals changed ({detail}"
                       f"{'; ...' if len(changed) > 8 else ''})")
        if x.stack != y.stack:
            out.append(f"{where}: stack {_values(x.stack)} -> {_values(y.stack)}")
    return [prefix + line for line in out]


def _diff_memories(a: Snapshot, b: Snapshot) -> list[str]:
    out: list[str] = []
    for i in range(max(len(a.memories), len(b.memories))):
        if i >= len(a.memories) or i >= len(b.memories):
            out.append(f"memory {i}: {'added' if i >= len(a.memories) else 'removed'}")
            continue
        ma, mb = a.memories[i], b.memories[i]
        pa, pb = len(ma.data) // PAGE_SIZE, len(mb.data) // PAGE_SIZE
        if pa != pb:
            out.append(f"memory {i}: size {pa} -> {pb} pages ({pb - pa:+d}; {len(ma.data)} -> {len(mb.data)} bytes)")
        if (ma.min, ma.max) != (mb.min, mb.max):
            out.append(f"memory {i}: limits min {ma.min} max {ma.max} -> min {mb.min} max {mb.max}")
        if ma.data == mb.data:
            continue
        common = min(pa, pb)
        changed = [p for p in range(common)
                   if ma.data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] != mb.data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]]
        if changed:
            out.append(f"memory {i}: {len(changed)} of {common} pages changed: {_ranges(changed, 'pages')}")
    return out


def _diff_tables(a: Snapshot, b: Snapshot) -> list[str]:
    out: list[str] = []
    for i in range(max(len(a.tables), len(b.tables))):
        if i >= len(a.tables) or i >= len(b.tables):
            out.append(f"table {i}: {'added' if i >= len(a.tables) else 'removed'}")
            continue
        ta, tb = a.tables[i], b.tables[i]
        if len(ta.elements) != len(tb.elements):
            out.append(f"table {i}: size {len(ta.elements)} -> {len(tb.elements)}")
        changed = [j for j, (x, y) in enumerate(zip(ta.elements, tb.elements, strict=False)) if x != y]
        if changed:
            out.append(f"table {i}: {len(changed)} elements changed: {_ranges(changed, 'elements')}")
        if (ta.elem_type, ta.min, ta.max) != (tb.elem_type, tb.min, tb.max):
            out.append(f"table {i}: type/limits {ta.elem_type} {ta.min} {ta.max} -> {tb.elem_type} {tb.min} {tb.max}")
    return out


def _fd_change(field: str, a: Any, b: Any) -> str:
    """One changed field of an fd, in its unit: ``size 10 -> 20 bytes``, ``mtime 1.5 s -> 2.5 s``."""
    if field == "size" and a is not None and b is not None:
        return f"size {a} -> {b} bytes"
    if field == "mtime_ns" and a is not None and b is not None:
        return f"mtime {a / 1e9:.9f} s -> {b / 1e9:.9f} s"
    return f"{field} {a} -> {b}"


def _diff_wasi(a: Snapshot, b: Snapshot) -> list[str]:
    wa, wb = a.wasi, b.wasi
    if wa is None or wb is None:
        return [] if wa is wb else [f"wasi state: {'added' if wa is None else 'removed'}"]
    out: list[str] = []
    if wa.args != wb.args:
        out.append(f"args: {wa.args} -> {wb.args}")
    for k in sorted(set(wa.env) | set(wb.env)):
        if k not in wb.env:
            out.append(f"env {k}: removed")
        elif k not in wa.env:
            out.append(f"env {k}: added ({wb.env[k]!r})")
        elif wa.env[k] != wb.env[k]:
            out.append(f"env {k}: {wa.env[k]!r} -> {wb.env[k]!r}")
    if wa.monotonic_ns != wb.monotonic_ns:
        out.append(f"monotonic clock: {wa.monotonic_ns / 1e9:.6f} s -> {wb.monotonic_ns / 1e9:.6f} s "
                   f"({(wb.monotonic_ns - wa.monotonic_ns) / 1e9:+.6f} s)")
    fa = {fd.fd: fd for fd in wa.fds}
    fb = {fd.fd: fd for fd in wb.fds}
    for n in sorted(set(fa) | set(fb)):
        x, y = fa.get(n), fb.get(n)
        if x is None and y is not None:
            out.append(f"fd {n}: opened ({y.kind} {_fd_path(y) or '?'})")
        elif y is None and x is not None:
            out.append(f"fd {n}: closed ({x.kind} {_fd_path(x) or '?'})")
        elif x is not None and y is not None and x != y:
            if (x.kind, _fd_path(x)) != (y.kind, _fd_path(y)):
                out.append(f"fd {n}: now {y.kind} {_fd_path(y) or '?'} (was {x.kind} {_fd_path(x) or '?'})")
                continue
            fields = [k for k in x.__dict__ if getattr(x, k) != getattr(y, k)]
            detail = ", ".join(_fd_change(k, getattr(x, k), getattr(y, k)) for k in fields)
            out.append(f"fd {n} ({_fd_path(y) or y.kind}): {detail}")
    return out
