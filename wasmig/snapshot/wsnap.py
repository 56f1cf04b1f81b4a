"""Single-file export of a snapshot (``.wsnap``): ``wasmig export``, ``import`` and restoring from one.

The format is specified in docs/snapshot-format.md ("Single-file export"). It reuses the
checkpoint directory's pieces as they are: the snapshot file byte for byte (its pages named by
hash), the module's bytes and each page file's zstd frame, behind a small header and a sorted
page index protected by a BLAKE3 hash.

A .wsnap is untrusted input (it travels between machines): every size and count is bounded
before anything is allocated for it, the file must be exactly as long as its header says, the
index must name exactly the pages the snapshot names, the module must have the sha256 the
snapshot records, and every page is decompressed (bounded to one page) and hashed before it is
used or stored. Every failure is a one-line :class:`SnapshotError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from wasmig.files import open_private
from wasmig.hashing import blake3
from wasmig.snapshot import packs
from wasmig.snapshot.container import _check_expected
from wasmig.snapshot.state import SnapshotError, from_plain
from wasmig.snapshot.store import (
    _HASH_RE,
    _MAX_COMPRESSED_PAGE,
    _READ_ERRORS,
    CheckpointDir,
    Container,
    _atomic_write,
    _decompress_page,
    _describe,
    _encode,
    _fsync_dir,
    _guarded,
    _list_memories,
    _mkdirs_durable,
    _one_line,
    _PageSource,
    _read_container,
    _read_manifest_from,
    _resolve,
    _temp_name,
    _unlink_quietly,
)

WSNAP_MAGIC = b"WASMIG-WSNAP"
WSNAP_VERSION = 1
_WHEADER = struct.Struct("<12sIQQQQ")  # magic, version, snapshot length, module length, page count, page bytes
_ENTRY = struct.Struct("<32sI")  # BLAKE3-256 of the page, compressed length
_HASH_SIZE = 32
#: limits, checked before anything is read or allocated (docs/snapshot-format.md)
MAX_SNAPSHOT_BYTES = 256 << 20
MAX_MODULE_BYTES = 512 << 20
MAX_PAGES = 1 << 18  # distinct pages in the file, and pages of all memories in its snapshot: 16 GiB
#: the module copy a checkpoint directory keeps (``wasmig.session.loop.MODULE_FILE_PREFIX``;
#: not imported from there, which would load the interpreter and WASI layer into ``wasmig export``)
MODULE_FILE_PREFIX = "module-"
_CHUNK = 1 << 20


def is_wsnap(path: str | Path) -> bool:
    """Whether ``path`` is (or starts like: a truncated one) a .wsnap, by its magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(WSNAP_MAGIC))
    except OSError:
        return False
    return len(head) >= len(b"WASMIG-") and WSNAP_MAGIC.startswith(head)


# --- reading ----------------------------------------------------------------------------------------
@dataclass
class _Wsnap:
    """A .wsnap whose header, index, snapshot container and module were verified (its pages are
    verified when read)."""

    fd: int
    size: int
    snapshot_bytes: bytes
    manifest: dict[str, Any]
    module_offset: int
    module_len: int
    pages: dict[str, tuple[int, int]] = field(default_factory=dict)  # hex hash -> (offset, length)
    page_bytes: int = 0

    def read_page(self, h: str) -> tuple[bytes, bytes]:
        """(compressed, page) of page ``h``, verified."""
        off, n = self.pages[h]
        comp = os.pread(self.fd, n, off)
        if len(comp) != n:
            raise SnapshotError("file changed size while being read")
        page = _decompress_page(comp, f"page {h}")
        if blake3(page).hexdigest() != h:
            raise SnapshotError(f"page {h} is corrupt (hash mismatch)")
        return comp, page

    def read_module(self) -> bytes:
        data = os.pread(self.fd, self.module_len, self.module_offset)
        if len(data) != self.module_len:
            raise SnapshotError("file changed size while being read")
        if hashlib.sha256(data).hexdigest() != self.manifest["module_sha256"]:
            raise SnapshotError("its module is corrupt (sha256 mismatch)")
        return data


class _WsnapPages(_PageSource):
    """Page entries resolved from the file instead of a page store."""

    def __init__(self, w: _Wsnap) -> None:
        super().__init__(None)
        self._w = w

    def stored(self, h: str) -> bytes:
        page = self._cache.get(h)
        if page is None:
            page = self._cache[h] = self._w.read_page(h)[1]
        return page

    def copy_stored(self, h: str, target: memoryview) -> None:
        target[:] = self.stored(h)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SnapshotError("file changed size while being read")
    return data


def _open(f: BinaryIO) -> _Wsnap:
    """Verify everything but the pages' contents, in the order docs/snapshot-format.md gives."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(_WHEADER.size)
    if head[:len(WSNAP_MAGIC)] != WSNAP_MAGIC:
        if head and WSNAP_MAGIC.startswith(head):
            raise SnapshotError(f"truncated .wsnap ({len(head)} bytes)")
        raise SnapshotError("not a wasmig .wsnap (bad magic)")
    if len(head) < _WHEADER.size:
        raise SnapshotError(f"truncated .wsnap ({len(head)} bytes, shorter than its header)")
    _, version, s_len, m_len, n_pages, p_len = _WHEADER.unpack(head)
    if version > WSNAP_VERSION:
        raise SnapshotError(f".wsnap has newer format version {version}, this wasmig reads {WSNAP_VERSION}; "
                            "upgrade wasmig to use it")
    if version != WSNAP_VERSION:
        raise SnapshotError(f"unknown .wsnap format version {version}")
    if s_len > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"corrupt .wsnap: its snapshot would be {s_len} bytes, more than the "
                            f"{MAX_SNAPSHOT_BYTES >> 20} MiB limit")
    if m_len > MAX_MODULE_BYTES:
        raise SnapshotError(f"corrupt .wsnap: its module would be {m_len} bytes, more than the "
                            f"{MAX_MODULE_BYTES >> 20} MiB limit")
    if n_pages > MAX_PAGES:
        raise SnapshotError(f"corrupt .wsnap: {n_pages} pages, more than the limit of {MAX_PAGES}")
    if p_len > n_pages * _MAX_COMPRESSED_PAGE:
        raise SnapshotError(f"corrupt .wsnap: {p_len} bytes of page data for {n_pages} pages")
    table_len = n_pages * _ENTRY.size
    expected = _WHEADER.size + table_len + _HASH_SIZE + s_len + m_len + p_len
    if size < expected:
        raise SnapshotError(f"truncated .wsnap ({size} bytes, its header says {expected})")
    if size > expected:
        raise SnapshotError(f".wsnap has {size - expected} bytes of trailing garbage")
    table = _read_exact(f, table_len + _HASH_SIZE)
    h = blake3(head)
    h.update(memoryview(table)[:table_len])
    if h.digest() != table[table_len:]:
        raise SnapshotError(".wsnap is corrupt (header and index checksum mismatch)")
    snapshot_bytes = _read_exact(f, s_len)
    try:
        manifest = _read_manifest_from(io.BytesIO(snapshot_bytes), s_len)
    except SnapshotError as e:
        raise SnapshotError(f"its snapshot: {_one_line(str(e))}") from None
    module_offset = _WHEADER.size + table_len + _HASH_SIZE + s_len
    w = _Wsnap(f.fileno(), size, snapshot_bytes, manifest, module_offset, m_len)
    offset = module_offset + m_len
    prev = b""
    for i, (digest, n) in enumerate(_ENTRY.iter_unpack(memoryview(table)[:table_len])):
        if digest <= prev:
            raise SnapshotError(f"corrupt .wsnap: index entry {i} is out of order or repeated")
        if not 1 <= n <= _MAX_COMPRESSED_PAGE:
            raise SnapshotError(f"corrupt .wsnap: index entry {i} has a page of {n} bytes")
        w.pages[digest.hex()] = (offset, n)
        offset += n
        prev = digest
    if offset - module_offset - m_len != p_len:
        raise SnapshotError("corrupt .wsnap: the index does not add up to its page data")
    w.page_bytes = p_len
    names = _check_manifest(manifest, embedded_ok=False)
    missing = names - w.pages.keys()
    if missing:
        raise SnapshotError(f"corrupt .wsnap: page {min(missing)} that its snapshot names is not in it")
    if len(names) != len(w.pages):
        raise SnapshotError(f"corrupt .wsnap: it holds {len(w.pages) - len(names)} pages its snapshot does not name")
    w.read_module()  # the sha256 the snapshot records
    return w


def _check_manifest(manifest: dict[str, Any], *, embedded_ok: bool) -> set[str]:
    """Validate every field of a manifest without building its memories; return the page hashes it names.

    Bounds the memories' pages in all (a crafted manifest of ``null`` entries could otherwise
    make a restore allocate terabytes of zero pages)."""
    lists = _list_memories(manifest)
    if sum(len(m) for m in lists) > MAX_PAGES:
        raise SnapshotError(f"snapshot has more than {MAX_PAGES} memory pages in all, the .wsnap limit")
    names: set[str] = set()

    def check(index: int, raw: Any, size_pages: int) -> None:
        if not isinstance(raw, list) or len(raw) != size_pages:
            raise SnapshotError(f"corrupt snapshot: memory {index} page list does not match its size")
        for j, entry in enumerate(raw):
            if isinstance(entry, str):
                if not _HASH_RE.fullmatch(entry):
                    raise SnapshotError(f"corrupt snapshot: memory {index} page {j} has an invalid hash")
                names.add(entry)
            elif not (entry is None or embedded_ok and isinstance(entry, bytes)):
                raise SnapshotError(f"corrupt snapshot: memory {index} page {j} is neither a hash nor a page")

    from_plain(manifest, check)
    sha = manifest.get("module_sha256")
    if not (isinstance(sha, str) and _HASH_RE.fullmatch(sha)):
        raise SnapshotError("corrupt snapshot: module_sha256 is not a sha256")
    return names


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[_Wsnap]:
    with open(path, "rb") as f:
        yield _open(f)


def load_wsnap(path: Path, expect: bytes | None = None) -> Any:
    """The :class:`~wasmig.snapshot.state.Snapshot` in a .wsnap (for ``store.load_snapshot``;
    ``expect``: the checksum its snapshot must have, see ``store.read_sealed``)."""
    with _opened(path) as w:
        if expect is not None:
            _check_expected(_inner(w).checksum, expect)
        return from_plain(w.manifest, _WsnapPages(w).memory)


def _inner(w: _Wsnap) -> Container:
    return _read_container(io.BytesIO(w.snapshot_bytes), len(w.snapshot_bytes))


def container(path: Path) -> Container:
    """The container of the snapshot inside the .wsnap ``path`` (its manifest, checksum, seal),
    the whole file checked as a read checks it."""
    with _opened(path) as w:
        return _inner(w)


def read_module(path: Path) -> bytes:
    """The module a .wsnap carries, verified against the sha256 its snapshot records."""
    def read() -> bytes:
        with _opened(path) as w:
            return w.read_module()

    return _guarded(path, "read .wsnap", read)


def storage_stats(path: Path) -> dict[str, Any]:
    """``store_stats.storage_stats`` for a .wsnap, from its manifest and index."""
    with _opened(path) as w:
        entries = [e for m in _list_memories(w.manifest) for e in m]
        return {"layout": "wsnap", "pages_total": len(entries), "pages_zero": sum(e is None for e in entries),
                "pages_distinct": len(w.pages), "pages_repeated": sum(e is not None for e in entries) - len(w.pages),
                "stored_bytes": w.page_bytes, "module_bytes": w.module_len, "snapshot_bytes": w.size}


# --- export -----------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    snapshot: Path | str  # the snapshot file exported (or its URL in a store)
    output: Path
    pages: int  # distinct non-zero pages in the file
    bytes: int  # size of the file


def _find_module(file: Path, manifest: dict[str, Any], explicit: str | None) -> bytes:
    """The module's bytes, as ``session.find_module_for`` finds it: ``--module``, else the copy kept in
    the checkpoint directory, else the path recorded at checkpoint time. Verified by sha256."""
    sha = manifest["module_sha256"]
    if explicit:
        candidates = [Path(explicit)]
    else:
        name = f"{MODULE_FILE_PREFIX}{sha}.wasm"
        candidates = [file.parent.parent / name, file.parent / name]
        meta = manifest.get("meta")
        recorded = meta.get("module_path") if isinstance(meta, dict) else None
        if isinstance(recorded, str):
            candidates.append(Path(recorded))
    for path in candidates:
        try:
            if not path.is_file():
                if explicit:
                    raise SnapshotError(f"--module {path}: no such file")
                continue
            if path.stat().st_size > MAX_MODULE_BYTES:
                raise SnapshotError(f"{path} is larger than the {MAX_MODULE_BYTES >> 20} MiB a .wsnap can hold")
            data = path.read_bytes()
        except OSError as e:
            raise SnapshotError(f"cannot read module {path}: {_describe(e)}") from None
        if hashlib.sha256(data).hexdigest() == sha:
            return data
        if explicit:
            raise SnapshotError(f"{path} is not the module this snapshot was taken of "
                                f"(sha256 {hashlib.sha256(data).hexdigest()[:16]}..., expected {sha[:16]}...)")
    raise SnapshotError("cannot find the module this snapshot was taken of; give it with --module PATH")


def export_snapshot(source: str | Path, output: str | Path, *, module: str | None = None,
                    force: bool = False) -> ExportResult:
    """Write the snapshot ``source`` (a checkpoint directory: its latest; or a snapshot file) with its
    pages and module to the .wsnap ``output``, atomically; refuses an existing ``output`` unless ``force``.

    Every error is a one-line :class:`SnapshotError` naming the snapshot, a page or ``output``.
    A store URL (``s3://``, ``file://``) is first copied into a temporary checkpoint directory."""
    from wasmig.snapshot.stores import is_store_url, locate, open_store

    if is_store_url(source):
        import tempfile

        url, which = locate(str(source))
        store = open_store(url)
        with tempfile.TemporaryDirectory(prefix="wasmig-export-") as tmp:
            try:
                local = store.to_directory(which, Path(tmp) / "ck")  # type: ignore[attr-defined]
            except OSError as e:
                raise SnapshotError(f"{source}: cannot export snapshot: {_describe(e)}") from None
            result = export_snapshot(local, output, module=module, force=force)
            return ExportResult(str(which or store.latest()), result.output, result.pages, result.bytes)
    source, output = Path(source), Path(output)
    file = _guarded(source, "read snapshot", _resolve, source)
    plan = _guarded(file, "export snapshot", _plan_export, file, module)
    try:  # stat can fail for reasons other than absence (a name longer than NAME_MAX: ENAMETOOLONG)
        if output.is_dir():
            raise SnapshotError(f"{output} is a directory")
        if output.exists() and os.path.samefile(output, file):
            raise SnapshotError(f"{output} is the snapshot being exported")
        if output.exists() and not force:
            raise SnapshotError(f"{output} exists (--force replaces it)")
    except OSError as e:
        raise SnapshotError(f"cannot write {output}: {_describe(e)}") from None
    tmp = _temp_name(output)
    try:
        fd = open_private(tmp)
    except OSError as e:
        raise SnapshotError(f"cannot write {output}: {_describe(e)}") from None
    try:
        with open(fd, "wb", buffering=_CHUNK) as out:
            for chunk in plan.chunks:
                out.write(chunk)
            for h, n in zip(plan.hashes, plan.lengths, strict=True):
                out.write(plan.page(h, n))
            out.flush()
            os.fsync(out.fileno())
        _publish(tmp, output, force)
    except OSError as e:
        raise SnapshotError(f"cannot write {output}: {_describe(e)}") from None
    except (SnapshotError, *_READ_ERRORS) as e:  # a page that went bad since it was sized
        raise SnapshotError(f"{file}: cannot export snapshot: {_describe(e)}") from None
    finally:
        _unlink_quietly(tmp)
    return ExportResult(file, output, len(plan.hashes), plan.total)


@dataclass
class _ExportPlan:
    chunks: list[bytes]  # header, index, its hash, snapshot, module
    hashes: list[str]
    lengths: list[int]
    embedded: dict[str, bytes]
    store: packs.PackStore

    @property
    def total(self) -> int:
        return sum(len(c) for c in self.chunks) + sum(self.lengths)

    def page(self, h: str, n: int) -> bytes:
        """Page ``h``'s zstd frame, read and verified now (one page in memory at a time)."""
        if h in self.embedded:
            return self.embedded[h]  # verified when it was moved out of the manifest
        found = self.store.read(h)
        if found is None or len(found[0]) != n:
            raise SnapshotError(f"page {h} changed while being exported")
        comp, where = found
        if blake3(_decompress_page(comp, where)).hexdigest() != h:
            raise SnapshotError(f"{where} is corrupt (hash mismatch)")
        return comp


def _sealed_by_own_key(seal: Any) -> bool:
    from wasmig.snapshot.signing import own_key_pair

    pair = own_key_pair(create=False)
    return seal is not None and pair is not None and seal.signer.raw == pair.public.raw and seal.valid()


def _plan_export(file: Path, module: str | None) -> _ExportPlan:
    """Everything but the pages' bytes: the snapshot checked, the module found, the pages sized."""
    if is_wsnap(file):
        raise SnapshotError("is already a .wsnap")
    with open(file, "rb") as f:
        raw = f.read()
    read = _read_container(io.BytesIO(raw), len(raw))
    manifest, seal = read.manifest, read.seal
    _check_manifest(manifest, embedded_ok=True)
    store = packs.PackStore(file.parent.parent / "pages")
    store.refresh()
    embedded: dict[str, bytes] = {}  # a single-file snapshot's pages, moved out of its manifest
    for i, entries in enumerate(_list_memories(manifest)):
        for j, e in enumerate(entries):
            if isinstance(e, bytes):
                h = blake3(_decompress_page(e, f"embedded page {j} of memory {i}")).hexdigest()
                embedded.setdefault(h, e)
                entries[j] = h
    # moving the pages out changes the manifest, so its seal: the exporter seals it again, but only
    # what the exporter's own key sealed before (exporting must not launder someone else's snapshot)
    snapshot_bytes = b"".join(_encode(manifest, sign=_sealed_by_own_key(seal))) if embedded else raw
    if len(snapshot_bytes) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"its manifest is {len(snapshot_bytes)} bytes, more than a .wsnap holds "
                            f"({MAX_SNAPSHOT_BYTES >> 20} MiB)")
    hashes = sorted({e for m in _list_memories(manifest) for e in m if isinstance(e, str)})
    lengths: list[int] = []
    for h in hashes:
        if h in embedded:
            lengths.append(len(embedded[h]))
            continue
        n = store.size(h)
        if n is None:
            raise SnapshotError(f"page {h} is missing from the page store ({store.pages_dir}){store.why_missing()}")
        if not 1 <= n <= _MAX_COMPRESSED_PAGE:
            raise SnapshotError(f"page file {store.legacy_path(h)} is {n} bytes, not a compressed 64 KiB page")
        lengths.append(n)
    module_bytes = _find_module(file, manifest, module)
    table = b"".join(_ENTRY.pack(bytes.fromhex(h), n) for h, n in zip(hashes, lengths, strict=True))
    head = _WHEADER.pack(WSNAP_MAGIC, WSNAP_VERSION, len(snapshot_bytes), len(module_bytes), len(hashes), sum(lengths))
    digest = blake3(head)
    digest.update(table)
    return _ExportPlan([head, table, digest.digest(), snapshot_bytes, module_bytes], hashes, lengths, embedded,
                       store)


def _publish(tmp: Path, output: Path, force: bool) -> None:
    """Give the complete temporary file its name: ``link`` (refuses an existing file) unless ``force``."""
    if force:
        os.replace(tmp, output)
    else:
        try:
            os.link(tmp, output)
        except FileExistsError:
            raise SnapshotError(f"{output} exists (--force replaces it)") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if output.exists():  # a filesystem without hard links: check, then rename
                raise SnapshotError(f"{output} exists (--force replaces it)") from None
            os.replace(tmp, output)
    _fsync_dir(output.parent)


# --- import -----------------------------------------------------------------------------------------
def import_wsnap(source: str | Path, directory: str | Path) -> Path | str:
    """Unpack the .wsnap ``source`` into the checkpoint directory ``directory`` (created if missing)
    as its next snapshot; return the new snapshot file's path (a store URL: the snapshot's URL,
    published as any write there is: pages, module, the snapshot file last).

    Everything is verified before the directory is touched. Then, holding the directory's
    ``.gc-lock`` shared as any writer does: the pages the store lacks (each atomically, then their
    directories fsynced), the module copy, and last the snapshot file under the next free number."""
    from wasmig.snapshot.stores import is_store_url, open_store

    remote = is_store_url(directory)
    store_url = str(directory)
    source, directory = Path(source), Path(directory)
    try:
        f = open(source, "rb")
    except OSError as e:
        raise SnapshotError(f"{source}: cannot read .wsnap: {_describe(e)}") from None
    with f:
        w, module_bytes = _guarded(source, "read .wsnap", _verify_all, f)
        if remote:
            pages = ((h, w.read_page(h)[0]) for h in sorted(w.pages))  # verified again as they are read
            return _guarded(source, "import", open_store(store_url).import_sealed,  # type: ignore[no-any-return]
                            w.snapshot_bytes, pages, w.manifest["module_sha256"], module_bytes)
        try:  # stat can fail for reasons other than absence (a name longer than NAME_MAX: ENAMETOOLONG)
            not_dir = directory.exists() and not directory.is_dir()
        except OSError as e:
            raise SnapshotError(f"{directory}: cannot import: {_describe(e)}") from None
        if not_dir:
            raise SnapshotError(f"{directory}: not a directory")
        store = CheckpointDir(directory)
        written: list[tuple[Path, set[str]]] = []  # the pack _store_pages published, if any
        try:
            _mkdirs_durable(directory)
            try:
                with store._gc_lock(fcntl.LOCK_SH):
                    _store_pages(store, w, written)
                    _store_module(directory, w.manifest["module_sha256"], module_bytes)
                    return store._install([w.snapshot_bytes])
            except BaseException:
                for pack, hashes in written:  # no snapshot names it (a full disk left it for gc to find)
                    store.discard_pack(pack, hashes)
                raise
        except OSError as e:
            raise SnapshotError(f"{directory}: cannot import: {_describe(e)}") from None
        except (SnapshotError, *_READ_ERRORS) as e:  # the file changed since it was verified
            raise SnapshotError(f"{source}: cannot import: {_describe(e)}") from None


def _verify_all(f: BinaryIO) -> tuple[_Wsnap, bytes]:
    w = _open(f)
    for h in w.pages:  # every page, before anything is written
        w.read_page(h)
    return w, w.read_module()


def _store_pages(store: CheckpointDir, w: _Wsnap, written: list[tuple[Path, set[str]]]) -> None:
    """The pages the store lacks, as one new pack (added to ``written`` with its pages once it is
    published, for the caller to take back should the import fail later); then ``pages/`` fsynced
    (also for pages found in packs another writer may not have made durable)."""
    _mkdirs_durable(store.pages_dir)
    _mkdirs_durable(store.snapshots_dir)
    present = packs.PackStore(store.pages_dir)
    present.refresh()
    writer = packs.PackWriter(store.pages_dir)
    try:
        for h in sorted(w.pages):
            if not present.has(h):
                writer.append(h, w.read_page(h)[0])  # verified again: the file could have changed
        pack = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if pack is not None:
        written.append((pack, writer.page_hashes()))
    for d in sorted({h[:2] for h in w.pages if h not in present.locations and present.has(h)}):
        _fsync_dir(store.pages_dir / d)  # layout-1 pages it names
    _fsync_dir(store.pages_dir)


def _store_module(directory: Path, sha: str, data: bytes) -> None:
    path = directory / f"{MODULE_FILE_PREFIX}{sha}.wasm"
    with contextlib.suppress(OSError):
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            return
    _atomic_write(path, [data])
