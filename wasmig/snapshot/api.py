"""``wasmig.restore``: the Python entry point for restoring a snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig.instance import Instance, check_engine
from wasmig.module import Module
from wasmig.snapshot.capture import restore as restore_instance
from wasmig.snapshot.state import Snapshot, SnapshotError

if TYPE_CHECKING:
    from wasmig.grants import Granted
    from wasmig.snapshot.wasmtime_session import Checkpointable


def restore(state_or_path: Snapshot | str | Path, engine: str = "interp", *, module: Module | str | None = None,
            imports: Mapping[str, Mapping[str, Any]] | None = None, dirs: Mapping[str, str] | None = None,
            on_file_change: str = "fail", stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
            stderr: BinaryIO | None = None, count_steps: bool = False,
            granted: Granted | None = None) -> Instance | Checkpointable:
    """Re-create an instance from a snapshot (a :class:`Snapshot`, a snapshot file or a checkpoint
    directory). Continue it with ``instance.resume()``.

    ``engine="wasmtime"`` gives a :class:`~wasmig.snapshot.wasmtime_session.Checkpointable` (the
    instrumented module on wasmtime, the snapshot loaded; WASI programs only): ``resume()`` runs
    on, ``arm(step)``/``request()`` stop it again, ``capture()`` takes the next snapshot. It runs
    the fast variant of the instrumented module unless ``count_steps`` asks for the deterministic
    one, which keeps the canonical step count (needed by ``arm(step)``; the snapshot must have one).

    The module is ``module`` (a :class:`Module` or a path), else the copy kept beside the snapshots.
    A snapshot of a WASI program gets its WASI state back (files re-opened, ``dirs`` re-mapping
    guest preopen names to host directories); otherwise ``imports`` are used as for ``Instance``.
    The Python API trusts the snapshot its caller hands it: what the snapshot records is reopened
    unless ``dirs`` re-maps it. ``granted`` (:func:`wasmig.grants.resolve`, as the CLI does) opens
    only what it grants instead; signatures are checked by the CLI (:mod:`wasmig.snapshot.signing`).
    """
    from wasmig.snapshot.session import find_module_for

    check_engine(engine)
    if isinstance(state_or_path, Snapshot):
        snap, where = state_or_path, None
    else:
        from wasmig.snapshot.store import load_snapshot

        where = Path(state_or_path)
        snap = load_snapshot(where)
    if isinstance(module, Module):
        mod = module
    elif where is not None or module is not None:
        mod = find_module_for(where or Path("."), snap, str(module) if module is not None else None,
                              validate=engine != "wasmtime", decode=engine != "wasmtime")
    else:
        raise SnapshotError("restore needs the module: pass module=Module or a path")
    from wasmig.wasi.run import bind_wasi

    wasi = None
    if snap.wasi is not None:
        from wasmig.wasi.run import wasi_imports
        from wasmig.wasi.snapshot import restore_wasi

        wasi = restore_wasi(snap.wasi, dirs=dirs, granted=granted, on_file_change=on_file_change, stdin=stdin,
                            stdout=stdout, stderr=stderr)
        imports = wasi_imports(mod, wasi)
    if engine == "wasmtime":
        if wasi is None:
            raise SnapshotError("restoring on wasmtime is for WASI programs (the snapshot has no WASI state)")
        from wasmig.snapshot.wasmtime_session import Checkpointable

        try:
            runner = Checkpointable(mod, wasi, count_steps=count_steps)
            runner.load(snap)
        except BaseException:
            wasi.close()
            raise
        return runner
    try:
        instance = restore_instance(mod, snap, imports, engine)
    except BaseException:
        if wasi is not None:
            wasi.close()
        raise
    if wasi is not None:
        bind_wasi(instance, wasi)
    return instance
