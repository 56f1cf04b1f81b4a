"""The controller's job table, kept where the controller's death does not take it: Ray's key-value
store in the GCS, on the head node (docs/fleet.md, "Persistence").

The controller is one detached actor; its table used to live only in its memory, so a controller
that died (killed, its worker crashed) lost every job's row although the jobs' snapshots and logs
were safe in their stores. Now each change is saved here and a new controller (made by the next
``wasmig cluster`` command, or by Ray restarting it) reads it back in ``__init__``.

Why the GCS's key-value store rather than a file: it lives exactly as long as the cluster (as the
table should: a new cluster on the same head must not inherit the jobs of an old one), every node
reaches it with no shared filesystem, and with GCS fault tolerance (Redis) it outlives even the
head's GCS process. It is the store Ray's own libraries keep their state in; the API is
``ray.experimental.internal_kv``. Who can write it can already run code on the cluster (docs/fleet.md,
Security), so a job's spec is kept pickled, as Ray passes it between actors anyway.

Layout, namespace ``wasmig``: ``jobs`` (JSON: one row per job, without its spec) and
``spec/<job id>`` (the pickled :class:`~wasmig.ray.spec.JobSpec`, written once at submit).
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from ray.experimental import internal_kv

from wasmig.ray.spec import JobSpec

NAMESPACE = "wasmig"
_TABLE_KEY = b"jobs"
#: the fields of a job's row that are saved (its actor handles are not: they die with the controller)
ROW_FIELDS = ("id", "state", "node", "engine", "restarts", "moves", "outcome", "avoid")


def _spec_key(job_id: str) -> bytes:
    return f"spec/{job_id}".encode()


def save_spec(job_id: str, spec: JobSpec) -> None:
    internal_kv._internal_kv_put(_spec_key(job_id), pickle.dumps(spec), overwrite=True, namespace=NAMESPACE)


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """The table as saved: JSON, sets as sorted lists, anything else JSON lacks as its ``str``."""
    def plain(value: Any) -> Any:
        if isinstance(value, set):
            return sorted(value)
        return str(value)

    return json.dumps(rows, default=plain, sort_keys=True).encode()


def save_rows(data: bytes) -> None:
    internal_kv._internal_kv_put(_TABLE_KEY, data, overwrite=True, namespace=NAMESPACE)


def saved() -> bool:
    """Whether a controller saved a table on this cluster (one that died is then made again)."""
    return bool(internal_kv._internal_kv_exists(_TABLE_KEY, namespace=NAMESPACE))


def load() -> list[tuple[dict[str, Any], JobSpec]]:
    """The saved rows with their specs (a row whose spec is missing or unreadable is skipped: a
    submit that died between the two puts)."""
    raw = internal_kv._internal_kv_get(_TABLE_KEY, namespace=NAMESPACE)
    if not raw:
        return []
    out = []
    for row in json.loads(raw):
        blob = internal_kv._internal_kv_get(_spec_key(str(row.get("id"))), namespace=NAMESPACE)
        try:
            spec = pickle.loads(blob) if blob else None  # noqa: S301 - written by the controller (module docstring)
        except Exception:  # noqa: BLE001 - an unreadable spec: that job cannot be run again anyway
            spec = None
        if isinstance(spec, JobSpec):
            out.append((row, spec))
    return out


def forget_all() -> None:
    """Remove the saved table and specs (a fleet shut down on purpose)."""
    for key in internal_kv._internal_kv_list(b"spec/", namespace=NAMESPACE):
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)
    internal_kv._internal_kv_del(_TABLE_KEY, namespace=NAMESPACE)
