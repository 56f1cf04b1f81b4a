"""``wasmig inspect`` and ``wasmig diff`` stay readable on big snapshots: index lists as ranges.

A synthetic snapshot with hundreds of alternating zero / non-zero / repeated pages and thousands
of dropped segments: every list of indices in the text is ranges (``0-41, 43, 50-1023``), cut
after a few with a count of the rest, so no line grows with the snapshot; ``--json`` gives the
complete lists as ``[start, end]`` ranges.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.snapshot_synth import make_snapshot
from wasmig.snapshot.inspect import _MAX_RANGES, diff, format_ranges, format_summary, index_ranges, summarize
from wasmig.snapshot.state import PAGE_SIZE, Snapshot
from wasmig.snapshot.store import CheckpointDir
from wasmig.snapshot.store_stats import storage_stats

PAGES = 600
SEGMENTS = 5000


def _expand(spans: list[list[int]]) -> list[int]:
    return [i for a, b in spans for i in range(a, b + 1)]


def _big_snapshot() -> tuple[Snapshot, list[int], list[int], list[int]]:
    """Pages: p % 3 == 0 zero; p % 3 == 1 unique; p % 3 == 2 the same contents as page 2, except page 2
    itself (so pages 5, 8, ... are repeated). Every other data segment dropped."""
    snap = make_snapshot(7, pages=1)
    shared = b"\x55" * PAGE_SIZE
    pages, zero, nonzero, repeated = [], [], [], []
    for p in range(PAGES):
        if p % 3 == 0:
            pages.append(bytes(PAGE_SIZE))
            zero.append(p)
            continue
        nonzero.append(p)
        if p % 3 == 1:
            pages.append(p.to_bytes(4, "little") + bytes(PAGE_SIZE - 4))
        else:
            pages.append(shared)
            if p != 2:
                repeated.append(p)
    snap.memories[0].data = b"".join(pages)
    snap.memories[0].min = PAGES
    snap.dropped_data = [i % 2 == 1 for i in range(SEGMENTS)]
    return snap, zero, nonzero, repeated


def test_index_ranges_and_their_text() -> None:
    assert index_ranges([]) == []
    assert index_ranges([0, 1, 2, 41, 43, 50, 51]) == [[0, 2], [41, 41], [43, 43], [50, 51]]
    assert format_ranges(index_ranges([*range(42), 43, *range(50, 1024)])) == "0-41, 43, 50-1023"
    assert format_ranges([]) == "none"
    many = index_ranges(range(0, 200, 2))  # 100 single indices
    text = format_ranges(many)
    assert text.startswith("0, 2, 4, ") and text.endswith(f"... and {100 - _MAX_RANGES} more ranges "
                                                          f"({100 - _MAX_RANGES} indices)")


def test_summary_of_a_big_snapshot_is_ranges_in_json_and_short_lines_in_text() -> None:
    snap, zero, nonzero, repeated = _big_snapshot()
    summary = summarize(snap)
    m = summary["memories"][0]
    assert (m["size_pages"], m["zero_pages"], m["nonzero_pages"]) == (PAGES, len(zero), len(nonzero))
    assert _expand(m["zero_page_ranges"]) == zero
    assert _expand(m["nonzero_page_ranges"]) == nonzero
    assert _expand(m["repeated_page_ranges"]) == repeated
    assert summary["dropped_data"] == list(range(1, SEGMENTS, 2))  # as before: the indices
    json.dumps(summary)
    text = format_summary(summary)
    longest = max(text.splitlines(), key=len)
    assert len(longest) < 400, longest
    assert f"  zero pages: 0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, ... and " \
           f"{PAGES // 3 - _MAX_RANGES} more ranges ({PAGES // 3 - _MAX_RANGES} pages)" in text
    assert "  non-zero pages: 1-2, 4-5, 7-8, " in text
    assert f"  repeated pages ({len(repeated)}, each the contents of an earlier page, stored once): 5, 8, 11, " in text
    assert "dropped data segments: 1, 3, 5, " in text
    assert f"... and {SEGMENTS // 2 - _MAX_RANGES} more ranges ({SEGMENTS // 2 - _MAX_RANGES} segments)" in text


def test_inspect_cli_on_a_big_snapshot(tmp_path: Path) -> None:
    snap, zero, _, _ = _big_snapshot()
    path = CheckpointDir(tmp_path / "ck").write(snap)
    text = subprocess.run([sys.executable, "-m", "wasmig", "inspect", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert max(len(line) for line in text.splitlines()) < 400
    assert "  non-zero pages: 1-2, 4-5, " in text
    machine = json.loads(subprocess.run([sys.executable, "-m", "wasmig", "inspect", "--json", str(path)],
                                        capture_output=True, text=True, check=True).stdout)
    assert _expand(machine["memories"][0]["zero_page_ranges"]) == zero
    assert storage_stats(path)["pages_zero"] == len(zero)


def test_diff_of_big_snapshots_is_ranges() -> None:
    a, _, _, _ = _big_snapshot()
    b, _, _, _ = _big_snapshot()
    data = bytearray(b.memories[0].data)
    for p in range(0, PAGES, 2):
        data[p * PAGE_SIZE] ^= 1
    b.memories[0].data = bytes(data)
    b.dropped_data = [i % 2 == 0 for i in range(SEGMENTS - 1)]
    lines = diff(a, b)
    assert max(len(line) for line in lines) < 400, max(lines, key=len)
    text = "\n".join(lines)
    assert f"memory 0: {PAGES // 2} of {PAGES} pages changed: 0, 2, 4, " in text
    assert f"... and {PAGES // 2 - _MAX_RANGES} more ranges ({PAGES // 2 - _MAX_RANGES} pages)" in text
    assert "data segments dropped: 0, 2, 4, " in text
    assert f"data segment drop flags: {SEGMENTS} segments, dropped 1, 3, " in text
