"""Translate the frame records an instrumented module wrote into its control memory into
canonical frames (engine-independent: works on the raw bytes of ``$ctl``).

A record is ``u32 site, u32 func, then 8 bytes per local`` of the instrumented function, in the
layout the site map gives; records are appended innermost frame first.
"""

from __future__ import annotations

import struct

from wasmig.instrument.sites import SiteMap
from wasmig.instrument.unwind import RECORDS_BASE, WRITE_PTR
from wasmig.snapshot.state import FrameState, SnapshotError, Value

#: bit masks of the numeric value types
MASKS = {"i32": 0xFFFFFFFF, "i64": 0xFFFFFFFFFFFFFFFF, "f32": 0xFFFFFFFF, "f64": 0xFFFFFFFFFFFFFFFF}


def _value(t: str, raw: bytes, offset: int) -> Value:
    return (t, int.from_bytes(raw[offset : offset + 8], "little") & MASKS[t])


def frames_from_records(ctl: bytes, sitemap: SiteMap) -> tuple[list[FrameState], str]:
    """(canonical frames outermost first, the point of the innermost frame)."""
    end = struct.unpack_from("<I", ctl, WRITE_PTR)[0]
    if not RECORDS_BASE <= end <= len(ctl):
        raise SnapshotError("control memory holds no valid frame records")
    frames: list[FrameState] = []
    kinds: list[str] = []
    pos = RECORDS_BASE
    sites = sitemap.sites
    while pos < end:
        site_id, func = struct.unpack_from("<II", ctl, pos)
        if site_id >= len(sites) or sites[site_id].func != func or func not in sitemap.functions:
            raise SnapshotError(f"corrupt frame record at {pos:#x} (site {site_id}, function {func})")
        site = sites[site_id]
        layout = sitemap.functions[func]
        types = layout.local_types
        slot = pos + 8
        locals_ = [_value(types[j], ctl, slot + 8 * j) for j in range(layout.num_locals)]
        stack = [_value(t, ctl, slot + 8 * local) for t, local in zip(site.stack, site.spills, strict=True)]
        if not frames and site.args:  # innermost at a call site: a host call was interrupted
            stack += [_value(t, ctl, slot + 8 * local) for t, local in zip(site.args, site.arg_spills, strict=True)]
        frames.append(FrameState(func, site.pc, locals_, stack))
        kinds.append(site.kind)
        pos += layout.record_size
    if pos != end or not frames:
        raise SnapshotError("frame records do not end where the control memory says")
    innermost = kinds[0]
    if any(kind not in ("call", "import_call") for kind in kinds[1:]):
        raise SnapshotError("an outer frame record is not at a call site")
    if innermost == "call" and not sites[struct.unpack_from("<I", ctl, RECORDS_BASE)[0]].args:
        raise SnapshotError("the innermost frame record is at a call to a wasm function that wrote no record")
    frames.reverse()
    return frames, "import_call" if innermost == "call" else innermost
