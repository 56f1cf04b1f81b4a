"""Attacks on the network side of wasmig (issue 17), each with real processes: a man in the middle
that records and rewrites the migration stream, a runtime directory squatted by another local
user, a slowloris and a large frame against a daemon, a flood against a gateway. Each asserts that
the attack fails with a clear error and that nothing is lost: the program goes on where it was."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.migration_keys import Keys
from tests.test_migrate import daemon, gateway, migrate, wait_for, wasmig
from wasmig.toolchain import compile_c

pytest.importorskip("wasmtime")

REPO = Path(__file__).resolve().parents[2]
DIRTIER = REPO / "benchmarks" / "timing" / "dirtier.c"  # a heap of pseudo-random (incompressible) bytes
PROGRAMS = REPO / "tests" / "programs"
OTHER_USER = "wasmig-adv"


def attacker_python() -> str:
    """A Python the other user may run (this one may live under root's private home): the
    attacker's scripts need only the standard library."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system python3 the other user could run")


# --- a man in the middle ------------------------------------------------------------------------
#: where a man in the middle rewrites one byte of the source-to-daemon stream, found from what went
#: so far (an offset ahead of it), and how (the byte's new value, from its old one)
Rewrite = Callable[[bytes], tuple[int, Callable[[int], int]] | None]


def invert(byte: int) -> int:
    return byte ^ 0xFF


def at_offset(offset: int) -> Rewrite:
    return lambda _so_far: (offset, invert)


def record_starts(stream: bytes) -> Iterator[tuple[int, int | None]]:
    """(offset, body length) of each TLS record of a source-to-daemon stream so far (after its
    plaintext hello frame), and last the offset where the next one starts (its length unknown yet)."""
    if len(stream) < 4:
        return
    pos = 4 + struct.unpack(">I", stream[:4])[0]
    while pos + 5 <= len(stream):
        length = struct.unpack(">H", stream[pos + 3:pos + 5])[0]
        yield pos, length
        pos += 5 + length
    yield pos, None


def at_module_end(k: int, change: Callable[[int], int]) -> Rewrite:
    """Byte ``k`` (0-4: its header, type, version, length; then its body) of the record that ends
    the module's frame -- the first record after the first full one (16 KiB of plaintext): the
    last of a burst, after which the source waits for ``module_ok``."""
    def locate(so_far: bytes) -> tuple[int, Callable[[int], int]] | None:
        full = False
        for pos, length in record_starts(so_far):
            if full:
                return pos + k, change
            full = length is not None and length > 1 << 14
        return None
    return locate


class Proxy(threading.Thread):
    """A TCP proxy between a source and a daemon that records both directions and, if given a
    ``rewrite``, rewrites one byte of the source-to-daemon stream (``rewritten``: (offset, old, new)).
    With ``stop_after``, it stops reading the source once it passed that many bytes on (and if
    ``hang_up``, it closes its end towards the source -- a FIN -- but still reads nothing) and
    holds the source's connection so until it is closed itself, passing nothing on either way
    (not even the daemon's error): its receive buffer fills and the source's sends block."""

    def __init__(self, upstream: str, rewrite: Rewrite | None = None, stop_after: int | None = None,
                 hang_up: bool = False) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        if stop_after is not None:  # a small window: what the proxy holds unread is little
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        self.stop_after, self.hang_up = stop_after, hang_up
        self.stopped = threading.Event()  # it stopped reading the source
        self.closed = threading.Event()
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.upstream = upstream
        self.rewrite = rewrite
        self.target: tuple[int, Callable[[int], int]] | None = None
        self.to_daemon = bytearray()
        self.to_source = bytearray()
        self.rewritten: tuple[int, int, int] | None = None

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pump, args=(client, server, self.to_daemon, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.to_source, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray, rewrite: bool) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data or self.stopped.is_set():  # stopped: it passes nothing on either way
                break
            if rewrite and self.rewrite is not None and self.rewritten is None:
                data = self._rewritten(record, data)
            record += data
            try:
                dst.sendall(data)
            except OSError:
                break
            if rewrite and self.stop_after is not None and len(record) >= self.stop_after:
                if self.hang_up:
                    src.shutdown(socket.SHUT_WR)
                self.stopped.set()
                self.closed.wait()
                break
        if self.stopped.is_set():  # a proxy that stopped reading holds the source's connection until closed
            self.closed.wait()
        # one way ended: the connection ends, as through any relay (closed, not only shut down: a
        # source still sending gets a reset, not a zero window that held it until its send timed out)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _rewritten(self, record: bytearray, data: bytes) -> bytes:
        if self.target is None:
            self.target = self.rewrite(bytes(record) + data)  # type: ignore[misc]
        if self.target is None or not len(record) <= self.target[0] < len(record) + len(data):
            return data
        offset, change = self.target
        k = offset - len(record)
        self.rewritten = (offset, data[k], change(data[k]) & 0xFF)
        return data[:k] + bytes([self.rewritten[2]]) + data[k + 1:]

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def dirtier_heap(nbytes: int) -> bytes:
    """The first ``nbytes`` of dirtier.c's heap: its xorshift sequence, little-endian words."""
    x, mask, words = 0x9E3779B97F4A7C15, (1 << 64) - 1, []
    for _ in range(nbytes // 8):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        words.append(struct.pack("<Q", x))
    return b"".join(words)


def windows(data: bytes, size: int = 24, count: int = 64) -> list[bytes]:
    """``count`` pieces of ``data`` spread over it."""
    step = max(1, (len(data) - size) // count)
    return [data[i:i + size] for i in range(0, len(data) - size, step)][:count]


@contextmanager
def dirtier(tmp_path: Path, mib: int = 4) -> Iterator[subprocess.Popen[bytes]]:
    program = compile_c(DIRTIER, opt="-O2")
    proc = subprocess.Popen(wasmig("run", "--migratable", "--engine", "wasmtime", str(program), str(mib), "0"),
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "dirtier.err", "wb"))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_the_recorded_migration_stream_holds_no_plaintext(tmp_path: Path, keys: Keys) -> None:
    """A passive man in the middle records a whole migration: neither the module, nor its hash,
    nor any piece of the guest's (incompressible: stored as is by zstd) memory is in it."""
    program = compile_c(DIRTIER, opt="-O2")
    module = program.read_bytes()
    import hashlib

    import zstandard

    heap = dirtier_heap(1 << 20)
    # the check can fail: without encryption, the pages' zstd frames would hold the heap as is
    assert all(w in zstandard.ZstdCompressor(level=1).compress(heap[:65536]) for w in windows(heap[:65536], count=8))
    with daemon(tmp_path, "target", "wasmtime", keys) as d, dirtier(tmp_path) as proc:
        proxy = Proxy(d.address)
        proxy.start()
        try:
            done = subprocess.run(wasmig("migrate", str(proc.pid), "--to", proxy.address, "--peer-fingerprint",
                                         d.fingerprint, "--quiet"), capture_output=True, text=True, timeout=120)
        finally:
            proxy.close()
        assert done.returncode == 0, done.stderr
        assert proc.wait(30) == 0
    recorded = bytes(proxy.to_daemon) + bytes(proxy.to_source)
    assert len(proxy.to_daemon) > 4 << 20  # the 4 MiB heap went through it
    assert b"wasmig-migrate" in recorded  # the plaintext hello (protocol and version): the recording works
    assert hashlib.sha256(module).hexdigest().encode() not in recorded
    for secret in [*windows(module), *windows(heap), b"module_sha256", b"page_data", b"snapshot"]:
        assert secret not in recorded, secret


@pytest.mark.parametrize("rewrite, longer", [
    pytest.param(at_offset(200_000), False, id="a byte of page data"),
    pytest.param(at_module_end(0, invert), False, id="a record's type"),
    pytest.param(at_module_end(3, lambda b: b - 1), False, id="a record's length, 256 shorter"),
    pytest.param(at_module_end(3, lambda b: b + 1), True, id="the last record of a burst, 256 longer"),
])
def test_a_rewritten_byte_fails_the_migration_and_the_program_goes_on(tmp_path: Path, keys: Keys, rewrite: Rewrite,
                                                                      longer: bool) -> None:
    """An active man in the middle rewrites a byte of the module or the pages, or of a TLS record's
    header: TLS refuses the record, the migration fails promptly with a clear error, nothing runs
    on the daemon, and the program goes on at the source -- and moves afterwards, untouched, over
    a clean path. A record made longer at the end of a burst used to leave both sides waiting on
    their 60 s receive timeouts; now the daemon gives up on it after RECORD_STALL seconds."""
    from wasmig.wire import _TLS_MAX_RECORD, RECORD_STALL

    with daemon(tmp_path, "target", "wasmtime", keys) as d, dirtier(tmp_path) as proc:
        proxy = Proxy(d.address, rewrite)
        proxy.start()
        started = time.monotonic()
        try:
            failed = subprocess.run(wasmig("migrate", str(proc.pid), "--to", proxy.address, "--peer-fingerprint",
                                           d.fingerprint, "--quiet"), capture_output=True, text=True, timeout=120)
        finally:
            proxy.close()
        took = time.monotonic() - started
        assert proxy.rewritten is not None
        if longer:  # still a length TLS allows: the record waits for its rest (a longer one is refused at once)
            offset = proxy.rewritten[0]
            assert proxy.rewritten[2] << 8 | proxy.to_daemon[offset + 1] <= _TLS_MAX_RECORD, proxy.rewritten
        assert failed.returncode == 1 and "migration failed, the program goes on" in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
        assert took < RECORD_STALL + 30, f"the migration failed only after {took:.1f} s: {failed.stderr}"
        wait_for(lambda: "aborted, nothing runs" in d.log() or "rejected" in d.log(), f"daemon: {d.log()}")
        assert "committed" not in d.log()
        assert proc.poll() is None  # still running at the source
        moved = migrate(proc.pid, d)
        assert moved.returncode == 0, moved.stderr
        assert proc.wait(30) == 0


@pytest.mark.parametrize("hang_up", [False, True], ids=["stops reading", "hangs up"])
def test_a_proxy_that_stops_reading_fails_the_send_soon(tmp_path: Path, keys: Keys, hang_up: bool) -> None:
    """A man in the middle passes the first 2 MiB of a 16 MiB guest's pages on, then reads no
    more -- without closing (a zero window: SEND_STALL ends the source's send), or after closing
    its end towards the source (its FIN: the send fails at once). Either used to hold the source
    for its send's whole timeout (60 s). The migration fails with the reason, the program goes on
    at the source and moves afterwards over a clean path."""
    from wasmig.wire import ERROR_TIMEOUT, SEND_STALL

    with daemon(tmp_path, "target", "wasmtime", keys) as d, dirtier(tmp_path, mib=16) as proc:
        proxy = Proxy(d.address, stop_after=2 << 20, hang_up=hang_up)
        proxy.start()
        try:
            run = subprocess.Popen(wasmig("migrate", str(proc.pid), "--to", proxy.address, "--peer-fingerprint",
                                          d.fingerprint, "--quiet"), stderr=subprocess.PIPE, text=True)
            assert proxy.stopped.wait(60), "the migration did not start"
            stopped = time.monotonic()
            _, stderr = run.communicate(timeout=120)
            took = time.monotonic() - stopped
        finally:
            proxy.close()
        assert run.returncode == 1 and "migration failed, the program goes on" in stderr, stderr
        assert "Traceback" not in stderr
        if hang_up:
            assert "hung up while we were sending" in stderr, stderr
            # the promise: soon, not the send's 60 s timeout; the rest is a loaded machine's scheduling
            assert took < ERROR_TIMEOUT + 20, f"the migration failed only {took:.1f} s after the hang-up: {stderr}"
        else:
            assert f"took no byte for {SEND_STALL:g} s" in stderr, stderr
            assert took < SEND_STALL + ERROR_TIMEOUT + 20, f"the migration failed only after {took:.1f} s: {stderr}"
        wait_for(lambda: "aborted, nothing runs" in d.log() or "rejected" in d.log(), f"daemon: {d.log()}")
        assert "committed" not in d.log()
        assert proc.poll() is None  # still running at the source
        moved = migrate(proc.pid, d)
        assert moved.returncode == 0, moved.stderr
        assert proc.wait(30) == 0


def test_an_error_frame_to_a_peer_that_stopped_reading_gives_up_soon() -> None:
    """Once a send to a peer that stopped reading has timed out, the ``error`` frame that tells it
    why waits at most ERROR_TIMEOUT seconds, not the socket's whole timeout again: a migration
    through a proxy that stopped reading failed only after 2 x 60 s (reproduced under load)."""
    from wasmig.wire import ERROR_TIMEOUT, Channel

    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        try:
            while True:  # the peer reads nothing: fill what the kernel holds for it
                ours.send(bytes(1 << 16))
        except BlockingIOError:
            pass
        ours.settimeout(30)
        started = time.monotonic()
        Channel(ours, "peer").error("the source aborted")
        assert time.monotonic() - started < ERROR_TIMEOUT + 10  # not the socket's 30 s


# --- a squatted runtime directory ---------------------------------------------------------------
def other_user() -> str:
    """A throwaway local user to play the attacker (created if missing: the tests run as root)."""
    if os.getuid() != 0:
        pytest.skip("needs root, to run a process as another local user (runuser) and to create that user")
    if shutil.which("runuser") is None or shutil.which("useradd") is None:
        pytest.skip("needs runuser and useradd (util-linux, passwd)")
    if subprocess.run(["id", "-u", OTHER_USER], capture_output=True).returncode != 0:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                              capture_output=True, text=True)
        if made.returncode != 0 and subprocess.run(["id", "-u", OTHER_USER], capture_output=True).returncode != 0:
            pytest.skip(f"cannot create the user {OTHER_USER}: {made.stderr.strip()}")
    return OTHER_USER


def as_user(user: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60,
                          **kwargs)  # type: ignore[call-overload]


@pytest.fixture()
def shared_tmp() -> Iterator[Path]:
    """A world-writable sticky directory, as /tmp is (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="wasmig-adv-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: a socket server the attacker runs: records whatever a client sends (it should get nothing)
RECORDER = """
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(3)
    try:
        data = c.recv(65536)
    except OSError:
        data = b""
    open(sys.argv[2], "ab").write(data + b"|")
"""


@contextmanager
def recording_server(user: str, sock: Path, got: Path) -> Iterator[None]:
    """RECORDER run by ``user`` listening on ``sock`` (what it hears appended to ``got``), until the
    block ends: then killed with its whole process group. Killing ``runuser`` alone left the server
    running, an orphan, after the suite (two per run)."""
    recorder = subprocess.Popen(["runuser", "-u", user, "--", attacker_python(), "-c", RECORDER, str(sock), str(got)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert recorder.stdout is not None and recorder.stdout.readline() == "listening\n"
        yield
    finally:
        try:
            os.killpg(recorder.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        recorder.wait()


def test_a_runtime_directory_squatted_by_another_user_is_refused(tmp_path: Path, shared_tmp: Path,
                                                                 keys: Keys) -> None:
    """Another user creates the runtime directory first (``<tmp>/wasmig-run-<uid>``, mode 777) and
    listens where a control socket would be: `wasmig run --migratable` and `wasmig migrate PID`
    both refuse, naming the directory and its owner, and send the attacker nothing."""
    user = other_user()
    squatted = shared_tmp / f"wasmig-run-{os.getuid()}"
    assert as_user(user, "mkdir", "-m", "777", str(squatted)).returncode == 0
    got = shared_tmp / "captured"
    with recording_server(user, squatted / "4242.sock", got):
        env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "WASMIG_RUNTIME_DIR")}
        env["TMPDIR"] = str(shared_tmp)
        uid = int(as_user(user, "id", "-u").stdout)
        asked = subprocess.run(wasmig("migrate", "4242", "--to", "127.0.0.1:9", "--peer-fingerprint",
                                      keys.fingerprint("target")), capture_output=True, text=True, env=env, timeout=60)
        assert asked.returncode == 1 and "Traceback" not in asked.stderr, asked.stderr
        assert f"runtime directory {squatted} belongs to uid {uid}, not to you" in asked.stderr, asked.stderr
        hello = compile_c(PROGRAMS / "hello.c")
        ran = subprocess.run(wasmig("run", "--migratable", "--engine", "wasmtime", str(hello)), capture_output=True,
                             text=True, env=env, timeout=60)
        assert ran.returncode == 1 and f"runtime directory {squatted} belongs to uid {uid}" in ran.stderr, ran.stderr
        assert ran.stderr.count("\n") == 1 and "Traceback" not in ran.stderr
        assert not got.exists() or got.read_bytes().strip(b"|") == b""  # the attacker heard nothing


def test_control_sockets_check_the_peer_user_both_ways(tmp_path: Path, shared_tmp: Path, keys: Keys) -> None:
    """SO_PEERCRED: a run's control socket made reachable by mistake (mode 777) still ignores
    another user's request, and a control socket file of this user's served by another user's
    process is refused by `wasmig migrate` before it sends anything."""
    user = other_user()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "WASMIG_RUNTIME_DIR": str(runtime)}
    program = compile_c(PROGRAMS / "migrate_work.c")
    out = tmp_path / "out"
    with open(out, "wb") as o:
        proc = subprocess.Popen(wasmig("run", "--migratable", "--engine", "wasmtime", str(program), "40", "64", "30"),
                                stdout=o, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: "round 2 " in out.read_text(), "the program did not start")
        sock = runtime / f"{proc.pid}.sock"
        for p in (tmp_path.parent.parent.parent, tmp_path.parent.parent, tmp_path.parent, tmp_path, runtime):
            p.chmod(p.stat().st_mode | 0o011)  # a mistake: others may reach the socket
        sock.chmod(0o777)
        request = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                   "try:\n"
                   "    s.sendall(json.dumps({'migrate': {'to': '127.0.0.1:9', 'peer': 'sha256:' + 'ab' * 32}})"
                   ".encode() + b'\\n'); s.settimeout(30); print(repr(s.recv(1000)))\n"
                   "except (ConnectionResetError, BrokenPipeError):\n    print('reset')")
        attempt = as_user(user, attacker_python(), "-c", request, str(sock))
        assert attempt.stdout.strip() in ("b''", "reset"), attempt  # closed without a word
        assert proc.poll() is None  # the program goes on
        # the other way: this user's socket file, another user's server behind it
        theirs = shared_tmp / "theirs"
        theirs.mkdir()
        theirs.chmod(0o777)
        got = shared_tmp / "captured"
        with recording_server(user, theirs / "4242.sock", got):
            os.rename(theirs / "4242.sock", runtime / "4242.sock")
            os.chown(runtime / "4242.sock", os.getuid(), os.getgid())
            asked = subprocess.run(wasmig("migrate", "4242", "--to", "127.0.0.1:9", "--peer-fingerprint",
                                          keys.fingerprint("target")), capture_output=True, text=True, env=env,
                                   timeout=60)
            assert asked.returncode == 1, asked.stderr
            assert re.search(r"is served by uid \d+, not by you: refusing to talk to it", asked.stderr), asked.stderr
            time.sleep(0.3)
            assert not got.exists() or got.read_bytes().strip(b"|") == b""
    finally:
        proc.kill()
        proc.wait()


# --- denial of service before authentication ----------------------------------------------------
def test_a_slowloris_cannot_hold_the_daemon(tmp_path: Path, keys: Keys) -> None:
    """20 connections trickling a byte every 2 s: beyond 16 are closed at once, the others when
    the 10 s handshake deadline passes (not per read); a frame header announcing 32 MiB before
    authentication is refused unread; then an honest migration goes through."""
    with daemon(tmp_path, "target", "wasmtime", keys) as d:
        host, port = d.address.rsplit(":", 1)
        big = socket.create_connection((host, int(port)))
        big.sendall(struct.pack(">I", 32 << 20))
        big.settimeout(30)  # a loaded machine's scheduling; the refusal itself comes at once
        answer = big.recv(4096)  # nothing but, at most, the one error frame; then the end
        assert answer == b"" or b"before authentication" in answer, answer
        assert big.recv(4096) == b""
        big.close()
        wait_for(lambda: "at most 4096 before authentication" in d.log(), f"daemon: {d.log()}", 60)
        slow = [socket.create_connection((host, int(port))) for _ in range(20)]
        started = time.monotonic()
        stop = threading.Event()
        closed: dict[int, float] = {}

        frame = struct.pack(">I", 100) + b"\x81" + bytes(99)  # a frame's start, one byte at a time

        def trickle(k: int, s: socket.socket) -> None:
            s.settimeout(0.2)
            for byte in frame:
                if stop.is_set():
                    break
                try:
                    s.send(bytes([byte]))
                    if s.recv(1) == b"":
                        break
                except TimeoutError:
                    stop.wait(1.8)
                    continue
                except OSError:
                    break
            closed[k] = time.monotonic() - started

        threads = [threading.Thread(target=trickle, args=(k, s), daemon=True) for k, s in enumerate(slow)]
        for t in threads:
            t.start()
        # "at once": before any 10 s handshake deadline could have closed them (a closed socket is seen
        # within a 2 s trickle cycle; a loaded machine forks the 16 accepted ones' children first)
        wait_for(lambda: len(closed) >= 4, "the connections beyond the limit were not refused", 9)
        assert "connections are still authenticating" in d.log()
        wait_for(lambda: len(closed) == 20, f"slow connections outlived the deadline: {sorted(closed.values())}", 16)
        stop.set()
        assert max(closed.values()) < 14, sorted(closed.values())
        # the deadline shuts the socket down before the child logs why: the line may trail the close
        wait_for(lambda: d.log().count("did not authenticate within 10 s") >= 14, f"daemon: {d.log()}", 60)
        with dirtier(tmp_path) as proc:
            moved = migrate(proc.pid, d)
            assert moved.returncode == 0, moved.stderr
        for s in slow:
            s.close()


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


def test_a_gateway_flood_is_bounded_and_the_gateway_still_serves(tmp_path: Path, keys: Keys) -> None:
    """16 clients push bytes as fast as they can while no program takes them (the gateway used to
    buffer them all: 600 MB pushed, 622 MB resident); 40 control connections that never say
    anything. The gateway's memory stays flat (the clients' bytes stay in their sockets), the
    surplus control connections are refused, and a program that registers afterwards serves a
    client through it."""
    with gateway(tmp_path, keys) as (public, control, gw_log):
        pid = int(subprocess.run(["pgrep", "-f", f"gateway --listen {public}"], capture_output=True,
                                 text=True).stdout.split()[0])
        before = rss_kib(pid)
        host, port = public.rsplit(":", 1)
        pushed = [0] * 16
        stop = threading.Event()

        def push(k: int) -> None:
            with socket.create_connection((host, int(port))) as s:
                s.settimeout(0.5)
                chunk = os.urandom(1 << 16)
                while not stop.is_set():
                    try:
                        pushed[k] += s.send(chunk)
                    except TimeoutError:
                        continue  # the gateway does not read: TCP's backpressure
                    except OSError:
                        return

        pushers = [threading.Thread(target=push, args=(k,), daemon=True) for k in range(16)]
        for t in pushers:
            t.start()
        ch, cp = control.rsplit(":", 1)
        idle = [socket.create_connection((ch, int(cp))) for _ in range(40)]
        time.sleep(4)
        stop.set()
        for t in pushers:
            t.join(5)
        grew = rss_kib(pid) - before
        assert grew < 48 * 1024, f"the gateway grew by {grew} KiB while clients pushed {sum(pushed) >> 20} MiB"
        assert sum(pushed) < 16 * (16 << 20), sum(pushed)  # each blocked once the socket buffers were full
        wait_for(lambda: "too many control connections are still authenticating" in gw_log.read_text(),
                 f"gateway: {gw_log.read_text()}", 60)
        for s in idle:
            s.close()
        server = compile_c(PROGRAMS / "kv_server.c")
        proc = subprocess.Popen(wasmig("run", "--engine", "wasmtime", "--gateway", control, "--gateway-fingerprint",
                                       keys.pub("gateway"), str(server), "17"),
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.err", "wb"))
        try:
            wait_for(lambda: "program registered" in gw_log.read_text(), f"no registration: {gw_log.read_text()}")
            with socket.create_connection((host, int(port)), timeout=30) as c, c.makefile("rb") as f:
                c.sendall(b"INCR fresh\n")
                assert f.readline() == b"fresh 1\n"
        finally:
            proc.kill()
            proc.wait()


def test_a_gateway_serves_the_program_only_to_its_owner(tmp_path: Path, keys: Keys) -> None:
    """Another key the gateway trusts (a daemon's) cannot take over the program's connections:
    without the owner's handover, its ``backend`` and ``attach`` are refused."""
    from wasmig.keys import load_key_pair
    from wasmig.wasi import gateway as guest_side
    from wasmig.wire import WireError

    with gateway(tmp_path, keys) as (public, control, gw_log):
        server = compile_c(PROGRAMS / "kv_server.c")
        proc = subprocess.Popen(wasmig("run", "--engine", "wasmtime", "--gateway", control, "--gateway-fingerprint",
                                       keys.pub("gateway"), str(server), "1"),
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.err", "wb"))
        try:
            wait_for(lambda: "program registered" in gw_log.read_text(), f"no registration: {gw_log.read_text()}")
            host, port = public.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=30) as c:
                guest_side.use_key(load_key_pair(keys.dir("a")))  # trusted by the gateway, not the owner
                digest = guest_side.digest_of_fingerprint(keys.fingerprint("gateway"))
                with pytest.raises(WireError, match="does not own the program"):
                    guest_side.attach(control, digest, 1)
                with pytest.raises(WireError, match="does not own the program"):
                    guest_side.connect_listener(control, digest)
                with c.makefile("rb") as f:  # the owner still serves it
                    c.sendall(b"INCR x\n")
                    assert f.readline() == b"x 1\n"
            assert "does not own the program" in gw_log.read_text()
        finally:
            guest_side._key = None
            proc.kill()
            proc.wait()


#: ``wasmig gateway`` holding ``backend_ok`` back until a client's announcement is under way (sent, or
#: waiting for the gateway's one-writer lock ``announcing``): an order a loaded machine gives by chance
HELD_BACKEND_OK = """
import sys, threading
from wasmig import wire
from wasmig.migrate import gateway

under_way = threading.Event()


class Announcing:
    def __init__(self):
        self.lock = threading.Lock()

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            under_way.set()  # a writer waits for the lock
            self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


make = gateway.Gateway.__init__
def made(self, *args, **kwargs):
    make(self, *args, **kwargs)
    self.announcing = Announcing()
gateway.Gateway.__init__ = made

send = wire.Channel.send
def held(self, t, **fields):
    if t == "backend_ok":
        gateway.log("holding backend_ok")
        under_way.wait(30)
    send(self, t, **fields)
    if t == "conn":
        under_way.set()
wire.Channel.send = held

from wasmig.cli import main
main()
"""


def test_a_client_that_comes_while_the_program_connects_is_announced_after_backend_ok(tmp_path: Path,
                                                                                       keys: Keys) -> None:
    """A client accepted between the gateway taking the program's listener connection and its
    ``backend_ok`` is announced after it: its ``conn`` went first on a loaded machine once, and the
    program's start failed ("expected backend_ok, got 'conn'"; its owner's client then waited in vain)."""
    from wasmig.keys import load_key_pair
    from wasmig.wasi import gateway as guest_side
    from wasmig.wire import WireError

    with gateway(tmp_path, keys, [sys.executable, "-c", HELD_BACKEND_OK]) as (public, control, gw_log):
        guest_side.use_key(load_key_pair(keys.dir("source")))
        try:
            key = guest_side.register(control, keys.fingerprint("gateway"))
            listener: list[object] = []

            def connect() -> None:
                try:
                    listener.append(guest_side.connect_listener(control, key))
                except WireError as e:
                    listener.append(e)

            connecting = threading.Thread(target=connect, daemon=True)
            connecting.start()
            wait_for(lambda: "holding backend_ok" in gw_log.read_text(), gw_log.read_text(), 30)
            host, port = public.rsplit(":", 1)
            with socket.create_connection((host, int(port))):
                connecting.join(60)
                assert listener and isinstance(listener[0], socket.socket), listener
                assert guest_side.next_connection(listener[0], control) == 1
                listener[0].close()
        finally:
            guest_side._key = None


def test_an_untrusted_key_cannot_even_reach_the_gateway(tmp_path: Path, keys: Keys) -> None:
    from wasmig.keys import KeyPair
    from wasmig.wasi import gateway as guest_side
    from wasmig.wire import WireError

    with gateway(tmp_path, keys) as (_public, control, gw_log):
        guest_side.use_key(KeyPair.generate("stranger"))
        try:
            with pytest.raises(WireError):
                guest_side.register(control, keys.fingerprint("gateway"))
        finally:
            guest_side._key = None
        wait_for(lambda: "none of the trusted keys" in gw_log.read_text(), gw_log.read_text(), 60)

