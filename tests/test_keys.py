"""wasmig.keys: the key pair files that sign snapshots and identify daemons (issue 17)."""

from __future__ import annotations

import os
import stat

import pytest

from wasmig.keys import (
    KeyFileError,
    KeyPair,
    PublicKey,
    default_key_dir,
    load_key_pair,
    load_public_key,
    parse_fingerprint,
    write_key_pair,
)


def test_round_trip_signs_and_verifies(tmp_path):
    pair = KeyPair.generate("alice@host")
    directory = write_key_pair(pair, tmp_path / "keys")
    loaded = load_key_pair(directory)
    assert loaded.fingerprint == pair.fingerprint
    assert loaded.public.comment == "alice@host"
    signature = loaded.sign(b"manifest")
    assert pair.public.verify(signature, b"manifest")
    assert not pair.public.verify(signature, b"manifest!")
    assert not KeyPair.generate().public.verify(signature, b"manifest")
    assert load_public_key(directory).fingerprint == pair.fingerprint


def test_files_are_private(tmp_path):
    directory = write_key_pair(KeyPair.generate(), tmp_path / "keys")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "wasmig.key").stat().st_mode) == 0o600


def test_existing_key_is_kept_unless_forced(tmp_path):
    first = KeyPair.generate()
    write_key_pair(first, tmp_path)
    with pytest.raises(KeyFileError, match="exists already"):
        write_key_pair(KeyPair.generate(), tmp_path)
    second = KeyPair.generate()
    write_key_pair(second, tmp_path, force=True)
    assert load_key_pair(tmp_path).fingerprint == second.fingerprint != first.fingerprint


def test_readable_private_key_is_refused(tmp_path):
    write_key_pair(KeyPair.generate(), tmp_path)
    os.chmod(tmp_path / "wasmig.key", 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key_pair(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"wasmig-ed25519 !!!notbase64", b"ssh-ed25519 AAAA", b"wasmig-ed25519 AAAA", b"\xff\xfe", b"x" * 20000],
)
def test_malformed_public_keys_are_one_line_errors(tmp_path, content):
    path = tmp_path / "peer.pub"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_public_key(path)


def test_missing_and_malformed_private_keys(tmp_path):
    with pytest.raises(KeyFileError, match="no private key"):
        load_key_pair(tmp_path / "nothing.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nzzz\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_key_pair(bad)


def test_public_line_round_trip_and_fingerprints():
    key = KeyPair.generate("c").public
    assert PublicKey.from_line(key.to_line()) == key
    assert parse_fingerprint(key.fingerprint.upper().replace("SHA256:", "sha256:")) == key.fingerprint
    for bad in ("sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64):
        with pytest.raises(KeyFileError):
            parse_fingerprint(bad)


def test_default_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WASMIG_KEY_DIR", str(tmp_path / "k"))
    assert default_key_dir() == tmp_path / "k"
    monkeypatch.delenv("WASMIG_KEY_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_key_dir() == tmp_path / "cfg" / "wasmig"


@pytest.mark.parametrize("make", ["a file on the way", "an unreadable key"])
def test_a_key_that_cannot_be_made_or_read_is_warned_about_once(monkeypatch, tmp_path, capsys, make):
    """Signing asks for the key at every checkpoint: a run checkpointing every second wrote the same
    'snapshots are written unsigned' warning each time (6 lines for 4 snapshots)."""
    from wasmig.snapshot.signing import forget_cached_keys, own_key_pair

    (tmp_path / "file").write_text("")
    if make == "a file on the way":
        directory = tmp_path / "file" / "keys"
    else:
        directory = tmp_path / "keys"
        directory.mkdir()
        (directory / "wasmig.key").write_text("not a PEM key\n")
        os.chmod(directory / "wasmig.key", 0o600)
    monkeypatch.setenv("WASMIG_KEY_DIR", str(directory))
    forget_cached_keys()
    try:
        assert [own_key_pair() for _ in range(3)] == [None, None, None]
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("wasmig: warning: snapshots are written unsigned: ") and "Errno" not in line, line
    finally:
        forget_cached_keys()


@pytest.mark.parametrize("failing_write", [1, 2])  # the private key's write, the public key's
def test_a_full_disk_leaves_no_half_key_pair(monkeypatch, tmp_path, failing_write):
    """keygen on a full filesystem left an empty wasmig.key: refused as malformed, and kept by the
    next keygen ('exists already'). Both halves are written or neither stays."""
    import errno

    import wasmig.keys as keys

    real, calls = os.write, []

    def write(fd, data):
        calls.append(fd)
        if len(calls) == failing_write:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(keys.os, "write", write)
    with pytest.raises(OSError, match="No space left"):
        write_key_pair(KeyPair.generate(), tmp_path / "k")
    assert list((tmp_path / "k").iterdir()) == []
    monkeypatch.setattr(keys.os, "write", real)
    write_key_pair(KeyPair.generate(), tmp_path / "k")  # and the next try just works
    assert load_key_pair(tmp_path / "k").fingerprint == load_public_key(tmp_path / "k").fingerprint


def test_a_module_copy_that_cannot_be_written_leaves_no_temp_file(monkeypatch, tmp_path):
    """A checkpoint directory's module copy on a full disk left ``module-<sha>.tmp<pid>`` behind
    (a name gc does not reclaim)."""
    import errno

    from wasmig.snapshot.stores import local

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(local.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        local.write_module_file(tmp_path, "ab" * 32, b"\0asm\1\0\0\0")
    assert list(tmp_path.iterdir()) == []
