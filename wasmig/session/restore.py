"""``wasmig.restore``: the Python entry point for restoring a snapshot, on any engine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig import engines
from wasmig.module import Module
from wasmig.snapshot.state import Snapshot, SnapshotError

if TYPE_CHECKING:
    from wasmig.engines.base import Instance
    from wasmig.grants import Granted


def restore(state_or_path: Snapshot | str | Path, engine: str = "interp", *, module: Module | str | None = None,
            imports: Mapping[str, Mapping[str, Any]] | None = None, dirs: Mapping[str, str] | None = None,
            on_file_change: str = "fail", stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
            stderr: BinaryIO | None = None, count_steps: bool = False,
            granted: Granted | None = None) -> Instance:
    """Re-create an instance from a snapshot (a :class:`Snapshot`, a snapshot file or a checkpoint
    directory). Continue it with ``instance.resume()``.

    ``engine="wasmtime"`` gives the same :class:`~wasmig.engines.base.Instance` API over the
    instrumented module on wasmtime, the snapshot loaded (WASI programs only): ``resume()`` runs
    on, ``stop_at(step=...)`` stops it again, ``checkpoint()`` takes the next snapshot. It runs
    the fast variant of the instrumented module unless ``count_steps`` asks for the deterministic
    one, which keeps the canonical step count (needed by ``stop_at``; the snapshot must have one).

    The module is ``module`` (a :class:`Module` or a path), else the copy kept beside the snapshots.
    A snapshot of a WASI program gets its WASI state back (files re-opened, ``dirs`` re-mapping
    guest preopen names to host directories); otherwise ``imports`` are used as for ``Instance``.
    The Python API trusts the snapshot its caller hands it: what the snapshot records is reopened
    unless ``dirs`` re-maps it. ``granted`` (:func:`wasmig.grants.resolve`, as the CLI does) opens
    only what it grants instead; signatures are checked by the CLI (:mod:`wasmig.snapshot.signing`).
    """
    from wasmig.session.modules import find_module_for

    runs_on = engines.get(engine)
    if isinstance(state_or_path, Snapshot):
        snap, where = state_or_path, None
    else:
        from wasmig.snapshot.store import load_snapshot
        from wasmig.snapshot.stores import is_store_url

        where = state_or_path if is_store_url(state_or_path) else Path(state_or_path)
        snap = load_snapshot(where)
    if isinstance(module, Module):
        mod = module
    elif where is not None or module is not None:
        mod = find_module_for(where or Path("."), snap, str(module) if module is not None else None,
                              validate=runs_on.needs_ir, decode=runs_on.needs_ir)
    else:
        raise SnapshotError("restore needs the module: pass module=Module or a path")
    wasi = None
    if snap.wasi is not None:
        from wasmig.wasi.snapshot import restore_wasi

        wasi = restore_wasi(snap.wasi, dirs=dirs, granted=granted, on_file_change=on_file_change, stdin=stdin,
                            stdout=stdout, stderr=stderr)
    try:
        return runs_on.restore_instance(mod, snap, imports, wasi, count_steps=count_steps)
    except BaseException:
        if wasi is not None:
            wasi.close()
        raise
