"""The WASI gate (``Wasi.gate``): what a migration target runs a restored program behind until the
commit. Closed, the program may compute but none of its host calls happens (nothing it does
reaches the world); the first one marks the gate touched; opening it runs what was deferred
(gateway re-attachment), then lets the held call go. On both engines, since both bind WASI
through the same wrapper (a fast path that bypassed it would make a migration's target act
before the commit)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from wasmig.module import Module
from wasmig.session.command import run_command
from wasmig.toolchain import compile_c
from wasmig.wasi.blocking import Gate
from wasmig.wasi.preview1 import Wasi

PROGRAMS = Path(__file__).parent / "programs"


@pytest.mark.parametrize("engine", ["interp", "wasmtime"])
def test_a_closed_gate_holds_every_host_call_until_it_opens(engine: str) -> None:
    if engine == "wasmtime":
        pytest.importorskip("wasmtime")
    module = Module.from_file(compile_c(PROGRAMS / "hello.c"))
    out = io.BytesIO()
    wasi = Wasi(["hello", "x"], stdin=b"abc\n", stdout=out, stderr=io.BytesIO())
    wasi.gate.close()
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(run_command(module, wasi, engine)), daemon=True)
    runner.start()
    assert wasi.gate.touched.wait(60), "the program made no host call"
    runner.join(0.3)
    assert runner.is_alive() and out.getvalue() == b"" and not wasi.calls  # held before it ran
    wasi.gate.open()
    runner.join(60)
    assert codes == [0] and out.getvalue().startswith(b"hello from wasm, argc=2\n")


def test_deferred_actions_run_when_the_gate_opens_before_held_calls_go() -> None:
    gate = Gate()
    ran: list[str] = []
    assert not gate.defer(lambda: ran.append("now?"))  # open: nothing to defer, the caller acts at once
    gate.close()
    assert gate.defer(lambda: ran.append("deferred"))
    released = threading.Event()

    def call() -> None:
        gate.wait()
        ran.append("call")
        released.set()

    threading.Thread(target=call, daemon=True).start()
    assert gate.touched.wait(10) and not released.wait(0.2)

    def reentrant() -> None:  # what reattach_gateway does: it asks to defer itself, and must run now
        ran.append("reentrant" if not gate.defer(reentrant) else "deferred again")

    gate.defer(reentrant)
    gate.open()
    assert released.wait(10)
    assert ran == ["deferred", "reentrant", "call"] and not gate.closed
