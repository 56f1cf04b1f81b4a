"""``GuestMemory``: the WASI layer's only window onto guest linear memory.

Keeping this interface small (bounds-checked byte and little-endian integer access) is what lets
one WASI implementation serve every engine: the interpreter wraps its live ``bytearray``, a
compiled engine wraps its own memory export. Out-of-range pointers become ``EFAULT`` for the
guest instead of a host exception.
"""

from __future__ import annotations

import struct
from typing import Protocol

from wasmig.wasi.errno import Errno, WasiError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ByteBuffer(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, key: slice) -> bytes | bytearray: ...
    def __setitem__(self, key: slice, value: bytes) -> None: ...


class GuestMemory:
    """Bounds-checked access to a guest memory held as a mutable buffer.

    ``source`` is a callable returning the current buffer, so a memory that is replaced when it
    grows (some engines do that) is always seen as it is now.
    """

    __slots__ = ("_source",)

    def __init__(self, source: object) -> None:
        self._source = source

    @property
    def buf(self) -> bytearray:
        return self._source()  # type: ignore[operator,no-any-return]

    def _check(self, ptr: int, n: int) -> bytearray:
        buf = self.buf
        if ptr < 0 or n < 0 or ptr + n > len(buf):
            raise WasiError(Errno.FAULT, f"guest pointer {ptr:#x}+{n} outside linear memory")
        return buf

    def read(self, ptr: int, n: int) -> bytes:
        buf = self._check(ptr, n)
        return bytes(buf[ptr : ptr + n])

    def write(self, ptr: int, data: bytes) -> None:
        buf = self._check(ptr, len(data))
        buf[ptr : ptr + len(data)] = data

    def u8(self, ptr: int) -> int:
        return self._check(ptr, 1)[ptr]

    def u16(self, ptr: int) -> int:
        return _U16.unpack_from(self._check(ptr, 2), ptr)[0]

    def u32(self, ptr: int) -> int:
        return _U32.unpack_from(self._check(ptr, 4), ptr)[0]

    def u64(self, ptr: int) -> int:
        return _U64.unpack_from(self._check(ptr, 8), ptr)[0]

    def set_u8(self, ptr: int, v: int) -> None:
        self._check(ptr, 1)[ptr] = v & 0xFF

    def set_u16(self, ptr: int, v: int) -> None:
        _U16.pack_into(self._check(ptr, 2), ptr, v & 0xFFFF)

    def set_u32(self, ptr: int, v: int) -> None:
        _U32.pack_into(self._check(ptr, 4), ptr, v & 0xFFFFFFFF)

    def set_u64(self, ptr: int, v: int) -> None:
        _U64.pack_into(self._check(ptr, 8), ptr, v & 0xFFFFFFFFFFFFFFFF)

    def string(self, ptr: int, n: int) -> str:
        """A guest path or name: must be valid UTF-8 (``EILSEQ`` otherwise)."""
        raw = self.read(ptr, n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WasiError(Errno.ILSEQ, "path is not valid UTF-8") from None

    def iovecs(self, iovs: int, count: int) -> list[tuple[int, int]]:
        """The (pointer, length) pairs of an iovec/ciovec array, each checked against memory."""
        raw = self.read(iovs, 8 * count)
        out = []
        for i in range(count):
            ptr, length = struct.unpack_from("<II", raw, 8 * i)
            self._check(ptr, length)
            out.append((ptr, length))
        return out


def for_bytearray(buf: bytearray) -> GuestMemory:
    """A GuestMemory over a bytearray that grows in place (the interpreter's memories do)."""
    return GuestMemory(lambda: buf)
