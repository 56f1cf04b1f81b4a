"""``wasmig.Module``: a decoded and validated WebAssembly module, ready to instantiate."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from wasmig.binary.decoder import decode_module
from wasmig.binary.features import check as check_features
from wasmig.binary.ir import Module as IRModule
from wasmig.binary.validator import ModuleInfo, validate_module
from wasmig.errors import DecodeError


class Module:
    """A module that decoded and validated. ``ir`` is the typed IR, ``validation`` the
    validator's per-instruction operand-stack types (which the interpreter compiles from),
    ``features`` the opt-in proposals it was decoded and validated with (see
    :mod:`wasmig.binary.features`; empty means plain WebAssembly 2.0).

    ``validation`` may be deferred (``from_bytes(..., validate=False)``): it is then computed,
    raising :class:`ValidationError` for an invalid module, the first time something needs it.
    A restore on wasmtime whose instrumented module is cached never does: that cache entry exists
    only for bytes (same sha256) that were validated when they were instrumented, and validating
    is about half of loading a module in pure Python."""

    def __init__(self, ir: IRModule, validation: ModuleInfo | None, data: bytes | None = None, *,
                 features: frozenset[str] = frozenset()) -> None:
        self.ir = ir
        self._validation = validation
        self.data = data
        self.features = frozenset(features)

    @property
    def validation(self) -> ModuleInfo:
        if self._validation is None:
            self._validation = validate_module(self.ir, features=self.features)
        return self._validation

    @classmethod
    def from_bytes(cls, data: bytes, *, features: Iterable[str] = frozenset(), validate: bool = True) -> Module:
        """Decode and validate; raises :class:`DecodeError` or :class:`ValidationError`.

        ``features`` opts in to proposals beyond WebAssembly 2.0, e.g. ``{"multi-memory"}``.
        ``validate=False`` defers validation until :attr:`validation` is first used.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("Module.from_bytes expects bytes")
        data = bytes(data)
        features = check_features(features)
        ir = decode_module(data, features=features)
        return cls(ir, validate_module(ir, features=features) if validate else None, data, features=features)

    @classmethod
    def from_file(cls, path: str | Path, *, features: Iterable[str] = frozenset(), validate: bool = True) -> Module:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DecodeError(f"cannot read module {path}: {e.strerror or e}") from None
        return cls.from_bytes(data, features=features, validate=validate)

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
