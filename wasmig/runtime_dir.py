"""The per-user runtime directory: status files and control sockets of migratable runs, and the
snapshots a migration in doubt leaves (docs/security.md, "Network: TLS, pinned keys, bounds").

``$WASMIG_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/wasmig`` (systemd makes that directory per
user, 0700), else ``<tmp>/wasmig-run-<uid>``. Whatever it is, it is created 0700 and, when it
exists already, used only if this user owns it and nobody else may write to it: in a shared
``/tmp`` another user can create the directory first (*squatting*) and put a socket of its own
where ``wasmig migrate PID`` looks, so such a directory is refused with a one-line error rather
than trusted.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path

from wasmig.errors import WasmError


class RuntimeDirError(WasmError):
    """The runtime directory, or a socket in it, is not this user's alone."""


def runtime_dir_path() -> Path:
    """Where the runtime directory is (not checked: see :func:`runtime_dir`)."""
    explicit = os.environ.get("WASMIG_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "wasmig"
    return Path(temp_dir()) / f"wasmig-run-{os.getuid()}"


def temp_dir() -> str:
    """``tempfile.gettempdir()``'s choice, without importing :mod:`tempfile` (it imports shutil,
    random and the compressors: ~5 ms of every checkpointable run's start): the first of
    ``$TMPDIR``, ``$TEMP``, ``$TMP``, ``/tmp``, ``/var/tmp``, ``/usr/tmp`` that is a directory this
    process may create files in, else the current directory. (``tempfile`` tries to create a file
    there; a directory that passes ``os.access`` but refuses one -- a read-only filesystem -- then
    fails when the runtime directory is made, in one line.)"""
    candidates = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for candidate in [*candidates, "/tmp", "/var/tmp", "/usr/tmp"]:
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return os.path.abspath(candidate)
    return os.getcwd()


def runtime_dir(create: bool = True) -> Path:
    """The checked runtime directory (made 0700 when missing and ``create``)."""
    path = runtime_dir_path()
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeDirError(f"runtime directory {path}: {e.strerror or e}") from None
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Refuse ``path`` unless it is a directory (not a symlink) of this user's that nobody else
    may write to; a missing one is fine (nothing in it to trust)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise RuntimeDirError(f"runtime directory {path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is not a directory (a symlink or a file put there by "
                              "someone else?): remove it, or set XDG_RUNTIME_DIR")
    if info.st_uid != os.getuid():
        raise RuntimeDirError(f"runtime directory {path} belongs to uid {info.st_uid}, not to you (uid "
                              f"{os.getuid()}): another user may have created it to intercept your programs; "
                              "remove it, or set XDG_RUNTIME_DIR")
    if info.st_mode & 0o022:
        raise RuntimeDirError(f"runtime directory {path} is writable by others (mode {info.st_mode & 0o777:o}): "
                              "chmod 700 it")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def check_socket_owner(path: Path) -> None:
    """Refuse a control socket file that is not a socket, or not this user's."""
    try:
        info = os.lstat(path)
    except OSError:
        return  # connecting says what is wrong with a missing one
    if not stat.S_ISSOCK(info.st_mode):
        raise RuntimeDirError(f"{path} is not a socket")
    if info.st_uid != os.getuid():
        raise RuntimeDirError(f"control socket {path} belongs to uid {info.st_uid}, not to you: refusing to talk "
                              "to it")
