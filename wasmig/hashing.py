"""BLAKE3, the hash of wasmig's snapshot format (page addresses, file checksums): the compiled
``blake3`` package when it is installed, else wasmig's pure-Python implementation, which gives
the same results far more slowly (for platforms without a wheel, such as Debian's s390x Python:
README, "Dependencies")."""

from __future__ import annotations

try:
    from blake3 import blake3
except ImportError:  # pragma: no cover - exercised by the foreign-architecture tests
    from wasmig._pyblake3 import blake3  # type: ignore[assignment]

__all__ = ["blake3"]
