"""Building and running wasi-threads test programs (tests/test_wasi_threads.py, tests/test_pthreads.py).

C programs are compiled by :func:`wasmig.toolchain.compile_c` with a shared memory imported and
the atomics the compiler may emit; pthread programs include ``tests/programs/include/wasmig_pthread.h``
(wasmig's own pthread layer over ``wasi.thread-spawn``: docs/toolchain.md), whose hash is folded
into the flags, since the toolchain's cache hashes the ``.c`` file only.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import wasmig
from wasmig import engines
from wasmig.toolchain import compile_c
from wasmig.wasi.preview1 import Wasi

PROGRAMS = Path(__file__).resolve().parent / "programs"
PTHREAD_HEADER = PROGRAMS / "include" / "wasmig_pthread.h"
#: a shared memory imported, up to 64 MiB; the atomics the C compiler may emit
THREAD_FLAGS = ("-mcpu=generic+atomics+bulk_memory",
                "-Wl,--import-memory,--export-memory,--shared-memory,--max-memory=67108864")
#: the engines that run wasi-threads programs
ENGINES = ("interp", "wasmtime")


def compile_threaded(name: str) -> Path:
    """``tests/programs/NAME.c`` built as a wasi-threads program (with the pthread layer's include
    directory and its hash in the flags)."""
    header_hash = hashlib.sha256(PTHREAD_HEADER.read_bytes()).hexdigest()[:16]
    flags = (*THREAD_FLAGS, f"-I{PTHREAD_HEADER.parent}", f"-DWASMIG_PTHREAD_LAYER={header_hash}")
    return compile_c(PROGRAMS / f"{name}.c", extra_flags=flags)


def threaded_module(name: str) -> wasmig.Module:
    """``tests/programs/NAME.c`` built (:func:`compile_threaded`) and decoded with the threads feature."""
    return wasmig.Module.from_file(compile_threaded(name), features={"threads"})


def run_threaded(module: wasmig.Module, seed: int = 0, engine: str = "interp") -> tuple[int, bytes]:
    """Run a wasi-threads command on ``engine``: (exit code, stdout). Its stdin is a pipe that is
    open and never written, so ``fd_read`` blocks."""
    read_end, write_end = os.pipe()
    # unbuffered: a thread may still be blocked reading it when the program has ended, and a
    # buffered reader's close would wait for that read's lock
    stdin = os.fdopen(read_end, "rb", buffering=0)
    stdout = io.BytesIO()
    try:
        wasi = Wasi(["prog"], stdin=stdin, stdout=stdout)
        return engines.get(engine).run_threaded_command(module, wasi, seed=seed), stdout.getvalue()
    finally:
        os.close(write_end)  # the abandoned read sees end of file and its thread ends
        stdin.close()
