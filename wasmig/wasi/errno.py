"""WASI preview1 errno values, and the mapping from host ``OSError`` to them.

WASI numbers its errors itself (``ENOENT`` is 44, not the host's 2), so every host error
crossing into the guest goes through :func:`from_oserror`. One table for the whole WASI layer.
"""

from __future__ import annotations

import errno as _host_errno
from enum import IntEnum


class Errno(IntEnum):
    SUCCESS = 0
    TOOBIG = 1  # E2BIG
    ACCES = 2
    ADDRINUSE = 3
    ADDRNOTAVAIL = 4
    AFNOSUPPORT = 5
    AGAIN = 6
    ALREADY = 7
    BADF = 8
    BADMSG = 9
    BUSY = 10
    CANCELED = 11
    CHILD = 12
    CONNABORTED = 13
    CONNREFUSED = 14
    CONNRESET = 15
    DEADLK = 16
    DESTADDRREQ = 17
    DOM = 18
    DQUOT = 19
    EXIST = 20
    FAULT = 21
    FBIG = 22
    HOSTUNREACH = 23
    IDRM = 24
    ILSEQ = 25
    INPROGRESS = 26
    INTR = 27
    INVAL = 28
    IO = 29
    ISCONN = 30
    ISDIR = 31
    LOOP = 32
    MFILE = 33
    MLINK = 34
    MSGSIZE = 35
    MULTIHOP = 36
    NAMETOOLONG = 37
    NETDOWN = 38
    NETRESET = 39
    NETUNREACH = 40
    NFILE = 41
    NOBUFS = 42
    NODEV = 43
    NOENT = 44
    NOEXEC = 45
    NOLCK = 46
    NOLINK = 47
    NOMEM = 48
    NOMSG = 49
    NOPROTOOPT = 50
    NOSPC = 51
    NOSYS = 52
    NOTCONN = 53
    NOTDIR = 54
    NOTEMPTY = 55
    NOTRECOVERABLE = 56
    NOTSOCK = 57
    NOTSUP = 58
    NOTTY = 59
    NXIO = 60
    OVERFLOW = 61
    OWNERDEAD = 62
    PERM = 63
    PIPE = 64
    PROTO = 65
    PROTONOSUPPORT = 66
    PROTOTYPE = 67
    RANGE = 68
    ROFS = 69
    SPIPE = 70
    SRCH = 71
    STALE = 72
    TIMEDOUT = 73
    TXTBSY = 74
    XDEV = 75
    NOTCAPABLE = 76


class WasiError(Exception):
    """Raised inside the WASI layer to return an errno to the guest (never escapes to the user)."""

    def __init__(self, errno: Errno | int, detail: str = "") -> None:
        self.errno = Errno(errno)
        super().__init__(f"{self.errno.name}{': ' + detail if detail else ''}")


def _build_host_map() -> dict[int, Errno]:
    table: dict[int, Errno] = {}
    for host_num, host_name in _host_errno.errorcode.items():
        name = host_name[1:]  # "ENOENT" -> "NOENT"
        if name == "2BIG":
            name = "TOOBIG"
        if name == "OPNOTSUPP":
            name = "NOTSUP"
        if name == "WOULDBLOCK":
            name = "AGAIN"
        if name in Errno.__members__:
            table[host_num] = Errno[name]
    return table


_HOST_TO_WASI = _build_host_map()


def from_oserror(e: OSError) -> Errno:
    """The WASI errno for a host error (``EIO`` when the host error has no WASI counterpart)."""
    if e.errno is None:
        return Errno.IO
    return _HOST_TO_WASI.get(e.errno, Errno.IO)
