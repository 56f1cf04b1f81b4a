"""``wasmig.Module``: a decoded and validated WebAssembly module, ready to instantiate."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from wasmig.binary.features import check as check_features
from wasmig.errors import DecodeError

if TYPE_CHECKING:  # the decoder and validator are imported when first used: a run on wasmtime may never need them
    import os

    from wasmig.binary.facts import ModuleFacts
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
        self._data = data
        self.features = frozenset(features)
        self._facts: ModuleFacts | None = None
        #: the file the bytes were read from and its stat then (:attr:`digest` is remembered by it)
        self._source: tuple[Path, os.stat_result] | None = None
        self._unread = False  # the bytes are in that file, to be read when first asked (from_file)

    @property
    def data(self) -> bytes | None:
        """The module's bytes (None for a module known only as IR). A module that
        :meth:`from_file` did not read (its digest and interface were remembered) reads them here,
        from the same file, unchanged since (else :class:`ModuleChanged`)."""
        if self._unread:
            assert self._source is not None
            self._data = _read_unchanged(*self._source)
            self._unread = False
        return self._data

    @data.setter
    def data(self, value: bytes | None) -> None:
        self._data, self._unread = value, False

    @property
    def has_bytes(self) -> bool:
        """Whether the module has bytes (read or still to read), without reading them."""
        return self._data is not None or self._unread

    @property
    def decoded(self) -> bool:
        """Whether the IR is there already (:attr:`ir` would not decode)."""
        return self._ir is not None

    def forget_ir(self) -> None:
        """Drop the decoded IR of a module that has its bytes (gigabytes for a big module), to be
        decoded again if something needs it."""
        if self.has_bytes:
            self._ir = None

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
                  decode: bool = True, max_bytes: int | None = None) -> Module:
        """:meth:`from_bytes` of the file's bytes. With ``decode=False`` (a run on wasmtime), a
        file whose digest and interface are remembered for its path and stamp
        (:func:`wasmig.checked.remembered_digest`: the file unchanged since a run read it) is not
        read at all until something asks for its bytes (26 MB of CPython: 17 ms of every start).
        ``max_bytes``: a larger file is refused before it is read (a path a snapshot names may be
        anything, /dev/zero or a 1.5 GB file, and is only checked by hash once read)."""
        import os

        features = check_features(features)
        if not decode or max_bytes is not None:
            try:
                st = os.stat(path)
            except OSError as e:
                raise DecodeError(f"cannot read module {path}: {e.strerror or e}") from None
            _check_size(path, st.st_size, max_bytes)
        if not decode:
            remembered = _remembered(Path(path), st)
            if remembered is not None:
                digest, interface = remembered
                module = cls(None, None, b"", features=features)  # (bytes to come: read when asked)
                module._data, module._unread, module._source = None, True, (Path(path), st)
                module.__dict__["digest"], module.__dict__["interface"] = digest, interface
                return module
        try:
            with open(path, "rb") as f:
                before = os.fstat(f.fileno())
                _check_size(path, before.st_size, max_bytes)
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
                _check_size(path, len(data), max_bytes)
                after = os.fstat(f.fileno())
        except OSError as e:
            raise DecodeError(f"cannot read module {path}: {e.strerror or e}") from None
        module = cls.from_bytes(data, features=features, validate=validate, decode=decode)
        if _stamp(before) == _stamp(after) and len(data) == after.st_size:  # nothing wrote it while it was read
            module._source = (Path(path), after)
        return module

    @cached_property
    def sha256(self) -> str | None:
        """Identity of the original bytes (what a snapshot records)."""
        import hashlib  # 3 ms of OpenSSL set-up that a plain run never needs

        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    @cached_property
    def digest(self) -> str:
        """The :func:`~wasmig.hashing.fast_digest` of the bytes: the module's key in wasmig's caches
        (BLAKE3: 10 ms for CPython's 26 MB, where its sha256 takes 50). For a module read from a
        file, remembered by the file's path and stamp (:mod:`wasmig.checked`): a start that finds
        its module unchanged since the last one does not hash it."""
        from wasmig.hashing import fast_digest

        if self.data is None:
            from wasmig.binary.encoder import encode_module

            return fast_digest(encode_module(self.ir))
        if self._source is None:
            return fast_digest(self.data)
        from wasmig import checked
        from wasmig.files import wasmtime_cache_dir

        path, st = self._source
        folder = wasmtime_cache_dir()
        digest = checked.remembered_digest(folder, path, st)
        if digest is None:
            digest = fast_digest(self.data)
            checked.remember_digest(folder, path, st, digest, _interface_bytes(self.interface))
        return digest  # type: ignore[return-value]

    @property
    def facts(self) -> ModuleFacts:
        """What checkpointing on wasmtime needs to know of the module besides its code
        (:mod:`wasmig.binary.facts`), from the cache by :attr:`digest` when it is there (else
        learnt by decoding the module once); a cached entry also gives :attr:`sha256`."""
        if self._facts is None:
            from wasmig.binary.facts import facts_for

            self._know(facts_for(self))
        assert self._facts is not None
        return self._facts

    def cached_facts(self) -> ModuleFacts | None:
        """:attr:`facts` when they are known or cached (never decodes); else None."""
        if self._facts is None and self.has_bytes:
            from wasmig.binary.facts import cached_facts

            found = cached_facts(self)
            if found is not None:
                self._know(found)
        return self._facts

    def _know(self, facts: ModuleFacts) -> None:
        self._facts = facts
        if facts.sha256 is not None and "sha256" not in self.__dict__:
            self.__dict__["sha256"] = facts.sha256  # seeds the cached_property: no second hash of the bytes

    @property
    def imports(self) -> list[tuple[str, str, str]]:
        return [(imp.module, imp.name, imp.kind) for imp in self.interface.imports]

    @property
    def exports(self) -> list[tuple[str, str]]:
        return [(exp.name, exp.kind) for exp in self.ir.exports]


def _stamp(st: object) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # type: ignore[attr-defined]


class ModuleChanged(DecodeError):
    """A module read lazily (:meth:`Module.from_file`) whose file changed since it was loaded: its
    bytes are no longer those that run."""


def _read_unchanged(path: Path, st: object) -> bytes:
    import os

    try:
        with open(path, "rb") as f:
            if _stamp(os.fstat(f.fileno())) == _stamp(st):
                data = f.read()
                if _stamp(os.fstat(f.fileno())) == _stamp(st) and len(data) == st.st_size:  # type: ignore[attr-defined]
                    return data
    except OSError as e:
        raise ModuleChanged(f"cannot read module {path} again: {e.strerror or e}") from None
    raise ModuleChanged(f"module {path} changed since it was loaded: its bytes are no longer those that run")


def _remembered(path: Path, st: object) -> tuple[str, Interface] | None:
    """The digest and interface remembered for the module file at ``path`` with stat ``st``."""
    from wasmig import checked
    from wasmig.files import wasmtime_cache_dir

    found = checked.remembered_digest(wasmtime_cache_dir(), path, st, with_extra=True)  # type: ignore[arg-type]
    if not isinstance(found, tuple):
        return None
    digest, extra = found
    try:
        return digest, _interface_from(extra)
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _interface_bytes(interface: object) -> bytes:
    """The types and imports of ``interface`` (an IR module or an Interface) as JSON."""
    import json

    types = [[list(t.params), list(t.results)] for t in interface.types]  # type: ignore[attr-defined]
    imports = [[i.module, i.name, i.kind, i.desc if i.kind == "func" else None]
               for i in interface.imports]  # type: ignore[attr-defined]
    return json.dumps({"types": types, "imports": imports}, separators=(",", ":")).encode()


def _interface_from(raw: bytes) -> Interface:
    import json

    from wasmig.binary.interface import FuncType, Import, Interface

    data = json.loads(raw)
    return Interface([FuncType(tuple(p), tuple(r)) for p, r in data["types"]],
                     [Import(str(m), str(n), str(k), None if d is None else int(d)) for m, n, k, d in data["imports"]])


def _check_size(path: str | Path, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise DecodeError(f"cannot read module {path}: it is {size} bytes, more than the {max_bytes >> 20} MiB "
                          "a module may be")
