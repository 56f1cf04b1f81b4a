"""Crafted multi-threaded snapshots (issue 20 step 3): thread ids out of range or repeated, wait
queues naming threads the snapshot does not have, more threads than the limit, queues and run
queues that disagree with the threads' states, a waiter at an address its instruction does not
name. The attacker edits an honest snapshot of ``threads_wait_order.c`` (three threads queued on
one address) and seals it with the user's own key, so only the content is at fault: every restore
must fail with one ``wasmig: error:`` line and exit 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.test_crafted_snapshots import KeyPairOfTestRun, refused, reseal, rewrite_manifest, wasmig
from tests.test_threads_checkpoint import _all_waiting_at_the_gate
from tests.threaded_programs import compile_threaded
from wasmig import Module
from wasmig.snapshot.store import write_single_file


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The module and a single-file snapshot of it with its three threads waiting at the gate."""
    wasm = compile_threaded("threads_wait_order")
    snap, _ = _all_waiting_at_the_gate(Module.from_file(wasm, features={"threads"}))
    path = tmp_path_factory.mktemp("honest") / "honest.snap"
    write_single_file(snap, path)
    return wasm, path


def _gate(m: dict[str, Any]) -> list[Any]:
    (queue,) = [q for q in m["threads"]["wait_queues"] if len(q[2]) == 3]
    return queue  # type: ignore[no-any-return]


def _thread(m: dict[str, Any], tid: int) -> dict[str, Any]:
    (entry,) = [e for e in m["threads"]["list"] if e["tid"] == tid]
    return entry  # type: ignore[no-any-return]


def _too_many(m: dict[str, Any]) -> None:
    spare = m["threads"]["list"][1]
    m["threads"]["list"] += [dict(copy.deepcopy(spare), tid=1000 + i, state="runnable", wait=None, point="entry")
                             for i in range(129 - len(m["threads"]["list"]))]
    m["threads"]["next_tid"] = 2000


def _moved_waiter(m: dict[str, Any]) -> None:
    queue = _gate(m)
    tid = queue[2].pop()
    _thread(m, tid)["wait"]["addr"] += 4
    m["threads"]["wait_queues"].append([queue[0], queue[1] + 4, [tid]])
    m["threads"]["wait_queues"].sort(key=lambda q: (q[0], q[1]))


def _host_at_the_spawn(m: dict[str, Any]) -> None:
    """A waiter turned into a thread "in the host" at a call of ``wasi.thread-spawn`` (pthread_create's):
    a frame that fits the module, at an import call that is not a blocking WASI call."""
    module = Module.from_file(compile_threaded("threads_wait_order"), features={"threads"})
    ir, info = module.ir, module.validation
    imported = ir.imported("func")
    spawn = next(i for i, imp in enumerate(imported) if imp.name == "thread-spawn")
    index, at = next((i, k) for i, func in enumerate(ir.funcs) for k, ins in enumerate(func.body)
                     if ins.op == 0x10 and ins.imm == spawn)
    func, fi = ir.funcs[index], info.functions[index]
    zero = {"i32": 0, "i64": 0, "f32": 0, "f64": 0}
    queue = _gate(m)
    tid = queue[2].pop()
    _thread(m, tid).update(state="host", point="import_call", wait=None, frames=[[
        len(imported) + index, func.body[at].offset, [[t, zero.get(t)] for t in fi.local_types],
        [[t, zero.get(t)] for t in fi.stack_before[at]]]])


CRAFTED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "tid beyond 2^29": (lambda m: m["threads"]["list"][1].update(tid=1 << 29), "thread entry 1 tid is not a valid"),
    "tid repeated": (lambda m: m["threads"]["list"][2].update(tid=m["threads"]["list"][1]["tid"]),
                     "thread ids are not unique and sorted"),
    "queue names a missing thread": (lambda m: _gate(m)[2].append(77),
                                     "names thread 77, which the snapshot does not have"),
    "too many threads": (_too_many, "129 threads: a snapshot holds 1 to 128"),
    "run queue names a waiter": (lambda m: m["threads"]["scheduler"]["run_queue"].append(_gate(m)[2][0]),
                                 "which is not runnable"),
    "waiter in no queue": (lambda m: _gate(m)[2].pop(), "waits but is in no wait queue"),
    "version 1 with threads": (lambda m: m.update(format_version=1), "format version 1 with a threads section"),
    "next tid reused": (lambda m: m["threads"].update(next_tid=1), "is not above every thread id"),
    "main thread with frames of its own": (lambda m: m["threads"]["list"][0].update(frames=[]),
                                           "thread 0 has its own frames"),
    "wait at another address": (_moved_waiter, "waits on an address its wait instruction does not name"),
    "in the host at a call that does not block": (_host_at_the_spawn, "is in the host at a call that does not block"),
}


@pytest.mark.parametrize("case", CRAFTED, ids=list(CRAFTED))
def test_a_crafted_thread_section_is_refused_in_one_line(honest: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    wasm, original = honest
    edit, message = CRAFTED[case]
    path = tmp_path / "crafted.snap"
    path.write_bytes(original.read_bytes())
    rewrite_manifest(path, edit, keep_seal=False)
    reseal_with_own_key(path)
    refused(wasmig("restore", "--module", wasm, path), message)


def test_the_honest_snapshot_restores(honest: tuple[Path, Path]) -> None:
    wasm, path = honest
    done = wasmig("restore", "--module", wasm, path)
    assert done.returncode == 0 and done.stdout.startswith("woken in order: "), done.stderr


def reseal_with_own_key(path: Path) -> None:
    """``rewrite_manifest`` left the file unsealed: seal it with the test run's own key."""
    data = path.read_bytes()
    path.write_bytes(data + b"WASMIGSIG1" + bytes(96))  # a placeholder seal for reseal() to strip
    reseal(path, KeyPairOfTestRun())
