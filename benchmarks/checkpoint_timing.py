#!/usr/bin/env python3
"""How long do checkpoints and restores take on the wasmtime engine, end to end?

On wasmtime wasmig runs the *instrumented* module (docs/instrument.md) through
:class:`wasmig.engines.wasmtime.checkpointable.Checkpointable`: a checkpoint request sets the control
memory's poll byte, the guest notices it at its next function entry or loop header (a stable
point), writes every frame of its call stack as a record into the control memory (``wasmig:ctl``)
and returns from the export. This benchmark measures two things.

**a) Time to safepoint** (target: p99 <= 1 ms). Per request: a fresh ``Checkpointable`` (the fast
variant, which every ``wasmig run`` on wasmtime uses) is instantiated (untimed), ``start()`` runs
``_start`` in a background Python thread (which itself runs the export in ``Checkpointable``'s
worker thread), the main thread sleeps a random 20-200 ms, takes ``t0 = time.perf_counter()`` and
calls ``request()``. Two end points are recorded:

- ``safepoint``: the first frame record is in the control memory, i.e. the guest reached a
  stable point and started unwinding. The main thread spins on the control memory's WRITE_PTR
  word, read through ctypes at a fixed address (the engine never moves memories), until it moves
  past RECORDS_BASE, calling ``os.sched_yield()`` (about 1 us, GIL released) on every turn so it
  does not take a core away from the guest thread on a loaded machine.
- ``unwound``: ``start()`` returned in the background thread, i.e. every frame has been written,
  the export returned, ``Checkpointable``'s worker thread ended and ``start()``'s join woke up.
  This is the number compared with the target: it includes getting back into Python (two thread
  hand-offs), which is part of what a real checkpoint pays. ``unwound - safepoint`` is mostly
  that hand-off, plus writing the frame records.

p50, p99 and max over ``requests`` (default 50) requests per workload. Quantiles are linearly
interpolated; with 50 samples p99 lies between the two largest, so read it as "the bad tail", not
a precise quantile. On a loaded machine with few cores a single descheduling of the spinning or
the waiting thread shows up as a multi-millisecond sample (the output starts and ends with the
load average for that reason). Workloads (C, compiled with ``wasmig.toolchain.compile_c`` at
-O2): ``matmul`` (``kernels/matmul.c``, a dense compute loop nest, 3 frames deep) with enough
repetitions to outlast the request, and ``deeprec`` (``timing/deeprec.c``, a recursion 3000
levels deep, so a request lands at a random depth and up to ~3000 frame records are written).

**b) Checkpoint and restore time against guest memory size** (target for a small module:
restore <= 20 ms with a cached compiled artifact). ``timing/bigheap.c``, built with a 1 MiB
stack, grows its linear memory to N MiB in total and fills all of it above the initial memory
with an index-derived pattern (no page is zero or a duplicate, so the page store can neither
elide nor deduplicate anything; only the ~15 pages of the mostly unused stack are zero), prints
``ready`` and then loops forever on light work without I/O. (It grows memory directly because
wasi-libc's malloc grows memory by about twice a large request.)
These runs use the deterministic variant (``count_steps=True``), so that each can stop at a chosen
step; restore costs the same in both variants. An untimed calibration run per size stops it on
request right after ``ready`` to learn the step count there (and warms the instrumented-module and
compiled-artifact caches); every timed run then stops deterministically at that step + 1000
(``arm(step)``), so the run to the checkpoint
is not timed. Phases, median over ``runs`` (at most ``big_runs``, default 3, from
256 MiB up: a 256 MiB cycle writes and then deletes 256 MiB of pack file (it wrote 4096 fsynced
page files before the page store's layout 2):

- checkpoint: ``capture`` (``Checkpointable.capture()``: globals dump, frame records decoded,
  memory copied out, WASI state) and ``write`` (``CheckpointDir.write`` into a fresh directory:
  hash, zstd-compress and fsync every page, then the snapshot file);
- restore, up to the point the guest could resume: ``read`` (``load_snapshot``: pages read,
  decompressed, hash-verified), ``wasi`` (``restore_wasi``), ``parse`` (``Module.from_file(validate=False)``:
  the decode a restore in a new process also pays; ``wasmig restore`` on wasmtime defers
  validation, which a cached instrumented module never needs), ``inst`` (a new ``Checkpointable``: instrumented bytes
  and compiled artifact from the on-disk caches, instantiation) and ``load``
  (``Checkpointable.load``: memory copied in, globals, segments, step count); ``total`` is their
  sum;
- ``resume``: ``arm(snap.steps + 1)`` then ``resume(frames, point)`` until the guest has rewound
  its frames, run one stable point and unwound again (so it includes one unwind), reported
  separately.

Two last rows do the same for a small program, ``tests/programs/hello.c`` stopped half way
through its run, to compare with the 20 ms target: as ``compile_c`` builds it by default (zig's
16 MiB stack makes its memory 16 MiB, nearly all zero but still copied by capture and load), and
with a 64 KiB stack (``hello.c 64K``, 0.2 MiB of memory), which isolates the fixed costs.

Caveats: the machine may be shared and noisy, so only medians and percentiles are reported and
nothing is asserted. The pack and snapshot files are fsynced, so ``write`` depends heavily on the
filesystem under ``--dir`` (default: the system temp directory). ``read`` comes from the page
cache (the files were just written), not a cold disk. Every timed step runs in this one Python
process with warm caches; a restore in a fresh process also pays interpreter start-up and
imports. The unwind itself is independent of memory size (memory is not copied by it), so part
b does not time it; part a does. The default invocation (``--runs 7 --sizes 16,64,256``) takes
about 2 minutes on 2 shared cores with a slow fsync and needs about 1.5 GiB of RAM at 256 MiB;
``--sizes 16 --runs 3 --requests 20`` for a quick look.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import wasmig  # noqa: E402
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402
from wasmig.engines.wasmtime.runtime import wasmtime_version  # noqa: E402
from wasmig.instrument.unwind import RECORDS_BASE, WRITE_PTR  # noqa: E402
from wasmig.snapshot.store import CheckpointDir, load_snapshot  # noqa: E402
from wasmig.toolchain import compile_c  # noqa: E402
from wasmig.wasi.preview1 import ProcExit, Wasi  # noqa: E402
from wasmig.wasi.snapshot import restore_wasi  # noqa: E402

KERNELS = HERE / "kernels"
TIMING = HERE / "timing"  # programs that run until stopped (not overhead.py kernels)
SMALL_PROGRAM = HERE.parent / "tests" / "programs" / "hello.c"
MiB = 1 << 20
SAFEPOINT_TARGET_MS = 1.0
SMALL_RESTORE_TARGET_MS = 20.0
#: (name, source, argv, what it is): each runs far longer than the longest pre-request sleep
LATENCY_WORKLOADS = (
    ("matmul", KERNELS / "matmul.c", ["matmul", "1000000"], "compute loop nest, 3 frames"),
    ("deeprec", TIMING / "deeprec.c", ["deeprec", "2000000000", "3000"], "recursion, up to ~3000 frames"),
)
#: bigheap's memory should be its filled region, not zig's default 16 MiB stack
BIGHEAP_FLAGS = ("-Wl,-z,stack-size=1048576",)
#: hello.c as a small module in memory too (its default build has zig's 16 MiB stack)
SMALL_STACK_FLAGS = ("-Wl,-z,stack-size=65536",)
_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))
#: from this size up part b does at most ``big_runs`` runs: each costs ~15 s on a disk where
#: deleting the 4096 fsynced page files is slow (ext4 with online discard: ~10 s)
BIG_MIB = 256
#: timed runs of part b stop this many stable points after the calibration run's "ready"
STEPS_AFTER_READY = 1000


def _wasi(args: Sequence[str], stdout: Any = None) -> Wasi:
    return Wasi(list(args), stdin=b"", stdout=stdout if stdout is not None else io.BytesIO(), stderr=io.BytesIO())


def _module(source: Path) -> wasmig.Module:
    return wasmig.Module.from_file(compile_c(source))


def _quantile(values: Sequence[float], q: float) -> float:
    """Linearly interpolated quantile (numpy's default): with 50 samples p99 lies between the two
    largest samples, so read it as "the bad tail" rather than a precise quantile."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _load_average() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


class _Background:
    """``runner.start()`` in a background thread, recording when it returned."""

    def __init__(self, runner: Checkpointable) -> None:
        self.runner = runner
        self.end: float | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="checkpoint-timing-guest", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.start()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self.error = e
        self.end = time.perf_counter()


# --- a) time to safepoint -------------------------------------------------------------------------
@dataclass
class LatencySample:
    safepoint_s: float  # request -> first frame record in the control memory
    unwound_s: float  # request -> start() returned in the background thread
    frames: int  # frames captured (depth of the stack at the stop)


def measure_latency(module: wasmig.Module, args: Sequence[str], rng: random.Random) -> LatencySample:
    """One request at a random moment 20-200 ms into a fresh run of ``module``."""
    runner = Checkpointable(module, _wasi(args))
    runner.arm(None)
    base = ctypes.addressof(runner.ctl.data_ptr(runner.store).contents)
    write_ptr = ctypes.c_uint32.from_address(base + WRITE_PTR)
    if write_ptr.value != RECORDS_BASE:
        raise RuntimeError(f"unexpected control memory: WRITE_PTR is {write_ptr.value} before the run")
    gc.collect()
    bg = _Background(runner)
    time.sleep(rng.uniform(0.020, 0.200))
    if not bg.thread.is_alive():
        raise RuntimeError(f"{args[0]} ended before the checkpoint request ({bg.error!r}): make it run longer")
    t0 = time.perf_counter()
    runner.request()
    # Spin, giving the CPU up on every turn (sched_yield, ~1 us, releases the GIL): a tight spin
    # would compete with the guest thread itself for a core on a loaded machine, and
    # time.sleep(0) costs ~100 us per call on a VM, far too coarse. The deadline only guards
    # against a guest that never unwinds.
    deadline = t0 + 30
    while write_ptr.value <= RECORDS_BASE and bg.end is None and time.perf_counter() < deadline:
        _yield()
    t_first = time.perf_counter()
    bg.thread.join(30)
    if bg.thread.is_alive():
        raise RuntimeError(f"{args[0]}: the guest did not unwind within 30 s of the request")
    if bg.error is not None:
        raise RuntimeError(f"{args[0]}: start() raised {bg.error!r} after a request") from bg.error
    if not runner.unwound:
        raise RuntimeError(f"{args[0]}: start() returned without unwinding")
    assert bg.end is not None
    frames = len(runner.capture().frames)
    return LatencySample(min(t_first, bg.end) - t0, bg.end - t0, frames)


def latency_report(requests: int, rng: random.Random, log: Callable[[str], None]) -> list[str]:
    lines = [f"a) time to safepoint on wasmtime: request() at a random 20-200 ms into a fresh run, {requests} "
             "requests per workload",
             f"   target: unwound p99 <= {SAFEPOINT_TARGET_MS:g} ms",
             f"   {'workload':<9} {'frames':>11} | {'safepoint (first record) ms':>27} | "
             f"{'unwound (start() returned) ms':>29} | p99 vs target",
             f"   {'':<9} {'median/max':>11} | {'p50':>8} {'p99':>8} {'max':>9} | {'p50':>8} {'p99':>8} {'max':>11} |"]
    for name, source, args, what in LATENCY_WORKLOADS:
        module = _module(source)
        Checkpointable(module, _wasi(args))  # warm the instrumented-module and artifact caches
        samples = [measure_latency(module, args, rng) for _ in range(requests)]
        log(f"  measured time to safepoint: {name} ({requests} requests)")
        sp = [s.safepoint_s * 1e3 for s in samples]
        uw = [s.unwound_s * 1e3 for s in samples]
        frames = [s.frames for s in samples]
        p99 = _quantile(uw, 0.99)
        verdict = "within" if p99 <= SAFEPOINT_TARGET_MS else "ABOVE"
        over = sum(x > SAFEPOINT_TARGET_MS for x in uw)
        lines.append(f"   {name:<9} {statistics.median(frames):>5.0f}/{max(frames):<5d} | "
                     f"{_quantile(sp, 0.5):8.3f} {_quantile(sp, 0.99):8.3f} {max(sp):9.3f} | "
                     f"{_quantile(uw, 0.5):8.3f} {p99:8.3f} {max(uw):11.3f} | {verdict}, {over}/{len(uw)} over "
                     f"({what})")
    return lines


# --- b) checkpoint and restore time against memory size -------------------------------------------
@dataclass
class CycleSample:
    memory_bytes: int
    capture_s: float
    write_s: float
    read_s: float
    wasi_s: float
    parse_s: float
    inst_s: float
    load_s: float
    resume_s: float

    @property
    def checkpoint_s(self) -> float:
        return self.capture_s + self.write_s

    @property
    def restore_s(self) -> float:
        return self.read_s + self.wasi_s + self.parse_s + self.inst_s + self.load_s


class _ReadyOut(io.RawIOBase):
    """A guest stdout that sets an event once the guest printed ``ready``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ready = threading.Event()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        if b"ready\n" in self.data:
            self.ready.set()
        return len(b)


def calibrate_ready_step(module: wasmig.Module, args: Sequence[str]) -> int:
    """The step count a request right after the guest printed ``ready`` stops at (untimed)."""
    out = _ReadyOut()
    runner = Checkpointable(module, _wasi(args, stdout=out), count_steps=True)
    runner.arm(None)
    bg = _Background(runner)
    if not out.ready.wait(300):
        runner.request()
        raise RuntimeError(f"{args[0]} did not print 'ready' within 300 s")
    runner.request()
    bg.thread.join(60)
    if bg.thread.is_alive() or bg.error is not None or not runner.unwound:
        raise RuntimeError(f"{args[0]}: calibration run did not unwind ({bg.error!r})")
    return runner.steps


def _run_to_step(module: wasmig.Module, args: Sequence[str], step: int) -> Checkpointable:
    runner = Checkpointable(module, _wasi(args), count_steps=True)
    runner.arm(step)
    runner.start()
    if not runner.unwound or runner.steps != step:
        raise RuntimeError(f"{args[0]}: expected to stop at step {step}, stopped at {runner.steps} "
                           f"(unwound: {runner.unwound})")
    return runner


def measure_cycle(module: wasmig.Module, module_path: Path, args: Sequence[str], step: int,
                  workdir: Path) -> CycleSample:
    """Checkpoint at ``step``, write, read back, restore into a new instance, resume one step."""
    runner = _run_to_step(module, args, step)  # the run itself is not timed
    gc.collect()
    os.sync()  # writeback (and discards) left over from the previous run are not charged to this one
    t0 = time.perf_counter()
    snap = runner.capture()
    t1 = time.perf_counter()
    path = CheckpointDir(workdir).write(snap)
    t2 = time.perf_counter()
    memory_bytes = sum(len(m.data) for m in snap.memories)
    del runner, snap
    gc.collect()
    t3 = time.perf_counter()
    loaded = load_snapshot(path)
    t4 = time.perf_counter()
    assert loaded.wasi is not None
    wasi = restore_wasi(loaded.wasi, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    t5 = time.perf_counter()
    fresh_module = wasmig.Module.from_file(module_path, validate=False)  # as `wasmig restore` on wasmtime
    t6 = time.perf_counter()
    restored = Checkpointable(fresh_module, wasi, count_steps=True)
    t7 = time.perf_counter()
    restored.load(loaded)
    t8 = time.perf_counter()
    restored.arm(loaded.steps + 1)
    restored.resume(loaded.frames, loaded.point)
    t9 = time.perf_counter()
    if not restored.unwound or restored.steps != loaded.steps + 1:
        raise RuntimeError(f"{args[0]}: after resume expected to stop at step {loaded.steps + 1}, stopped at "
                           f"{restored.steps} (unwound: {restored.unwound})")
    shutil.rmtree(workdir, ignore_errors=True)
    return CycleSample(memory_bytes, t1 - t0, t2 - t1, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t9 - t8)


def _median_sample(samples: list[CycleSample]) -> dict[str, float]:
    keys = ("capture_s", "write_s", "checkpoint_s", "read_s", "wasi_s", "parse_s", "inst_s", "load_s",
            "restore_s", "resume_s", "memory_bytes")
    return {k: statistics.median(getattr(s, k) for s in samples) for k in keys}


def _ms(x: float) -> str:
    return f"{x * 1e3:8.1f}"


def _cycle_row(label: str, runs: int, m: dict[str, float]) -> str:
    return (f"   {label:<12} {m['memory_bytes'] / MiB:7.1f} {runs:>4} | {_ms(m['capture_s'])} {_ms(m['write_s'])} "
            f"{_ms(m['checkpoint_s'])} | {_ms(m['read_s'])} {_ms(m['wasi_s'])} {_ms(m['parse_s'])} "
            f"{_ms(m['inst_s'])} {_ms(m['load_s'])} {_ms(m['restore_s'])} | {_ms(m['resume_s'])}")


def small_program_cycle(runs: int, workdir: Path, extra_flags: Sequence[str] = ()) -> tuple[dict[str, float], int]:
    """The restore cycle for a small program (hello.c, stopped half way through its run)."""
    module_path = compile_c(SMALL_PROGRAM, extra_flags=extra_flags)
    module = wasmig.Module.from_file(module_path)
    args = ["hello", "a", "b"]
    runner = Checkpointable(module, _wasi(args), count_steps=True)  # also warms the caches
    runner.arm(None)
    try:
        runner.start()
    except ProcExit:
        pass
    step = runner.steps // 2
    samples = [measure_cycle(module, module_path, args, step, workdir) for _ in range(runs)]
    return _median_sample(samples), step


def size_report(runs: int, sizes_mib: Sequence[int], workdir: Path, log: Callable[[str], None],
                big_runs: int = 3) -> list[str]:
    module_path = compile_c(TIMING / "bigheap.c", extra_flags=BIGHEAP_FLAGS)
    module = wasmig.Module.from_file(module_path)
    lines = [f"b) checkpoint and restore on wasmtime against guest memory size (timing/bigheap.c), median of "
             f"runs (at most {big_runs} from {BIG_MIB} MiB up), ms",
             f"   restore target for a small module: <= {SMALL_RESTORE_TARGET_MS:g} ms with a cached artifact",
             f"   {'':<12} {'memory':>7} {'':>4} | {'checkpoint':^26} | "
             f"{'restore (until the guest could resume)':^53} |",
             f"   {'program':<12} {'MiB':>7} {'runs':>4} | {'capture':>8} {'write':>8} {'total':>8} | "
             f"{'read':>8} {'wasi':>8} {'parse':>8} {'inst':>8} {'load':>8} {'total':>8} | {'resume':>8}"]
    summary: list[str] = []
    for size in sizes_mib:
        args = ["bigheap", str(size)]
        ready = calibrate_ready_step(module, args)
        gc.collect()
        n = min(runs, big_runs) if size >= BIG_MIB else runs
        samples = [measure_cycle(module, module_path, args, ready + STEPS_AFTER_READY, workdir) for _ in range(n)]
        log(f"  measured checkpoint/restore: bigheap {size} MiB ({n} runs)")
        lines.append(_cycle_row(f"bigheap {size}", n, _median_sample(samples)))
    for label, flags in (("hello.c", ()), ("hello.c 64K", SMALL_STACK_FLAGS)):
        small, step = small_program_cycle(runs, workdir, flags)
        log(f"  measured checkpoint/restore: {label} ({runs} runs)")
        lines.append(_cycle_row(label, runs, small))
        verdict = "within" if small["restore_s"] * 1e3 <= SMALL_RESTORE_TARGET_MS else "ABOVE"
        summary.append(f"   small module ({label} at step {step}): restore total {small['restore_s'] * 1e3:.1f} ms "
                       f"(without parse {(small['restore_s'] - small['parse_s']) * 1e3:.1f} ms): {verdict} the "
                       f"{SMALL_RESTORE_TARGET_MS:g} ms target")
    lines += summary
    lines.append("   resume: arm(steps + 1) + resume() until the guest rewound, ran one stable point and unwound "
                 "again (not part of the restore total)")
    return lines


# --- entry points -----------------------------------------------------------------------------------
def report(runs: int = 7, sizes_mib: tuple[int, ...] = (16, 64, 256), *, requests: int = 50,
           big_runs: int = 3, directory: str | Path | None = None, seed: int = 1,
           log: Callable[[str], None] | None = None) -> list[str]:
    """Measure (a) time to safepoint and (b) checkpoint/restore time per memory size; return the
    printable lines. ``directory``: where snapshots are written (default: the system temp dir)."""
    if runs < 1 or requests < 1 or big_runs < 1:
        raise ValueError("runs, big_runs and requests must be at least 1")
    say = log if log is not None else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="wasmig-cktiming-", dir=directory))
    lines = [f"checkpoint timing on wasmtime {wasmtime_version()}, {os.cpu_count()} CPUs, {_load_average()} "
             f"at the start; snapshots written under {base}"]
    try:
        lines += latency_report(requests, rng, say)
        lines.append("")
        lines += size_report(runs, sizes_mib, base / "ck", say, big_runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lines.append(f"{_load_average()} at the end")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per memory size (default: %(default)s)")
    ap.add_argument("--big-runs", type=int, default=3,
                    help=f"at most this many runs for sizes of {BIG_MIB} MiB and more (default: %(default)s)")
    ap.add_argument("--sizes", default="16,64,256", help="guest memory sizes in MiB (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=50,
                    help="checkpoint requests per time-to-safepoint workload (default: %(default)s)")
    ap.add_argument("--dir", default=None, help="where snapshots are written (default: the system temp dir)")
    args = ap.parse_args(argv)
    try:
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        ap.error(f"--sizes: not a comma-separated list of integers: {args.sizes!r}")
    if any(s < 1 for s in sizes):
        ap.error("--sizes: every size must be at least 1 MiB")
    for line in report(args.runs, sizes, requests=args.requests, big_runs=args.big_runs, directory=args.dir):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
