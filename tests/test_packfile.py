"""Pack bytes on their way to disk (wasmig/snapshot/packfile.py): ``O_DIRECT`` from a reused
staging buffer where the filesystem allows it, the page cache where it does not, and the same
bytes on disk either way (docs/snapshot-format.md, "Writing")."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.snapshot_synth import make_snapshot
from wasmig.snapshot import packfile, packs, pagework
from wasmig.snapshot.packs import PackStore, PackWriter, read_index
from wasmig.snapshot.state import PAGE_SIZE, MemoryState
from wasmig.snapshot.store import CheckpointDir, load_snapshot

O_DIRECT = getattr(os, "O_DIRECT", 0)


def _frames(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Frames of assorted lengths, not multiples of 4 KiB."""
    rng = random.Random(seed)
    return [(f"{i:064x}", rng.randbytes(rng.randrange(1, 3 * PAGE_SIZE // 2))) for i in range(count)]


def _pack(directory: Path, frames: list[tuple[str, bytes]], batch: int) -> Path:
    """A pack of ``frames``: the first one by ``append``, then blocks of ``batch`` frames (the
    page loop's way, a few bytes no entry names at each block's start)."""
    directory.mkdir()
    writer = PackWriter(directory)
    writer.append(*frames[0])
    for lo in range(1, len(frames), batch):
        chunk = frames[lo:lo + batch]
        buf = packfile.take_buffer(pagework.block_size(batch))
        block = memoryview(buf)
        used, entries = 7, []
        block[:used] = b"garbage"
        for h, frame in chunk:
            block[used:used + len(frame)] = frame
            entries.append((h, used, len(frame)))
            used += len(frame)
        writer.append_block(block, used, entries)
        block.release()
        packfile.give_buffer(buf)
    path = writer.commit()
    assert path is not None
    return path


def _frames_in(pack: Path) -> dict[str, bytes]:
    store = PackStore(pack.parent)
    store.refresh()
    out = {}
    for h in store.locations:
        found = store.read(h)
        assert found is not None
        out[h] = found[0]
    store.close()
    return out


def _direct_here(path: Path) -> bool:
    """Whether the filesystem of ``path`` accepts O_DIRECT (asked of the kernel, not of packfile)."""
    probe = path / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | O_DIRECT))
    except OSError:
        return False
    return bool(O_DIRECT)


@pytest.mark.parametrize(("stage", "block_min"), [(packfile.ALIGN, 1), (3 * packfile.ALIGN, 1 << 30),
                                                  (packfile.STAGE_SIZE, 256 << 10)])
def test_direct_and_buffered_packs_hold_the_same_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        stage: int, block_min: int) -> None:
    """Frames crossing the staging buffer's end, blocks written in place and blocks copied, the
    unaligned tail and the index: the pack reads back the frames the page cache path writes,
    its blocks at 4 KiB boundaries, and it is no larger than the padding allows."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(packfile, "STAGE_SIZE", stage)
    monkeypatch.setattr(packs, "DIRECT_BLOCK_MIN", block_min)
    frames = _frames(1, 41)
    direct = _pack(tmp_path / "direct", frames, 8)
    monkeypatch.setattr(packfile, "DIRECT", False)
    buffered = _pack(tmp_path / "buffered", frames, 8)
    assert _frames_in(direct) == _frames_in(buffered) == dict(frames)
    blocks = sum(7 + sum(len(f) for _, f in frames[lo:lo + 8]) >= block_min for lo in range(1, 41, 8))
    assert buffered.stat().st_size <= direct.stat().st_size <= buffered.stat().st_size + 2 * blocks * packfile.ALIGN
    if blocks:
        offsets = sorted(off for _, off, _ in read_index(direct))
        assert sum(off % packfile.ALIGN == 7 for off in offsets) == blocks  # each block's first frame


def test_a_checkpoint_writes_its_pack_with_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pack's pages reach the disk through an O_DIRECT descriptor, and read back whole."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    direct_writes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            direct_writes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(packfile.os, "pwrite", pwrite)
    data = random.Random(2).randbytes(100 * PAGE_SIZE)
    snap = make_snapshot(2)
    snap.memories = [MemoryState(1, None, bytearray(data))]
    path = CheckpointDir(tmp_path / "ck", threads=2).write(snap)
    assert sum(direct_writes) >= 99 * PAGE_SIZE
    assert all(n % packfile.ALIGN == 0 for n in direct_writes)
    assert load_snapshot(path).memories[0].data == data


def test_staging_buffers_are_reused(tmp_path: Path) -> None:
    """A write takes a staging buffer touched by an earlier one rather than fresh memory."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    (tmp_path / "a").mkdir()
    first = PackWriter(tmp_path / "a")
    stage = first._out._view
    first.append("00" * 32, b"x" * 5000)
    first.commit()
    second = PackWriter(tmp_path / "a")
    assert second._out._view is stage
    second.abort()
    assert any(b is stage for b in packfile._buffers[packfile.STAGE_SIZE])


def test_filesystem_refusing_o_direct_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL from open(O_DIRECT) (tmpfs): the pack goes through the page cache, same bytes."""
    frames = _frames(3, 12)
    monkeypatch.setattr(packfile, "DIRECT", False)
    expected = _pack(tmp_path / "expected", frames, 5).read_bytes()
    monkeypatch.setattr(packfile, "DIRECT", True)
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any) -> int:
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(packfile.os, "open", refusing)
    assert _pack(tmp_path / "got", frames, 5).read_bytes() == expected


def test_filesystem_refusing_an_o_direct_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL from a later O_DIRECT write: what was staged and the rest go through the page cache."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(packfile, "STAGE_SIZE", 2 * packfile.ALIGN)
    monkeypatch.setattr(packs, "DIRECT_BLOCK_MIN", 1)
    frames = _frames(4, 12)
    monkeypatch.setattr(packfile, "DIRECT", False)
    expected = _frames_in(_pack(tmp_path / "expected", frames, 5))
    monkeypatch.setattr(packfile, "DIRECT", True)
    real_pwrite = os.pwrite
    direct_calls = [0]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            direct_calls[0] += 1
            if direct_calls[0] == 3:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(packfile.os, "pwrite", pwrite)
    got = _frames_in(_pack(tmp_path / "got", frames, 5))
    assert direct_calls[0] == 3
    assert got == expected


def test_a_random_page_is_framed_as_a_view_not_a_copy() -> None:
    """A raw frame is (header, the page's view): no 64 KiB ``bytes`` per page."""
    page = memoryview(bytearray(random.Random(5).randbytes(PAGE_SIZE)))
    header, body = pagework.frame_parts(pagework.compressor(1), page)
    assert header == pagework.RAW_FRAME_HEADER
    assert isinstance(body, memoryview) and body.obj is page.obj


def test_a_batch_frames_its_pages_into_its_block() -> None:
    """The page loop's worker copies each new page's frame into the batch's block right after
    hashing it: a random page raw (header + page), a compressible one compressed."""
    rng = random.Random(7)
    text = (b"a fairly compressible line of text %d\n" * 3000)[:PAGE_SIZE]
    data = rng.randbytes(PAGE_SIZE) + bytes(PAGE_SIZE) + text
    buf = packfile.take_buffer(pagework.block_size(3))
    block = memoryview(buf)
    prints, fresh, used = pagework._scan(pagework.MemoryPages(data), 0, 3, None, lambda h: False, set(), 1, block)
    assert prints[1] is None and [j for j, *_ in fresh] == [0, 2]
    (_, _, s0, n0), (_, _, s2, n2) = fresh
    assert bytes(block[s0:s0 + n0]) == pagework.RAW_FRAME_HEADER + data[:PAGE_SIZE]
    assert s2 == n0 and n2 < PAGE_SIZE // 4 and used == n0 + n2
    import zstandard

    assert zstandard.ZstdDecompressor().decompress(bytes(block[s2:s2 + n2])) == text
    block.release()


def test_a_batch_block_fits_one_huge_page_and_asks_for_it() -> None:
    """A batch's block (its frames at their largest) fits one 2 MiB huge page, and the buffers
    are aligned to huge pages and marked for them (THP eligible) where the kernel has THP."""
    assert pagework.block_size(pagework.BATCH) <= packfile.HUGE_PAGE
    buf = packfile.take_buffer(pagework.block_size(pagework.BATCH))
    import ctypes

    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert address % packfile.HUGE_PAGE == 0
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("no transparent huge pages here")
    smaps = Path("/proc/self/smaps").read_text().split("\n")
    for i, line in enumerate(smaps):
        lo, _, hi = line.partition(" ")[0].partition("-")
        if hi and all(c in "0123456789abcdef" for c in lo + hi) and int(lo, 16) <= address < int(hi, 16):
            eligible = next(x for x in smaps[i + 1:] if x.startswith("THPeligible:"))
            assert eligible.split()[1] == "1"
            break
    else:
        pytest.fail("the buffer's mapping is not in /proc/self/smaps")
    packfile.give_buffer(buf)


def test_no_frame_is_larger_than_a_raw_one() -> None:
    """Pages whose sample compresses (a few zeros, or many, in the middle) and the rest does
    not: every frame is at most RAW_FRAME bytes (a batch's block is sized by it) and is the page."""
    import zstandard

    rng = random.Random(8)
    for zeros in (128, 512, 8192):
        page = bytearray(rng.randbytes(PAGE_SIZE))
        page[PAGE_SIZE // 2:PAGE_SIZE // 2 + zeros] = bytes(zeros)
        frame = b"".join(pagework.frame_parts(pagework.compressor(1), memoryview(page)))
        assert len(frame) <= pagework.RAW_FRAME
        assert zstandard.ZstdDecompressor().decompress(frame) == page


def test_a_full_disk_during_a_direct_write_is_one_error_and_leaves_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from an O_DIRECT write: the checkpoint fails with one SnapshotError line, no pack
    and no temporary file is left, the earlier snapshot still loads, and the next write works."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    from wasmig.snapshot.state import SnapshotError

    store = CheckpointDir(tmp_path / "ck", threads=2)
    first = make_snapshot(10)
    first.memories = [MemoryState(1, None, bytearray(random.Random(10).randbytes(8 * PAGE_SIZE)))]
    earlier = store.write(first)
    packs_before = sorted(p.name for p in (tmp_path / "ck" / "pages").iterdir())
    real_pwrite = os.pwrite

    def full(fd: int, data: Any, offset: int) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(packfile.os, "pwrite", full)
    snap = make_snapshot(11)
    snap.memories = [MemoryState(1, None, bytearray(random.Random(11).randbytes(100 * PAGE_SIZE)))]
    with pytest.raises(SnapshotError) as err:
        store.write(snap)
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in (tmp_path / "ck" / "pages").iterdir()) == packs_before
    assert load_snapshot(earlier).memories[0].data == first.memories[0].data
    monkeypatch.setattr(packfile.os, "pwrite", real_pwrite)
    assert load_snapshot(store.write(snap)).memories[0].data == snap.memories[0].data


def _written(tmp_path: Path, pages: int, seed: int) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(pages * PAGE_SIZE)
    snap = make_snapshot(seed)
    snap.memories = [MemoryState(1, None, bytearray(data))]
    return CheckpointDir(tmp_path / "ck", threads=2).write(snap), data


def test_a_restore_reads_neighbouring_frames_with_one_o_direct_read(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack written with O_DIRECT is not in the page cache: a restore reads each batch's frames
    with one O_DIRECT read (not a cached read per page), and the memory comes back whole."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    path, data = _written(tmp_path, 64, 12)
    direct_reads: list[int] = []
    real_preadv = os.preadv

    def preadv(fd: int, buffers: Any, offset: int) -> int:
        import fcntl

        n = real_preadv(fd, buffers, offset)
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            direct_reads.append(n)
        return n

    monkeypatch.setattr(os, "preadv", preadv)
    assert load_snapshot(path).memories[0].data == data
    assert 0 < len(direct_reads) <= 8 and sum(direct_reads) >= 64 * PAGE_SIZE


def test_a_restore_without_o_direct_reads_each_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where read_direct cannot read (no O_DIRECT, a short file), pages are read one by one."""
    path, data = _written(tmp_path, 40, 13)
    monkeypatch.setattr(packs, "read_direct", lambda *_: None)
    assert load_snapshot(path).memories[0].data == data


def test_a_damaged_frame_read_ahead_is_still_refused(tmp_path: Path) -> None:
    """A frame read with the batch's O_DIRECT read is verified like any: one byte flipped in a
    page's frame is a one-line error naming the pack."""
    from wasmig.snapshot.state import SnapshotError

    path, _ = _written(tmp_path, 40, 14)
    [pack] = list((tmp_path / "ck" / "pages").glob("pack-*.pack"))
    h, offset, length = read_index(pack)[20]
    raw = bytearray(pack.read_bytes())
    raw[offset + length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError) as err:
        load_snapshot(path)
    assert "corrupt" in str(err.value) and pack.name in str(err.value) and "\n" not in str(err.value)


def test_a_full_disk_at_the_snapshot_file_takes_the_new_pack_back(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC once the pages' pack is published, writing the snapshot file: the pack, named by no
    snapshot, was left for a gc; it is removed, the earlier snapshot's pack stays, the next write works."""
    from wasmig.snapshot import store as store_module
    from wasmig.snapshot.state import SnapshotError

    store = CheckpointDir(tmp_path / "ck", threads=2)
    first = make_snapshot(10)
    first.memories = [MemoryState(1, None, bytearray(random.Random(10).randbytes(8 * PAGE_SIZE)))]
    earlier = store.write(first)
    packs_before = sorted(p.name for p in (tmp_path / "ck" / "pages").iterdir())

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module, "write_temp", full)
    snap = make_snapshot(11)
    snap.memories = [MemoryState(1, None, bytearray(random.Random(11).randbytes(20 * PAGE_SIZE)))]
    with pytest.raises(SnapshotError, match="No space left on device"):
        store.write(snap)
    assert sorted(p.name for p in (tmp_path / "ck" / "pages").iterdir()) == packs_before
    monkeypatch.undo()
    assert load_snapshot(earlier).memories[0].data == first.memories[0].data
    assert load_snapshot(store.write(snap)).memories[0].data == snap.memories[0].data
