"""What several WASI calls share: a host ``stat`` as WASI's filestat and file type."""

from __future__ import annotations

import os
import stat as stat_mod
import struct
from typing import Any

from wasmig.wasi import constants as C


def signed64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


def filetype_of_mode(mode: int) -> int:
    if stat_mod.S_ISREG(mode):
        return C.FILETYPE_REGULAR_FILE
    if stat_mod.S_ISDIR(mode):
        return C.FILETYPE_DIRECTORY
    if stat_mod.S_ISLNK(mode):
        return C.FILETYPE_SYMBOLIC_LINK
    if stat_mod.S_ISCHR(mode):
        return C.FILETYPE_CHARACTER_DEVICE
    if stat_mod.S_ISBLK(mode):
        return C.FILETYPE_BLOCK_DEVICE
    if stat_mod.S_ISSOCK(mode):
        return C.FILETYPE_SOCKET_STREAM
    return C.FILETYPE_UNKNOWN


def isatty(fd: int, stream: Any) -> bool:
    """Whether standard stream ``fd`` (the host's own when ``stream`` is None) is a terminal."""
    try:
        return os.isatty(fd) if stream is None else bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # a closed or file-less stream: no terminal
        return False


def pack_filestat(st: os.stat_result, filetype: int | None = None) -> bytes:
    return struct.pack(
        "<QQB7xQQQQQ", st.st_dev & 0xFFFFFFFFFFFFFFFF, st.st_ino & 0xFFFFFFFFFFFFFFFF,
        filetype_of_mode(st.st_mode) if filetype is None else filetype,
        st.st_nlink, st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
    )
