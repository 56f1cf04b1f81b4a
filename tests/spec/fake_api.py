"""A scripted stand-in for the wasmig embedding API, for testing the spec runner itself.

The runner must survive engines that hang, crash, raise the wrong exception or return the wrong
shape, and it must keep module bookkeeping (current/named/registered instances) right. Those
paths cannot be provoked on demand with the real interpreter, so this fake interprets a
"module" as a few lines of text in the ``.wasm`` file:

* ``malformed`` / ``invalid`` as the first line: ``from_bytes`` raises ``DecodeError`` /
  ``ValidationError``; ``boom-decode`` raises a plain ``IndexError`` (a decoder bug);
* ``unlinkable`` / ``trap-start``: instantiation raises ``LinkError`` / ``Trap``;
* ``import MOD FIELD``: instantiation needs ``imports[MOD][FIELD]`` (else ``LinkError``) and
  re-exports it under ``MOD.FIELD``;
* ``export NAME VALUE``: an ``i32`` global export with that value.

Exported functions are named by behaviour (see :meth:`Instance.invoke`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from typing import Any


class WasmError(Exception):
    pass


class DecodeError(WasmError):
    pass


class UnsupportedFeature(DecodeError):
    pass


class ValidationError(WasmError):
    pass


class LinkError(WasmError):
    pass


class Trap(WasmError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Exhaustion(Trap):
    pass


class Val:
    def __init__(self, type: str, value: Any) -> None:
        self.type = type
        self.value = value


class HostFunc:
    def __init__(self, params: list[str], results: list[str], fn: Any) -> None:
        self.params, self.results, self.fn = params, results, fn


class Global:
    def __init__(self, type: str, value: Any, mutable: bool = False) -> None:
        self.type, self.mutable = type, mutable
        self.value = value.value if isinstance(value, Val) else value

    @property
    def raw(self) -> tuple[str, Any]:
        return (self.type, self.value)


class Memory:
    def __init__(self, min_pages: int, max_pages: int | None = None) -> None:
        self.size_pages = min_pages


class Table:
    def __init__(self, elem: str, min: int, max: int | None = None) -> None:
        self.size = min


class Module:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    @classmethod
    def from_bytes(cls, data: bytes) -> Module:
        lines = data.decode().splitlines()
        first = lines[0] if lines else ""
        if first == "malformed":
            raise DecodeError("unexpected end")
        if first == "invalid":
            raise ValidationError("type mismatch")
        if first == "boom-decode":
            raise IndexError("bytearray index out of range")
        return cls(lines)


class Instance:
    def __init__(self, module: Module, imports: Mapping[str, Mapping[str, Any]], engine: str = "interp") -> None:
        self.exports: dict[str, Any] = {}
        for line in module.lines:
            words = line.split()
            if not words:
                continue
            if words[0] == "unlinkable":
                raise LinkError("incompatible import type")
            if words[0] == "trap-start":
                raise Trap("unreachable")
            if words[0] == "import":
                try:
                    self.exports[f"{words[1]}.{words[2]}"] = imports[words[1]][words[2]]
                except KeyError:
                    raise LinkError(f"unknown import {words[1]}.{words[2]}") from None
            if words[0] == "export":
                self.exports[words[1]] = Global("i32", int(words[2]))

    def invoke(self, name: str, *args: Val, raw: bool = True) -> list[tuple[str, Any]]:
        """``echo`` returns its arguments; the others misbehave in the way their name says."""
        if name == "echo":
            return [(a.type, a.value) for a in args]
        if name == "add":
            return [("i32", (args[0].value + args[1].value) & 0xFFFFFFFF)]
        if name == "signed":  # breaks the unsigned-bits contract
            return [("i32", -1)]
        if name == "div0":
            raise Trap("integer divide by zero")
        if name == "badmsg":
            raise Trap("something else entirely")
        if name == "exhaust":
            raise Exhaustion("call stack exhausted")
        if name == "boom":
            return [("i32", 1 // 0)]
        if name == "hang":
            while True:
                time.sleep(0.01)
        if name == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        raise KeyError(name)
