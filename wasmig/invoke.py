"""``wasmig run --invoke NAME PROGRAM [ARGS...]``: call one exported function instead of ``_start``.

As ``wasmtime run --invoke`` does for a core module: each ARG is parsed by the type of the
parameter it is for (``i32``/``i64``: decimal, or hexadecimal with ``0x``; ``f32``/``f64``: a
decimal float, ``inf``, ``nan``), the module's ``_initialize`` (a reactor's constructor) runs
first when it exports one, and each result is printed on a line of its own the way wasmtime prints
it: integers signed and in decimal, floats in the shortest decimal that reads back as the same
value and never in exponent notation (``3``, ``0.1``, ``-0``, ``inf``, ``NaN``).
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import Any

_INT_WIDTH = {"i32": 32, "i64": 64}
_FLOAT = {"f32": "<f", "f64": "<d"}


class InvokeError(Exception):
    """The function or its arguments are not what ``--invoke`` can call: one line for the user."""


def func_type(module: Any, name: str) -> Any:
    """The type of ``module``'s exported function ``name``."""
    for exp in module.ir.exports:
        if exp.name == name and exp.kind == "func":
            return module.ir.func_type(exp.index)
    funcs = sorted(exp.name for exp in module.ir.exports if exp.kind == "func")
    raise InvokeError(f"the module exports no function of that name (its functions: "
                      f"{', '.join(funcs) if funcs else 'none'})")


def parse_arg(t: str, text: str, position: int) -> tuple[str, int]:
    """ARG number ``position`` (1-based) as a parameter of type ``t``: (type, unsigned bits)."""
    what = f"argument {position} ({text!r})"
    if t in _INT_WIDTH:
        width = _INT_WIDTH[t]
        try:
            value = int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10)
        except ValueError:
            raise InvokeError(f"{what} is not an {t}: expected a decimal or 0x-hexadecimal integer") from None
        if not -(1 << (width - 1)) <= value < (1 << width):
            raise InvokeError(f"{what} is out of range for an {t}")
        return t, value & ((1 << width) - 1)
    if t in _FLOAT:
        try:
            x = float(text)
        except ValueError:
            raise InvokeError(f"{what} is not an {t}: expected a number, inf or nan") from None
        fmt = _FLOAT[t]
        try:
            packed = struct.pack(fmt, x)
        except OverflowError:  # beyond f32's range: rounds to infinity, as parsing an f32 does
            packed = struct.pack(fmt, math.copysign(math.inf, x))
        return t, int.from_bytes(packed, "little")
    raise InvokeError(f"the function takes a {t} parameter, which --invoke cannot pass")


def parse_args(ftype: Any, texts: list[str]) -> list[tuple[str, int]]:
    if len(texts) != len(ftype.params):
        raise InvokeError(f"the function takes {len(ftype.params)} argument"
                          f"{'' if len(ftype.params) == 1 else 's'} ({' '.join(ftype.params) or 'none'}), "
                          f"{len(texts)} given")
    return [parse_arg(t, text, i + 1) for i, (t, text) in enumerate(zip(ftype.params, texts, strict=True))]


def _shortest(bits: int, t: str) -> str:
    """The shortest decimal digits that read back (as type ``t``) to the same value."""
    fmt = _FLOAT[t]
    x = struct.unpack(fmt, bits.to_bytes(struct.calcsize(fmt), "little"))[0]
    if t == "f64":
        return repr(x)
    for precision in range(1, 10):
        text = f"{x:.{precision}g}"
        if struct.pack(fmt, float(text)) == struct.pack(fmt, x):
            return text
    return repr(x)  # pragma: no cover - 9 significant digits always round-trip an f32


def format_value(t: str, bits: Any) -> str:
    """One result as ``wasmtime run --invoke`` prints it."""
    if t in _INT_WIDTH:
        width = _INT_WIDTH[t]
        bits &= (1 << width) - 1
        return str(bits - (1 << width) if bits >> (width - 1) else bits)
    if t in _FLOAT:
        x = struct.unpack(_FLOAT[t], bits.to_bytes(struct.calcsize(_FLOAT[t]), "little"))[0]
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        text = format(Decimal(_shortest(bits, t)), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text
    return f"<null {t}>" if bits is None else f"<{t}>"


def to_bits(t: str, value: Any) -> Any:
    """A result as wasmtime-py returns it (signed ints, Python floats) -> unsigned bits."""
    if t in _INT_WIDTH:
        return value & ((1 << _INT_WIDTH[t]) - 1)
    if t in _FLOAT:
        return int.from_bytes(struct.pack(_FLOAT[t], value), "little")
    return value


def call(instance: Any, name: str, args: list[tuple[str, int]], results: tuple[str, ...]) -> list[str]:
    """Call export ``name`` of ``instance`` (either engine) and format its results, one per line."""
    if "_initialize" in instance.exports and name != "_initialize":
        instance.invoke("_initialize")
    if instance.engine == "interp":
        from wasmig.interp.store import Val

        out = instance.invoke(name, *(Val(t, bits) for t, bits in args), raw=True)
        return [format_value(t, bits) for t, bits in out]
    python_args = [struct.unpack(_FLOAT[t], bits.to_bytes(struct.calcsize(_FLOAT[t]), "little"))[0]
                   if t in _FLOAT else (bits - (1 << _INT_WIDTH[t]) if bits >> (_INT_WIDTH[t] - 1) else bits)
                   for t, bits in args]
    value = instance.invoke(name, *python_args)
    values = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    return [format_value(t, to_bits(t, v)) for t, v in zip(results, values, strict=True)]
