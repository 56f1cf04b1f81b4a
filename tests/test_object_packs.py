"""The pack layout's pure parts (wasmig/snapshot/stores/objpacks.py): cutting a write's pages into
packs, the index format and its bounds, and coalescing ranged reads."""

from __future__ import annotations

import pytest

from wasmig.errors import SnapshotError
from wasmig.snapshot.stores.objpacks import PageRef, coalesce, cut_into_packs, decode_index, encode_index, is_pack_id


def test_pages_are_cut_into_balanced_packs_with_their_offsets() -> None:
    pages = [(f"{i:064x}", bytes([i]) * 1000) for i in range(10)]
    packs = cut_into_packs(pages, target=3000)
    assert len(packs) == 4 and all(is_pack_id(p[0]) for p in packs)
    assert len({p[0] for p in packs}) == 4
    assert [h for _, _, entries in packs for h, _, _ in entries] == [h for h, _ in pages], "every page once, in order"
    for _, parts, entries in packs:
        data = b"".join(parts)
        assert all(data[off:off + n] == dict(pages)[h] for h, off, n in entries)
    assert cut_into_packs([]) == []


def test_an_index_round_trips_and_refuses_what_does_not_fit_its_pack() -> None:
    entries = [("ab" * 32, 0, 100), ("cd" * 32, 100, 50)]
    assert decode_index(encode_index(entries, 150), "i") == (entries, 150)
    with pytest.raises(SnapshotError, match="outside its pack"):
        decode_index(encode_index(entries, 149), "i")
    with pytest.raises(SnapshotError, match="outside its pack"):
        decode_index(encode_index([("ab" * 32, 0, 3 * 65536)], 4 * 65536), "i")  # longer than a page may be
    with pytest.raises(SnapshotError, match="does not match its entries"):
        decode_index(encode_index(entries, 150)[:-1], "i")
    with pytest.raises(SnapshotError, match="not a pack index"):
        decode_index(b"WMIDX\0\0\1" + encode_index(entries, 150)[8:], "i")


def test_adjacent_pages_of_a_pack_are_read_together() -> None:
    refs = [("a", PageRef("p", 0, 100)), ("b", PageRef("p", 100, 100)), ("c", PageRef("q", 0, 10)),
            ("d", PageRef("p", 10 << 20, 100)), ("e", PageRef("p", 200 + (1 << 20), 100))]
    ranges = {(pack, start, length): [h for h, _ in group] for pack, start, length, group in coalesce(refs)}
    assert ranges == {("p", 0, 200): ["a", "b"], ("p", 200 + (1 << 20), 100): ["e"],
                      ("p", 10 << 20, 100): ["d"], ("q", 0, 10): ["c"]}
    near = [(str(i), PageRef("p", i * 70000, 65000)) for i in range(200)]  # gaps of 5000 bytes
    got = coalesce(near)
    assert all(length <= 8 << 20 for _, _, length, _ in got) and 1 < len(got) <= 3
    assert sorted(h for *_, group in got for h, _ in group) == sorted(h for h, _ in near)
