"""The pure-Python BLAKE3 fallback (wasmig/_pyblake3.py) gives the compiled package's results:
snapshots written on a host with one are read on a host with the other."""

from __future__ import annotations

import random

import pytest

from wasmig._pyblake3 import blake3 as pure

compiled = pytest.importorskip("blake3").blake3


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3073, 8193, 65536, 70001])
def test_the_fallback_matches_the_compiled_package(n: int) -> None:
    rng = random.Random(n)
    data = rng.randbytes(n)
    assert pure(data).digest() == compiled(data).digest()
    assert pure(data).digest(100) == compiled(data).digest(length=100)  # extended output
    h = pure()
    i = 0
    while i < n:  # fed in pieces that cross block and chunk boundaries
        k = rng.randrange(1, 3000)
        h.update(data[i:i + k])
        i += k
    assert h.hexdigest() == compiled(data).hexdigest()
