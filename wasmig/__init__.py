"""wasmig: checkpoint, restore and live-migrate running WebAssembly (WASI) programs.

The embedding API::

    m = wasmig.Module.from_file("prog.wasm")
    imports = {"env": {"f": wasmig.HostFunc(["i32"], ["i32"], fn)}}
    inst = wasmig.Instance(m, imports)                    # wasmig's interpreter
    inst.exports["add"](1, 2)
    fast = wasmig.Instance(m, imports, engine="wasmtime")  # the same API, compiled by wasmtime
    prog = wasmig.Instance(m, wasmig.wasi.Wasi(["prog"]), engine="wasmtime")  # a WASI program, checkpointable

``wasmig.restore`` continues a snapshot (see README.md's "Using it from Python").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from wasmig.errors import DecodeError, Exhaustion, LinkError, Trap, UnsupportedFeature, ValidationError, WasmError

if TYPE_CHECKING:
    from wasmig.engines.base import Instance, Program
    from wasmig.grants import Granted
    from wasmig.interp.machine import Suspended
    from wasmig.interp.store import Global, HostFunc, Memory, Table, Val
    from wasmig.module import Module
    from wasmig.snapshot.state import Snapshot

#: The API's classes, imported on first use (PEP 562): every ``wasmig`` command imports this package
#: first, and the interpreter behind ``Instance`` costs ~30 ms that a run on wasmtime never needs.
_LAZY = {
    "Instance": "wasmig.engines.base", "Suspended": "wasmig.interp.machine", "Global": "wasmig.interp.store",
    "HostFunc": "wasmig.interp.store", "Memory": "wasmig.interp.store", "Table": "wasmig.interp.store",
    "Val": "wasmig.interp.store", "Module": "wasmig.module",
}


#: Subpackages the API names (``wasmig.wasi.Wasi``), imported on first use as well.
_SUBPACKAGES = ("wasi",)


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None and name not in _SUBPACKAGES:
        raise AttributeError(f"module 'wasmig' has no attribute {name!r}")
    import importlib

    if where is None:
        value = importlib.import_module(f"wasmig.{name}")
    else:
        value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))


def restore(state_or_path: Snapshot | str | Path, engine: str = "interp", *, module: Module | str | None = None,
            imports: Mapping[str, Mapping[str, Any]] | None = None, dirs: Mapping[str, str] | None = None,
            listen: Sequence[str] | str = (), gateway: Sequence[str] | str = (),
            trust: Sequence[str | Path] | str | Path = (), allow_unsigned: bool = False, max_memory: int | None = None,
            on_file_change: str = "fail", stdin: bytes | BinaryIO | None = None, stdout: BinaryIO | None = None,
            stderr: BinaryIO | None = None, count_steps: bool = False,
            granted: Granted | None = None) -> Instance | Program:
    """Re-create a program from a snapshot — a ``Snapshot`` (``Instance.checkpoint()``'s), a
    snapshot file or a checkpoint directory (its latest snapshot) — and return it ready to
    continue with ``.resume()``.

    - ``engine="interp"``: an :class:`Instance` on the interpreter, suspended where the snapshot
      was taken; ``resume()`` returns what the interrupted export returns.
    - ``engine="wasmtime"`` (WASI programs only): the same :class:`Instance` API on the
      instrumented module on wasmtime with the snapshot loaded
      (:class:`~wasmig.engines.wasmtime.wasi_instance.WasmtimeWasiInstance`): ``resume()`` runs on
      (a nonzero exit raises ``wasmig.wasi.ProcExit``), ``stop_at(step=...)`` stops it again and
      ``checkpoint()`` takes the next snapshot; ``runner.request()`` stops it from another thread.
      ``count_steps`` selects the deterministic variant of the instrumented module, which keeps
      the step count (needed by ``stop_at``; the snapshot must have one).

    ``module``: the :class:`Module` or its path; by default the copy kept beside the snapshots (a
    ``Snapshot`` object needs it given). A snapshot is untrusted input, checked as ``wasmig
    restore`` checks it (the same code; docs/security.md):

    - a snapshot *file* restores only when sealed by your own key or one in ``trust`` (paths of
      ``wasmig.pub`` files, as ``--trust``), unless ``allow_unsigned=True``; its memory must fit
      ``max_memory`` bytes (default 1 GiB). A ``Snapshot`` object is the caller's own: no seal.
    - a WASI program gets only the host resources granted here, never what the snapshot merely
      records: ``dirs`` (guest preopen name -> host directory, as ``--dir HOST::GUEST``),
      ``listen`` (addresses for its listening sockets, in fd order, as ``--tcplisten``),
      ``gateway`` (socket gateway control addresses, as ``--gateway``), or ``granted``
      (a :class:`wasmig.grants.Granted` of your own). The one exception: a file sealed with your
      own key may reuse the grants it was taken with, so restoring your own checkpoint directory
      needs none. Anything ungranted raises ``wasmig.grants.GrantError`` naming every missing
      grant and its keyword, before anything is opened.

    It also gets its open files back (``on_file_change``: ``"fail"``, ``"warn"`` or ``"ignore"``
    when one changed since) and ``stdin``/``stdout``/``stderr`` instead of the process's. Any
    other module needs its ``imports``, as for :class:`Instance`. Raises ``SnapshotError`` for a
    refused seal or a snapshot that does not fit the module, ``ValueError`` for an unknown engine.
    A multi-threaded program's snapshot gives a ``Program`` with every thread in place
    (interpreter; docs/threads.md). (Implemented by :func:`wasmig.session.restore.restore`, imported on first use.)
    """
    from wasmig.session.restore import restore as _restore

    return _restore(state_or_path, engine, module=module, imports=imports, dirs=dirs, listen=listen, gateway=gateway,
                    trust=trust, allow_unsigned=allow_unsigned, max_memory=max_memory,
                    on_file_change=on_file_change, stdin=stdin, stdout=stdout, stderr=stderr,
                    count_steps=count_steps, granted=granted)


__all__ = [
    "DecodeError", "Exhaustion", "Global", "HostFunc", "Instance", "LinkError", "Memory", "Module", "Suspended",
    "Table", "Trap", "UnsupportedFeature", "Val", "ValidationError", "WasmError", "restore",
]
__version__ = "0.1.0"
