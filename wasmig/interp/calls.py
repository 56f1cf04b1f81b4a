"""Calling an interpreter function with Python values, and its results back as Python values (or
``(type, bits)`` pairs): the conventions ``wasmig.Instance.invoke`` has on every engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasmig.interp.store import to_bits, to_internal, to_python

if TYPE_CHECKING:
    from wasmig.interp.machine import Machine
    from wasmig.interp.store import FuncInst


def call_function(machine: Machine, func: FuncInst, args: tuple[Any, ...], *, raw: bool = False) -> Any:
    """Call ``func`` on ``machine`` with Python values (see :func:`convert_results` for the result)."""
    params = func.type.params
    if len(args) != len(params):
        raise TypeError(f"{func!r} takes {len(params)} arguments, {len(args)} given")
    internal = [to_internal(t, a) for t, a in zip(params, args, strict=True)]
    return convert_results(func.type.results, machine.invoke(func, internal), raw)


def convert_results(types: tuple[str, ...], results: list[Any], raw: bool) -> Any:
    """``results`` (internal values of ``types``) as ``None``, one Python value or a tuple; with
    ``raw`` as a list of ``(type, bits)`` pairs."""
    if raw:
        return [(t, to_bits(t, v)) for t, v in zip(types, results, strict=True)]
    values = [to_python(t, v) for t, v in zip(types, results, strict=True)]
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
