"""pthread programs (issue 20 step 5) on both engines: mutex, condition variables, barrier, work
queue, reader-writer lock — C programs over wasmig's pthread layer
(``tests/programs/include/wasmig_pthread.h``: docs/toolchain.md), run by the interpreter's
scheduler under several seeds and by wasmtime with one OS thread per wasm thread. Each program
prints results that do not depend on the interleaving and checks itself (exit 0 only when every
check holds); the expected output is the same on every engine and seed.
"""

from __future__ import annotations

import pytest

from tests.threaded_programs import run_threaded, threaded_module

EXPECTED = {
    "pthread_mutex": b"counter 72000 logged 16000 returned 280\n"
                     + b"".join(b"thread %d: 2000\n" % i for i in range(8)),
    "pthread_condvar": b"consumed 1200 sum 60359400 fifo yes\n",
    "pthread_barrier": b"phases 40 serial 40 cells 1358439137 449417922 249646563 2486774916 matches yes\n",
    "pthread_workqueue": b"tasks 240 sum 19851 hash 250744075 checked yes\n",
    "pthread_rwlock": b"moves 800 violations 0 table 7 2 5 -5 -6 1 5 0 -6 -3 -4 4 3 2 -4 -1\n",
}


@pytest.mark.parametrize("program", sorted(EXPECTED))
def test_pthread_program_on_the_interpreter_for_several_seeds(program: str) -> None:
    module = threaded_module(program)
    for seed in (0, 1, 7):
        assert run_threaded(module, seed=seed, engine="interp") == (0, EXPECTED[program]), seed


@pytest.mark.parametrize("program", sorted(EXPECTED))
def test_pthread_program_on_wasmtime(program: str) -> None:
    module = threaded_module(program)
    for _ in range(3):  # the interleaving is the hardware's: a few runs
        assert run_threaded(module, engine="wasmtime") == (0, EXPECTED[program])


@pytest.mark.parametrize("program", sorted(EXPECTED))
def test_pthread_program_on_wasmtime_each_thread_on_the_instrumented_module(program: str) -> None:
    """What a checkpointable run of threads will execute (issue 20 step 3): every thread's instance
    the instrumented module (the fast variant; its start function run by the host), the same output."""
    import io

    from wasmig.engines.wasmtime.threads import ThreadedRun
    from wasmig.instrument.unwind import instrument
    from wasmig.wasi.preview1 import Wasi

    module = threaded_module(program)
    out = io.BytesIO()
    run = ThreadedRun(module, Wasi(["prog"], stdout=out), code=instrument(module, count_steps=False).data)
    assert (run.run(), out.getvalue()) == (0, EXPECTED[program])


def test_a_pthread_program_spawns_through_wasi_thread_spawn() -> None:
    """The layer really makes threads (zig's libc alone would link pthread_create's failing stub)."""
    module = threaded_module("pthread_workqueue")
    imports = {(imp.module, imp.name) for imp in module.ir.imports}
    assert ("wasi", "thread-spawn") in imports and "wasi_thread_start" in {e.name for e in module.ir.exports}
