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
from wasmig.snapshot import packfile, pagework
from wasmig.snapshot.packs import PACK_RE, PackStore, PackWriter
from wasmig.snapshot.state import PAGE_SIZE, MemoryState
from wasmig.snapshot.store import CheckpointDir, load_snapshot

O_DIRECT = getattr(os, "O_DIRECT", 0)


def _frames(seed: int, count: int) -> list[tuple[str, Any]]:
    """Frames of assorted lengths (not multiples of 4 KiB), some in parts as the page loop gives them."""
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    for i in range(count):
        body = rng.randbytes(rng.randrange(1, 3 * PAGE_SIZE // 2))
        frame = (body[:10], memoryview(body)[10:]) if i % 2 else (body,)
        out.append((f"{i:064x}", frame))
    return out


def _pack_bytes(directory: Path, frames: list[tuple[str, Any]], batch: int) -> bytes:
    directory.mkdir()
    writer = PackWriter(directory)
    for lo in range(0, len(frames), batch):
        writer.append_many(frames[lo:lo + batch])
    path = writer.commit()
    assert path is not None
    return path.read_bytes()


def _direct_here(path: Path) -> bool:
    """Whether the filesystem of ``path`` accepts O_DIRECT (asked of the kernel, not of packfile)."""
    probe = path / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | O_DIRECT))
    except OSError:
        return False
    return bool(O_DIRECT)


@pytest.mark.parametrize("stage", [packfile.ALIGN, 3 * packfile.ALIGN, packfile.STAGE_SIZE])
def test_direct_and_buffered_packs_are_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      stage: int) -> None:
    """Frames crossing the staging buffer's end, parts of frames, the unaligned tail and the index:
    the pack is byte for byte the one the page cache path writes."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(packfile, "STAGE_SIZE", stage)
    monkeypatch.setattr(packfile, "_stages", [])
    frames = _frames(1, 40)
    direct = _pack_bytes(tmp_path / "direct", frames, 7)
    monkeypatch.setattr(packfile, "DIRECT", False)
    buffered = _pack_bytes(tmp_path / "buffered", frames, 7)
    assert direct == buffered


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
    stage = first._out._stage
    first.append("00" * 32, b"x" * 5000)
    first.commit()
    second = PackWriter(tmp_path / "a")
    assert second._out._stage is stage
    second.abort()
    assert stage in packfile._stages


def test_filesystem_refusing_o_direct_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL from open(O_DIRECT) (tmpfs): the pack goes through the page cache, same bytes."""
    frames = _frames(3, 12)
    monkeypatch.setattr(packfile, "DIRECT", False)
    expected = _pack_bytes(tmp_path / "expected", frames, 5)
    monkeypatch.setattr(packfile, "DIRECT", True)
    real_open = os.open

    def refusing(path: Any, flags: int, *args: Any) -> int:
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(packfile.os, "open", refusing)
    got = _pack_bytes(tmp_path / "got", frames, 5)
    assert got == expected


def test_filesystem_refusing_an_o_direct_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL from a later O_DIRECT write: what was staged and the rest go through the page cache."""
    if not _direct_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    monkeypatch.setattr(packfile, "STAGE_SIZE", 2 * packfile.ALIGN)
    monkeypatch.setattr(packfile, "_stages", [])
    frames = _frames(4, 12)
    monkeypatch.setattr(packfile, "DIRECT", False)
    expected = _pack_bytes(tmp_path / "expected", frames, 5)
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
    got = _pack_bytes(tmp_path / "got", frames, 5)
    assert direct_calls[0] == 3
    assert got == expected


def test_a_random_page_is_framed_as_a_view_not_a_copy() -> None:
    """The page loop hands the sink a raw frame as (header, the page's view): the only copy of the
    page is the one into the staging buffer (no 64 KiB ``bytes`` per page)."""
    page = memoryview(bytearray(random.Random(5).randbytes(PAGE_SIZE)))
    header, body = pagework.frame_parts(pagework.compressor(1), page)
    assert header == pagework.RAW_FRAME_HEADER
    assert isinstance(body, memoryview) and body.obj is page.obj


def test_reader_sees_pages_written_directly(tmp_path: Path) -> None:
    """PackStore reads the index and the frames of a pack written with O_DIRECT."""
    frames = _frames(6, 9)
    data = _pack_bytes(tmp_path / "p", frames, 4)
    [pack] = [p for p in (tmp_path / "p").iterdir() if PACK_RE.fullmatch(p.name)]
    assert pack.read_bytes() == data
    store = PackStore(tmp_path / "p")
    store.refresh()
    for h, frame in frames:
        found = store.read(h)
        assert found is not None and found[0] == b"".join(bytes(p) for p in frame)
    store.close()
