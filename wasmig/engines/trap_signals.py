"""wasmtime's signal handlers stay the process's own while wasmig runs wasm on it.

wasmtime turns faults in wasm code into wasm traps with signal handlers (on Linux: SIGSEGV for an
access out of bounds, SIGILL for ``unreachable``, SIGFPE for an integer division by zero), which
it installs when the first engine is made, keeping the handlers that were there before for the
faults that are not wasm's. A library that installs a handler for those signals *afterwards* and
does not return into wasmtime's on a wasm fault — Ray's driver installs absl's crash reporter, and
``faulthandler.enable()`` called again does the same, both re-raising the signal from inside their
handler, where the fault's address is lost — turns every such trap into the death of the process,
with no Python error (issue 20: a pytest worker that had connected to a Ray cluster died at the
next ``unreachable`` in a wasm thread).

So wasmig remembers wasmtime's handlers when it makes an engine (:func:`remember`: a handler is
wasmtime's when its code lies in wasmtime's shared library) and puts them back, with a warning,
before it instantiates a module (:func:`restore`) if another library replaced them since. The
replaced handler is lost for non-wasm faults, but wasmtime still hands those to the handler that
was there before it (Python's faulthandler, say). Linux only (the layout of ``struct sigaction``
below is glibc's and musl's); elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import signal
import sys

from wasmig import log

#: the signals wasmtime may handle (it installs SIGBUS too on some platforms)
SIGNALS = (signal.SIGSEGV, signal.SIGILL, signal.SIGFPE, signal.SIGBUS)


class _Sigaction(ctypes.Structure):
    """``struct sigaction`` as glibc and musl lay it out on 64-bit Linux."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
#: wasmtime's own action for each signal it handles, as :func:`remember` found it
_WASMTIME: dict[int, _Sigaction] = {}


def _current(sig: int) -> _Sigaction:
    action = _Sigaction()
    if _LIBC is not None:
        _LIBC.sigaction(sig, None, ctypes.byref(action))
    return action


def _in_wasmtime(address: int | None) -> bool:
    """Whether ``address`` is code of wasmtime's shared library."""
    if not address or _LIBC is None:
        return False
    info = _DlInfo()
    if not _LIBC.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.fname:
        return False
    return b"wasmtime" in info.fname.rsplit(b"/", 1)[-1]


def remember() -> None:
    """Note wasmtime's handlers, once an engine is made (wasmtime installs them then). A signal
    whose handler is not wasmtime's now (replaced already, or one wasmtime leaves alone) is not
    noted: nothing is put back for it."""
    if _LIBC is None or len(_WASMTIME) == len(SIGNALS):
        return
    for sig in SIGNALS:
        if sig not in _WASMTIME:
            action = _current(sig)
            if _in_wasmtime(action.handler):
                _WASMTIME[sig] = action


def replaced() -> list[signal.Signals]:
    """The signals whose handler wasmtime installed and another library has replaced since."""
    return [signal.Signals(sig) for sig, action in _WASMTIME.items() if _current(sig).handler != action.handler]


def restore() -> None:
    """Put wasmtime's handlers back where another library replaced them (a warning names them):
    called before wasm runs, so that a trap in it stays a trap."""
    gone = replaced()
    if not gone:
        return
    for sig in gone:
        _LIBC.sigaction(sig, ctypes.byref(_WASMTIME[sig]), None)  # type: ignore[union-attr]
    log.warning(__name__, "another library replaced wasmtime's handlers of %s (a trap in wasm would kill the "
                "process): put back", ", ".join(s.name for s in gone))
