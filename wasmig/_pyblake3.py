"""BLAKE3 in pure Python: the fallback when the compiled ``blake3`` package is not installed
(a platform without a wheel, such as Debian's s390x Python). Same results, byte for byte, as
the reference implementation (https://github.com/BLAKE3-team/BLAKE3, reference_impl.rs), which
this follows; checked against the compiled package in tests/test_hashing.py. Slow (about 1 MB/s):
wasmig hashes only non-zero pages and manifests with it, which a small program keeps small.

Only what wasmig uses: unkeyed hashing, ``update``, ``digest``/``hexdigest`` of any length.
"""

from __future__ import annotations

import struct

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_BLOCK_LEN, _CHUNK_LEN = 64, 1024
_M = 0xFFFFFFFF
_WORDS = struct.Struct("<16I")


def _schedules() -> list[tuple[int, ...]]:
    order = list(range(16))
    out = []
    for _ in range(7):
        out.append(tuple(order))
        order = [order[i] for i in _PERMUTATION]
    return out


_SCHEDULE = _schedules()


def _compress(cv: tuple[int, ...] | list[int], m: tuple[int, ...], counter: int, block_len: int,
              flags: int) -> list[int]:
    """The compression function: 16 output words (the first 8 are the next chaining value)."""
    s0, s1, s2, s3, s4, s5, s6, s7 = cv
    s8, s9, s10, s11 = _IV[0], _IV[1], _IV[2], _IV[3]
    s12, s13, s14, s15 = counter & _M, (counter >> 32) & _M, block_len, flags
    for sc in _SCHEDULE:
        # columns
        s0 = (s0 + s4 + m[sc[0]]) & _M; s12 ^= s0; s12 = ((s12 >> 16) | (s12 << 16)) & _M  # noqa: E702
        s8 = (s8 + s12) & _M; s4 ^= s8; s4 = ((s4 >> 12) | (s4 << 20)) & _M  # noqa: E702
        s0 = (s0 + s4 + m[sc[1]]) & _M; s12 ^= s0; s12 = ((s12 >> 8) | (s12 << 24)) & _M  # noqa: E702
        s8 = (s8 + s12) & _M; s4 ^= s8; s4 = ((s4 >> 7) | (s4 << 25)) & _M  # noqa: E702
        s1 = (s1 + s5 + m[sc[2]]) & _M; s13 ^= s1; s13 = ((s13 >> 16) | (s13 << 16)) & _M  # noqa: E702
        s9 = (s9 + s13) & _M; s5 ^= s9; s5 = ((s5 >> 12) | (s5 << 20)) & _M  # noqa: E702
        s1 = (s1 + s5 + m[sc[3]]) & _M; s13 ^= s1; s13 = ((s13 >> 8) | (s13 << 24)) & _M  # noqa: E702
        s9 = (s9 + s13) & _M; s5 ^= s9; s5 = ((s5 >> 7) | (s5 << 25)) & _M  # noqa: E702
        s2 = (s2 + s6 + m[sc[4]]) & _M; s14 ^= s2; s14 = ((s14 >> 16) | (s14 << 16)) & _M  # noqa: E702
        s10 = (s10 + s14) & _M; s6 ^= s10; s6 = ((s6 >> 12) | (s6 << 20)) & _M  # noqa: E702
        s2 = (s2 + s6 + m[sc[5]]) & _M; s14 ^= s2; s14 = ((s14 >> 8) | (s14 << 24)) & _M  # noqa: E702
        s10 = (s10 + s14) & _M; s6 ^= s10; s6 = ((s6 >> 7) | (s6 << 25)) & _M  # noqa: E702
        s3 = (s3 + s7 + m[sc[6]]) & _M; s15 ^= s3; s15 = ((s15 >> 16) | (s15 << 16)) & _M  # noqa: E702
        s11 = (s11 + s15) & _M; s7 ^= s11; s7 = ((s7 >> 12) | (s7 << 20)) & _M  # noqa: E702
        s3 = (s3 + s7 + m[sc[7]]) & _M; s15 ^= s3; s15 = ((s15 >> 8) | (s15 << 24)) & _M  # noqa: E702
        s11 = (s11 + s15) & _M; s7 ^= s11; s7 = ((s7 >> 7) | (s7 << 25)) & _M  # noqa: E702
        # diagonals
        s0 = (s0 + s5 + m[sc[8]]) & _M; s15 ^= s0; s15 = ((s15 >> 16) | (s15 << 16)) & _M  # noqa: E702
        s10 = (s10 + s15) & _M; s5 ^= s10; s5 = ((s5 >> 12) | (s5 << 20)) & _M  # noqa: E702
        s0 = (s0 + s5 + m[sc[9]]) & _M; s15 ^= s0; s15 = ((s15 >> 8) | (s15 << 24)) & _M  # noqa: E702
        s10 = (s10 + s15) & _M; s5 ^= s10; s5 = ((s5 >> 7) | (s5 << 25)) & _M  # noqa: E702
        s1 = (s1 + s6 + m[sc[10]]) & _M; s12 ^= s1; s12 = ((s12 >> 16) | (s12 << 16)) & _M  # noqa: E702
        s11 = (s11 + s12) & _M; s6 ^= s11; s6 = ((s6 >> 12) | (s6 << 20)) & _M  # noqa: E702
        s1 = (s1 + s6 + m[sc[11]]) & _M; s12 ^= s1; s12 = ((s12 >> 8) | (s12 << 24)) & _M  # noqa: E702
        s11 = (s11 + s12) & _M; s6 ^= s11; s6 = ((s6 >> 7) | (s6 << 25)) & _M  # noqa: E702
        s2 = (s2 + s7 + m[sc[12]]) & _M; s13 ^= s2; s13 = ((s13 >> 16) | (s13 << 16)) & _M  # noqa: E702
        s8 = (s8 + s13) & _M; s7 ^= s8; s7 = ((s7 >> 12) | (s7 << 20)) & _M  # noqa: E702
        s2 = (s2 + s7 + m[sc[13]]) & _M; s13 ^= s2; s13 = ((s13 >> 8) | (s13 << 24)) & _M  # noqa: E702
        s8 = (s8 + s13) & _M; s7 ^= s8; s7 = ((s7 >> 7) | (s7 << 25)) & _M  # noqa: E702
        s3 = (s3 + s4 + m[sc[14]]) & _M; s14 ^= s3; s14 = ((s14 >> 16) | (s14 << 16)) & _M  # noqa: E702
        s9 = (s9 + s14) & _M; s4 ^= s9; s4 = ((s4 >> 12) | (s4 << 20)) & _M  # noqa: E702
        s3 = (s3 + s4 + m[sc[15]]) & _M; s14 ^= s3; s14 = ((s14 >> 8) | (s14 << 24)) & _M  # noqa: E702
        s9 = (s9 + s14) & _M; s4 ^= s9; s4 = ((s4 >> 7) | (s4 << 25)) & _M  # noqa: E702
    return [s0 ^ s8, s1 ^ s9, s2 ^ s10, s3 ^ s11, s4 ^ s12, s5 ^ s13, s6 ^ s14, s7 ^ s15,
            s8 ^ cv[0], s9 ^ cv[1], s10 ^ cv[2], s11 ^ cv[3], s12 ^ cv[4], s13 ^ cv[5], s14 ^ cv[6], s15 ^ cv[7]]


def _words(block: bytes) -> tuple[int, ...]:
    return _WORDS.unpack(block.ljust(_BLOCK_LEN, b"\0"))


class _Output:
    """What a last compression needs: enough to give either a chaining value or root output."""

    def __init__(self, cv: tuple[int, ...] | list[int], block: tuple[int, ...], counter: int, block_len: int,
                 flags: int) -> None:
        self.cv, self.block, self.counter, self.block_len, self.flags = cv, block, counter, block_len, flags

    def chaining_value(self) -> list[int]:
        return _compress(self.cv, self.block, self.counter, self.block_len, self.flags)[:8]

    def root_bytes(self, length: int) -> bytes:
        out = bytearray()
        counter = 0
        while len(out) < length:
            words = _compress(self.cv, self.block, counter, self.block_len, self.flags | _ROOT)
            out += _WORDS.pack(*words)
            counter += 1
        return bytes(out[:length])


class _Chunk:
    def __init__(self, counter: int) -> None:
        self.cv: tuple[int, ...] | list[int] = _IV
        self.counter = counter
        self.buf = b""
        self.blocks = 0  # blocks compressed so far

    def length(self) -> int:
        return _BLOCK_LEN * self.blocks + len(self.buf)

    def _start(self) -> int:
        return _CHUNK_START if self.blocks == 0 else 0

    def update(self, data: bytes) -> None:
        while data:
            if len(self.buf) == _BLOCK_LEN:  # a full block, and more input: it is not the last
                self.cv = _compress(self.cv, _words(self.buf), self.counter, _BLOCK_LEN, self._start())[:8]
                self.blocks += 1
                self.buf = b""
            take = _BLOCK_LEN - len(self.buf)
            self.buf += data[:take]
            data = data[take:]

    def output(self) -> _Output:
        return _Output(self.cv, _words(self.buf), self.counter, len(self.buf), self._start() | _CHUNK_END)


def _parent(left: list[int], right: list[int]) -> _Output:
    return _Output(_IV, tuple(left + right), 0, _BLOCK_LEN, _PARENT)


class blake3:  # noqa: N801 - the compiled package's name
    """``blake3(data).digest()``, ``.hexdigest()``, ``.update(data)``, as the compiled package."""

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._chunk = _Chunk(0)
        self._stack: list[list[int]] = []
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview) -> blake3:
        data = bytes(data)
        while data:
            if self._chunk.length() == _CHUNK_LEN:  # a full chunk, and more input: merge it in
                cv = self._chunk.output().chaining_value()
                total = self._chunk.counter + 1
                while total & 1 == 0:
                    cv = _parent(self._stack.pop(), cv).chaining_value()
                    total >>= 1
                self._stack.append(cv)
                self._chunk = _Chunk(self._chunk.counter + 1)
            take = _CHUNK_LEN - self._chunk.length()
            self._chunk.update(data[:take])
            data = data[take:]
        return self

    def digest(self, length: int = 32) -> bytes:
        out = self._chunk.output()
        for cv in reversed(self._stack):
            out = _parent(cv, out.chaining_value())
        return out.root_bytes(length)

    def hexdigest(self, length: int = 32) -> str:
        return self.digest(length).hex()
