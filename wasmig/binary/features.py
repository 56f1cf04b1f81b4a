"""Opt-in WebAssembly proposals of the binary layer.

By default the decoder and validator implement exactly WebAssembly 2.0 (without SIMD). A caller
that needs a post-2.0 proposal passes its name in ``features`` (any iterable of names; a
``frozenset`` by convention) to :func:`wasmig.binary.decoder.decode_module`,
:func:`wasmig.binary.validator.validate_module` or :meth:`wasmig.Module.from_bytes`. The encoder
needs no flag: it encodes whatever the IR says.

- ``"multi-memory"`` -- the multi-memory proposal: several memories (imported and defined),
  memory indices in every memory instruction (see :mod:`wasmig.binary.opcodes` for the IR), in
  data segments, imports and exports.
- ``"atomic-loads"`` -- the seven atomic loads of the threads proposal (``i32.atomic.load``,
  ``i64.atomic.load32_u``, ...: 0xFE 0x10-0x16), on any memory; every other threads instruction
  (and shared memories) stays unsupported. The instrumentation pass's polls read the checkpoint
  request with one: a plain load of the poll byte may be merged by the compiler with an earlier
  one (Cranelift does, so a loop without stores never saw a request); an atomic load never is.
- ``"tail-call"`` -- ``return_call`` (0x12) of the tail-call proposal. The instrumentation pass's
  rewind copies hand a frame over to its function's normal body with it (a *transfer*,
  :mod:`wasmig.instrument.transfer`), so a restored frame does not finish its life in the copy.
- ``"threads"`` -- the whole threads proposal: shared memories (limits flags 2 and 3), every
  0xFE instruction (atomic loads, stores and read-modify-writes, ``memory.atomic.wait32/64``,
  ``memory.atomic.notify``, ``atomic.fence``). Implies ``"atomic-loads"``.
"""

from __future__ import annotations

from collections.abc import Iterable

MULTI_MEMORY = "multi-memory"
ATOMIC_LOADS = "atomic-loads"
THREADS = "threads"
TAIL_CALL = "tail-call"

#: what a module made by the instrumentation pass (:mod:`wasmig.instrument.unwind`) uses
INSTRUMENTED = frozenset({MULTI_MEMORY, ATOMIC_LOADS, TAIL_CALL})

#: every feature name the binary layer understands
SUPPORTED = frozenset({MULTI_MEMORY, ATOMIC_LOADS, THREADS, TAIL_CALL})


def check(features: Iterable[str]) -> frozenset[str]:
    """``features`` as a frozenset; ``ValueError`` for a name not in :data:`SUPPORTED`."""
    if isinstance(features, str | bytes):  # "multi-memory" would otherwise be a set of letters
        raise TypeError(f"features must be a collection of names, not the string {features!r}")
    out = frozenset(features)
    unknown = out - SUPPORTED
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(sorted(unknown))} (supported: {', '.join(sorted(SUPPORTED))})")
    return out
