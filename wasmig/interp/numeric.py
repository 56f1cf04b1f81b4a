"""Exact WebAssembly numeric semantics on Python values.

Representation inside the interpreter (chosen for speed *and* exactness):

- ``i32``/``i64``: Python ints holding the unsigned bit pattern (``0 <= v < 2**N``).
- ``f64``: a Python float. CPython keeps a double's 64 bits untouched through struct
  ``'<d'``, negation, ``abs`` and ``copysign``, so NaN payloads survive loads, stores and
  reinterpretation.
- ``f32``: a Python float holding the exact single-precision value. A C ``float -> double``
  cast (what ``struct '<f'`` does) quiets signalling NaNs, so NaNs are mapped by hand: the
  23-bit f32 payload sits in the top of the double's 52-bit payload (low 29 bits zero) and the
  sign and signalling bit are kept. Every f32 arithmetic result is rounded to single precision
  (computing in double then rounding once is exact for + - * / sqrt: 53 >= 2*24+2).

Everything here is independent of host byte order: memory is read and written with explicit
little-endian formats.
"""

from __future__ import annotations

import math
import struct

from wasmig.errors import Trap

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
INF = math.inf

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_f32_pack, _f32_unpack = _F32.pack, _F32.unpack
_f64_pack, _f64_unpack = _F64.pack, _F64.unpack
_u64_pack, _u64_unpack = _U64.pack, _U64.unpack
_u32_pack, _u32_unpack = _U32.pack, _U32.unpack
_copysign = math.copysign
_trunc = math.trunc


# --- bit patterns <-> values ---------------------------------------------------------------
def f64_from_bits(bits: int) -> float:
    return _f64_unpack(_u64_pack(bits))[0]


def f64_to_bits(x: float) -> int:
    return _u64_unpack(_f64_pack(x))[0]


def f32_from_bits(bits: int) -> float:
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x7FFFFF:
        d = ((bits >> 31) << 63) | (0x7FF << 52) | ((bits & 0x7FFFFF) << 29)
        return _f64_unpack(_u64_pack(d))[0]
    return _f32_unpack(_u32_pack(bits))[0]


def f32_to_bits(x: float) -> int:
    if x != x:
        d = _u64_unpack(_f64_pack(x))[0]
        payload = (d >> 29) & 0x7FFFFF
        if not payload:  # a double NaN whose payload lies only in the low bits: keep it a NaN
            payload = 0x400000
        return ((d >> 63) << 31) | 0x7F800000 | payload
    return _u32_unpack(_f32_pack(x))[0]


def f32_from_bytes(b: bytes | bytearray, offset: int) -> float:
    """Load an f32 from little-endian memory, preserving NaN bits (raises struct.error if OOB)."""
    v = _f32_unpack_from(b, offset)[0]
    if v != v:
        return f32_from_bits(_u32_unpack_from(b, offset)[0])
    return v


_f32_unpack_from = _F32.unpack_from
_u32_unpack_from = _U32.unpack_from
_f32_pack_into = _F32.pack_into
_u32_pack_into = _U32.pack_into


def f32_into_bytes(b: bytearray, offset: int, x: float) -> None:
    """Store an f32 little-endian, preserving NaN bits (raises struct.error if OOB)."""
    if x != x:
        _u32_pack_into(b, offset, f32_to_bits(x))
    else:
        _f32_pack_into(b, offset, x)


def r32(x: float) -> float:
    """Round a double to the nearest single-precision value (ties to even), as a double."""
    try:
        return _f32_unpack(_f32_pack(x))[0]
    except OverflowError:
        return _copysign(INF, x)


def signed32(v: int) -> int:
    return v - 0x100000000 if v & 0x80000000 else v


def signed64(v: int) -> int:
    return v - 0x10000000000000000 if v & 0x8000000000000000 else v


# --- integer operators ---------------------------------------------------------------------
def idiv_s(a: int, b: int, bits: int) -> int:
    if b == 0:
        raise Trap("integer divide by zero")
    half = 1 << (bits - 1)
    sa = a - (1 << bits) if a & half else a
    sb = b - (1 << bits) if b & half else b
    if sa == -half and sb == -1:
        raise Trap("integer overflow")
    q = abs(sa) // abs(sb)
    if (sa < 0) != (sb < 0):
        q = -q
    return q & ((1 << bits) - 1)


def idiv_u(a: int, b: int) -> int:
    if b == 0:
        raise Trap("integer divide by zero")
    return a // b


def irem_s(a: int, b: int, bits: int) -> int:
    if b == 0:
        raise Trap("integer divide by zero")
    half = 1 << (bits - 1)
    sa = a - (1 << bits) if a & half else a
    sb = b - (1 << bits) if b & half else b
    r = abs(sa) % abs(sb)
    if sa < 0:
        r = -r
    return r & ((1 << bits) - 1)


def irem_u(a: int, b: int) -> int:
    if b == 0:
        raise Trap("integer divide by zero")
    return a % b


def clz(a: int, bits: int) -> int:
    return bits - a.bit_length()


def ctz(a: int, bits: int) -> int:
    return (a & -a).bit_length() - 1 if a else bits


def rotl(a: int, k: int, bits: int) -> int:
    k %= bits
    mask = (1 << bits) - 1
    return ((a << k) | (a >> (bits - k))) & mask


def rotr(a: int, k: int, bits: int) -> int:
    k %= bits
    mask = (1 << bits) - 1
    return ((a >> k) | (a << (bits - k))) & mask


def shr_s(a: int, k: int, bits: int) -> int:
    half = 1 << (bits - 1)
    sa = a - (1 << bits) if a & half else a
    return (sa >> (k % bits)) & ((1 << bits) - 1)


def extend_s(a: int, from_bits: int, to_mask: int) -> int:
    half = 1 << (from_bits - 1)
    a &= (1 << from_bits) - 1
    return (a - (1 << from_bits) if a & half else a) & to_mask


# --- float operators -----------------------------------------------------------------------
def fdiv(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a != a:
            return a + b  # propagate (and quiet) the NaN
        if a == 0.0:
            return math.nan
        return _copysign(INF, a) * _copysign(1.0, b)


def fsqrt(a: float) -> float:
    if a != a:
        return a + a
    if a < 0.0:
        return math.nan
    return math.sqrt(a)


def fmin(a: float, b: float) -> float:
    if a != a or b != b:
        return a + b
    if a == b:  # also decides -0.0 vs +0.0
        return a if _copysign(1.0, a) < 0 else b
    return a if a < b else b


def fmax(a: float, b: float) -> float:
    if a != a or b != b:
        return a + b
    if a == b:
        return b if _copysign(1.0, a) < 0 else a
    return a if a > b else b


def _integral(a: float) -> bool:
    return a != a or a in (INF, -INF) or a == 0.0 or abs(a) >= 4503599627370496.0


def fceil(a: float) -> float:
    if _integral(a):
        return a + 0.0 if a != a else a
    r = float(math.ceil(a))
    return r if r != 0.0 else _copysign(0.0, a)


def ffloor(a: float) -> float:
    if _integral(a):
        return a + 0.0 if a != a else a
    r = float(math.floor(a))
    return r if r != 0.0 else _copysign(0.0, a)


def ftrunc(a: float) -> float:
    if _integral(a):
        return a + 0.0 if a != a else a
    r = float(_trunc(a))
    return r if r != 0.0 else _copysign(0.0, a)


def fnearest(a: float) -> float:
    if _integral(a):
        return a + 0.0 if a != a else a
    r = float(round(a))  # Python rounds half to even, as wasm requires
    return r if r != 0.0 else _copysign(0.0, a)


def f32_nan_arith(a: float) -> float:
    """Quiet an f32 NaN operand the way hardware would, keeping the f32 payload mapping."""
    return a + 0.0


# --- conversions ---------------------------------------------------------------------------
def trunc_to_int(x: float, signed: bool, bits: int) -> int:
    if x != x:
        raise Trap("invalid conversion to integer")
    if x in (INF, -INF):
        raise Trap("integer overflow")
    t = _trunc(x)
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    if t < lo or t > hi:
        raise Trap("integer overflow")
    return t & ((1 << bits) - 1)


def trunc_sat(x: float, signed: bool, bits: int) -> int:
    if x != x:
        return 0
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    if x == INF:
        return hi & ((1 << bits) - 1)
    if x == -INF:
        return lo & ((1 << bits) - 1)
    t = _trunc(x)
    t = lo if t < lo else hi if t > hi else t
    return t & ((1 << bits) - 1)


def int_to_f32(n: int) -> float:
    """Convert an int to the nearest f32 (ties to even) in one rounding, as the spec requires.

    ``float(n)`` then rounding to f32 would round twice and can be off by one ulp for 64-bit
    inputs, so large magnitudes are rounded with exact integer arithmetic.
    """
    m = -n if n < 0 else n
    shift = m.bit_length() - 24
    if shift <= 0:
        return float(n)
    q, r = divmod(m, 1 << shift)
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    v = math.ldexp(float(q), shift)
    return -v if n < 0 else v


def demote(x: float) -> float:
    if x != x:
        return r32(x + 0.0)
    return r32(x)


def promote(x: float) -> float:
    return x + 0.0 if x != x else x
