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
    """The cyclic garbage collector off inside, back on after (if it was on), also on an error.

    What the work inside made and kept (the decoded module's instructions; the pass's site map)
    goes straight to the oldest generation, without the walk of the youngest generation that
    would otherwise come with the first allocation after: it counted every object allocated
    inside, so that collection walked all of those still alive, only to find them alive (0.33 s
    after CPython's pass, for its 1.2 million objects). ``gc.freeze()`` then ``gc.unfreeze()``
    moves every tracked object into the oldest generation as one list splice -- unless the
    program froze objects itself, whose freeze the unfreeze would undo."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
