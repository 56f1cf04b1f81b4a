"""``wasmig.restore``: the Python entry point for restoring a snapshot, on any engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from wasmig import engines
from wasmig.module import Module
from wasmig.snapshot.state import Snapshot, SnapshotError

T = TypeVar("T")

if TYPE_CHECKING:
    from wasmig.engines.base import Instance, Program
    from wasmig.grants import Granted


def restore(state_or_path: Snapshot | str | Path, engine: str = "interp", *, module: Module | str | None = None,
            imports: Mapping[str, Mapping[str, Any]] | None = None, dirs: Mapping[str, str] | None = None,
            listen: Sequence[str] | str = (), gateway: Sequence[str] | str = (),
            trust: Sequence[str | Path] | str | Path = (), allow_unsigned: bool = False, max_memory: int | None = None,
            on_file_change: str = "fail", stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
            stderr: BinaryIO | None = None, count_steps: bool = False,
            granted: Granted | None = None) -> Instance | Program:
    """Re-create an instance from a snapshot (a :class:`Snapshot`, a snapshot file or a checkpoint
    directory). Continue it with ``instance.resume()``.

    ``engine="wasmtime"`` gives the same :class:`~wasmig.engines.base.Instance` API over the
    instrumented module on wasmtime, the snapshot loaded (WASI programs only): ``resume()`` runs
    on, ``stop_at(step=...)`` stops it again, ``checkpoint()`` takes the next snapshot. It runs
    the fast variant of the instrumented module unless ``count_steps`` asks for the deterministic
    one, which keeps the canonical step count (needed by ``stop_at``; the snapshot must have one).

    The module is ``module`` (a :class:`Module` or a path), else the copy kept beside the snapshots.

    Trust and grants are those of ``wasmig restore`` (:func:`wasmig.session.clearance.clear`, the
    same code): a snapshot *file* restores only when sealed by the user's own key or a key in
    ``trust`` (``wasmig.pub`` files or directories holding one, as ``--trust``), unless
    ``allow_unsigned``; its memory must fit ``max_memory`` bytes (default 1 GiB). A WASI program
    gets only the host resources granted here: ``dirs`` (guest preopen name -> host directory, as
    ``--dir HOST::GUEST``), ``listen`` (addresses for its listening sockets in fd order, as
    ``--tcplisten``), ``gateway`` (socket gateway control addresses it may re-attach to, as
    ``--gateway``) -- or ``granted``, a :class:`~wasmig.grants.Granted` decided by the caller. A
    file sealed with the user's own key may reuse what it records; a :class:`Snapshot` object
    (the caller's own, with no seal) never does. Anything ungranted raises
    :class:`~wasmig.grants.GrantError` naming every missing grant, before anything is opened; a
    refused seal raises ``SnapshotError``. Otherwise ``imports`` are used as for ``Instance``.

    A multi-threaded program's snapshot (format version 2, from either engine) gives a
    :class:`~wasmig.engines.base.Program` with every thread in place, on the interpreter or on
    wasmtime: ``resume()`` runs it until it ends (False; a nonzero exit raises ``ProcExit``) or
    stops (True: after ``request()``, or on the interpreter ``arm(at_step=...)``), and
    ``capture()`` takes the next snapshot.
    """
    from wasmig.session.clearance import Requested, clear
    from wasmig.session.modules import find_module_for
    from wasmig.snapshot.admission import trust_from_options
    from wasmig.snapshot.stores import is_store_url

    runs_on = engines.get(engine)
    if granted is not None and (dirs or listen or gateway):
        raise ValueError("restore: pass either granted= or dirs=/listen=/gateway=, not both")
    requested = Requested(dict(dirs or {}), _one_or_many(listen), _one_or_many(gateway), api=True)
    where: str | Path | None = None
    if not isinstance(state_or_path, Snapshot):
        where = str(state_or_path) if is_store_url(state_or_path) else Path(state_or_path)
    cleared = clear(state_or_path, requested, granted=granted, max_memory=max_memory, deferred=False,
                    trust=None if where is None else trust_from_options(_one_or_many(trust), allow_unsigned, "trust"),
                    where="wasmig.restore")
    snap = cleared.snap
    if isinstance(module, Module):
        mod = module
    elif where is not None or module is not None:
        mod = find_module_for(where or Path("."), snap, str(module) if module is not None else None,
                              validate=runs_on.needs_ir, decode=runs_on.needs_ir,
                              features={"threads"} if snap.threads is not None else None)
    else:
        raise SnapshotError("restore needs the module: pass module=Module or a path")
    wasi = None
    if snap.wasi is not None:
        from wasmig.wasi.snapshot import restore_wasi

        wasi = restore_wasi(snap.wasi, granted=cleared.granted, on_file_change=on_file_change, stdin=stdin,
                            stdout=stdout, stderr=stderr)
    try:
        if snap.threads is not None:
            if wasi is None:
                raise SnapshotError("a multi-threaded snapshot without WASI state is not of a wasi-threads program")
            return runs_on.restore(mod, snap, wasi, count_steps=count_steps)  # the program, every thread in place
        return runs_on.restore_instance(mod, snap, imports, wasi, count_steps=count_steps)
    except BaseException:
        if wasi is not None:
            wasi.close()
        raise


def _one_or_many(given: Sequence[T] | T) -> tuple[T, ...]:
    """``listen=``, ``gateway=``, ``trust=``: one or several (a lone string or path is one, not its
    characters)."""
    return (given,) if isinstance(given, (str, Path)) else tuple(given)  # type: ignore[arg-type]
