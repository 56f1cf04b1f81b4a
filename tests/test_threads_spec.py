"""The threads proposal (issue 20 item 1): shared memories, atomics, wait and notify.

The proposal's own testsuite (``../shared/wasm-testsuite/threads``, converted with
``wast2json --enable-threads``) through the public API on both engines, and the semantics the
testsuite leaves out: a single-threaded wait, the waiter queues' order, encoding round trips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasmig
from tests.spec import runner as spec_runner
from tests.spec.runner import REPO_ROOT
from tests.wat import threads_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.encoder import encode_module
from wasmig.interp.atomics import WaitQueues

THREADS_SUITE = spec_runner.testsuite_dir().parent / "threads"
#: The threads proposal's testsuite predates reference types (WebAssembly 2.0), which allow
#: several tables: its three "multiple tables" assertions are superseded, and wasmig implements 2.0.
SUPERSEDED = {("imports", 310), ("imports", 314), ("imports", 318)}


def _run_suite(tmp_path: Path, engine: str) -> dict:
    if shutil.which("wast2json") is None:
        pytest.skip("wast2json (wabt) is not installed")
    if not THREADS_SUITE.is_dir():
        pytest.skip(f"threads testsuite not found at {THREADS_SUITE}")
    out = tmp_path / "threads.json"
    # wasmtime reserves 4 GiB (+ guard) of address space per shared memory: no worker address cap
    subprocess.run(
        [sys.executable, "-m", "tests.spec.runner", "--suite", str(THREADS_SUITE), "--features", "threads",
         "--engine", engine, "--memory-limit-mb", "0", "--json", str(out), "--min-pass-rate", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert out.exists(), "the spec runner wrote no results"
    return json.loads(out.read_text(encoding="utf-8"))


def _failures(results: dict) -> list[tuple[str, int, str]]:
    return [(f["file"], f["line"], f.get("got", "")) for r in results["files"] for f in r["failures"]]


def test_threads_suite_on_the_interpreter(tmp_path):
    results = _run_suite(tmp_path, "interp")
    failures = _failures(results)
    assert {(name, line) for name, line, _ in failures} == SUPERSEDED, failures
    assert results["totals"]["passed"] >= 594


def test_threads_suite_on_wasmtime(tmp_path):
    """The interpreter's results: spectest's memory, table and shared memory are wasmtime externs
    there (a store's, the engine's), so imports.wast links too; only the superseded three fail."""
    results = _run_suite(tmp_path, "wasmtime")
    failures = _failures(results)
    assert {(name, line) for name, line, _ in failures} == SUPERSEDED, failures
    assert results["totals"]["passed"] >= 594


WAITER = """
(module
  (memory (export "mem") 1 1 shared)
  (func (export "wait32") (param i32 i32 i64) (result i32)
    (memory.atomic.wait32 (local.get 0) (local.get 1) (local.get 2)))
  (func (export "notify") (param i32 i32) (result i32)
    (memory.atomic.notify (local.get 0) (local.get 1)))
  (func (export "counter") (result i32)
    (atomic.fence)
    (drop (i32.atomic.rmw.add (i32.const 8) (i32.const 5)))
    (drop (i32.atomic.rmw8.sub_u (i32.const 8) (i32.const 7)))
    (i32.atomic.rmw.cmpxchg (i32.const 8) (i32.const 0xfe) (i32.const 42))
    (i32.atomic.load (i32.const 8))
    (i32.add)))
"""


def test_single_thread_wait_times_out_or_refuses_to_hang():
    inst = wasmig.Instance(threads_module(WAITER), engine="interp")
    assert inst.exports["wait32"](0, 1, 0) == 1  # not-equal: the cell holds 0
    start = time.monotonic()
    assert inst.exports["wait32"](0, 0, 20_000_000) == 2  # timed out after 20 ms: nobody can notify
    assert time.monotonic() - start >= 0.019
    with pytest.raises(wasmig.Trap, match="deadlock"):
        inst.exports["wait32"](0, 0, (1 << 64) - 1)  # timeout -1: forever
    with pytest.raises(wasmig.Trap, match="unaligned atomic"):
        inst.exports["wait32"](2, 0, 0)
    assert inst.exports["notify"](0, 5) == 0


def test_read_modify_writes_return_old_values():
    inst = wasmig.Instance(threads_module(WAITER), engine="interp")
    # 0 + 5 = 5; 8-bit 5 - 7 wraps to 0xfe; cmpxchg(0xfe -> 42) returns 0xfe; the load reads 42
    assert inst.exports["counter"]() == 0xFE + 42


def test_wait_on_unshared_memory_traps():
    module = threads_module("""(module (memory 1)
      (func (export "w") (result i32) (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 0))))""")
    with pytest.raises(wasmig.Trap, match="expected shared memory"):
        wasmig.Instance(module, engine="interp").exports["w"]()


def test_shared_memory_and_atomics_round_trip_through_the_encoder():
    module = threads_module(WAITER)
    ir = decode_module(module.data, features={"threads"})
    assert ir.mems[0].shared and ir.mems[0].limits.max == 1
    assert encode_module(ir) == module.data


def test_threads_instructions_need_the_feature():
    module = threads_module(WAITER)
    with pytest.raises(wasmig.DecodeError, match="shared memory"):
        wasmig.Module.from_bytes(module.data)


def test_wait_queues_keep_arrival_order():
    queues = WaitQueues()
    for waiter in ("a", "b", "c"):
        queues.enqueue(64, waiter)
    queues.enqueue(128, "d")
    assert queues.wake(64, 2) == ["a", "b"]
    assert queues.remove(64, "c") and not queues.remove(64, "c")
    assert queues.wake(64, 1) == [] and queues.wake(128, 9) == ["d"] and queues.queues == {}
