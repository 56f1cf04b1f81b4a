"""The wire's waits over real TCP (and TLS) connections, in process: the TLS record gate
(``Channel._whole_record``: a read waits until its record is whole in the socket, and gives up on a
record stopped half-way), what it costs in a stream (looks at the socket), and a send that watches
its peer (a hang-up fails it at once, a peer that takes nothing for ``SEND_STALL`` seconds fails it
then, a slow one that keeps taking bytes does not). docs/security.md, "What a man in the middle
sees and can do"."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import pytest

from wasmig import wire
from wasmig.keys import KeyPair
from wasmig.migrate.channel import tls_context
from wasmig.wire import Channel, PeerGone


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server's and a client's TLS context, as a daemon and a source make them."""
    return tls_context(KeyPair.generate("server"), True), tls_context(KeyPair.generate("client"), False)


def tcp_pair(rcvbuf: int | None = None, sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(client, server) over loopback; small buffers, when given, make a stalled reader block the sender soon."""
    listener = socket.create_server(("127.0.0.1", 0))
    if rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # the accepted socket inherits it
    client = socket.socket()
    if sndbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def frame(t: str, **fields: object) -> bytes:
    body = msgpack.packb({"t": t, **fields}, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def split_records(data: bytes) -> list[bytes]:
    records, pos = [], 0
    while pos < len(data):
        end = pos + 5 + int.from_bytes(data[pos + 3:pos + 5], "big")
        records.append(data[pos:end])
        pos = end
    return records


class RawTLSClient:
    """The sending side of a TLS connection whose records the test puts on the socket itself --
    whole, in pieces, or rewritten, as a man in the middle would."""

    def __init__(self, ctx: ssl.SSLContext, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(1 << 16))
        self.sock.sendall(self.outgoing.read())

    def records(self, data: bytes) -> list[bytes]:
        """``data`` as the TLS records this side would send, not sent."""
        self.tls.write(data)
        return split_records(self.outgoing.read())


@contextmanager
def raw_to_channel(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[tuple[RawTLSClient, Channel]]:
    """A raw TLS client and the server's Channel after the handshake (a receive buffer that holds
    a 1 MiB burst)."""
    server_ctx, client_ctx = contexts
    client, server = tcp_pair(rcvbuf=2 << 20)
    got: dict[str, ssl.SSLSocket] = {}

    def serve() -> None:
        server.settimeout(10)
        got["tls"] = server_ctx.wrap_socket(server, server_side=True)

    t = threading.Thread(target=serve)
    t.start()
    raw = RawTLSClient(client_ctx, client)
    raw.handshake()
    t.join()
    ch = Channel(got["tls"], "source")
    try:
        yield raw, ch
    finally:
        ch.close()
        client.close()


def wait_unread(sock: socket.socket, count: int) -> None:
    deadline = time.monotonic() + 10
    while wire._queues().unread(sock.fileno()) < count:
        assert time.monotonic() < deadline, "the bytes did not arrive"
        time.sleep(0.01)


def test_a_burst_of_whole_records_is_read_without_peeking_at_each(contexts, monkeypatch) -> None:
    """The 64 records of a 1 MiB frame, all in the socket: one count of the unread bytes lets every
    read go, where the gate used to peek 64 KiB every third record (a copy of 4/3 of the data)."""
    peeks = []
    real_recv = socket.socket.recv

    def recv(sock: socket.socket, n: int, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:
            peeks.append(n)
        return real_recv(sock, n, flags)

    with raw_to_channel(contexts) as (raw, ch):
        room = ch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 4  # what surely fits (net.core.rmem_max)
        blob = bytes(range(256)) * (min(1 << 20, room) // 256)
        records = raw.records(frame("page_data", data=blob))
        if len(records) < 12:
            pytest.skip(f"the receive buffer holds only {room} bytes for sure (net.core.rmem_max)")
        raw.sock.sendall(b"".join(records))
        wait_unread(ch.sock, sum(map(len, records)))
        monkeypatch.setattr(socket.socket, "recv", recv)
        assert ch.recv(10) == {"t": "page_data", "data": blob}
    assert len(peeks) <= 2 and sum(peeks) <= 10, peeks


def test_a_lengthened_last_record_of_a_burst_fails_after_the_stall(contexts, monkeypatch) -> None:
    """Six whole records, then a last one whose length field a man in the middle made 256 bytes
    longer: the five records counted whole are read, the last one is not waited for beyond
    RECORD_STALL (the TLS library would have waited for the socket's whole timeout)."""
    monkeypatch.setattr(wire, "RECORD_STALL", 0.5)
    with raw_to_channel(contexts) as (raw, ch):
        records = raw.records(frame("module", data=bytes(6 * 16384 + 500)))
        assert len(records) == 7 and len(records[-1]) < 2000
        last = bytearray(records[-1])
        last[3] += 1  # 256 bytes longer: still a length TLS allows
        raw.sock.sendall(b"".join(records[:-1]) + last)
        started = time.monotonic()
        with pytest.raises(PeerGone, match=r"a TLS record stopped arriving half-way \(\d+ of its \d+ bytes"):
            ch.recv(30)
        assert time.monotonic() - started < 15  # RECORD_STALL and a loaded machine's slack, not the 30 s timeout


def test_a_record_trickling_in_is_waited_for(contexts, monkeypatch) -> None:
    """Records sent in pieces (a header split in two among them), each a while after the last but
    sooner than RECORD_STALL: progress, read whole."""
    monkeypatch.setattr(wire, "RECORD_STALL", 1.5)
    with raw_to_channel(contexts) as (raw, ch):
        blob = bytes(range(200)) * 100
        data = b"".join(raw.records(frame("module", data=blob)))
        assert len(data) > 16384

        def trickle() -> None:
            pos, sizes = 0, [3, 4000, 2, 9000, 1]
            while pos < len(data):
                size = sizes[0]
                sizes = sizes[1:] + sizes[:1]
                raw.sock.sendall(data[pos:pos + size])
                pos += size
                time.sleep(0.15)

        t = threading.Thread(target=trickle)
        t.start()
        try:
            assert ch.recv(30) == {"t": "module", "data": blob}
        finally:
            t.join()


def test_a_wait_for_a_record_to_start_keeps_the_timeout(contexts, monkeypatch) -> None:
    """Nothing sent: the socket's timeout (not RECORD_STALL) ends the wait; a record's first three
    bytes, then nothing: RECORD_STALL does."""
    monkeypatch.setattr(wire, "RECORD_STALL", 0.3)
    with raw_to_channel(contexts) as (raw, ch):
        started = time.monotonic()
        with pytest.raises(PeerGone, match="timed out"):
            ch.recv(1.0)
        assert 0.9 < time.monotonic() - started < 15  # the 1 s timeout, not RECORD_STALL (nor the 30 s to come)
        raw.sock.sendall(raw.records(frame("x"))[0][:3])
        with pytest.raises(PeerGone, match=r"stopped arriving half-way \(3 of its 5 bytes"):
            ch.recv(30)


# --- sends --------------------------------------------------------------------------------------
@contextmanager
def sender_to(contexts, tls: bool, rcvbuf: int | None = 1 << 16) -> Iterator[tuple[Channel, socket.socket]]:
    """A Channel that sends (over TLS or not) and the peer's socket (TLS-wrapped when ``tls``),
    with small buffers: a peer that stops reading holds the sender back after little."""
    client, server = tcp_pair(rcvbuf=rcvbuf, sndbuf=rcvbuf)
    if tls:
        server_ctx, client_ctx = contexts
        got: dict[str, ssl.SSLSocket] = {}
        t = threading.Thread(target=lambda: got.setdefault("s", server_ctx.wrap_socket(server, server_side=True)))
        t.start()
        client = client_ctx.wrap_socket(client)
        t.join()
        server = got["s"]
    ch = Channel(client, "target")
    try:
        yield ch, server
    finally:
        ch.close()
        server.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_send_to_a_peer_that_stopped_reading_gives_up_after_the_stall(contexts, monkeypatch, tls: bool) -> None:
    """The peer reads nothing and does not close (a zero window): the send fails once no byte
    moved for SEND_STALL seconds, not after the socket's timeout (30 s here, 60 s in a migration)."""
    monkeypatch.setattr(wire, "SEND_STALL", 0.5)
    with sender_to(contexts, tls) as (ch, _peer):
        ch.sock.settimeout(30)
        started = time.monotonic()
        with pytest.raises(PeerGone, match=r"target: took no byte for 0.5 s while we were sending"):
            ch.send("page_data", data=bytes(8 << 20))
        assert time.monotonic() - started < 15  # SEND_STALL and a loaded machine's slack, not the 30 s timeout
        assert ch.sock.gettimeout() == 30  # the socket's timeout is back


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_send_to_a_peer_that_hung_up_fails_at_once(contexts, tls: bool) -> None:
    """The peer closed its end (its FIN) without reading what came: a blocked send fails at
    once, long before SEND_STALL, with the reason."""
    with sender_to(contexts, tls) as (ch, peer):
        ch.sock.settimeout(30)
        socket.socket.shutdown(peer, socket.SHUT_WR)  # TCP's FIN, not TLS's close: as a relay that gave up
        started = time.monotonic()
        with pytest.raises(PeerGone, match="target: hung up while we were sending"):
            ch.send("page_data", data=bytes(8 << 20))
        assert time.monotonic() - started < wire.SEND_STALL / 2  # at once: not after SEND_STALL


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_slow_reader_that_keeps_taking_bytes_is_not_cut_off(contexts, monkeypatch, tls: bool) -> None:
    """A peer that reads 16 KiB every 20 ms, pausing 0.6 s now and then: the 1 MiB send takes
    longer than SEND_STALL and goes through, whole. (Progress comes a window update at a time:
    on loopback, whose segments are 64 KiB, one per four reads here.)"""
    monkeypatch.setattr(wire, "SEND_STALL", 2.0)
    blob = bytes(range(256)) * 4096
    with sender_to(contexts, tls) as (ch, peer):
        received = bytearray()

        def read() -> None:
            peer.settimeout(30)
            n = 0
            while chunk := peer.recv(16384):
                received.extend(chunk)
                n += 1
                time.sleep(0.6 if n % 16 == 0 else 0.02)

        t = threading.Thread(target=read)
        t.start()
        try:
            started = time.monotonic()
            ch.send("page_data", data=blob)
            took = time.monotonic() - started
            ch.sock.shutdown(socket.SHUT_WR)
        finally:
            t.join()
    assert took > 2.0, took  # it did wait on the reader, longer than SEND_STALL
    (length,) = struct.unpack(">I", received[:4])
    assert msgpack.unpackb(received[4:4 + length]) == {"t": "page_data", "data": blob}


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_send_cut_short_by_a_peer_that_gave_up_says_why(contexts, tls: bool) -> None:
    """The peer sends its ``error`` frame and closes while a large frame is still coming its way
    (its unread bytes make the close a reset): the send fails with the peer's reason, not only
    "connection reset"."""
    with sender_to(contexts, tls) as (ch, peer):
        ch.sock.settimeout(30)

        def give_up() -> None:
            time.sleep(0.3)
            Channel(peer, "source").error("a page does not match its id")
            peer.close()

        t = threading.Thread(target=give_up)
        t.start()
        try:
            with pytest.raises(wire.PeerError, match=r"^target: a page does not match its id$"):
                ch.send("page_data", data=bytes(8 << 20))
        finally:
            t.join()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_peer_that_says_why_without_closing_fails_a_blocked_send_at_once(contexts, tls: bool) -> None:
    """The peer sends its ``error`` and neither reads nor closes (a relay that holds the
    connection): the blocked send reads it and fails at once with the reason, not after SEND_STALL."""
    with sender_to(contexts, tls) as (ch, peer):
        ch.sock.settimeout(30)
        says = threading.Timer(0.3, lambda: Channel(peer, "source").send("error", message="no space left"))
        says.start()
        started = time.monotonic()
        try:
            with pytest.raises(wire.PeerError, match=r"^target: no space left$"):
                ch.send("page_data", data=bytes(8 << 20))
            assert time.monotonic() - started < wire.SEND_STALL / 2  # at once: not after SEND_STALL
        finally:
            # before the sockets close: a loaded machine may still hold the timer's thread in its
            # send once ours has read the frame (it then failed on a closed socket: fd -1)
            says.join()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_frame_the_peer_sends_while_we_send_waits_for_recv(contexts, tls: bool) -> None:
    """The peer sends a small frame of its own while our large one waits for room, then reads
    ours: the send reads the peer's frame, goes on, and the next recv returns it."""
    blob = bytes(range(256)) * (8 << 12)
    with sender_to(contexts, tls) as (ch, peer):
        ch.sock.settimeout(30)
        other = Channel(peer, "source")
        got: dict[str, object] = {}

        def peer_side() -> None:
            time.sleep(0.3)  # our send is blocked by now: the buffers hold 64 KiB
            try:
                other.send("progress", n=1)
                got["msg"] = other.recv(30)
            except Exception as e:  # noqa: BLE001 - reported below
                got["msg"] = e

        t = threading.Thread(target=peer_side)
        t.start()
        try:
            ch.send("page_data", data=blob)
            assert ch.readable(0)
            assert ch.recv(30, expect=("progress",)) == {"t": "progress", "n": 1}
        finally:
            t.join()
        assert got["msg"] == {"t": "page_data", "data": blob}


def test_a_tls_alert_while_we_send_fails_it_at_once(contexts) -> None:
    """The peer's TLS refuses a record of ours (a byte changed on the way: bad record MAC) and
    sends its alert, then neither reads nor closes: the blocked send reads the alert and fails
    at once, naming it, not after SEND_STALL."""
    server_ctx, client_ctx = contexts
    client, server = tcp_pair(rcvbuf=1 << 16, sndbuf=1 << 16)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    theirs = server_ctx.wrap_bio(incoming, outgoing, server_side=True)

    def handshake() -> None:
        while True:
            try:
                theirs.do_handshake()
                break
            except ssl.SSLWantReadError:
                server.sendall(outgoing.read())
                incoming.write(server.recv(1 << 16))
        server.sendall(outgoing.read())

    t = threading.Thread(target=handshake)
    t.start()
    ch = Channel(client_ctx.wrap_socket(client), "target")
    t.join()

    def refuse() -> None:
        time.sleep(0.3)
        data = bytearray(server.recv(1 << 16))
        data[100] ^= 0xFF  # in the first record's body
        incoming.write(bytes(data))
        with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC|bad record mac|DECRYPTION_FAILED"):
            theirs.read(1 << 16)
        server.sendall(outgoing.read())  # the alert

    t = threading.Thread(target=refuse)
    t.start()
    try:
        ch.sock.settimeout(30)
        started = time.monotonic()
        with pytest.raises(PeerGone, match=r"(?i)target: connection lost \(.*alert bad record mac"):
            ch.send("page_data", data=bytes(8 << 20))
        assert time.monotonic() - started < wire.SEND_STALL / 2  # at once: not after SEND_STALL
    finally:
        t.join()
        ch.close()
        server.close()


def test_a_channel_closed_by_another_thread_mid_send_fails_the_send_as_lost() -> None:
    """A migration given up elsewhere (its abort, a deadline) closes the channel while this thread
    is blocked in a send: the send fails with PeerGone, not a ValueError from looking for the
    peer's last word on a socket that is no longer there (fd -1)."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    a.settimeout(30)
    ch = Channel(a, "target")
    closer = threading.Timer(0.3, ch.close)
    closer.start()
    try:
        with pytest.raises(PeerGone, match="target: connection lost while sending"):
            ch.send("page_data", data=bytes(8 << 20))
    finally:
        closer.join()
        b.close()
