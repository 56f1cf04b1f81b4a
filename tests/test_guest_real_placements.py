"""benchmarks/guest_real.py times every variant at several code placements (overhead.py's
``placed``) with the runs interleaved, and reports medians over all placements: one placement per
variant could not resolve 2% between variants (where QuickJS's hot loops land moves it by a few
percent, the code unchanged). ``--placements 1`` is the behaviour before (one rotation per round)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("wasmtime")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import guest_real  # noqa: E402
import overhead  # noqa: E402


def test_one_placement_is_the_rotation_of_before() -> None:
    order = guest_real.schedule(["plain", "fast", "x"], rounds=3, placements=1)
    assert order == [(0, n) for n in ["plain", "fast", "x", "fast", "x", "plain", "x", "plain", "fast"]]


def test_every_variant_runs_at_every_placement_interleaved() -> None:
    names = ["plain", "fast", "base-main"]
    order = guest_real.schedule(names, rounds=5, placements=4)
    assert Counter(order) == {(at, n): 5 for at in range(4) for n in names}
    turns = [order[i:i + len(names)] for i in range(0, len(order), len(names))]
    for turn_no, turn in enumerate(turns):  # every variant once per turn, at one placement
        assert sorted(n for _, n in turn) == sorted(names) and {at for at, _ in turn} == {turn_no % 4}
    assert [turn[0][1] for turn in turns[:4]] == ["plain", "fast", "base-main", "plain"]  # who goes first rotates


def test_the_report_is_over_all_placements_with_each_placement_beside() -> None:
    times = {"plain": {0: [1.0, 1.0], 1: [2.0, 2.0]}, "fast": {0: [1.1, 1.1], 1: [2.0, 2.0]}}
    plain, fast = guest_real.summary(times)
    # pooled: 1.55 s / 1.5 s; the median of the per-placement ratios would say 1.05x
    assert "1.550 s CPU" in fast and "1.033x plain" in fast and fast.endswith("by placement 1.100 1.000")
    assert "1.000x plain" in plain
    one = guest_real.summary({"plain": {0: [1.0]}, "fast": {0: [1.2]}})
    assert one[1].endswith("1.200x plain")  # one placement: the line of before


def test_placements_are_overheads_and_checked_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert guest_real.PLACEMENTS is overhead.PLACEMENTS and guest_real.placed is overhead.placed  # reused
    for bad in ("0", str(len(overhead.PLACEMENTS) + 1)):
        with pytest.raises(SystemExit) as e:
            guest_real.main(["--placements", bad])  # refused before the program is fetched
        assert e.value.code == 2 and "--placements" in capsys.readouterr().err
