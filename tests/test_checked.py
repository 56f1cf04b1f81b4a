"""Cache files checked once per file (``wasmig.checked``): a file whose stamp (inode, size, mtime,
ctime) is the one recorded when its digest was checked is not hashed again, unless that stamp was
racy (taken within 2 s of the file's last change); any write moves the ctime, so a rewritten or
damaged file is hashed, and damage is caught. The same rule remembers a module's digest by path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wasmig import checked
from wasmig.hashing import fast_digest

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture()
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of what checked.py hashes, as it hashes them."""
    calls: list[int] = []
    real = checked.fast_hash

    def counting(data: object = b"") -> object:
        calls.append(len(data))  # type: ignore[arg-type]
        return real(data)  # type: ignore[arg-type]

    monkeypatch.setattr(checked, "fast_hash", counting)
    return calls


def _read(path: Path) -> bytes | None:
    mapped, found = checked.open_checked(path)
    assert found
    if mapped is None:
        return None
    with mapped:
        return bytes(mapped)


def test_a_file_is_hashed_until_its_stamp_is_not_racy(tmp_path: Path, hashed: list[int],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    entry = tmp_path / "x.bin"
    checked.write(entry, PAYLOAD)
    hashed.clear()
    # just written: the stamp is racy (a coarse clock could give the next write the same one)
    assert _read(entry) == PAYLOAD and _read(entry) == PAYLOAD and len(hashed) == 2
    monkeypatch.setattr(checked, "RACY_NS", 0)  # as if the file were old
    hashed.clear()
    assert _read(entry) == PAYLOAD and hashed == [], "a file checked with a sound stamp is not hashed again"
    entry.write_bytes(PAYLOAD)  # the same bytes written again: another mtime and ctime
    assert _read(entry) == PAYLOAD and len(hashed) == 1, "a rewritten file is hashed"
    assert _read(entry) == PAYLOAD and len(hashed) == 1, "and its new stamp recorded"
    entry.write_bytes(PAYLOAD[:-1] + b"\x00")  # same size, one byte changed
    assert _read(entry) is None and len(hashed) == 2, "damage is caught"
    os.replace(tmp_path / "x.bin", tmp_path / "y.bin")
    assert checked.open_checked(entry) == (None, True), "a sidecar without its entry: a damaged entry"
    checked.sum_path(entry).unlink()
    assert checked.open_checked(entry) == (None, False), "no entry"


def test_a_damaged_sidecar_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checked, "RACY_NS", 0)
    entry = tmp_path / "x.bin"
    checked.write(entry, PAYLOAD)
    good = checked.sum_path(entry).read_bytes()
    for bad in (b"", good[:-1], b"x" + good[1:]):
        checked.sum_path(entry).write_bytes(bad)
        assert _read(entry) is None
    checked.sum_path(entry).write_bytes(good)
    assert _read(entry) == PAYLOAD
    # a wrong digest beside a file with the checked stamp is not looked at: the file is the one
    # checked; once the file is written again, it is hashed and the digest found wrong
    wrong = good[:16] + bytes(32) + good[48:]
    checked.sum_path(entry).write_bytes(wrong)
    assert _read(entry) == PAYLOAD
    entry.write_bytes(PAYLOAD)
    assert _read(entry) is None


def test_a_module_digest_is_remembered_by_path_and_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wasmig
    from tests.wasi_harness import program

    monkeypatch.setenv("WASMIG_CACHE", str(tmp_path / "cache"))
    module_path = tmp_path / "m.wasm"
    data = program("hello").read_bytes()
    module_path.write_bytes(data)
    digest = fast_digest(data)
    folder = tmp_path / "cache" / "wasmtime"
    assert wasmig.Module.from_file(module_path, decode=False).digest == digest
    st = module_path.stat()
    assert checked.remembered_digest(folder, module_path, st) is None, "racy: the file just changed"
    monkeypatch.setattr(checked, "RACY_NS", 0)
    assert wasmig.Module.from_file(module_path, decode=False).digest == digest
    assert checked.remembered_digest(folder, module_path, st) == digest
    calls: list[int] = []
    monkeypatch.setattr("wasmig.hashing.fast_digest", lambda d: calls.append(1) or fast_digest(d))
    lazy = wasmig.Module.from_file(module_path, decode=False)
    assert lazy.digest == digest and calls == [], "not hashed again"
    # nor even read: its interface was remembered with the digest; its bytes come when asked
    from wasmig.binary.interface import read_interface

    assert lazy._unread and lazy.has_bytes and lazy.interface == read_interface(data)
    assert lazy.data == data and not lazy._unread
    changed = bytearray(data)
    changed[-1] ^= 1  # the custom section's last byte: still a module
    module_path.write_bytes(bytes(changed))
    fresh = wasmig.Module.from_file(module_path, decode=False)
    assert not fresh._unread and fresh.digest == fast_digest(bytes(changed)) and calls
    other = tmp_path / "copy.wasm"
    other.write_bytes(data)
    assert checked.remembered_digest(folder, other, other.stat()) is None, "remembered by path"


def test_a_module_not_read_at_start_is_refused_once_its_file_changed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A module whose bytes were to be read later (from_file found its digest remembered) and whose
    file then changed cannot give bytes that are not those that run: its checkpoint says so, and
    no module copy is written beside the snapshots."""
    import wasmig
    from tests.wasi_harness import program
    from wasmig.errors import SnapshotError
    from wasmig.module import ModuleChanged
    from wasmig.session.modules import store_module

    monkeypatch.setenv("WASMIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checked, "RACY_NS", 0)
    module_path = tmp_path / "m.wasm"
    data = program("hello").read_bytes()
    module_path.write_bytes(data)
    changes = {"rewritten longer": lambda: module_path.write_bytes(data + b"\0"),
               "one byte changed": lambda: module_path.write_bytes(data[:-1] + bytes([data[-1] ^ 1])),
               "touched": lambda: os.utime(module_path), "deleted": lambda: module_path.unlink()}
    for what, change in changes.items():
        module_path.write_bytes(data)
        _ = wasmig.Module.from_file(module_path, decode=False).digest  # remembered
        lazy = wasmig.Module.from_file(module_path, decode=False)
        assert lazy._unread, what
        change()
        with pytest.raises(ModuleChanged):
            _ = lazy.data
        with pytest.raises(SnapshotError, match="cannot keep the module beside the snapshot"):
            store_module(tmp_path / "ck", lazy)
        assert not list((tmp_path / "ck").glob("module-*")), what
    module_path.write_bytes(data)
    _ = wasmig.Module.from_file(module_path, decode=False).digest
    lazy = wasmig.Module.from_file(module_path, decode=False)
    assert store_module(tmp_path / "ck", lazy).read_bytes() == data, "unchanged: its bytes are kept"
