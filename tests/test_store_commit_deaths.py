"""A writer of an object store (the fleet's jobs checkpoint into one) that dies at any of its writes
leaves the store whole: the snapshots listed afterwards are the earlier ones, or those and the one
being written (never a part of one), each loads with its memory exactly, the next writer commits
and gc then removes what the dead writer left without breaking a snapshot.

The fleet's model sweep (tests/test_fleet_jobstore.py) publishes a checkpoint with one put; the real
runner publishes through the store's commit, which writes several objects (each pack, then its
index, then the snapshot file with a conditional put, then the hint of the packs it names). This
sweeps a death at each of those writes in turn, and at each of the writes of a gc that compacts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.mortal import Killed, Mortal
from tests.snapshot_synth import make_snapshot
from wasmig.snapshot.stores import objpacks
from wasmig.snapshot.stores.fsobjects import FsObjects
from wasmig.snapshot.stores.objects import ObjectStore


def store_at(root: Path, kill_at: int | None = None) -> tuple[ObjectStore, Mortal]:
    backend = Mortal(FsObjects(root / "prog"), kill_at)
    return ObjectStore(f"file://{root}/prog", backend), backend  # type: ignore[arg-type]


def memory_of(seed: int, pages: int) -> bytes:
    return bytes(make_snapshot(seed, pages=pages).memories[0].data)


def assert_whole(root: Path, allowed: list[list[int]]) -> list[int]:
    """The store at ``root`` lists one of the ``allowed`` sequences of snapshots (by seed), each
    loading whole with one of the written memories; the seeds it lists."""
    store, _ = store_at(root)
    seeds = []
    for location in store.snapshots():
        data = bytes(store.load(location).memories[0].data)
        seeds.append(next((seed for seed in PAGES if data == memory_of(seed, PAGES[seed])), -1))
    assert seeds in allowed, f"listed {seeds} (-1: a memory that was never written), allowed {allowed}"
    return seeds


def collect(store: ObjectStore) -> None:
    """A whole gc with no grace period: its first pass sets aside what no snapshot names, the
    second removes it."""
    for _ in range(2):
        store.gc(grace_s=0)


#: the snapshots' seeds, and their sizes in pages
PAGES = {5: 12, 6: 40, 7: 8}


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packs of a few pages, so that one commit uploads several (in parallel, as big ones do)."""
    cut = objpacks.cut_into_packs
    monkeypatch.setattr(objpacks, "cut_into_packs", lambda pages, target=None: cut(pages, target=4 * 65536))


def test_a_writer_dying_at_any_write_of_its_commit_leaves_the_store_whole(tmp_path: Path, small_packs: None) -> None:
    base = tmp_path / "base"
    first, _ = store_at(base)
    first.write(make_snapshot(5, pages=PAGES[5]))
    counted = tmp_path / "counted"
    shutil.copytree(base, counted)
    writer, backend = store_at(counted)
    writer.write(make_snapshot(6, pages=PAGES[6]))
    writes = backend.writes
    assert writes >= 6, f"only {writes} writes: the commit should upload several packs and their indexes"
    outcomes = set()
    for k in range(writes):
        case = tmp_path / f"case{k}"
        shutil.copytree(base, case)
        dying, _ = store_at(case, kill_at=k)
        with pytest.raises(Killed):
            dying.write(make_snapshot(6, pages=PAGES[6]))
        seeds = assert_whole(case, [[5], [5, 6]])
        outcomes.add(len(seeds))
        nxt, _ = store_at(case)
        nxt.write(make_snapshot(7, pages=PAGES[7]))
        assert bytes(nxt.load().memories[0].data) == memory_of(7, PAGES[7])
        collect(nxt)
        assert_whole(case, [seeds + [7]])
    assert outcomes == {1, 2}, "deaths before and after the snapshot's publication were both swept"


def test_a_gc_dying_at_any_write_leaves_every_snapshot_whole(tmp_path: Path, small_packs: None) -> None:
    """gc compacts packs that are mostly dead (copies their live pages into a new pack, then deletes
    them): a death at any of its writes leaves every snapshot loadable, and the next gc finishes."""
    base = tmp_path / "base"
    store, _ = store_at(base)
    for seed in PAGES:
        store.write(make_snapshot(seed, pages=PAGES[seed]))
    store.backend.delete(store.backend.key_of(store.snapshots()[1]))  # snapshot 6 deleted: its pages die
    counted = tmp_path / "counted"
    shutil.copytree(base, counted)
    collector, backend = store_at(counted)
    collect(collector)
    writes = backend.writes
    assert writes >= 2, f"only {writes} writes: gc should set aside and remove the dead snapshot's packs"
    for k in range(writes):
        case = tmp_path / f"case{k}"
        shutil.copytree(base, case)
        dying, _ = store_at(case, kill_at=k)
        with pytest.raises(Killed):
            collect(dying)
        assert_whole(case, [[5, 7]])
        again, _ = store_at(case)
        collect(again)
        assert_whole(case, [[5, 7]])
