"""``wasmig.Module``: a decoded and validated WebAssembly module, ready to instantiate."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from wasmig.binary.features import check as check_features
from wasmig.errors import DecodeError

if TYPE_CHECKING:  # the decoder and validator are imported when first used: a run on wasmtime may never need them
    from wasmig.binary.interface import Interface
    from wasmig.binary.ir import Module as IRModule
    from wasmig.binary.validator import ModuleInfo


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

    def __init__(self, ir: IRModule | None, validation: ModuleInfo | None, data: bytes | None = None, *,
                 features: frozenset[str] = frozenset()) -> None:
        if ir is None and data is None:
            raise TypeError("a Module needs its IR or its bytes")
        self._ir = ir
        self._validation = validation
        self.data = data
        self.features = frozenset(features)

    @property
    def ir(self) -> IRModule:
        """The decoded module (decoded on first use for a module made with ``decode=False``)."""
        if self._ir is None:
            from wasmig.binary.decoder import decode_module

            assert self.data is not None
            self._ir = decode_module(self.data, features=self.features)
        return self._ir

    @cached_property
    def interface(self) -> IRModule | Interface:
        """Types and imports only (``.types``, ``.imports``): enough to link the module, read
        without decoding its code (:mod:`wasmig.binary.interface`) unless it is decoded already."""
        if self._ir is not None:
            return self._ir
        from wasmig.binary.interface import read_interface

        assert self.data is not None
        return read_interface(self.data)

    @property
    def validated(self) -> ModuleInfo | None:
        """The validation's result if it has been computed, else None (nothing is computed)."""
        return self._validation

    @property
    def validation(self) -> ModuleInfo:
        if self._validation is None:
            from wasmig.binary.validator import validate_module

            self._validation = validate_module(self.ir, features=self.features)
        return self._validation

    @classmethod
    def from_bytes(cls, data: bytes, *, features: Iterable[str] = frozenset(), validate: bool = True,
                   decode: bool = True) -> Module:
        """Decode and validate; raises :class:`DecodeError` or :class:`ValidationError`.

        ``features`` opts in to proposals beyond WebAssembly 2.0, e.g. ``{"multi-memory"}``.
        ``validate=False`` defers validation until :attr:`validation` is first used.
        ``decode=False`` (implies ``validate=False``) decodes only the header, types and imports
        now (:attr:`interface`) and the rest when :attr:`ir` is first used: for a run on wasmtime,
        which validates and compiles the bytes itself, decoding all of a module in Python is most
        of what ``wasmig run`` would add to its start-up.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("Module.from_bytes expects bytes")
        data = bytes(data)
        features = check_features(features)
        if not decode:
            module = cls(None, None, data, features=features)
            _ = module.interface  # a malformed header or import section is an error now
            return module
        from wasmig.binary.decoder import decode_module

        ir = decode_module(data, features=features)
        module = cls(ir, None, data, features=features)
        if validate:
            _ = module.validation
        return module

    @classmethod
    def from_file(cls, path: str | Path, *, features: Iterable[str] = frozenset(), validate: bool = True,
                  decode: bool = True) -> Module:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DecodeError(f"cannot read module {path}: {e.strerror or e}") from None
        return cls.from_bytes(data, features=features, validate=validate, decode=decode)

    @cached_property
    def sha256(self) -> str | None:
        """Identity of the original bytes (what a snapshot records)."""
        import hashlib  # 3 ms of OpenSSL set-up that a plain run never needs

        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    @property
    def imports(self) -> list[tuple[str, str, str]]:
        return [(imp.module, imp.name, imp.kind) for imp in self.interface.imports]

    @property
    def exports(self) -> list[tuple[str, str]]:
        return [(exp.name, exp.kind) for exp in self.ir.exports]
