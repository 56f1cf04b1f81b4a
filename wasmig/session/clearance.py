"""What a restore decides before it opens anything: may the snapshot be restored, and what does its
program get from the host. ``wasmig restore`` and ``wasmig.restore`` both call :func:`clear`, so
the command line and the Python API cannot differ (docs/security.md).

A snapshot *file* is untrusted input: its seal is checked against the trusted keys and its memory
size against the limit before anything else is read (:mod:`wasmig.snapshot.admission`), then it is
loaded as exactly the bytes that were checked. A :class:`Snapshot` object handed over by a caller
is that caller's own (it has no seal to check). Either way the host directories, listening
sockets and gateways come from the restoring user's grants (:func:`wasmig.grants.resolve`); the
one exception is a file sealed with the user's *own* key, which may reuse what it records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wasmig.grants import Granted, resolve
from wasmig.snapshot.admission import admit
from wasmig.snapshot.paged import PagedMemory
from wasmig.snapshot.signing import Trust, Verdict
from wasmig.snapshot.state import Snapshot
from wasmig.snapshot.store import load_snapshot, load_snapshot_deferred


@dataclass(frozen=True)
class Requested:
    """The host resources the restoring user grants: guest directory -> host directory
    (``--dir HOST::GUEST``), listening addresses in fd order (``--tcplisten``) and gateway control
    addresses (``--gateway``). ``api``: errors name :func:`wasmig.restore`'s keywords instead."""

    dirs: Mapping[str, str] = field(default_factory=dict)
    listens: Sequence[str] = ()
    gateways: Sequence[str] = ()
    api: bool = False


@dataclass
class Cleared:
    """A snapshot a restore may go on with. ``pages``: its memories' pages, read as they are
    written into the new instance (None: the memories are in ``snap`` already). ``granted``: what
    its WASI state may open (None: it has no WASI state). ``verdict``: who sealed the file (None: a
    caller's own :class:`Snapshot` object)."""

    snap: Snapshot
    pages: list[PagedMemory] | None
    granted: Granted | None
    verdict: Verdict | None


def clear(source: Snapshot | str | Path, requested: Requested, *, trust: Trust | None = None,
          max_memory: int | None = None, granted: Granted | None = None, deferred: bool = True,
          where: str = "restore") -> Cleared:
    """Admit ``source`` (a file or checkpoint directory: its seal checked against ``trust``, its
    memory against ``max_memory``) and decide what it is granted: ``granted`` when the caller made
    that decision itself, else :func:`wasmig.grants.resolve` of ``requested``, reusing recorded
    resources only for a file sealed with the user's own key. ``deferred``: leave the memories'
    pages to be read as they are written (``pages``) rather than in ``snap``. Raises a one-line
    ``SnapshotError`` (refused seal, too large) or :class:`~wasmig.grants.GrantError` (something
    not granted), each before any host resource is opened."""
    if isinstance(source, Snapshot):
        snap, pages, verdict = source, None, None
    else:
        if trust is None:
            raise ValueError("a snapshot file is restored only against a Trust (whose keys it may be sealed by)")
        admitted = admit(source, trust, max_memory, api=requested.api)
        if deferred:
            snap, pages = load_snapshot_deferred(admitted.file, expect=admitted.checksum)
        else:
            snap, pages = load_snapshot(admitted.file, expect=admitted.checksum), None
        verdict = admitted.verdict
    if snap.wasi is not None and granted is None:
        granted = resolve(snap.wasi, dirs=requested.dirs, listens=requested.listens, gateways=requested.gateways,
                          reuse_recorded=verdict is not None and verdict.own, where=where, api=requested.api)
    return Cleared(snap, pages, granted if snap.wasi is not None else None, verdict)
