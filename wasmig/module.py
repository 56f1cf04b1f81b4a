"""``wasmig.Module``: a decoded and validated WebAssembly module, ready to instantiate."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

from wasmig.binary.decoder import decode_module
from wasmig.binary.ir import Module as IRModule
from wasmig.binary.validator import ModuleInfo, validate_module
from wasmig.errors import DecodeError


class Module:
    """A module that decoded and validated. ``ir`` is the typed IR, ``validation`` the
    validator's per-instruction operand-stack types (which the interpreter compiles from)."""

    def __init__(self, ir: IRModule, validation: ModuleInfo, data: bytes | None = None) -> None:
        self.ir = ir
        self.validation = validation
        self.data = data

    @classmethod
    def from_bytes(cls, data: bytes) -> Module:
        """Decode and validate; raises :class:`DecodeError` or :class:`ValidationError`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("Module.from_bytes expects bytes")
        data = bytes(data)
        ir = decode_module(data)
        return cls(ir, validate_module(ir), data)

    @classmethod
    def from_file(cls, path: str | Path) -> Module:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DecodeError(f"cannot read module {path}: {e.strerror or e}") from None
        return cls.from_bytes(data)

    @cached_property
    def sha256(self) -> str | None:
        """Identity of the original bytes (what a snapshot records)."""
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    @property
    def imports(self) -> list[tuple[str, str, str]]:
        return [(imp.module, imp.name, imp.kind) for imp in self.ir.imports]

    @property
    def exports(self) -> list[tuple[str, str]]:
        return [(exp.name, exp.kind) for exp in self.ir.exports]
