"""What ``wasmig inspect`` tells of a snapshot's storage: how its pages were stored, and the
snapshots of its checkpoint directory (the chain of incremental checkpoints). Read-only, beside
the store (:mod:`wasmig.snapshot.store`) it reports on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasmig.hashing import blake3
from wasmig.snapshot import packs
from wasmig.snapshot.container import _guarded, _list_memories, _page_hashes, _read_manifest
from wasmig.snapshot.state import SnapshotError
from wasmig.snapshot.store import _HASH_RE, _SNAP_RE, CheckpointDir, _in_store, _number, _pages_dir_for, _resolve


def storage_stats(path: str | Path) -> dict[str, Any]:
    """How a snapshot file (or a checkpoint directory's latest) stores its memory, from its manifest alone.

    For ``wasmig inspect``: pass the result to :func:`wasmig.snapshot.inspect.summarize`. Keys:
    ``pages_total``/``pages_zero``/``pages_distinct`` (distinct non-zero contents),
    ``pages_repeated`` (non-zero pages identical to another page of the same snapshot),
    ``stored_bytes`` (compressed size of its distinct pages), ``snapshot_bytes``, ``layout``
    (``checkpoint-dir`` or ``single-file``) and, in a checkpoint directory,
    ``pages_shared_with_previous``: distinct pages the previous snapshot also references, i.e.
    what this snapshot did not have to write.
    """
    remote = _in_store(path)
    if remote is not None:
        return remote[0].storage_stats(remote[1])
    path = _guarded(Path(path), "read snapshot", _resolve, Path(path))
    from wasmig.snapshot import wsnap

    if wsnap.is_wsnap(path):
        return _guarded(path, "read snapshot", wsnap.storage_stats, path)

    def compute() -> dict[str, Any]:
        manifest = _read_manifest(path)
        in_dir = path.parent.name == "snapshots"
        prev = _previous(path) if in_dir else None
        return manifest_stats(manifest, os.path.getsize(path), "checkpoint-dir" if in_dir else "single-file",
                              lambda hashes: _stored_bytes(_pages_dir_for(path), hashes),
                              (lambda: _read_manifest(prev)) if prev is not None else None)

    return _guarded(path, "read snapshot", compute)


def manifest_stats(manifest: dict[str, Any], size: int, layout: str, stored_bytes: Callable[[set[str]], int],
                   previous: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    """:func:`storage_stats` of a manifest of ``size`` bytes in a store of ``layout``:
    ``stored_bytes(hashes)`` sizes its pages in the store, ``previous()`` reads the snapshot
    before it (None: there is none, or a single file)."""
    entries = [e for m in _list_memories(manifest) for e in m]
    for e in entries:
        if not (e is None or isinstance(e, bytes) or isinstance(e, str) and _HASH_RE.fullmatch(e)):
            raise SnapshotError("corrupt snapshot: a page entry is neither a hash nor a page")
    distinct = {e if isinstance(e, str) else blake3(e).hexdigest() for e in entries if e is not None}
    embedded = any(isinstance(e, bytes) for e in entries)
    stats: dict[str, Any] = {
        "layout": "single-file" if embedded else layout,
        "pages_total": len(entries),
        "pages_zero": sum(e is None for e in entries),
        "pages_distinct": len(distinct),
        "pages_repeated": sum(e is not None for e in entries) - len(distinct),
        "snapshot_bytes": size,
    }
    if embedded:
        stats["stored_bytes"] = sum(len(e) for e in entries if isinstance(e, bytes))
        return stats
    stats["stored_bytes"] = stored_bytes(distinct)
    if previous is not None:
        stats["pages_shared_with_previous"] = len(distinct & _page_hashes(previous()))
    return stats


def chain_entry(name: str, manifest: dict[str, Any], seen: set[str], stored_bytes: Callable[[set[str]], int],
                size: int, this: bool) -> dict[str, Any]:
    """One snapshot of :func:`checkpoint_chain` (``seen``: the pages of the earlier ones, updated)."""
    hashes = _page_hashes(manifest)
    new = hashes - seen
    seen |= hashes
    steps = manifest.get("steps")
    return {"snapshot": name, "steps": steps if isinstance(steps, int) else None,
            "pages_total": sum(len(m) for m in _list_memories(manifest)), "pages_new": len(new),
            "new_bytes": stored_bytes({h for h in new if _HASH_RE.fullmatch(h)}), "snapshot_bytes": size,
            "this": this}


def checkpoint_chain(path: str | Path) -> list[dict[str, Any]] | None:
    """The snapshots of the checkpoint directory that ``path`` is (or holds a snapshot of), oldest
    first: per snapshot its number, steps, pages, the distinct pages that no earlier snapshot
    still in the directory names (what it added to the store) and their stored bytes; None for a
    single-file snapshot. Each references the pages it shares with earlier ones, so deleting any
    snapshot file leaves the others whole (``wasmig gc`` then frees the pages nobody names)."""
    remote = _in_store(path)
    if remote is not None:
        return remote[0].checkpoint_chain(remote[1])
    path = _guarded(Path(path), "read snapshot", _resolve, Path(path))
    if path.parent.name != "snapshots" or not _SNAP_RE.fullmatch(path.name):
        return None
    store = CheckpointDir(path.parent.parent)

    def compute() -> list[dict[str, Any]]:
        seen: set[str] = set()
        return [chain_entry(snap.name, _read_manifest(snap), seen, lambda h: _stored_bytes(store.pages_dir, h),
                            os.path.getsize(snap), snap == path) for snap in store.snapshots()]

    return _guarded(path, "read snapshot", compute)


def _stored_bytes(pages_dir: Path, hashes: set[str]) -> int:
    """What these pages take in the page store (a missing one counts nothing)."""
    store = packs.PackStore(pages_dir)
    store.refresh()
    return sum(store.size(h) or 0 for h in hashes)


def _previous(path: Path) -> Path | None:
    m = _SNAP_RE.fullmatch(path.name)
    if not m:
        return None
    earlier = [p for p in CheckpointDir(path.parent.parent).snapshots() if _number(p) < int(m.group(1))]
    return earlier[-1] if earlier else None
