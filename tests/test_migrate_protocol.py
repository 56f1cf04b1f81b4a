"""The migration protocol's edges, in process: tokens, framing limits, malformed frames, mutual
authentication, and the command line's refusals (one line, exit 1, no traceback)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from wasmig.keys import KeyPair
from wasmig.migrate import protocol
from wasmig.migrate.channel import Identity, peer_fingerprint
from wasmig.migrate.protocol import (
    MigrationError,
    PeerGone,
    accept,
    authenticate_as_client,
    read_token,
)
from wasmig.wire import MAX_FRAME, PREAUTH_FRAME, Channel


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


SERVER, CLIENT, STRANGER = KeyPair.generate("server"), KeyPair.generate("client"), KeyPair.generate("stranger")


def _auth(client: Identity, server: Identity) -> tuple[BaseException | None, BaseException | None, Channel | None]:
    """Both sides of the handshake over a socket pair: (the client's error, the server's error,
    the client's channel once authenticated)."""
    a, b = socket.socketpair()
    errors: list[BaseException | None] = [None, None]

    def serve() -> None:
        try:
            ch = accept(b, server, "client")
            ch.send("ok")
        except BaseException as e:  # noqa: BLE001
            errors[1] = e

    t = threading.Thread(target=serve)
    t.start()
    ch: Channel | None = Channel(a, "server")
    try:
        authenticate_as_client(ch, client, 5.0)  # type: ignore[arg-type]
        ch.recv(5.0, expect=("ok",))  # type: ignore[union-attr]
    except BaseException as e:  # noqa: BLE001
        errors[0], ch = e, None
    t.join(15)
    return errors[0], errors[1], ch


def ids(token_client: bytes | None = None, token_server: bytes | None = None, *, client: KeyPair = CLIENT,
        pin: KeyPair = SERVER, trust: KeyPair = CLIENT) -> tuple[Identity, Identity]:
    return (Identity(client, frozenset({pin.fingerprint}), token_client),
            Identity(SERVER, frozenset({trust.fingerprint}), token_server))


def test_mutual_authentication_is_tls13_with_pinned_keys() -> None:
    client_error, server_error, ch = _auth(*ids())
    assert (client_error, server_error) == (None, None)
    assert isinstance(ch.sock, ssl.SSLSocket) and ch.sock.version() == "TLSv1.3"  # type: ignore[union-attr]
    assert peer_fingerprint(ch.sock) == SERVER.fingerprint  # type: ignore[union-attr, arg-type]


def test_a_server_with_another_key_is_refused_by_the_client() -> None:
    """A man in the middle with a key of its own: the client's pin does not match it."""
    client_error, _server_error, _ = _auth(*ids(pin=STRANGER))
    assert f"the server's key is {SERVER.fingerprint}, the pinned {STRANGER.fingerprint}" in str(client_error)


def test_a_client_with_an_untrusted_key_is_refused_by_the_server() -> None:
    client_error, server_error, _ = _auth(*ids(client=STRANGER))
    assert f"the client's key is {STRANGER.fingerprint}, none of the trusted keys" in str(server_error)
    assert client_error is not None


def test_the_token_is_a_second_factor_both_ways() -> None:
    token = os.urandom(24)
    assert _auth(*ids(token, token))[:2] == (None, None)
    client_error, server_error, _ = _auth(*ids(os.urandom(24), token))
    assert "authentication failed" in str(client_error) and "wrong or no token" in str(server_error)
    client_error, _, _ = _auth(*ids(None, token))
    assert "requires the shared token" in str(client_error)
    client_error, _, _ = _auth(*ids(token, None))
    assert "does not use a shared token" in str(client_error)


@pytest.mark.parametrize("version", [99, 1, 2])
def test_an_unknown_protocol_version_is_refused(version: int) -> None:
    """Also versions 1 (whose ``prepared`` did not promise that the program resumed) and 2 (no TLS)."""
    a, b = socket.socketpair()
    client = Channel(a, "a")
    client.send("hello", protocol="wasmig-migrate", version=version, nonce=os.urandom(32))
    with pytest.raises(MigrationError, match="unsupported protocol version"):
        accept(b, ids()[1], "b")
    with pytest.raises(MigrationError, match="this peer speaks wasmig-migrate 3"):
        client.recv(1.0)


def test_a_large_frame_before_authentication_is_refused_unread() -> None:
    """32 MiB are allowed once authenticated; before, a few KiB: the header is enough to refuse."""
    a, b = socket.socketpair()
    a.sendall(struct.pack(">I", PREAUTH_FRAME + 1))
    with pytest.raises(MigrationError, match=f"at most {PREAUTH_FRAME} before authentication"):
        accept(b, ids()[1], "b")


def test_the_handshake_deadline_is_for_the_whole_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer trickling a byte at a time, each well within a per-read timeout, is cut off when the
    whole handshake's time is up."""
    monkeypatch.setattr(protocol, "HANDSHAKE_TIMEOUT", 0.6)
    a, b = socket.socketpair()
    hello = msgpack.packb({"t": "hello", "protocol": "wasmig-migrate", "version": 3})
    frame = struct.pack(">I", len(hello)) + hello
    stop = threading.Event()

    def trickle() -> None:
        for byte in frame:
            if stop.wait(0.2):
                return
            try:
                a.send(bytes([byte]))
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    started = time.monotonic()
    with pytest.raises(MigrationError, match="did not authenticate within 0.6 s"):
        accept(b, ids()[1], "b")
    # the 0.6 s deadline and a loaded machine's slack: well before the trickle's end (0.2 s a byte)
    assert time.monotonic() - started < min(5.0, 0.2 * len(frame) / 2), len(frame)
    stop.set()


TRUST = ["--trust-peer", "sha256:" + "ab" * 32]
PIN = ["--peer-fingerprint", "sha256:" + "cd" * 32]


@pytest.mark.parametrize("args, message", [
    (["serve", "--listen", "nowhere", *TRUST], "bad --listen"),
    (["serve", "--listen", "127.0.0.1:1"], "serve needs --trust-peer"),
    (["serve", "--listen", "127.0.0.1:1", "--trust-peer", "sha256:12"], "not a key fingerprint"),
    (["serve", "--listen", "127.0.0.1:1", "--trust-peer", "{tmp}/none"], "neither a key fingerprint"),
    (["serve", "--listen", "127.0.0.1:1", *TRUST, "--token-file", "{tmp}/none"], "token file"),
    (["serve", "--listen", "127.0.0.1:1", *TRUST, "--dir", "{tmp}/none"], "not a directory"),
    (["serve", "--listen", "127.0.0.1:1", *TRUST, "--dir", "/d={tmp}"],
     "--dir takes HOST::GUEST (host directory first); write --dir {tmp}::/d"),
    (["migrate", "999999", "--to", "127.0.0.1:1", *PIN], "not a migratable wasmig run"),
    (["migrate", "999999", "--to", "127.0.0.1:1"], "migrate needs one --peer-fingerprint"),
    (["migrate", "1", "--to", "nohost", *PIN], "bad --to"),
    (["gateway", "--listen", "127.0.0.1:0", "--control", "bad", *TRUST], "bad"),
    (["gateway", "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"], "gateway needs --trust-peer"),
    (["gc", "{tmp}"], "not a checkpoint directory"),
])
def test_the_command_line_refuses_bad_arguments_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    token = tmp_path / "token"
    token.write_text("y" * 32)
    token.chmod(0o600)
    argv = [a.format(token=token, tmp=tmp_path) for a in args]
    env = {**os.environ, "WASMIG_KEY_DIR": str(tmp_path / "key"), "WASMIG_RUNTIME_DIR": str(tmp_path / "run")}
    done = subprocess.run([sys.executable, "-m", "wasmig", *argv], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 1, done
    assert message.format(tmp=tmp_path) in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_the_daemons_page_cache_keeps_what_was_used_last(tmp_path: Path) -> None:
    import time as _time

    import zstandard

    from wasmig.migrate.page_cache import PageCache
    from wasmig.migrate.pages import page_id

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


@pytest.mark.parametrize("when", ["before the request", "after the request, unread"])
def test_a_run_whose_control_connection_breaks_is_a_one_line_error(when: str) -> None:
    """`wasmig migrate PID` whose run ends (its control socket reset: it never read the request,
    or closed with it unread) says so in one line, never with a traceback."""
    import socket
    import threading

    from wasmig.migrate.control import _messages

    ours, run = socket.socketpair()
    if when == "before the request":
        run.close()
    else:
        threading.Timer(0.2, run.close).start()
    with pytest.raises(MigrationError, match="ended the request without an answer"):
        list(_messages(4242, ours, {"to": "127.0.0.1:1"}))


def test_the_control_socket_file_appears_only_once_it_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wasmig migrate PID`` started the moment ``<pid>.sock`` exists (a script, the README test
    waiting for that file) was refused -- "not a migratable wasmig run" -- when the run was
    descheduled between bind() and listen(): the file existed before anything listened on it.
    It is now bound under another name and renamed once it listens; a stale one is replaced."""
    from wasmig.migrate.control import ControlServer, socket_path

    monkeypatch.setenv("WASMIG_RUNTIME_DIR", str(tmp_path / "run"))
    path = socket_path(os.getpid(), create=True)
    path.write_text("stale")
    seen: list[bool] = []

    class Spy(socket.socket):
        def listen(self, *args: int) -> None:
            seen.append(path.is_socket())  # what a client looking for the file would find now
            super().listen(*args)

    monkeypatch.setattr(socket, "socket", Spy)
    server = ControlServer(None)  # type: ignore[arg-type]  # only a request would need the session
    try:
        assert seen == [False]
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary name left
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(60)
            client.connect(str(path))
            client.sendall(b"hello\n")
            assert client.makefile("rb").readline() == b'{"error": "malformed request"}\n'  # it listens
    finally:
        server.close()
    assert not path.exists()
