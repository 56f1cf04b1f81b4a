"""BLAKE3, the hash of wasmig's snapshot format (page addresses, file checksums): the compiled
``blake3`` package when it is installed, else wasmig's pure-Python implementation, which gives
the same results far more slowly (for platforms without a wheel, such as Debian's s390x Python:
README, "Dependencies").

:data:`fast_hash` is for the caches' keys and checksums over megabytes (modules, compiled
artifacts), which must never go through the pure-Python BLAKE3: the compiled ``blake3`` (about
3 GB/s here, 1 ms to import), else hashlib's sha256 (the digests differ, which only makes another
machine's cache entries misses)."""

from __future__ import annotations

try:
    from blake3 import blake3
except ImportError:  # pragma: no cover - exercised by the foreign-architecture tests
    from wasmig._pyblake3 import blake3  # type: ignore[assignment]

try:  # compiled BLAKE3 where it is installed, as it is wherever wasmtime has wheels; hashlib's OpenSSL
    from blake3 import blake3 as fast_hash  # would add 3 ms to every run's start-up
except ImportError:  # pragma: no cover - never the pure-Python BLAKE3: artifacts are megabytes
    from hashlib import sha256 as fast_hash  # type: ignore[assignment]

__all__ = ["blake3", "fast_hash", "fast_digest"]


def fast_digest(data: bytes | memoryview) -> str:
    """The hex :data:`fast_hash` of ``data``: a module's identity in the caches."""
    return fast_hash(data).hexdigest()
