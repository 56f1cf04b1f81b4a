"""The snapshot file's container and the page codec, shared by every reader and writer.

A snapshot file is a header (magic, format version, manifest length), a msgpack manifest and a
BLAKE3 of both (docs/snapshot-format.md, "Snapshot files"); a stored page is one zstd frame of
64 KiB. Everything here treats its input as untrusted: sizes are checked before allocating,
decompression is bounded to one page, and every failure becomes a one-line
:class:`SnapshotError` (:func:`_guarded` names the file).
"""

from __future__ import annotations

import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import zstandard

from wasmig.hashing import blake3
from wasmig.snapshot import packs
from wasmig.snapshot.state import FORMAT_VERSION, NEWEST_FORMAT_VERSION, PAGE_SIZE, SnapshotError

MAGIC = b"WASMIGSNAP"
_HEADER = struct.Struct("<10sII")  # magic, format version, manifest length
HEADER_SIZE = _HEADER.size
HASH_SIZE = 32
# zstd's worst case for one incompressible 64 KiB page is a few bytes over the page; anything much
# larger is not a page we wrote, and reading it whole would let a corrupt store exhaust memory.
_MAX_COMPRESSED_PAGE = packs.MAX_COMPRESSED_PAGE
_MAX_MANIFEST = 0xFFFFFFFF  # the header's u32 length
_HASH_RE = re.compile(r"[0-9a-f]{64}")  # also what keeps a manifest from naming a path outside pages/

_tls = threading.local()  # zstd contexts are not thread-safe; one per thread, reused across calls


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


# --- small helpers ----------------------------------------------------------------------------------
def _one_line(text: str, limit: int = 500) -> str:
    """Error text for a terminal: one line, and bounded (validation messages may quote file contents)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return _one_line(str(exc)) or type(exc).__name__


# Everything a malformed file can make the libraries below raise. SnapshotError passes through.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, MemoryError, RecursionError,
    zstandard.ZstdError, msgpack.UnpackException,
)


def _encode(manifest: dict[str, Any], *, sign: bool = True) -> list[bytes]:
    """Header, msgpack manifest, trailing BLAKE3 of both and (``sign``, when the user has a key) the
    seal signing that checksum (:mod:`wasmig.snapshot.signing`), as chunks (a single file's manifest
    can be large)."""
    try:
        body = msgpack.packb(manifest, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise SnapshotError(f"cannot encode snapshot: {_describe(e)}") from None
    if len(body) > _MAX_MANIFEST:
        raise SnapshotError(f"snapshot manifest is {len(body)} bytes, more than the format's 4 GiB limit; "
                            "use a checkpoint directory instead of a single file")
    # the header's version is the manifest's (2 for a multi-threaded program); anything else in the
    # manifest is written under version 1 and found out by the reader ("disagree")
    version = manifest.get("format_version")
    if not (isinstance(version, int) and FORMAT_VERSION <= version <= NEWEST_FORMAT_VERSION):
        version = FORMAT_VERSION
    header = _HEADER.pack(MAGIC, version, len(body))
    h = blake3(header)
    h.update(body)
    checksum = h.digest()
    if not sign:
        return [header, body, checksum]
    from wasmig.snapshot.signing import seal_for  # the cryptography package, imported when a snapshot is written

    return [header, body, checksum, seal_for(checksum)]


def _check_frame(comp: bytes | memoryview, what: str) -> None:
    """A stored page's bounds, before decompressing: its size, and the content size its frame claims.

    python-zstandard trusts the frame's content size and allocates it before decompressing, so a
    crafted header could claim gigabytes: the claim is checked first, and the output capped anyway."""
    if len(comp) > _MAX_COMPRESSED_PAGE:
        raise SnapshotError(f"{what} is {len(comp)} bytes compressed, too large for a 64 KiB page")
    try:
        claimed = zstandard.frame_content_size(comp)
    except zstandard.ZstdError as e:
        raise SnapshotError(f"{what} is not a valid compressed 64 KiB page ({_describe(e)})") from None
    if claimed not in (PAGE_SIZE, -1):
        raise SnapshotError(f"{what} decompresses to {claimed} bytes, not {PAGE_SIZE}")


def _decompress_page(comp: bytes, what: str) -> bytes:
    """One stored page, bounded to PAGE_SIZE of output whatever its frame header claims."""
    _check_frame(comp, what)
    try:
        page = _decompressor().decompress(comp, max_output_size=PAGE_SIZE, allow_extra_data=False)
    except zstandard.ZstdError as e:  # includes output that would exceed one page
        raise SnapshotError(f"{what} is not a valid compressed 64 KiB page ({_describe(e)})") from None
    if len(page) != PAGE_SIZE:
        raise SnapshotError(f"{what} decompresses to {len(page)} bytes, not {PAGE_SIZE}")
    return page


def _decompress_into(comp: memoryview, target: memoryview, what: str) -> None:
    """:func:`_decompress_page` into ``target`` (PAGE_SIZE bytes), with the same bounds and checks
    (output beyond the page is read as one byte and refused)."""
    _check_frame(comp, what)
    try:
        reader = _decompressor().stream_reader(comp, read_across_frames=False)
        got = 0
        while got < PAGE_SIZE:
            n = reader.readinto(target[got:])
            if not n:
                break
            got += n
        extra = reader.read(1)
    except zstandard.ZstdError as e:
        raise SnapshotError(f"{what} is not a valid compressed 64 KiB page ({_describe(e)})") from None
    if got != PAGE_SIZE or extra:
        raise SnapshotError(f"{what} decompresses to {got + len(extra)}{'+' if extra else ''} bytes, not {PAGE_SIZE}")


# --- reading ----------------------------------------------------------------------------------------
def _read_manifest(path: Path, expect: bytes | None = None) -> dict[str, Any]:
    """Read and verify a snapshot file's container (magic, version, length, hash); return the manifest.
    ``expect``: the checksum it must have (the one whose seal was checked; see :func:`read_sealed`)."""
    with open(path, "rb") as f:
        container = _read_container(f, os.fstat(f.fileno()).st_size)
    _check_expected(container.checksum, expect)
    return container.manifest


def _check_expected(checksum: bytes, expect: bytes | None) -> None:
    if expect is not None and checksum != expect:
        raise SnapshotError("snapshot changed after its signature was checked")


def _read_manifest_from(f: BinaryIO, size: int) -> dict[str, Any]:
    """:func:`_read_manifest` for a container of ``size`` bytes at ``f``'s position (a snapshot
    file, or the one inside a .wsnap, given as a ``BytesIO``)."""
    return _read_container(f, size).manifest


@dataclass(frozen=True)
class Container:
    """A snapshot file's manifest, its checksum and its :class:`~wasmig.snapshot.signing.Seal`
    (None: unsigned). The seal is parsed, not verified: whether its signer is trusted is the
    caller's question (:func:`wasmig.snapshot.signing.check_trust`)."""

    manifest: dict[str, Any]
    checksum: bytes
    seal: Any


def _read_container(f: BinaryIO, size: int) -> Container:
    """Read and verify a container of ``size`` bytes at ``f``'s position."""
    header = f.read(HEADER_SIZE)
    if header[:len(MAGIC)] != MAGIC:
        if header and MAGIC.startswith(header):
            raise SnapshotError(f"truncated snapshot ({len(header)} bytes)")
        raise SnapshotError("not a wasmig snapshot (bad magic)")
    if len(header) < HEADER_SIZE:
        raise SnapshotError(f"truncated snapshot ({len(header)} bytes, shorter than the header)")
    _, version, length = _HEADER.unpack(header)
    if version > NEWEST_FORMAT_VERSION:
        raise SnapshotError(f"snapshot has newer format version {version}, this wasmig reads {NEWEST_FORMAT_VERSION}; "
                            "upgrade wasmig to restore it")
    if not FORMAT_VERSION <= version <= NEWEST_FORMAT_VERSION:
        raise SnapshotError(f"unknown snapshot format version {version}")
    expected = HEADER_SIZE + length + HASH_SIZE
    if size < expected:
        raise SnapshotError(f"truncated snapshot ({size} bytes, the header says {expected})")
    from wasmig.snapshot.signing import SEAL_MAGIC, SEAL_SIZE, Seal

    if size > expected + SEAL_SIZE:
        raise SnapshotError(f"snapshot has {size - expected} bytes of trailing garbage")
    rest = f.read(size - HEADER_SIZE + 1)
    if len(rest) != size - HEADER_SIZE:
        raise SnapshotError("snapshot changed size while being read")
    body = memoryview(rest)[:length]
    h = blake3(header)
    h.update(body)
    checksum = rest[length:length + HASH_SIZE]
    if h.digest() != checksum:
        raise SnapshotError("snapshot is corrupt (checksum mismatch)")
    tail = rest[length + HASH_SIZE:]
    seal = None
    if len(tail) == SEAL_SIZE:
        seal = Seal.parse(tail, checksum)
    elif tail and (SEAL_MAGIC.startswith(tail[:len(SEAL_MAGIC)])):
        raise SnapshotError(f"truncated snapshot ({size} bytes: its signature is cut short)")
    elif tail:
        raise SnapshotError(f"snapshot has {len(tail)} bytes of trailing garbage")
    manifest = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    if not isinstance(manifest, dict):
        raise SnapshotError("corrupt snapshot: manifest is not a map")
    if manifest.get("format_version") != version:
        raise SnapshotError("corrupt snapshot: manifest and header disagree on the format version")
    return Container(manifest, bytes(checksum), seal)


def _guarded(path: Path, what: str, fn: Any, *args: Any) -> Any:
    """Run a read, turning *every* failure into a one-line SnapshotError that names ``path``.

    Callers (the CLI, a migration receiver) rely on "a snapshot either loads or raises
    SnapshotError": a malformed file must never surface as a msgpack/zstd/KeyError traceback.
    The final ``except Exception`` is that contract's backstop; its message says "internal error" and
    keeps the exception type so a real bug stays recognisable (the corruption tests assert it is
    never reached).
    """
    try:
        return fn(*args)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {_one_line(str(e))}") from None
    except _READ_ERRORS as e:
        raise SnapshotError(f"{path}: cannot {what}: {_describe(e)}") from None
    except Exception as e:  # the backstop: see the docstring
        raise SnapshotError(f"{path}: cannot {what}: internal error {type(e).__name__}: {_describe(e)}") from e


def _page_hashes(manifest: dict[str, Any]) -> set[str]:
    """The page-store hashes a manifest names (not its zero or embedded pages)."""
    return {e for m in _list_memories(manifest) for e in m if isinstance(e, str)}


def _list_memories(manifest: dict[str, Any]) -> list[list[Any]]:
    mems = manifest.get("memories")
    if not isinstance(mems, list) or not all(isinstance(m, dict) and isinstance(m.get("data"), list) for m in mems):
        raise SnapshotError("corrupt snapshot: malformed memories")
    return [m["data"] for m in mems]


