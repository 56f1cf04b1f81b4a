"""The migration protocol's edges, in process: tokens, framing limits, malformed frames, mutual
authentication, and the command line's refusals (one line, exit 1, no traceback)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest

from wasmig.migrate.protocol import (
    MigrationError,
    PeerGone,
    authenticate_as_client,
    authenticate_as_server,
    read_token,
)
from wasmig.wire import MAX_FRAME, Channel


def pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a, "a"), Channel(b, "b")


def test_token_files_must_be_long_and_private(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(MigrationError, match="shorter than 16"):
        read_token(short)
    shared = tmp_path / "shared"
    shared.write_text("x" * 32)
    shared.chmod(0o644)
    with pytest.raises(MigrationError, match="readable by others"):
        read_token(shared)
    with pytest.raises(MigrationError, match="missing"):
        read_token(tmp_path / "missing")
    shared.chmod(0o600)
    assert read_token(shared) == b"x" * 32


def test_frames_round_trip_and_hostile_frames_are_refused() -> None:
    a, b = pair()
    a.send("hello", n=1, data=b"\x00" * 10)
    assert b.recv(1.0) == {"t": "hello", "n": 1, "data": b"\x00" * 10}
    a.sock.sendall(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(MigrationError, match="a frame of"):
        b.recv(1.0)
    a, b = pair()
    body = b"\xc1garbage"
    a.sock.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(MigrationError, match="malformed frame"):
        b.recv(1.0)
    a, b = pair()
    body = msgpack.packb([1, 2])
    a.sock.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(MigrationError, match="no message type"):
        b.recv(1.0)
    a, b = pair()
    a.send("other")
    with pytest.raises(MigrationError, match="expected hello"):
        b.recv(1.0, expect=("hello",))
    a.error("why not")
    with pytest.raises(MigrationError, match="why not"):
        b.recv(1.0)
    a.close()
    with pytest.raises(PeerGone, match="closed"):
        b.recv(1.0)
    a, b = pair()
    with pytest.raises(PeerGone, match="timed out"):
        b.recv(0.05)


def _auth(client_token: bytes, server_token: bytes) -> tuple[BaseException | None, BaseException | None]:
    a, b = pair()
    errors: list[BaseException | None] = [None, None]

    def server() -> None:
        try:
            authenticate_as_server(b, server_token)
        except BaseException as e:  # noqa: BLE001
            errors[1] = e

    t = threading.Thread(target=server)
    t.start()
    try:
        authenticate_as_client(a, client_token)
    except BaseException as e:  # noqa: BLE001
        errors[0] = e
    t.join(5)
    return errors[0], errors[1]


def test_mutual_authentication() -> None:
    token = os.urandom(24)
    assert _auth(token, token) == (None, None)
    client_error, server_error = _auth(os.urandom(24), token)
    assert "authentication failed" in str(client_error) and "wrong token" in str(server_error)


@pytest.mark.parametrize("version", [99, 1])
def test_an_unknown_protocol_version_is_refused(version: int) -> None:
    """Also version 1, whose ``prepared`` did not promise that the program resumed."""
    a, b = pair()
    a.send("hello", protocol="wasmig-migrate", version=version, nonce=os.urandom(32))
    with pytest.raises(MigrationError, match="unsupported protocol version"):
        authenticate_as_server(b, b"t" * 16)
    with pytest.raises(MigrationError, match="this target speaks wasmig-migrate 2"):
        a.recv(1.0)


@pytest.mark.parametrize("args, message", [
    (["serve", "--listen", "nowhere", "--token-file", "{token}"], "bad --listen"),
    (["serve", "--listen", "127.0.0.1:1", "--token-file", "{tmp}/none"], "token file"),
    (["serve", "--listen", "127.0.0.1:1", "--token-file", "{token}", "--dir", "{tmp}/none"], "not a directory"),
    (["serve", "--listen", "127.0.0.1:1", "--token-file", "{token}", "--dir", "/d={tmp}"],
     "--dir takes HOST::GUEST (host directory first); write --dir {tmp}::/d"),
    (["migrate", "999999", "--to", "127.0.0.1:1", "--token-file", "{token}"], "not a migratable wasmig run"),
    (["migrate", "1", "--to", "nohost", "--token-file", "{token}"], "bad --to"),
    (["gateway", "--listen", "127.0.0.1:0", "--control", "bad", "--token-file", "{token}"], "bad"),
    (["gc", "{tmp}"], "not a checkpoint directory"),
])
def test_the_command_line_refuses_bad_arguments_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    token = tmp_path / "token"
    token.write_text("y" * 32)
    token.chmod(0o600)
    argv = [a.format(token=token, tmp=tmp_path) for a in args]
    done = subprocess.run([sys.executable, "-m", "wasmig", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert message.format(tmp=tmp_path) in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_the_daemons_page_cache_keeps_what_was_used_last(tmp_path: Path) -> None:
    import time as _time

    import zstandard

    from wasmig.migrate.pages import page_id
    from wasmig.migrate.target import PageCache

    cache = PageCache(tmp_path / "pages")
    pages = [bytes([i]) * 65536 for i in range(1, 5)]
    ids = [page_id(p) for p in pages]
    for pid, page in zip(ids, pages, strict=True):
        cache.put(pid, zstandard.ZstdCompressor().compress(page))  # type: ignore[arg-type]
    size = sum(f.stat().st_size for f in (tmp_path / "pages").rglob("*") if f.is_file())
    old = _time.time() - 100
    for k, pid in enumerate(ids):  # page 0 used longest ago, page 3 last
        os.utime(cache._path(pid), (old + k, old + k))  # type: ignore[arg-type]
    assert cache.get(ids[1]) == pages[1]  # a use makes it the newest
    assert cache.prune(3600, size // 2) == 2
    assert [cache.get(pid) is not None for pid in ids] == [False, True, False, True]
    assert cache.get(b"\0" * 32) is None
    assert cache.prune(0, size) == 2  # too old
