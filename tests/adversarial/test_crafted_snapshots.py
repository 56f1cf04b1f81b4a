"""Crafted snapshots (issue 17, items 1, 2, 5, 6, 8): host paths, sockets, memory bombs, module swaps,
frames that do not fit, content changed with its checksum recomputed, re-signed with an untrusted key.

The attacker starts from an honest snapshot of ``journal.c`` (which keeps two files open in its
preopened directory ``data``), edits what it likes, recomputes the checksum and seals the result
with a key of its own, or with none. Every restore of such a snapshot must fail with one
``wasmig: error:`` line and exit 1, and leave every host directory it was not given untouched.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wasmig.keys import KeyPair, write_key_pair
from wasmig.snapshot.signing import DOMAIN, SEAL, SEAL_MAGIC, SEAL_SIZE
from wasmig.snapshot.store import HASH_SIZE, _encode, _read_container, load_snapshot, write_single_file
from wasmig.toolchain import compile_c

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "programs"
ROUNDS = "40"


def wasmig(*args: str | Path, timeout: float = 120, limit_as: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m wasmig ARGS``; ``limit_as``: the child's address-space limit (bytes)."""
    def limit() -> None:
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    env = {k: v for k, v in os.environ.items() if k != "WASMIG_LOG"}
    return subprocess.run([sys.executable, "-m", "wasmig", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONPATH": str(REPO)}, preexec_fn=limit)


def refused(p: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The one ``wasmig: error:`` line of a refused command (exit 1, no traceback, no guest output),
    which must contain every fragment."""
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    errors = [line for line in p.stderr.splitlines() if line.startswith("wasmig: error: ")]
    assert len(errors) == 1, p.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def tree_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its content and mtime: what "untouched" means."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@dataclass
class Honest:
    """An honest checkpoint of journal.c and the directory it ran in (never modified by tests)."""

    wasm: Path
    ck: Path
    data: Path
    expected: str  # the uninterrupted run's stdout


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Honest:
    root = tmp_path_factory.mktemp("honest")
    wasm = compile_c(PROGRAMS / "journal.c")
    plain = root / "plain"
    plain.mkdir()
    full = wasmig("run", "--dir", f"{plain}::data", wasm, "data", ROUNDS)
    assert full.returncode == 0, full.stderr
    data = root / "data"
    data.mkdir()
    ck = root / "ck"
    p = wasmig("run", "--dir", f"{data}::data", "--checkpoint-dir", ck, "--checkpoint-at-step", "2000",
               "--checkpoint-then", "exit", wasm, "data", ROUNDS)
    assert p.returncode == 0 and "checkpoint written" in p.stderr, p.stderr
    return Honest(wasm, ck, data, full.stdout)


@dataclass
class World:
    """A test's own copy of the honest checkpoint and directory, a secret directory no one grants,
    and the attacker's key pair (its public key in ``attacker_pub``)."""

    honest: Honest
    ck: Path
    data: Path
    secret: Path
    attacker: KeyPair
    attacker_pub: Path
    tmp: Path

    def crafted(self, edit: Callable[[Any], None], *, signer: KeyPair | None | str = "attacker",
                name: str = "crafted.snap") -> Path:
        """A single-file snapshot: the honest one, edited, sealed by ``signer`` ("attacker", None
        for unsigned, or a key pair)."""
        snap = load_snapshot(self.ck)
        edit(snap)
        path = self.tmp / name
        write_single_file(snap, path)  # sealed with the test run's own key: replaced below
        reseal(path, self.attacker if signer == "attacker" else signer)  # type: ignore[arg-type]
        return path


@pytest.fixture
def world(honest: Honest, tmp_path: Path) -> World:
    ck, data = tmp_path / "ck", tmp_path / "data"
    shutil.copytree(honest.ck, ck)
    shutil.copytree(honest.data, data)  # copy2: sizes and mtimes as checkpointed
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "journal.dat").write_bytes(b"the attacker wants to read or append to this\n")
    (secret / "log.txt").write_bytes(b"private\n")
    attacker = KeyPair.generate("attacker")
    write_key_pair(attacker, tmp_path / "attacker")
    return World(honest, ck, data, secret, attacker, tmp_path / "attacker" / "wasmig.pub", tmp_path)


def reseal(path: Path, signer: KeyPair | None) -> None:
    """Strip a snapshot file's seal and, with ``signer``, seal its checksum again with that key."""
    data = path.read_bytes()
    assert data[-SEAL_SIZE:].startswith(SEAL_MAGIC)
    body = data[:-SEAL_SIZE]
    if signer is not None:
        checksum = body[-HASH_SIZE:]
        body += SEAL.pack(SEAL_MAGIC, signer.public.raw, signer.sign(DOMAIN + checksum))
    path.write_bytes(body)


def rewrite_manifest(path: Path, edit: Callable[[dict[str, Any]], None], *, keep_seal: bool) -> None:
    """Edit a snapshot file's manifest in place and recompute its checksum (what a checksum-only
    format accepted); ``keep_seal``: leave the old seal on it."""
    data = path.read_bytes()
    container = _read_container(io.BytesIO(data), len(data))
    manifest = container.manifest
    edit(manifest)
    new = b"".join(_encode(manifest, sign=False))
    if keep_seal:
        new += data[-SEAL_SIZE:]
    path.write_bytes(new)


def restore_args(w: World, snapshot: Path, *extra: str | Path) -> list[str | Path]:
    return ["restore", "--module", w.honest.wasm, *extra, snapshot]


def point_data_at(where: str) -> Callable[[Any], None]:
    def edit(snap: Any) -> None:
        for fd in snap.wasi.fds:
            if fd.preopen == "data":
                fd.host_path = where
    return edit


# --- signatures -----------------------------------------------------------------------------------------
def test_honest_use_needs_no_flag_and_reuses_its_own_grants(honest: Honest, tmp_path: Path) -> None:
    """The control: ``run --checkpoint-dir`` then ``restore`` with no flag at all (the snapshot is
    sealed with the user's own key, so it reuses the directory it was given) finishes exactly as
    the uninterrupted run."""
    data, ck = tmp_path / "data", tmp_path / "ck"
    data.mkdir()
    p = wasmig("run", "--dir", f"{data}::data", "--checkpoint-dir", ck, "--checkpoint-at-step", "2000",
               "--checkpoint-then", "exit", honest.wasm, "data", ROUNDS)
    assert p.returncode == 0, p.stderr
    first = p.stdout
    p = wasmig("restore", ck)
    assert p.returncode == 0, p.stderr
    assert first + p.stdout == honest.expected


def test_unsigned_snapshot_is_refused_and_allow_unsigned_says_so(world: World) -> None:
    snap = world.crafted(lambda s: None, signer=None)
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data")), "is not signed", "--allow-unsigned")
    p = wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--allow-unsigned"))
    assert p.returncode == 0, p.stderr
    assert "warning" in p.stderr and "is not signed" in p.stderr and "--allow-unsigned" in p.stderr
    assert world.honest.expected.endswith(p.stdout) and p.stdout


def test_resigned_with_an_untrusted_key_is_refused(world: World) -> None:
    snap = world.crafted(lambda s: None)
    before = tree_state(world.data)
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data")), "a key you do not trust",
            world.attacker.fingerprint)
    assert tree_state(world.data) == before
    # trusted explicitly, it restores: with the grants given here, never its own
    p = wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub))
    assert p.returncode == 0, p.stderr
    assert world.honest.expected.endswith(p.stdout) and p.stdout


@pytest.mark.parametrize("field, value", [
    ("args", ["journal", "/etc", "40"]),
    ("steps", 1),
    ("module_sha256", "0" * 64),  # a module swap: the snapshot names another module
])
def test_content_changed_with_its_checksum_recomputed_is_refused(world: World, field: str, value: Any) -> None:
    """The audit's 21 crafted snapshots had valid checksums: a seal that no longer matches is
    refused, and so is the same content with the seal stripped."""
    snap = world.crafted(lambda s: None, signer=KeyPairOfTestRun())

    def edit(manifest: dict[str, Any]) -> None:
        if field == "args":
            manifest["wasi"]["args"] = value
        else:
            manifest[field] = value

    rewrite_manifest(snap, edit, keep_seal=True)
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data")), "does not verify",
            "changed after it was signed")
    rewrite_manifest(snap, lambda m: None, keep_seal=False)
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data")), "is not signed")


def KeyPairOfTestRun() -> KeyPair:  # noqa: N802 - reads as the key it returns
    """The key the test run (and every wasmig it starts) signs with: the "own" key."""
    from wasmig.snapshot.signing import own_key_pair

    pair = own_key_pair()
    assert pair is not None
    return pair


def test_a_page_changed_in_the_store_is_refused(world: World) -> None:
    """Pages are named by hash in the sealed manifest: a page file rewritten with other content
    (and whatever checksum it likes) is found out when read."""
    import zstandard

    from wasmig.snapshot import packs

    pack = next(p for p in sorted((world.ck / "pages").iterdir()) if packs.PACK_RE.fullmatch(p.name))
    # the largest page of the pack (one that is not all zero bytes) gets other content of exactly
    # its length, so the pack's own index and checksum stay valid: only the page's hash can tell
    _h, offset, length = max(packs.read_index(pack), key=lambda entry: entry[2])
    fake = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(range(256)) * 256)
    assert len(fake) <= length, (len(fake), length)
    data = bytearray(pack.read_bytes())
    data[offset:offset + len(fake)] = fake
    # pad the frame to the entry's length with a skippable frame (magic 0x184D2A50, size)
    pad = length - len(fake)
    if pad:
        assert pad >= 8, pad
        skippable = (0x184D2A50).to_bytes(4, "little") + (pad - 8).to_bytes(4, "little")
        data[offset + len(fake):offset + length] = skippable + bytes(pad - 8)
    pack.write_bytes(bytes(data))
    p = wasmig("restore", "--dir", f"{world.data}::data", "--engine", "interp", world.ck)
    refused(p, "hash mismatch")


# --- capability-only restore ------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["/etc", "secret"])
def test_a_snapshot_naming_a_host_directory_gets_nothing_without_a_grant(world: World, host: str) -> None:
    """The audit's 67 KB snapshot read /etc/passwd and appended outside every granted directory:
    now the recorded path is only a record. Refused, naming the grant, with the secret untouched,
    even when the signer is trusted."""
    where = str(world.secret) if host == "secret" else host
    snap = world.crafted(point_data_at(where))
    before = tree_state(world.secret)
    line = refused(wasmig(*restore_args(world, snap, "--trust", world.attacker_pub)), "not granted",
                   f"directory 'data' (was {where}): --dir HOST::data")
    assert "your own key" in line
    assert tree_state(world.secret) == before
    # inspect shows it up front, with who signed it
    shown = wasmig("inspect", snap)
    assert shown.returncode == 0, shown.stderr
    head = shown.stdout.splitlines()[:3]
    assert head[0] == f"signature: signed by {world.attacker.fingerprint} (a key you do not trust)", head
    assert f"  directory 'data' (was {where}): --dir HOST::data" in head, head
    refused(wasmig("inspect", "--verify", snap), "a key you do not trust")


def add_preopen(name: str, host: Path) -> Callable[[Any], None]:
    """An edit that gives a snapshot a second preopen ``name`` (a copy of ``data``'s) recorded at ``host``."""
    def edit(snap: Any) -> None:
        from dataclasses import replace

        data = next(fd for fd in snap.wasi.fds if fd.preopen == "data")
        snap.wasi.fds.append(replace(data, fd=max(fd.fd for fd in snap.wasi.fds) + 1, preopen=name,
                                     guest_path=name, host_path=str(host)))
    return edit


def test_an_extra_preopen_beside_the_mapped_one_is_refused(world: World) -> None:
    """A second preopen named by the snapshot, beside the one the user maps: refused by name."""
    snap = world.crafted(add_preopen("extra", world.secret))
    before = tree_state(world.secret), tree_state(world.data)
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub)),
            "directory 'extra'", f"(was {world.secret})", "--dir HOST::extra")
    assert (tree_state(world.secret), tree_state(world.data)) == before


def test_a_closed_preopen_needs_a_grant_too(world: World) -> None:
    snap = world.crafted(lambda s: s.wasi.closed_preopens.update({"gone": str(world.secret)}))
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub)),
            "directory 'gone' (closed", "--dir HOST::gone")


def listener_fd(snap: Any, **fields: Any) -> Any:
    from wasmig.snapshot.state import FdSnapshot
    from wasmig.wasi import constants as C
    from wasmig.wasi.fdtable import TCP_LISTENER

    fd = FdSnapshot(max(f.fd for f in snap.wasi.fds) + 1, TCP_LISTENER, C.FILETYPE_SOCKET_STREAM,
                    C.RIGHT_SOCK_ACCEPT, 0, 0, True, True, **fields)
    snap.wasi.fds.append(fd)
    return fd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_listening_socket_needs_a_grant(world: World) -> None:
    port = free_port()
    snap = world.crafted(lambda s: listener_fd(s, address=f"0.0.0.0:{port}"))
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub)),
            "listening socket fd", f"(was 0.0.0.0:{port}): --tcplisten HOST:PORT")
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub,
                                 "--tcplisten", "127.0.0.1:0", "--tcplisten", "127.0.0.1:0")),
            "2 --tcplisten given, but the snapshot has 1")
    # granted an address of the user's choosing, the program runs on (journal.c never uses it)
    p = wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub,
                             "--tcplisten", "127.0.0.1:0"))
    assert p.returncode == 0, p.stderr


@contextlib.contextmanager
def recording_listener() -> Iterator[tuple[str, list[Any]]]:
    """A listener standing in for a gateway: its address, and every connection made to it (checked
    after a grace period, so a late connection is caught too)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    connections: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", connections
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        server.close()


def test_a_gateway_the_snapshot_names_is_not_contacted_without_a_grant(world: World) -> None:
    """A snapshot naming a "gateway" (here: a listener of the test's, recording every connection):
    refused before anything connects to it."""
    with recording_listener() as (address, connections):
        snap = world.crafted(lambda s: listener_fd(s, gateway=address, gateway_key=b"k" * 16))
        refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub)),
                "gateway fd", f"(was {address}): --gateway {address}")
    assert connections == []


# --- resource bombs ---------------------------------------------------------------------------------------
#: runs argv[3:] as a child of this small process (its address space limited to argv[1] bytes, 0:
#: none) and writes the child's exit code and peak RSS (KiB) to argv[2]. The RSS measured from the
#: test's own process would include the pytest worker's: a fork inherits it, and Linux keeps a
#: process's peak across exec.
_MEASURED = """
import os, resource, sys
limit, out, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_measured(cmd: list[str], tmp: Path, limit_as: int = 0) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of ``cmd`` run apart from this process."""
    fd, name = tempfile.mkstemp(dir=tmp, suffix=".measured")
    os.close(fd)
    out = Path(name)
    done = subprocess.run([sys.executable, "-c", _MEASURED, str(limit_as), str(out), *cmd], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    code, rss = map(int, out.read_text().split())
    return code, done.stderr.decode(), rss


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_a_memory_bomb_is_refused_before_anything_is_allocated(world: World, engine: str) -> None:
    """65536 zero pages (4 GiB) declared in a small snapshot (the audit's made a restore use 8.5 GB):
    refused from the manifest, under a 2 GiB address-space limit, in well under 200 MB."""
    snap = world.crafted(lambda s: None)

    def bomb(manifest: dict[str, Any]) -> None:
        manifest["memories"][0]["data"] = [None] * 65536
        manifest["memories"][0]["size_pages"] = 65536

    rewrite_manifest(snap, bomb, keep_seal=False)
    reseal_unsealed(snap, world.attacker)
    assert snap.stat().st_size < 200_000
    cmd = [sys.executable, "-m", "wasmig", *map(str, restore_args(world, snap, "--dir", f"{world.data}::data",
                                                                  "--trust", world.attacker_pub, "--engine", engine))]
    code, err, rss_kib = run_measured(cmd, world.tmp, limit_as=2 << 30)
    assert code == 1 and "Traceback" not in err, err
    assert "more than the 1024 MiB this restore allows" in err and "--max-memory" in err, err
    assert rss_kib < 200 * 1024, rss_kib


def reseal_unsealed(path: Path, signer: KeyPair) -> None:
    data = path.read_bytes()
    path.write_bytes(data + SEAL.pack(SEAL_MAGIC, signer.public.raw, signer.sign(DOMAIN + data[-HASH_SIZE:])))


def test_max_memory_is_a_limit_the_user_sets(world: World) -> None:
    snap = world.crafted(lambda s: None)
    refused(wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub,
                                 "--max-memory", "64K")), "more than the 65536 bytes this restore allows")
    p = wasmig("restore", "--max-memory", "lots", snap)
    assert p.returncode == 2 and "'lots' is not a size" in p.stderr, p.stderr


def test_zero_pages_of_a_large_memory_take_no_memory_until_used() -> None:
    """materialize() maps a memory's zero pages lazily: 1 GiB of them adds little to the RSS."""
    from wasmig.snapshot.state import MemoryState
    from wasmig.snapshot.store import PagedMemory, _PageSource, materialize

    class Snap:
        memories = [MemoryState(1, None, b"")]

    paged = PagedMemory(0, [None] * 16384, _PageSource(None))
    before = rss_kib()
    snap = Snap()
    materialize(snap, [paged])  # type: ignore[arg-type]
    assert len(snap.memories[0].data) == 1 << 30
    assert snap.memories[0].data[(1 << 30) - 1] == 0
    assert rss_kib() - before < 64 * 1024


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.parametrize("how", ["recorded", "--module"])
def test_a_huge_module_file_is_refused_before_it_is_read(world: World, how: str) -> None:
    """A module path the snapshot records (or given) naming a 1.5 GB file: refused by size."""
    huge = world.tmp / "huge.wasm"
    with open(huge, "wb") as f:
        f.truncate(1536 << 20)  # sparse: no disk used
    alone = world.tmp / "alone"
    alone.mkdir()
    snap = world.crafted(lambda s: s.meta.update(module_path=str(huge)), name="alone/crafted.snap")
    args = ["restore", "--dir", f"{world.data}::data", "--trust", world.attacker_pub,
            *(["--module", huge] if how == "--module" else []), snap]
    cmd = [sys.executable, "-m", "wasmig", *map(str, args)]
    code, err, rss = run_measured(cmd, world.tmp)
    assert code == 1 and "Traceback" not in err, err
    assert "more than the 512 MiB a module may be" in err, err
    assert rss < 300 * 1024, rss


def test_a_module_swapped_beside_the_snapshot_is_not_run(world: World) -> None:
    """The module copy kept in the checkpoint directory replaced by another program, and the
    recorded path gone: no module with the snapshot's hash, so nothing runs."""
    other = compile_c(PROGRAMS / "hello.c")
    kept = next(world.ck.glob("module-*.wasm"))
    kept.chmod(0o600)
    shutil.copyfile(other, kept)
    snap = world.crafted(lambda s: s.meta.update(module_path=str(world.tmp / "nowhere.wasm")),
                         signer=KeyPairOfTestRun(), name="ck/snapshots/000002.snap")
    refused(wasmig("restore", "--dir", f"{world.data}::data", snap), "cannot find the module")
    refused(wasmig("restore", "--dir", f"{world.data}::data", "--module", other, snap),
            "is not the module this snapshot was taken of")


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_frames_that_do_not_fit_the_module_are_refused(world: World, engine: str) -> None:
    def bad_frame(snap: Any) -> None:
        snap.frames[0].func = 10 ** 6

    snap = world.crafted(bad_frame)
    before = tree_state(world.data)
    p = wasmig(*restore_args(world, snap, "--dir", f"{world.data}::data", "--trust", world.attacker_pub,
                             "--engine", engine))
    refused(p)
    assert tree_state(world.data) == before


def test_export_does_not_launder_a_snapshot_signed_by_someone_else(world: World) -> None:
    """Exporting a single-file snapshot re-seals its changed manifest only when the exporter's own
    key sealed it: an attacker's snapshot comes out unsigned, not vouched for."""
    theirs = world.crafted(lambda s: None, name="theirs.snap")
    out = world.tmp / "theirs.wsnap"
    p = wasmig("export", "--module", world.honest.wasm, "-o", out, theirs)
    assert p.returncode == 0, p.stderr
    refused(wasmig("restore", "--dir", f"{world.data}::data", out), "is not signed")
    mine = world.crafted(lambda s: None, signer=KeyPairOfTestRun(), name="mine.snap")
    out = world.tmp / "mine.wsnap"
    assert wasmig("export", "--module", world.honest.wasm, "-o", out, mine).returncode == 0
    p = wasmig("restore", "--dir", f"{world.data}::data", out)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# --- files ------------------------------------------------------------------------------------------------
def test_snapshots_pages_and_modules_are_private(honest: Honest) -> None:
    """Everything under a checkpoint directory: files 0600, directories 0700."""
    seen = 0
    for path in [honest.ck, *honest.ck.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        seen += 1
    assert seen > 5


def test_keygen_writes_a_private_key_and_prints_its_fingerprint(tmp_path: Path) -> None:
    where = tmp_path / "k"
    p = wasmig("keygen", "--dir", where)
    assert p.returncode == 0, p.stderr
    fingerprint, pub = p.stdout.splitlines()
    assert fingerprint.startswith("sha256:") and pub == f"public key: {where / 'wasmig.pub'}"
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE((where / "wasmig.key").stat().st_mode) == 0o600
    refused(wasmig("keygen", "--dir", where), "exists already", "--force")
    again = wasmig("keygen", "--dir", where, "--force")
    assert again.returncode == 0 and again.stdout.splitlines()[0] != fingerprint


def test_trust_file_that_is_not_a_public_key_is_one_line(world: World) -> None:
    snap = world.crafted(lambda s: None)
    refused(wasmig("restore", "--trust", world.tmp / "attacker" / "wasmig.key", snap), "--trust")


# --- serve: the same rule for migrating programs ----------------------------------------------------------
def migrated_state(fds: list[Any]) -> tuple[Any, dict[str, Any]]:
    """(module, plain state) of an idle WASI program with ``fds``, as a migration delivers it."""
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot, WasiSnapshot, to_plain

    module = Module.from_bytes(b"\0asm\1\0\0\0")
    state = WasiSnapshot(["p"], {}, 0, fds)
    return module, to_plain(Snapshot(module.sha256, None, "idle", [], [], [], [], [], [], state))


def daemon_target(dirs: dict[str, str], listens: tuple[str, ...] = (), gateways: tuple[str, ...] = ()) -> Any:
    import types

    from wasmig.migrate.target import Target

    target = Target.__new__(Target)
    target.dirs, target.listens, target.gateways = dirs, listens, gateways
    # Landing.prepare(snapshot, granted)
    target.id, target.landing = "t", types.SimpleNamespace(memory=None, prepare=lambda s, g: g)
    target.arrival = types.SimpleNamespace(state=None)
    return target


@pytest.mark.parametrize("kind", ["listener", "gateway"])
def test_serve_grants_no_socket_a_migrating_program_names(kind: str) -> None:
    """A migrating program whose state names a listening address or a gateway the daemon does not
    grant is refused by name; granted, the daemon's address is the one it gets."""
    from wasmig.migrate.protocol import MigrationError
    from wasmig.snapshot.state import FdSnapshot
    from wasmig.wasi import constants as C
    from wasmig.wasi.fdtable import TCP_LISTENER

    extra = {"address": "0.0.0.0:22"} if kind == "listener" else {"gateway": "10.0.0.9:8081", "gateway_key": b"k"}
    module, plain = migrated_state([FdSnapshot(3, TCP_LISTENER, C.FILETYPE_SOCKET_STREAM, C.RIGHT_SOCK_ACCEPT, 0, 0,
                                               True, True, **extra)])
    option = "--tcplisten HOST:PORT" if kind == "listener" else "--gateway 10.0.0.9:8081"
    with pytest.raises(MigrationError, match=f"fd 3, which this daemon does not map \\(start it with {option}\\)"):
        daemon_target({})._restore(module, plain)
    granted = daemon_target({}, listens=("127.0.0.1:0",), gateways=("10.0.0.9:8081",))._restore(module, plain)
    if kind == "listener":
        assert granted.listeners == {3: "127.0.0.1:0"}
    else:
        assert granted.gateways == {"10.0.0.9:8081"}
