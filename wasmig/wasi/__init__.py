"""WASI preview1 in Python, one implementation for every engine (docs/wasi.md).

``wasmig.wasi.Wasi(args, env, preopens=..., stdin=..., stdout=...)`` is a program's WASI state;
pass it as the imports of ``wasmig.Instance(module, wasi, engine=...)`` to run a WASI program
from Python. ``ProcExit`` is how the program's ``proc_exit`` ends a call.
"""

from wasmig.wasi.preview1 import ProcExit, Wasi

__all__ = ["ProcExit", "Wasi"]
