"""wasmtime's signal handlers stay the process's (wasmig/engines/engines/trap_signals.py, issue 20's
crash of a pytest worker): a library that replaces them after wasmtime installed them must not
turn a wasm trap into the death of the process. Each case runs in a process of its own, so that
a crash fails the test instead of killing the pytest worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_wasi_threads import TRAP_IN_A_THREAD
from tests.wat import threads_module

pytest.importorskip("wasmtime")

REPO = Path(__file__).resolve().parents[1]

#: traps on wasmtime (one thread, then a spawned thread while main waits forever), each before and
#: after ``faulthandler.enable()`` replaced the handlers of SIGSEGV, SIGILL, SIGFPE and SIGBUS,
#: as Ray's driver replaces them; prints what each run raised and which handlers are replaced
_SCRIPT = """
import faulthandler, io, sys
import wasmig
from wasmig import engines
from wasmig.engines import trap_signals as signals
from wasmig.engines.wasmtime.runtime import WasmtimeInstance
from wasmig.wasi.preview1 import Wasi
threaded = wasmig.Module.from_bytes(sys.stdin.buffer.read(), features={"threads"})
plain = wasmig.Module.from_bytes(bytes.fromhex(sys.argv[1]))

def outcome(run):
    try:
        run()
    except wasmig.Trap as e:
        return str(e).splitlines()[0]
    return "no trap"

def runs():
    one = outcome(lambda: WasmtimeInstance(plain, Wasi(["p"], stdout=io.BytesIO())).invoke("_start"))
    two = outcome(lambda: engines.get("wasmtime").run_threaded_command(threaded, Wasi(["p"], stdout=io.BytesIO())))
    return one, two

print(runs(), flush=True)
faulthandler.enable()
print(sorted(s.name for s in signals.replaced()), flush=True)
print(runs(), flush=True)
print(sorted(s.name for s in signals.replaced()), flush=True)
"""
_UNREACHABLE = '(module (func (export "_start") unreachable))'


def test_a_trap_stays_a_trap_after_another_library_replaced_wasmtimes_handlers() -> None:
    """Without wasmig putting wasmtime's handlers back, the second ``unreachable`` kills the
    process with SIGILL (faulthandler re-raises the signal from its handler, where wasmtime no
    longer sees a fault in wasm code)."""
    plain = threads_module(_UNREACHABLE).data.hex()
    done = subprocess.run([sys.executable, "-c", _SCRIPT, plain], input=threads_module(TRAP_IN_A_THREAD).data,
                          capture_output=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    lines = done.stdout.decode().splitlines()
    trapped = "('unreachable', 'unreachable')"
    assert lines == [trapped, "['SIGFPE', 'SIGILL', 'SIGSEGV']", trapped, "[]"], lines
