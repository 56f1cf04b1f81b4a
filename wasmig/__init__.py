"""wasmig: checkpoint, restore and live-migrate running WebAssembly (WASI) programs.

The embedding API::

    m = wasmig.Module.from_file("prog.wasm")
    inst = wasmig.Instance(m, imports={"env": {"f": wasmig.HostFunc(["i32"], ["i32"], fn)}})
    inst.exports["add"](1, 2)
"""

from wasmig.errors import DecodeError, Exhaustion, LinkError, Trap, UnsupportedFeature, ValidationError, WasmError
from wasmig.instance import Instance
from wasmig.interp.machine import Suspended
from wasmig.interp.store import Global, HostFunc, Memory, Table, Val
from wasmig.module import Module


def restore(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Re-create an instance from a snapshot; see :func:`wasmig.snapshot.api.restore`."""
    from wasmig.snapshot.api import restore as _restore

    return _restore(*args, **kwargs)


__all__ = [
    "DecodeError", "Exhaustion", "Global", "HostFunc", "Instance", "LinkError", "Memory", "Module", "Suspended",
    "Table", "Trap", "UnsupportedFeature", "Val", "ValidationError", "WasmError", "restore",
]
__version__ = "0.1.0"
