"""The cyclic garbage collector paused around decoding and the pass (wasmig/binary/collector.py):
what the work kept goes to the oldest generation without the young collection that used to walk
it all when the collector came back on (0.33 s after CPython's pass), and a program's own frozen
objects stay frozen."""

from __future__ import annotations

import gc

from wasmig.binary.collector import collector_paused


def _young_collections(work) -> list[int]:  # type: ignore[no-untyped-def]
    """The generations of the collections that start while ``work()`` runs and just after."""
    started: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        kept = work()
        after = [[] for _ in range(50)]  # the first allocations after the pause
        del after
    finally:
        gc.callbacks.remove(seen)
    assert kept
    return started


def test_what_the_work_kept_is_not_walked_when_the_collector_comes_back() -> None:
    assert gc.isenabled()
    holder: list[list[list[int]]] = []

    def work() -> list[list[int]]:
        with collector_paused():
            holder.append([[k] for k in range(20_000)])  # tracked containers, kept
        return holder[0]

    assert _young_collections(work) == [], "a collection walked what the paused work kept"
    assert gc.isenabled()
    assert gc.get_count()[0] < 700  # below the youngest generation's threshold: no collection due
    oldest = {id(x) for x in gc.get_objects(generation=2)}
    assert id(holder[0]) in oldest and id(holder[0][-1]) in oldest


def test_a_programs_frozen_objects_stay_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with collector_paused():
            made = [[k] for k in range(1000)]
        assert gc.get_freeze_count() == frozen, "the pause unfroze the program's objects"
        assert made and gc.isenabled()
    finally:
        gc.unfreeze()


def test_a_collector_the_caller_had_off_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
