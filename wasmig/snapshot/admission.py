"""What a restore checks of a snapshot before it reads a page: who sealed it, and its size.

The order matters: the container is read and its seal checked against the trusted keys
(:mod:`wasmig.snapshot.signing`), then the memory size against the limit
(:mod:`wasmig.snapshot.limits`), all from the manifest alone; the caller then loads the snapshot
with ``expect=`` the checked checksum, so it restores exactly the bytes that were checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wasmig.errors import SnapshotError
from wasmig.keys import KeyFileError
from wasmig.snapshot.limits import check_manifest_memory
from wasmig.snapshot.signing import Trust, Verdict, check_trust
from wasmig.snapshot.store import read_sealed


@dataclass(frozen=True)
class Admitted:
    """A snapshot a restore may go on with: its file, the checksum that was checked, who sealed it."""

    file: Path | str  # a store URL names its snapshot by URL
    checksum: bytes
    verdict: Verdict
    manifest: dict[str, Any]


def trust_from_options(trust_files: Sequence[str | Path], allow_unsigned: bool, option: str = "--trust") -> Trust:
    """``--trust FILE...`` (``wasmig.restore``'s ``trust=``: ``option``) and ``--allow-unsigned``: a
    bad key file is a one-line SnapshotError."""
    try:
        return Trust.from_options([str(f) for f in trust_files], allow_unsigned)
    except KeyFileError as e:
        raise SnapshotError(f"{option}: {e}") from None


def admit(path: str | Path, trust: Trust, max_memory: int | None, api: bool = False) -> Admitted:
    """Check ``path``'s seal and memory size; raise a one-line SnapshotError when it may not be
    restored (``api``: naming :func:`wasmig.restore`'s keywords rather than the command line's options)."""
    file, container = read_sealed(path)
    verdict = check_trust(str(path), container.seal, trust, api)
    try:
        check_manifest_memory(container.manifest, max_memory, api)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None
    return Admitted(file, container.checksum, verdict, container.manifest)
