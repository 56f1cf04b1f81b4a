#!/usr/bin/env python3
"""How long does stopping and capturing a multi-threaded program take, per number of threads, on
the interpreter and on wasmtime? (issue 20; docs/threads.md)

``tests/programs/threads_many.c`` with N threads (1 .. 127) waiting on one futex word while the
main thread spins: the benchmark requests a stop once all N wait (from another thread, as a signal
or timer would), then measures, with the program paused:

- **stop**: from ``request()`` to every thread parked (wall time: it is mostly the holder reaching
  its next stable point and Python threads handing over);
- **capture**: ``ThreadedInterpProgram.capture(memory_in_place=True)`` — every thread's frames,
  globals and tables, the wait queues and the scheduler, the shared memory by reference (as a
  ``wasmig run`` checkpoint takes it); CPU time (``time.process_time``), median of ``--runs``;
- **encode**: ``to_plain`` + msgpack of it without the memory (the manifest's thread part);
- **restore**: ``restore_threaded`` of the captured snapshot (N + 1 instances made, frames
  checked against the module, waiters queued); CPU time, median of ``--runs``.

``--engine wasmtime`` runs the threads on wasmtime (the instrumented module per thread, each an OS
thread): the program is stopped, captured and let go on ``--runs`` times in one run, and

- **stop** is the pause's first part, wall time from ``request()`` to every thread parked (the
  spinning main thread reaches its next poll, each waiter leaves its host wait and unwinds); its
  median over the runs (the process's CPU time over it would count the spinning thread's);
- **capture**: ``capture(memory_in_place=True)`` while every thread is parked (each thread's
  ``wasmig:dump`` and frame records read, the queues mapped to tids); CPU time, median;
- **go on**: from ``resume()`` to every thread running again is not waited for (the program
  just runs); **restore** is ``restore_threaded_wasmtime`` (N + 1 instances, each thread's state
  loaded, waiters queued), CPU time, median.

CPU time is what this shared 2-core machine (load 5-8 from other agents) cannot distort much; the
runs for one N are taken back to back, the Ns one after the other.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.threaded_programs import threaded_module  # noqa: E402
from wasmig.engines.interp.threaded import restore_threaded, threaded_program  # noqa: E402
from wasmig.snapshot.state import to_plain  # noqa: E402
from wasmig.wasi.preview1 import ProcExit, Wasi  # noqa: E402
from wasmig.wasi.snapshot import restore_wasi  # noqa: E402


def cpu(fn: object, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.process_time()
        result = fn()  # type: ignore[operator]
        times.append(time.process_time() - started)
    return statistics.median(times), result


def measure(module: object, n: int, runs: int) -> dict[str, float]:
    out = io.BytesIO()
    program = threaded_program(module, Wasi(["threads_many", str(n), "100000000"], stdout=out))  # type: ignore[arg-type]
    program.arm(at_step=None)
    stopped: dict[str, object] = {}

    def run() -> None:
        stopped["value"] = program.start()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    waiters = program.memory.waiters.queues
    while sum(len(q) for q in list(waiters.values())) < n:  # the gate's queue fills (arrived: main's)
        time.sleep(0.002)
    asked = time.perf_counter()
    program.request()
    runner.join()
    stop_s = time.perf_counter() - asked
    assert stopped["value"] is True
    capture_s, snap = cpu(lambda: program.capture(memory_in_place=True), runs)
    threads = snap.threads  # type: ignore[attr-defined]
    assert threads is not None and sum(t.state == "waiting" for t in threads.threads) >= n
    snap_small = program.capture(with_memory=False)
    encode_s, manifest = cpu(lambda: msgpack.packb(to_plain(snap_small), use_bin_type=True), runs)
    copy = program.capture()
    restore_s, _ = cpu(lambda: restore_threaded(module, copy, restore_wasi(copy.wasi, stdout=io.BytesIO())),  # type: ignore[arg-type]
                       runs)
    # the original stays paused: its threads are daemon threads, parked until the process ends
    return {"threads": n, "stop_ms": stop_s * 1e3, "capture_ms": capture_s * 1e3, "encode_ms": encode_s * 1e3,
            "manifest_kib": len(manifest) / 1024, "restore_ms": restore_s * 1e3}  # type: ignore[arg-type]


def measure_wasmtime(module: object, n: int, runs: int) -> dict[str, float]:
    from wasmig.engines.wasmtime.threads_checkpoint import restore_threaded_wasmtime, threaded_checkpoint_program

    program = threaded_checkpoint_program(module, Wasi(["threads_many", str(n), "2000000000"],  # type: ignore[arg-type]
                                                       stdout=io.BytesIO()))
    outcome: list[bool] = []
    runner = threading.Thread(target=lambda: outcome.append(program.start()), daemon=True)
    runner.start()
    queues = program.run.waits.queues.queues
    while sum(len(q) for q in list(queues.values())) < n:  # every waiter in the gate's queue
        time.sleep(0.002)
    stops, captures = [], []
    snap = None
    for _ in range(runs):
        asked = time.perf_counter()
        program.request()
        runner.join()
        stops.append(time.perf_counter() - asked)
        assert outcome.pop() is True, "the program ended before it stopped"
        started = time.process_time()
        snap = program.capture(memory_in_place=True)
        captures.append(time.process_time() - started)
        assert snap.threads is not None and sum(t.state == "waiting" for t in snap.threads.threads) == n
        snap = program.capture()  # a copy of the memory, for the restore below
        runner = threading.Thread(target=lambda: outcome.append(program.resume()), daemon=True)
        runner.start()
    encode_s, manifest = cpu(lambda: msgpack.packb(to_plain(dataclass_without_memory(snap)), use_bin_type=True), runs)
    restore_s, _ = cpu(lambda: restore_threaded_wasmtime(module, snap, restore_wasi(snap.wasi,  # type: ignore
                                                                                    stdout=io.BytesIO())), runs)
    program.request()  # the original is left stopped (its threads are daemon threads)
    runner.join()
    return {"threads": n, "stop_ms": statistics.median(stops) * 1e3, "capture_ms": statistics.median(captures) * 1e3,
            "encode_ms": encode_s * 1e3, "manifest_kib": len(manifest) / 1024,  # type: ignore[arg-type]
            "restore_ms": restore_s * 1e3}


def dataclass_without_memory(snap: object) -> object:
    """``snap`` with its memory's bytes left out (the manifest's own size)."""
    import dataclasses

    memories = [dataclasses.replace(m, data=b"") for m in snap.memories]  # type: ignore[attr-defined]
    return dataclasses.replace(snap, memories=memories)  # type: ignore[type-var]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32, 127])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--engine", choices=("interp", "wasmtime"), default="interp")
    args = parser.parse_args()
    module = threaded_module("threads_many")
    measure_on = measure_wasmtime if args.engine == "wasmtime" else measure
    print(f"engine {args.engine}; stop: wall time (median), the others: CPU time (median of {args.runs})")
    print(f"{'threads':>7} {'stop ms':>8} {'capture ms':>11} {'encode ms':>10} {'manifest KiB':>13} {'restore ms':>11}")
    for n in args.threads:
        try:
            r = measure_on(module, n, args.runs)
        except ProcExit as e:
            raise SystemExit(f"the program exited with {e.code}") from None
        print(f"{r['threads']:>7} {r['stop_ms']:>8.1f} {r['capture_ms']:>11.1f} {r['encode_ms']:>10.1f} "
              f"{r['manifest_kib']:>13.1f} {r['restore_ms']:>11.1f}")


if __name__ == "__main__":
    main()
