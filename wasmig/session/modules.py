"""The module a snapshot belongs to, kept beside its snapshots, and found again for a restore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from wasmig.errors import SnapshotError, WasmError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot

from wasmig.snapshot.stores.local import MODULE_FILE_PREFIX


def store_module(directory: Path, module: Module) -> Path:
    """Keep the module's bytes beside its snapshots (once, atomically), so a restore — possibly on
    another machine — finds exactly the module the snapshot belongs to."""
    from wasmig.snapshot.stores.local import LocalStore

    return Path(LocalStore(directory).put_module(module))


def find_module_for(snapshot_path: Path | str, snap: Snapshot, explicit: str | None, *, validate: bool = True,
                    decode: bool = True, features: Iterable[str] | None = None) -> Module:
    """The module a snapshot belongs to: ``--module``, else the copy stored beside the snapshots
    (or kept by the store ``snapshot_path`` is a URL of), else the path recorded at checkpoint
    time. Always verified by sha256. ``validate=False`` defers validation to first use,
    ``decode=False`` decoding too (see :class:`Module`): a restore on wasmtime needs neither
    when the module's instrumented variant is cached."""
    from wasmig.module import Module
    from wasmig.snapshot.stores import is_store_url, reader_for
    from wasmig.snapshot.wsnap import MAX_MODULE_BYTES  # refused before it is read: the largest a .wsnap holds

    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    elif is_store_url(snapshot_path):  # the store keeps it by hash (checked there and below)
        data = reader_for(str(snapshot_path))[0].module_bytes(snap.module_sha256)
        if data is not None:
            return Module.from_bytes(data, validate=validate, decode=decode)
    else:
        from wasmig.snapshot import wsnap

        snapshot_path = Path(snapshot_path)
        if wsnap.is_wsnap(snapshot_path):  # a single-file export carries its module (sha256 checked)
            return Module.from_bytes(wsnap.read_module(snapshot_path), validate=validate, decode=decode,
                                     features=features or ())
        base = snapshot_path if snapshot_path.is_dir() else snapshot_path.parent.parent
        candidates.append(base / f"{MODULE_FILE_PREFIX}{snap.module_sha256}.wasm")
        candidates.append(snapshot_path.parent / f"{MODULE_FILE_PREFIX}{snap.module_sha256}.wasm")
    recorded = snap.meta.get("module_path")
    if not explicit and isinstance(recorded, str):
        candidates.append(Path(recorded))
    unusable = ""  # why a file that was there is not the module: said when none is
    for path in candidates:
        if os.path.isfile(path):  # not Path.is_file: it raises for a name over NAME_MAX
            try:
                module = Module.from_file(path, validate=validate, decode=decode, max_bytes=MAX_MODULE_BYTES,
                                          features=features or ())
            except WasmError as e:  # a damaged copy: the next candidate may be intact; name the file if not
                if explicit:
                    raise SnapshotError(f"{path}: {e}") from None
                unusable = unusable or f" ({path}: {e})"
                continue
            if not decode:
                module.cached_facts()  # their sha256, when they are cached: the module is then not even read
            if module.sha256 != snap.module_sha256:
                if explicit:
                    raise SnapshotError(f"{path} is not the module this snapshot was taken of "
                                        f"(sha256 {module.sha256[:16]}..., expected {snap.module_sha256[:16]}...)")
                continue
            return module
    raise SnapshotError(f"cannot find the module this snapshot was taken of{unusable}; give it with --module PATH")
