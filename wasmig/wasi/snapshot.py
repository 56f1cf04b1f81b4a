"""Capture the WASI state into the canonical snapshot, and re-create it on restore.

Capture re-reads everything from the host at checkpoint time (current path of every open file via
``/proc/self/fd``, offsets, sizes, mtimes), and records each opened file or directory as a path
*relative to the preopen it lives beneath*, so a restore can re-open it beneath a preopen that
``--dir`` re-mapped to another host directory, through the same sandbox resolver as ``path_open``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import BinaryIO

from wasmig.grants import Granted
from wasmig.snapshot.state import FdSnapshot, SnapshotError, WasiSnapshot
from wasmig.wasi import constants as C
from wasmig.wasi import sandbox
from wasmig.wasi.errno import WasiError
from wasmig.wasi.fdtable import DIR, FILE, STDIO, TCP_LISTENER, TCP_STREAM, FdEntry
from wasmig.wasi.preview1 import STDIO_NAMES, Wasi

FILE_CHANGE_POLICIES = ("fail", "warn", "ignore")


def _current_host_path(host_fd: int) -> str:
    path = os.readlink(f"/proc/self/fd/{host_fd}")
    if path.endswith(" (deleted)"):
        raise SnapshotError(f"cannot checkpoint: an open file was deleted ({path[:-10]})")
    return path


def _beneath(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` if it lies beneath it (component-wise), else None."""
    if path == root:
        return "."
    prefix = root if root.endswith("/") else root + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def capture_wasi(wasi: Wasi) -> WasiSnapshot:
    preopens = {e.preopen: e.host_path for e in wasi.fds.entries.values() if e.preopen is not None and e.host_path}
    # a preopen the guest closed (or renumbered over) still roots what it opened beneath it
    closed = {name: root for name, root in wasi.preopen_roots.items() if name not in preopens}
    roots = {**closed, **preopens}
    used_closed: dict[str, str] = {}
    fds = []
    for fd, e in sorted(wasi.fds.entries.items()):
        snap = FdSnapshot(fd, e.kind, e.filetype, e.rights_base, e.rights_inheriting, e.fdflags, e.readable,
                          e.writable, readdir_cookie=e.readdir_cookie, preopen=e.preopen, guest_path=e.guest_path)
        if e.kind == STDIO:
            if e.guest_path not in STDIO_NAMES:
                raise SnapshotError(f"cannot checkpoint fd {fd}: a standard stream of unknown origin")
        elif e.kind in (FILE, DIR) and e.preopen is None:
            host = _current_host_path(e.fileno())
            best: tuple[str, str] | None = None
            for name, root in roots.items():
                rel = _beneath(host, root)
                if rel is not None and (best is None or len(root) > len(roots[best[0]])):
                    best = (name, rel)
            if best is None:
                raise SnapshotError(f"cannot checkpoint fd {fd}: {host} is no longer beneath any preopened directory")
            snap.base_preopen, snap.relpath = best
            if best[0] in closed:
                used_closed[best[0]] = closed[best[0]]
            snap.host_path = host
            st = os.fstat(e.fileno())
            if e.kind == FILE:
                snap.offset = e.offset()
                snap.size, snap.mtime_ns = st.st_size, st.st_mtime_ns
        elif e.kind == DIR:
            snap.host_path = e.host_path
        snap.pending = bytes(e.pending)
        if e.gateway is not None:  # its address is the gateway's
            snap.gateway, snap.gateway_key, snap.gateway_conn = e.gateway, e.gateway_key, e.gateway_conn
        elif e.kind in (TCP_LISTENER, TCP_STREAM) and e.sock is not None:
            try:
                addr = e.sock.getsockname() if e.kind == TCP_LISTENER else e.sock.getpeername()
                snap.address = f"{addr[0]}:{addr[1]}"
            except OSError:
                snap.address = None
        fds.append(snap)
    return WasiSnapshot(list(wasi.args), dict(wasi.env), wasi.now_ns(C.CLOCK_MONOTONIC), fds,
                        wasi.now_ns(C.CLOCK_PROCESS_CPUTIME), used_closed)


def _open_flags(snap: FdSnapshot) -> int:
    flags = os.O_CLOEXEC | (os.O_RDWR if snap.readable and snap.writable else
                            os.O_WRONLY if snap.writable else os.O_RDONLY)
    if snap.fdflags & C.FDFLAGS_APPEND:
        flags |= os.O_APPEND
    if snap.fdflags & C.FDFLAGS_NONBLOCK:
        flags |= os.O_NONBLOCK
    return flags


def restore_wasi(ws: WasiSnapshot, *, granted: Granted | None = None, on_file_change: str = "fail",
                 stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
                 stderr: BinaryIO | None = None, into: Wasi | None = None) -> Wasi:
    """A :class:`Wasi` in the snapshot's state, opening exactly the host directories, listening
    addresses and gateways ``granted`` holds (what :func:`wasmig.grants.resolve` allowed, or a
    caller's own :class:`~wasmig.grants.Granted`; None grants nothing) -- never what the snapshot
    merely records (docs/security.md). The standard streams are the host's own unless given, as
    for :class:`Wasi`. ``into``: put the state into this (fresh, unused) Wasi instead of a new
    one -- the one an instance was already made with, as a live migration's target prepares the
    instance before the WASI state arrives."""
    if on_file_change not in FILE_CHANGE_POLICIES:
        raise ValueError(f"on_file_change must be one of {FILE_CHANGE_POLICIES}")
    granted = granted if granted is not None else Granted()
    if into is None:
        wasi = Wasi(ws.args, ws.env, stdin=stdin, stdout=stdout, stderr=stderr)
    else:  # the instance's host functions are bound to this object: re-initialise it in place
        wasi, memory, calls, gate = into, into.memory, into.calls, into.gate
        wasi.close()
        Wasi.__init__(wasi, ws.args, ws.env, stdin=stdin, stdout=stdout, stderr=stderr)
        wasi.memory, wasi.calls, wasi.gate = memory, calls, gate
    standard = {e.guest_path: e for e in wasi.fds.entries.values()}  # fresh stdio, by stream name
    wasi.fds.entries.clear()  # the snapshot says which fds exist
    wasi.monotonic_base_ns = ws.monotonic_ns - time.monotonic_ns()  # the guest's clocks continue
    wasi.cputime_base_ns = max(0, ws.cputime_ns - time.process_time_ns())
    closed_fds: list[int] = []  # closed preopens, opened only to re-open what lives beneath them
    try:
        preopen_fds: dict[str, int] = {}
        for snap in ws.fds:  # preopens first: files are re-opened beneath them
            if snap.preopen is not None:
                host_fd, host = _open_preopen(snap.preopen, granted.dirs.get(snap.preopen))
                entry = _entry(snap)
                entry.host_fd, entry.host_path = host_fd, host
                wasi.fds.set(snap.fd, entry)
                preopen_fds[snap.preopen] = host_fd
                wasi.preopen_roots.setdefault(snap.preopen, host)
        for name in ws.closed_preopens:
            if name not in preopen_fds:
                host_fd, host = _open_preopen(name, granted.dirs.get(name))
                closed_fds.append(host_fd)
                preopen_fds[name] = host_fd
                wasi.preopen_roots.setdefault(name, host)
        for snap in ws.fds:
            if snap.kind == STDIO:
                if snap.guest_path not in standard:
                    raise SnapshotError(f"corrupt snapshot: fd {snap.fd} is stdio of unknown origin")
                # the filetype is the fresh entry's: what this process's stream is now (a snapshot
                # taken under a terminal and restored with stdout a pipe reports a pipe); the rights
                # are what the stream has and the program kept (rights dropped stay dropped; the
                # extra ones earlier wasmig gave every standard stream go)
                entry = standard[snap.guest_path]
                entry.fdflags = snap.fdflags
                entry.rights_base &= snap.rights_base
                entry.rights_inheriting &= snap.rights_inheriting
                wasi.fds.set(snap.fd, entry)
            elif snap.preopen is None:
                wasi.fds.set(snap.fd, _restore_entry(snap, preopen_fds, on_file_change, granted))
    except BaseException:
        wasi.close()
        raise
    finally:
        for host_fd in closed_fds:
            os.close(host_fd)
    return wasi


def _open_preopen(name: str, host: str | None) -> tuple[int, str]:
    """A preopen's host directory, opened: (fd, its real path)."""
    if host is None:
        raise SnapshotError(f"no host directory for preopen {name!r}: use --dir HOST::{name}")
    try:
        host_fd = os.open(host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotError(f"cannot re-open preopen {name!r} at {host}: {e.strerror}") from None
    return host_fd, os.path.realpath(host)


def _entry(snap: FdSnapshot) -> FdEntry:
    return FdEntry(snap.kind, snap.filetype, snap.rights_base, snap.rights_inheriting, snap.fdflags,
                   guest_path=snap.guest_path, preopen=snap.preopen, readable=snap.readable, writable=snap.writable,
                   readdir_cookie=snap.readdir_cookie, gateway=snap.gateway, gateway_key=snap.gateway_key,
                   gateway_conn=snap.gateway_conn, pending=snap.pending)


def _restore_entry(snap: FdSnapshot, preopen_fds: dict[str, int], on_file_change: str,
                   granted: Granted) -> FdEntry:
    entry = _entry(snap)
    if snap.kind in (FILE, DIR):
        if snap.base_preopen not in preopen_fds or snap.relpath is None:
            raise SnapshotError(f"corrupt snapshot: fd {snap.fd} is not beneath a preopen")
        where = f"{snap.base_preopen}/{snap.relpath}"
        try:
            if snap.kind == DIR:
                host_fd = sandbox.open_dir_beneath(preopen_fds[snap.base_preopen], snap.relpath, follow_final=False)
            else:
                host_fd = sandbox.open_beneath(preopen_fds[snap.base_preopen], snap.relpath, _open_flags(snap),
                                               follow_final=False)
        except (WasiError, OSError) as e:
            raise SnapshotError(f"cannot re-open fd {snap.fd} ({where}): {e}") from None
        entry.host_fd = host_fd
        entry.host_path = os.readlink(f"/proc/self/fd/{host_fd}")
        if snap.kind == FILE:
            st = os.fstat(host_fd)
            if (snap.size, snap.mtime_ns) != (st.st_size, st.st_mtime_ns):
                message = (f"file {where} changed since the checkpoint (size {snap.size} -> {st.st_size}, "
                           f"mtime {snap.mtime_ns} -> {st.st_mtime_ns})")
                if on_file_change == "fail":
                    os.close(host_fd)
                    raise SnapshotError(message + "; use --on-file-change warn|ignore to restore anyway")
                if on_file_change == "warn":
                    print(f"wasmig: warning: {message}", file=sys.stderr)
            os.lseek(host_fd, snap.offset, os.SEEK_SET)
        return entry
    if snap.gateway is not None:
        if snap.gateway not in granted.gateways:
            raise SnapshotError(f"fd {snap.fd}: gateway {snap.gateway} not granted: --gateway {snap.gateway}")
        return entry  # re-attached through the gateway when the program starts (Wasi.reattach_gateway)
    if snap.kind == TCP_LISTENER:
        address = granted.listeners.get(snap.fd)
        if address is None:
            raise SnapshotError(f"fd {snap.fd}: listening socket not granted: --tcplisten HOST:PORT")
        host, _, port = (address or "").rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise SnapshotError(f"fd {snap.fd}: listening socket without an address")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise SnapshotError(f"cannot listen on {address} for fd {snap.fd}: {e.strerror}") from None
        entry.sock = sock
        return entry
    # a connected TCP stream cannot follow the program by itself (the gateway of a later issue
    # carries connections over); it comes back closed: reads see end-of-stream, writes EPIPE
    return entry
