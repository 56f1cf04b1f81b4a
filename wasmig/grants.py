"""Capability-only restore: which host resources a snapshot's program gets, and from whom.

A snapshot *records* what its program had: preopened directories (guest name, and where they were
on the checkpointing host), listening sockets (their address) and connections held by a socket
gateway (its control address). None of that is a grant. The host resources of a restore come from
the restoring user alone:

- ``--dir HOST::GUEST`` for every guest directory (also one the program closed while files it opened
  beneath it stay open);
- ``--tcplisten HOST:PORT`` for the listening sockets, in the order of their fds (as ``run`` gives
  them);
- ``--gateway HOST:PORT`` for each socket gateway whose connections the program holds.

The one exception: a snapshot sealed with the restoring user's *own* key (:mod:`wasmig.snapshot.signing`)
may reuse what it records, since that user granted it when the snapshot was taken. A snapshot signed
by anyone else, or accepted by ``--allow-unsigned``, never does; nor does a :class:`Snapshot` object a
caller hands ``wasmig.restore`` (its keywords ``dirs=``, ``listen=``, ``gateway=`` are the options above).
``wasmig serve`` applies the same rule to the programs migrating to it, with its own
``--dir``/``--tcplisten``/``--gateway`` (never reuse).

Only this module decides (``wasmig restore`` and ``wasmig.restore`` reach it through
:func:`wasmig.session.clearance.clear`); :func:`wasmig.wasi.snapshot.restore_wasi` then opens exactly
what :class:`Granted` holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wasmig.errors import WasmError
from wasmig.wasi.fdtable import TCP_LISTENER


class GrantError(WasmError):
    """A restore that would need a host resource nobody granted: one line naming every one
    (``missing``; empty when the grants themselves are wrong)."""

    def __init__(self, message: str, missing: Sequence[HostResource] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


@dataclass(frozen=True)
class HostResource:
    """One host resource a snapshot's program needs: what, under which guest name, where it was
    when the snapshot was taken (only a record), and the option that grants it."""

    kind: str  # "directory", "listening socket", "gateway"
    guest: str  # the guest directory's name, or "fd N"
    recorded: str | None
    option: str

    def keyword(self) -> str:
        """How :func:`wasmig.restore` grants it (``option`` is the command line's spelling)."""
        if self.kind == "directory":
            return f"dirs={{{self.option.partition('::')[2]!r}: HOST}}"
        if self.kind == "gateway":
            return f"gateway=[{self.recorded!r}]"
        return "listen=['HOST:PORT', ...]"

    def describe(self, api: bool = False) -> str:
        """One phrase: what, where it was, and how to grant it (``api``: as ``wasmig.restore``'s keyword)."""
        was = f" (was {self.recorded})" if self.recorded else ""
        return f"{self.kind} {self.guest}{was}: {self.keyword() if api else self.option}"


def needed(ws: Any) -> list[HostResource]:
    """Every host resource the WASI state ``ws`` (a :class:`~wasmig.snapshot.state.WasiSnapshot`)
    would have a restore open, in fd order."""
    out: list[HostResource] = []
    for fd in ws.fds:
        if fd.preopen is not None:
            out.append(HostResource("directory", repr(fd.preopen), fd.host_path, f"--dir HOST::{fd.preopen}"))
    for name, where in ws.closed_preopens.items():
        if all(fd.preopen != name for fd in ws.fds):
            out.append(HostResource("directory", f"{name!r} (closed; files stay open beneath it)", where,
                                    f"--dir HOST::{name}"))
    for fd in ws.fds:
        if fd.gateway is not None:
            out.append(HostResource("gateway", f"fd {fd.fd}", fd.gateway, f"--gateway {fd.gateway}"))
        elif fd.kind == TCP_LISTENER:
            out.append(HostResource("listening socket", f"fd {fd.fd}", fd.address, "--tcplisten HOST:PORT"))
    return out


@dataclass
class Granted:
    """What a restore may open: guest directory -> host directory, listening fd -> the address to
    listen on, and the gateway control addresses the program may connect to again."""

    dirs: dict[str, str] = field(default_factory=dict)
    listeners: dict[int, str] = field(default_factory=dict)
    gateways: set[str] = field(default_factory=set)


def resolve(ws: Any, *, dirs: Mapping[str, str], listens: Sequence[str] = (), gateways: Sequence[str] = (),
            reuse_recorded: bool = False, where: str = "restore", api: bool = False) -> Granted:
    """Match the grants to what ``ws`` needs. Raises :class:`GrantError` naming every resource
    left ungranted (all at once: one attempt tells the user the whole command line), a ``--dir``
    for a guest directory the snapshot does not have, or more ``--tcplisten`` than it has sockets.
    ``reuse_recorded``: the snapshot is sealed by the user's own key (see the module docstring).
    ``api``: the messages name :func:`wasmig.restore`'s keywords instead of the command line's options.
    The one decision for ``wasmig restore``, ``wasmig.restore`` and ``serve`` (which never reuses)."""
    guests = {fd.preopen for fd in ws.fds if fd.preopen is not None} | set(ws.closed_preopens)
    for guest, host in dirs.items():
        if guest not in guests:
            names = ", ".join(sorted(guests)) if guests else "none"
            given = f"dirs[{guest!r}] = {host!r}" if api else f"--dir {host}::{guest}"
            raise GrantError(f"{given}: the snapshot has no guest directory {guest!r} (its guest "
                             f"directories: {names})")
    granted = Granted(dirs=dict(dirs), gateways=set(gateways))
    listener_fds = [fd for fd in ws.fds if fd.kind == TCP_LISTENER and fd.gateway is None]
    if len(listens) > len(listener_fds):
        given = "listen addresses" if api else "--tcplisten"
        raise GrantError(f"{len(listens)} {given} given, but the snapshot has {len(listener_fds)} listening "
                         "socket(s)")
    for fd, spec in zip(listener_fds, listens, strict=False):
        granted.listeners[fd.fd] = spec
    missing: list[HostResource] = []
    for need in needed(ws):
        if need.kind == "directory":
            name = need.option.partition("::")[2]
            if name in granted.dirs:
                continue
            if reuse_recorded and need.recorded:
                granted.dirs[name] = need.recorded
                continue
        elif need.kind == "listening socket":
            fd_number = int(need.guest.split()[1])
            if fd_number in granted.listeners:
                continue
            if reuse_recorded and need.recorded:
                granted.listeners[fd_number] = need.recorded
                continue
        elif need.recorded in granted.gateways:
            continue
        elif reuse_recorded and need.recorded:
            granted.gateways.add(need.recorded)
            continue
        missing.append(need)
    if missing:
        why = "" if reuse_recorded else (" (a snapshot not sealed by your own key gets no host resource it does not "
                                         "get from you)")
        raise GrantError(f"{where}: not granted{why}: " + "; ".join(m.describe(api) for m in missing), missing)
    return granted
