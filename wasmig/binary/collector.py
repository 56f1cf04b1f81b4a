"""The cyclic garbage collector paused around work that allocates millions of acyclic objects.

Decoding a big module makes an ``Instr`` per instruction (CPython's 26 MB: 2.7 million), and the
instrumentation pass tens of millions of short-lived objects; none of them is in a reference
cycle, yet every collection of the oldest generation walks all of them. With the collector on,
decoding CPython's module took 5.0-5.5 s of CPU against 2.8-3.4 s with it paused, and the pass
lost 1.1 s to 3,500 collections that found nothing to free (docs/instrument.md)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside, back on after (if it was on), also on an error."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
