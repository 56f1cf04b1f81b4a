"""The exception hierarchy shared by every layer of wasmig.

One root (`WasmError`) so a CLI or an embedder can catch everything wasmig raises about a
module or a run with a single ``except``, and distinct subclasses so the spec-test runner can
tell *malformed* (decode) from *invalid* (validation) from *unlinkable* from *trapping*.
"""

from __future__ import annotations


class WasmError(Exception):
    """Root of every error wasmig raises about a module, a link or a run."""


class DecodeError(WasmError):
    """The bytes are not a well-formed WebAssembly binary (the spec's *malformed*)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.offset = offset
        if offset is not None:
            message = f"{message} (at byte offset {offset:#x})"
        super().__init__(message)


class UnsupportedFeature(DecodeError):
    """Well-formed for some proposal wasmig does not implement (SIMD, threads, GC, ...)."""


class ValidationError(WasmError):
    """The module decodes but violates the typing rules (the spec's *invalid*)."""


class LinkError(WasmError):
    """Instantiation failed because an import is missing or has the wrong type."""


class Trap(WasmError):
    """A WebAssembly trap; ``reason`` is the spec's wording (e.g. ``integer divide by zero``)."""

    def __init__(self, reason: str, backtrace: list[str] | None = None) -> None:
        self.reason = reason
        self.backtrace = backtrace or []
        super().__init__(reason)


class Exhaustion(Trap):
    """The call stack (or the value stack) ran out: still a trap, never a Python RecursionError."""


class HostCallInterrupted(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a host function that was blocked (stdin, sleep, accept) when a checkpoint was
    requested, *before* it did anything: the engine abandons the call and re-executes it on
    restore. Not a WasmError: it never reaches a user."""


class SnapshotError(WasmError):
    """A snapshot that cannot be used: corrupt, truncated, from a newer format, or for another module.
    (Also importable from :mod:`wasmig.snapshot.state`, beside the state it is about.)"""
