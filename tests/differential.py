"""The differential checkpoint/restore harness for large real programs (issue 15 item 1).

A *workload* is a real program (CPython for WASI, QuickJS-ng: ``tests/real_programs.py``) running a script that
computes, allocates, raises and catches exceptions, writes files into a preopened directory (``/out``) and prints
on stdout and stderr. The harness

1. runs it uninterrupted (the reference: exit code, stdout, stderr, the files in ``/out``);
2. stops it at many points and captures the canonical snapshot at each, going on after each stop in the same run:
   - deterministic: at stable point k (``arm(k)``) on wasmtime's counting variant and on the interpreter; the two
     engines' snapshots at the same k must be equal field by field (``wasmig.snapshot.inspect.diff``, what
     ``wasmig diff`` prints, and :func:`snapshot_differences` for the WASI state);
   - fast: checkpoint requests at random times (``Checkpointable.request()``, what ``wasmig checkpoint PID`` and
     SIGUSR1 do) on wasmtime's fast variant;
   with a copy of ``/out`` as it was at each stop (every restore starts from the files the program had then);
3. restores every snapshot on each engine (the interpreter only where the remainder fits in its time budget) and
   runs it to the end: exit code, stdout and stderr (what was printed before the stop, then after the restore) and
   the files in ``/out`` must be those of the reference.

The host's own non-determinism is pinned (:class:`PinnedWasi`: clocks, random bytes, inode numbers, file times,
directory order), so that two runs of a workload are the same computation on either engine and their snapshots at
one step can be compared byte for byte: it is the engines that are under test, not the host.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmig.module import Module
from wasmig.snapshot.state import Snapshot, from_plain, to_plain
from wasmig.wasi import constants as C
from wasmig.wasi.preview1 import ProcExit, Wasi

OUT = "/out"
APP = "/app"


# --- the host, pinned ----------------------------------------------------------------------------------------------
class PinnedWasi(Wasi):
    """wasmig's WASI with what the host decides pinned to values that depend only on the guest's own history:

    - every clock reads a *virtual* time that advances by ``TICK_NS`` at each ``clock_time_get`` (realtime is
      ``EPOCH_NS`` plus it), so a program that reads the time twice sees it move forward, and a restore continues
      it from the snapshot's monotonic reading (which is the virtual time: it survives a checkpoint as the real
      clock's offset does);
    - ``random_get`` returns bytes derived from the virtual time and then advances it (no host entropy);
    - file and directory stats report device 0, an inode derived from the host path beneath its preopen and fixed
      times; a directory lists its entries sorted by name, with those inodes.

    Used for every run of the harness, reference included; the snapshot format and the restore code paths are
    wasmig's own (``restore_wasi(..., into=)``)."""

    EPOCH_NS = 1_700_000_000_000_000_000
    TICK_NS = 1_000_000
    FILE_TIME_NS = 1_600_000_000_000_000_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.virtual_ns = 0
        self.streams: tuple[io.BytesIO, io.BytesIO] = (io.BytesIO(), io.BytesIO())  # stdout, stderr as given
        #: (text, action): ``action()`` once ``text`` is on stdout (the harness's late checkpoint requests)
        self.on_output: tuple[bytes, Callable[[], Any]] | None = None
        super().__init__(*args, **kwargs)

    def fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> None:
        super().fd_write(fd, iovs, iovs_len, nwritten_ptr)
        if fd == 1 and self.on_output is not None and self.on_output[0] in self.streams[0].getvalue():
            action = self.on_output[1]
            self.on_output = None  # once
            action()

    def now_ns(self, clock_id: int) -> int:
        if clock_id == C.CLOCK_REALTIME:
            return self.EPOCH_NS + self.virtual_ns
        if clock_id in (C.CLOCK_MONOTONIC, C.CLOCK_PROCESS_CPUTIME, C.CLOCK_THREAD_CPUTIME):
            return self.virtual_ns
        return super().now_ns(clock_id)

    def clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> None:
        super().clock_time_get(clock_id, precision, time_ptr)
        self.virtual_ns += self.TICK_NS

    def clock_res_get(self, clock_id: int, res_ptr: int) -> None:
        super().clock_res_get(clock_id, res_ptr)
        self.mem.set_u64(res_ptr, 1000)

    def random_get(self, buf: int, n: int) -> None:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(struct.pack("<QQ", self.virtual_ns, len(out))).digest()
        self.mem.write(buf, bytes(out[:n]))
        self.virtual_ns += self.TICK_NS

    @staticmethod
    def _ino(name: str) -> int:
        return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "little") | 1

    def _pin_stat(self, buf: int, name: str) -> None:
        # filestat: dev u64 @0, ino u64 @8, filetype u8 @16, nlink u64 @24, size u64 @32, atim @40, mtim @48, ctim @56
        self.mem.set_u64(buf, 0)
        self.mem.set_u64(buf + 8, self._ino(name))
        for off in (40, 48, 56):
            self.mem.set_u64(buf + off, self.FILE_TIME_NS)

    def fd_filestat_get(self, fd: int, buf: int) -> None:
        super().fd_filestat_get(fd, buf)
        entry = self.fds.get(fd)
        self._pin_stat(buf, f"fd:{entry.guest_path or entry.preopen or fd}")

    def path_filestat_get(self, fd: int, flags: int, path: int, path_len: int, buf: int) -> None:
        super().path_filestat_get(fd, flags, path, path_len, buf)
        name = bytes(self.mem.read(path, path_len)).decode("utf-8", "surrogateescape")
        self._pin_stat(buf, f"path:{name}")

    def _dir_listing(self, entry: Any) -> list[tuple[str, int, int]]:
        listing = super()._dir_listing(entry)
        head, rest = listing[:2], sorted(listing[2:])
        return [(name, self._ino(f"dirent:{name}"), ftype) for name, _, ftype in head + rest]


# --- workloads ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A real program and the script it runs: ``argv`` after the program's name, the files of ``/app``."""

    name: str
    program: str  # a key of tests.real_programs.PROGRAMS
    argv: tuple[str, ...]
    files: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, self.argv))


@dataclass
class Outcome:
    """How a run ended, and what it left."""

    code: int | None  # exit code; None: it did not finish (trap, error, timeout: see ``error``)
    stdout: bytes
    stderr: bytes
    files: dict[str, bytes]
    error: str | None = None
    seconds: float = 0.0  # the whole run, instantiation and restore included
    guest_seconds: float = 0.0  # the guest's own run time (the sum of its runs between stops)

    def differences(self, ref: Outcome) -> list[str]:
        """What differs from the reference run, one line each; [] if nothing does."""
        out = []
        if self.error is not None:
            out.append(f"did not finish: {self.error}")
        if self.code != ref.code:
            out.append(f"exit code {self.code}, expected {ref.code}")
        for what, mine, theirs in (("stdout", self.stdout, ref.stdout), ("stderr", self.stderr, ref.stderr)):
            if mine != theirs:
                at = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                          min(len(mine), len(theirs)))
                out.append(f"{what} differs from byte {at} ({len(mine)} bytes, expected {len(theirs)}): "
                           f"{mine[max(0, at - 40):at + 60]!r} vs {theirs[max(0, at - 40):at + 60]!r}")
        for name in sorted(set(self.files) | set(ref.files)):
            if name not in self.files:
                out.append(f"file {name} missing")
            elif name not in ref.files:
                out.append(f"file {name} not in the reference")
            elif self.files[name] != ref.files[name]:
                out.append(f"file {name} differs ({len(self.files[name])} bytes, expected {len(ref.files[name])})")
        return out


@dataclass
class Point:
    """A snapshot taken during a run, and what the program had done by then."""

    label: str  # e.g. "step 123456 on wasmtime" or "request 3 (after 0.52 s)"
    snapshot: Snapshot
    stdout: bytes
    stderr: bytes
    files: Path  # a copy of /out at the stop (mtimes kept)
    engine: str
    variant: str  # "steps" or "fast"

    @property
    def steps(self) -> int | None:
        return self.snapshot.steps


def read_files(folder: Path) -> dict[str, bytes]:
    """Every regular file beneath ``folder``, by path relative to it."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = path.read_bytes()
    return out


class Host:
    """Where a workload's runs live: ``/app`` (its scripts, shared read-only) and a fresh ``/out`` per run."""

    def __init__(self, workload: Workload, module_path: Path, root: Path) -> None:
        self.workload = workload
        self.module_path = module_path
        self.root = root
        self.app = root / "app"
        self.app.mkdir(parents=True, exist_ok=True)
        for name, text in workload.files.items():
            (self.app / name).write_text(text)
        self._n = 0

    def fresh_dir(self, kind: str, like: Path | None = None) -> Path:
        """A new directory under the root: empty, or a copy of ``like`` with its files' times kept."""
        self._n += 1
        path = self.root / f"{kind}-{self._n:04d}"
        if like is None:
            path.mkdir()
        else:
            shutil.copytree(like, path, copy_function=shutil.copy2)
        return path

    def wasi(self, out_dir: Path) -> PinnedWasi:
        argv = [str(self.module_path.name), *self.workload.argv]
        streams = io.BytesIO(), io.BytesIO()
        wasi = PinnedWasi(argv, dict(self.workload.env), preopens=[(str(self.app), APP), (str(out_dir), OUT)],
                          stdin=b"", stdout=streams[0], stderr=streams[1])
        wasi.streams = streams
        return wasi

    def restored_wasi(self, point: Point, out_dir: Path) -> PinnedWasi:
        """A WASI in the snapshot's state (wasmig's ``restore_wasi``), ``/out`` mapped to ``out_dir``."""
        from wasmig.grants import Granted
        from wasmig.wasi.snapshot import restore_wasi

        ws = point.snapshot.wasi
        assert ws is not None
        streams = io.BytesIO(), io.BytesIO()
        wasi = PinnedWasi([], {}, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
        restore_wasi(ws, granted=Granted(dirs={OUT: str(out_dir), APP: str(self.app)}), stdin=b"",
                     stdout=streams[0], stderr=streams[1], into=wasi)
        wasi.virtual_ns = ws.monotonic_ns
        wasi.streams = streams
        return wasi


def _through_disk(snap: Snapshot) -> Snapshot:
    """The snapshot as a restore reads it back (the on-disk canonical form)."""
    return from_plain(to_plain(snap))


def _output(wasi: PinnedWasi) -> tuple[bytes, bytes]:
    """What the guest wrote on stdout and stderr so far (the streams the harness gave it)."""
    return wasi.streams[0].getvalue(), wasi.streams[1].getvalue()


# --- the engines ----------------------------------------------------------------------------------------------------
class Watchdog:
    """Stops a run that goes on too long: after ``seconds``, ``stop()`` (a checkpoint request); ``fired`` says so."""

    def __init__(self, seconds: float, stop: Callable[[], None]) -> None:
        self.fired = False
        self._stop = stop
        self._timer = _later(seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self._stop()

    def cancel(self) -> None:
        self._timer.cancel()


class _Interp:
    """The interpreter, from the start or restored from a snapshot."""

    def __init__(self, module: Module, wasi: Wasi, snap: Snapshot | None) -> None:
        from wasmig.engines.interp.instance import bind_wasi, wasi_imports
        from wasmig.session.command import instantiate_with_wasi

        if snap is None:
            self.inst = instantiate_with_wasi(module, wasi)
        else:
            from wasmig.engines.interp.capture import restore as restore_instance

            self.inst = bind_wasi(restore_instance(module, snap, wasi_imports(module, wasi), "interp"), wasi)
        self._first = snap is None

    def go(self, at_step: int | None) -> bool:
        """Run on until stable point ``at_step`` (True: stopped there) or the end (False; ``ProcExit`` passes)."""
        from wasmig.interp.machine import Suspended

        self.inst.stop_at(step=at_step)
        try:
            if self._first:
                self._first = False
                self.inst.invoke("_start")
            else:
                self.inst.resume()
        except Suspended:
            return True
        return False

    def request(self) -> None:
        self.inst.machine.stop_at_step = 0  # what a signal does (Session.request)

    def capture(self) -> Snapshot:
        from wasmig.engines.interp.capture import capture

        return capture(self.inst)


class _Wasmtime:
    """The instrumented module on wasmtime (the counting or the fast variant), from the start or a snapshot."""

    def __init__(self, module: Module, wasi: Wasi, snap: Snapshot | None, count_steps: bool) -> None:
        from wasmig.engines.wasmtime.checkpointable import Checkpointable

        self.runner = Checkpointable(module, wasi, count_steps=count_steps)
        if snap is not None:
            self.runner.load(snap)
        self._first = snap is None

    def go(self, at_step: int | None) -> bool:
        self.runner.arm(at_step)
        if self._first:
            self._first = False
            self.runner.start()
        else:
            self.runner.resume()  # the loaded snapshot's frames, or the last capture's
        return self.runner.unwound

    def request(self) -> None:
        self.runner.request()

    def capture(self) -> Snapshot:
        return self.runner.capture()


@dataclass
class _Stops:
    """Where one run of :meth:`Engines.run` stops, and what it collects."""

    engine: str
    variant: str
    at_steps: list[int]
    at_times: list[float]
    request_on: bytes | None
    to_end: bool
    timeout: float
    label: str
    prefix: tuple[bytes, bytes]  # what was printed before the run's start
    out_dir: Path
    points: list[Point]
    guest: float = 0.0  # seconds the guest ran so far


class Engines:
    """One workload on both engines: the module decoded once (the interpreter validates it on first use), the
    instrumented variants and compiled artifacts cached by wasmig."""

    def __init__(self, host: Host, module: Module) -> None:
        self.host = host
        self.module = module

    def run(self, engine: str, *, variant: str = "steps", start: Point | None = None, at_steps: list[int] = (),
            at_times: list[float] = (), request_on: bytes | None = None, to_end: bool = True,
            timeout: float = 600.0, label: str = "") -> tuple[list[Point], Outcome]:
        """One run on ``engine`` (on wasmtime, ``variant`` "steps" is the counting variant, "fast" the fast one),
        from the beginning or from ``start`` (its snapshot restored, ``/out`` as it was then), stopping

        - at each stable point of ``at_steps`` (ascending, absolute step numbers), or
        - at the first poll after each time of ``at_times`` (seconds of the guest's own run time, ascending: a
          checkpoint request from another thread, as ``wasmig checkpoint PID`` makes), and after ``request_on``
          first appears on stdout (a request at a random time within the next 3 ms),

        capturing a :class:`Point` at each stop and going on, to the end (``to_end``) or until the last stop. The
        outcome is that of the whole run, what was printed before ``start`` included; its ``code`` is None when
        the run did not end (``error`` says why, or is None when it stopped as asked)."""
        host = self.host
        out_dir = host.fresh_dir("run", like=None if start is None else start.files)
        wasi = host.wasi(out_dir) if start is None else host.restored_wasi(start, out_dir)
        prefix = (b"", b"") if start is None else (start.stdout, start.stderr)
        points: list[Point] = []
        began = time.perf_counter()
        code: int | None = None
        error: str | None = None
        stops = None
        try:
            snap = None if start is None else start.snapshot
            driver = _Interp(self.module, wasi, snap) if engine == "interp" else \
                _Wasmtime(self.module, wasi, snap, count_steps=variant == "steps")
            stops = _Stops(engine, variant, list(at_steps), list(at_times), request_on, to_end, timeout, label,
                           prefix, out_dir, points)
            code, error = self._drive(driver, wasi, stops)
        except Exception as e:  # noqa: BLE001 - a trap or a refusal is this run's outcome
            error = f"{type(e).__name__}: {e}"
        finally:
            stdout, stderr = _output(wasi)
            wasi.close()
        return points, Outcome(code, prefix[0] + stdout, prefix[1] + stderr, read_files(out_dir), error,
                               time.perf_counter() - began, stops.guest if stops is not None else 0.0)

    def _drive(self, driver: _Interp | _Wasmtime, wasi: PinnedWasi, stops: _Stops) -> tuple[int | None, str | None]:
        """:meth:`run`'s loop: (exit code, error)."""
        engine, variant, at_steps, at_times, request_on = (stops.engine, stops.variant, stops.at_steps,
                                                           stops.at_times, stops.request_on)
        timeout, prefix, label = stops.timeout, stops.prefix, stops.label
        watchdog = Watchdog(timeout, driver.request)
        requested: list[str] = []  # what asked for the stop in progress

        def request(why: str) -> Callable[[], None]:
            return lambda: (requested.append(why), driver.request())

        output_pending = request_on is not None
        if request_on is not None:
            wasi.on_output = (request_on, lambda: _later(random.uniform(0, 0.003), request(f"after {request_on!r}")))
        try:
            while True:
                timer = None
                if at_times:
                    timer = _later(max(0.0, at_times[0] - stops.guest), request(f"request at {at_times[0]:.4f} s"))
                t0 = time.perf_counter()
                try:
                    stopped = driver.go(at_steps[0] if at_steps else None)
                except ProcExit as e:
                    return e.code, None
                finally:
                    stops.guest += time.perf_counter() - t0
                    if timer is not None:
                        timer.cancel()
                        timer.join()
                if not stopped:
                    return 0, None
                if watchdog.fired:
                    return None, f"did not end within {timeout:g} s on {engine}"
                snap = driver.capture()
                # a restore of an uncounted snapshot counts its steps from the restore, and captures none
                if at_steps and (snap.steps == at_steps[0] or snap.steps is None and not requested):
                    what = f"step {at_steps.pop(0)}" if snap.steps is not None else f"{at_steps.pop(0)} steps"
                elif requested:
                    what = requested[-1]
                    if what.startswith("after"):
                        output_pending = False
                    else:
                        at_times.pop(0)
                else:
                    return None, f"stopped unasked on {engine} ({snap.point}, steps {snap.steps})"
                requested.clear()
                where = f"{snap.point} in {len(snap.frames)} frames"
                stdout, stderr = _output(wasi)
                stops.points.append(Point(f"{label}{what} on {engine} ({where})", _through_disk(snap),
                                          prefix[0] + stdout, prefix[1] + stderr,
                                          self.host.fresh_dir("at", like=stops.out_dir), engine, variant))
                if not stops.to_end and not at_steps and not at_times and not output_pending:
                    return None, None
        finally:
            watchdog.cancel()

    def finish(self, engine: str, point: Point, timeout: float = 600.0) -> Outcome:
        """Restore ``point`` on ``engine`` (wasmtime: the fast variant, as ``wasmig restore`` does) with ``/out`` as
        it was then, and run it to the end."""
        return self.run(engine, variant="fast", start=point, timeout=timeout)[1]

    def reference(self, timeout: float = 600.0) -> tuple[Outcome, int]:
        """The uninterrupted run on wasmtime's counting variant, and its number of stable points."""
        host = self.host
        out_dir = host.fresh_dir("ref")
        wasi = host.wasi(out_dir)
        began = time.perf_counter()
        driver = _Wasmtime(self.module, wasi, None, count_steps=True)
        try:
            code = 0 if not driver.go(None) else None
        except ProcExit as e:
            code = e.code
        finally:
            stdout, stderr = _output(wasi)
            wasi.close()
        steps = driver.runner.steps
        assert steps is not None
        return Outcome(code, stdout, stderr, read_files(out_dir), None, time.perf_counter() - began), steps

    def plain(self) -> Outcome:
        """An uninterrupted run of the module as it is, not instrumented, on wasmtime (what ``wasmig run`` does
        without checkpoints): the instrumented reference must behave as it does."""
        from wasmig.session.command import run_command

        out_dir = self.host.fresh_dir("plain")
        wasi = self.host.wasi(out_dir)
        began = time.perf_counter()
        code: int | None = None
        error = None
        try:
            code = run_command(self.module, wasi, "wasmtime")
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {e}"
        finally:
            stdout, stderr = _output(wasi)
            wasi.close()
        return Outcome(code, stdout, stderr, read_files(out_dir), error, time.perf_counter() - began)


def _later(delay: float, fn: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()
    return timer


# --- comparing snapshots ----------------------------------------------------------------------------------------------
def snapshot_differences(a: Snapshot, b: Snapshot) -> list[str]:
    """Every difference in program state between two snapshots of the same step: ``wasmig diff``'s lines (steps,
    frames, memories, tables, globals, dropped segments, the WASI state), less the engine's name, plus the WASI fd
    table field by field with host paths made relative to their preopen and host file times left out (the two
    runs write into different host directories)."""
    from wasmig.snapshot.inspect import diff

    # diff()'s fd lines compare host paths and file times, which differ between the runs' directories
    lines = [line for line in diff(a, b) if not line.startswith(("engine:", "fd "))]
    if a.wasi is not None and b.wasi is not None:
        fa = {fd.fd: _fd_fields(fd) for fd in a.wasi.fds}
        fb = {fd.fd: _fd_fields(fd) for fd in b.wasi.fds}
        for n in sorted(set(fa) | set(fb)):
            if fa.get(n) != fb.get(n):
                lines.append(f"fd {n}: {fa.get(n)} -> {fb.get(n)}")
    return lines


def _fd_fields(fd: Any) -> dict[str, Any]:
    d = dict(fd.__dict__)
    d.pop("mtime_ns", None)
    d.pop("host_path", None)
    return d


def spread(total: int, n: int, rng: random.Random, lo: int = 1) -> list[int]:
    """``n`` distinct stable points spread over a run of ``total``: one drawn at random in each of ``n`` equal
    slices of [lo, total)."""
    width = (total - lo) / n
    return sorted({lo + int(i * width) + rng.randrange(max(1, int(width))) for i in range(n)})


def save_failure(point: Point, where: Path) -> Path:
    """Keep a failing point's snapshot (a single file) and its /out copy for a manual repro."""
    from wasmig.snapshot.store import write_single_file

    where.mkdir(parents=True, exist_ok=True)
    stem = where / point.label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
    write_single_file(point.snapshot, stem.with_suffix(".snap"))
    shutil.copytree(point.files, stem.with_suffix(".out"), dirs_exist_ok=True)
    return stem.with_suffix(".snap")


# --- the harness: a plan, its checks, a report ----------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How much of a workload the harness checks.

    ``steps_points``/``fast_points``: snapshots spread over the run, by step (both engines) and by checkpoint
    requests at random times (wasmtime's fast variant). ``interp``: ``"all"`` restores every snapshot on the
    interpreter too; ``"late"`` only the ``late_points`` added within ``late_steps`` stable points of the end (the
    interpreter is too slow for more) and the ``fast_late_points`` requested just after the program printed
    ``late_marker`` (those only with ``fast_late_to_end``: the rest of the program after its last line may still be
    long). Without ``interp_from_start`` the interpreter cannot run the program from its start: its snapshot at
    step k is reached from wasmtime's at k - ``chain_steps`` (then compared with wasmtime's at k), and every fast
    snapshot it does not restore runs ``chain_steps`` on the interpreter before it finishes on wasmtime."""

    steps_points: int
    fast_points: int
    interp: str = "all"
    interp_from_start: bool = True
    late_points: int = 0
    late_steps: int = 0
    fast_late_points: int = 0
    late_marker: bytes = b""
    fast_late_to_end: bool = False
    chain_steps: int = 0
    timeout: float = 900.0


@dataclass
class Check:
    """One comparison the harness made."""

    variant: str  # "steps" or "fast"
    kind: str  # "run", "same snapshot", "restore", "interp leg"
    path: str  # e.g. "wasmtime -> interp"
    label: str
    ok: bool
    seconds: float
    detail: list[str] = field(default_factory=list)
    saved: str | None = None  # where a failing point's snapshot was kept


@dataclass
class Report:
    """Every check of one workload, and the time its phases took."""

    name: str
    checks: list[Check] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def table(self) -> str:
        """Per variant, kind and path: checks passed of made, and the median seconds of one."""
        rows: dict[tuple[str, str, str], list[Check]] = {}
        for c in self.checks:
            rows.setdefault((c.variant, c.kind, c.path), []).append(c)
        lines = [f"{self.name}: {len(self.checks) - len(self.failures())} of {len(self.checks)} checks passed"]
        for (variant, kind, path), cs in rows.items():
            ok = sum(c.ok for c in cs)
            secs = sorted(c.seconds for c in cs)
            lines.append(f"  {variant:5} {kind:13} {path:30} {ok:3}/{len(cs):<3} passed, "
                         f"median {secs[len(secs) // 2]:6.2f} s")
        lines += [f"  phase {k}: {v:.1f} s" for k, v in self.phases.items()]
        lines += [f"  note: {n}" for n in self.notes]
        for c in self.failures():
            kept = f" (kept in {c.saved})" if c.saved else ""
            lines.append(f"  FAILED {c.variant} {c.kind} {c.path}: {c.label}{kept}")
            lines += [f"    {d}" for d in c.detail[:6]]
        return "\n".join(lines)


class Harness:
    """Runs a :class:`Plan` on one workload and fills a :class:`Report` (``keep``: a folder where failing points'
    snapshots are written, for a manual ``wasmig restore``)."""

    def __init__(self, engines: Engines, plan: Plan, rng: random.Random, report: Report,
                 keep: Path | None = None, log: Callable[[str], None] | None = None) -> None:
        self.engines = engines
        self.plan = plan
        self.rng = rng
        self.report = report
        self.keep = keep
        self.log = log or (lambda _line: None)
        self.ref: Outcome | None = None
        self.total = 0

    def _phase(self, name: str, began: float) -> None:
        self.report.phases[name] = self.report.phases.get(name, 0.0) + time.perf_counter() - began

    def _check(self, variant: str, kind: str, path: str, label: str, detail: list[str], seconds: float,
               point: Point | None = None) -> None:
        saved = None
        if detail and point is not None and self.keep is not None:
            saved = str(save_failure(point, self.keep / self.report.name))
        check = Check(variant, kind, path, label, not detail, seconds, detail, saved)
        self.report.checks.append(check)
        self.log(f"{'ok  ' if check.ok else 'FAIL'} {variant} {kind} {path}: {label} ({seconds:.2f} s)"
                 + ("" if check.ok else f": {detail[0]}"))

    def _outcome(self, variant: str, kind: str, path: str, label: str, outcome: Outcome,
                 point: Point | None = None) -> None:
        assert self.ref is not None
        self._check(variant, kind, path, label, outcome.differences(self.ref), outcome.seconds, point)

    def _restore(self, variant: str, point: Point, engine: str) -> None:
        outcome = self.engines.finish(engine, point, self.plan.timeout)
        self._outcome(variant, "restore", f"{point.engine} -> {engine}", point.label, outcome, point)

    def _interp_fits(self, late: bool) -> bool:
        return self.plan.interp == "all" or late

    def run(self) -> Report:
        began = time.perf_counter()
        self.ref, self.total = self.engines.reference(self.plan.timeout)
        if self.ref.code is None or self.ref.error:
            raise AssertionError(f"{self.report.name}: the uninterrupted run failed: {self.ref.error}")
        self._phase("uninterrupted run (wasmtime, counting)", began)
        self.report.notes.append(f"{self.total} stable points, exit {self.ref.code}, {len(self.ref.stdout)} bytes "
                                 f"of stdout, {len(self.ref.files)} files; uninterrupted on wasmtime "
                                 f"{self.ref.seconds:.2f} s")
        self._outcome("steps", "run", "wasmtime (plain)", "uninterrupted, not instrumented", self.engines.plain())
        self.deterministic()
        self.fast()
        return self.report

    def deterministic(self) -> None:
        plan, total = self.plan, self.total
        ks = spread(total, plan.steps_points, self.rng)
        late = spread(total, plan.late_points, self.rng, lo=total - plan.late_steps) if plan.late_points else []
        late = [k for k in late if k not in ks]
        ks = sorted(ks + late)
        wanted = sorted(set(ks + ([k - plan.chain_steps for k in ks] if not plan.interp_from_start else [])))
        began = time.perf_counter()
        points, outcome = self.engines.run("wasmtime", at_steps=wanted, timeout=plan.timeout)
        self._outcome("steps", "run", "wasmtime", f"{len(points)} stops at steps, going on after each", outcome)
        self._phase("stops on wasmtime (counting)", began)
        on_wasmtime = {p.steps: p for p in points}
        began = time.perf_counter()
        on_interp: dict[int, Point] = {}
        if plan.interp_from_start:
            ipoints, outcome = self.engines.run("interp", at_steps=ks, timeout=plan.timeout)
            self._outcome("steps", "run", "interp", f"{len(ipoints)} stops at steps, going on after each", outcome)
            on_interp = {p.steps: p for p in ipoints if p.steps is not None}
        else:
            for k in ks:
                start = on_wasmtime.get(k - plan.chain_steps)
                if start is None:
                    continue
                ipoints, outcome = self.engines.run("interp", start=start, at_steps=[k], to_end=False,
                                                    timeout=plan.timeout, label=f"from step {start.steps}, ")
                if ipoints:
                    on_interp[k] = ipoints[0]
                else:
                    self._check("steps", "interp leg", "wasmtime -> interp", f"step {start.steps} to {k}",
                                [outcome.error or "the interpreter did not stop"], outcome.seconds, start)
        self._phase("stops on the interpreter", began)
        began = time.perf_counter()
        for k in ks:
            a, b = on_wasmtime.get(k), on_interp.get(k)
            if a is None or b is None:
                self._check("steps", "same snapshot", "wasmtime = interp", f"step {k}",
                            [f"no snapshot at step {k} on {'wasmtime' if a is None else 'interp'}"], 0.0)
                continue
            t0 = time.perf_counter()
            self._check("steps", "same snapshot", "wasmtime = interp", a.label, snapshot_differences(a.snapshot,
                        b.snapshot), time.perf_counter() - t0, a)
        self._phase("snapshot comparisons", began)
        for k in ks:
            is_late = k in late or total - k <= plan.late_steps
            for point in (on_wasmtime.get(k), on_interp.get(k)):
                if point is None:
                    continue
                began = time.perf_counter()
                self._restore("steps", point, "wasmtime")
                self._phase("restores on wasmtime", began)
                if self._interp_fits(is_late):
                    began = time.perf_counter()
                    self._restore("steps", point, "interp")
                    self._phase("restores on the interpreter", began)

    def fast(self) -> None:
        plan = self.plan
        began = time.perf_counter()
        _, plain = self.engines.run("wasmtime", variant="fast", timeout=plan.timeout)
        self._outcome("fast", "run", "wasmtime", "uninterrupted, fast variant", plain)
        guest = plain.guest_seconds
        points: list[Point] = []
        late: list[Point] = []
        # a request that comes after the program ended takes no snapshot (a loaded machine delays a timer by tens of
        # milliseconds, and QuickJS's whole run is about that): new runs for the rest
        for attempt in range(3 * (plan.fast_points + plan.fast_late_points) + 1):
            missing = plan.fast_points - len(points)
            missing_late = plan.fast_late_points - len(late)
            if missing <= 0 and missing_late <= 0:
                break
            times = sorted(self.rng.uniform(0, guest) for _ in range(max(0, missing)))
            marker = plan.late_marker if missing_late > 0 and plan.late_marker else None
            got, outcome = self.engines.run("wasmtime", variant="fast", at_times=times, request_on=marker,
                                            timeout=plan.timeout, label=f"run {attempt + 1}: ")
            self._outcome("fast", "run", "wasmtime", f"{len(got)} stops at requests, going on after each", outcome)
            for p in got:
                (points if "request at" in p.label else late).append(p)
        points, late = points[:plan.fast_points], late[:plan.fast_late_points]
        if len(points) < plan.fast_points or len(late) < plan.fast_late_points:
            self.report.notes.append(f"fast variant: {len(points)} of {plan.fast_points} requests and {len(late)} of "
                                     f"{plan.fast_late_points} late ones took a snapshot (the rest came after the end)")
        self._phase("stops on wasmtime (fast)", began)
        for point in points + late:
            began = time.perf_counter()
            self._restore("fast", point, "wasmtime")
            self._phase("restores on wasmtime", began)
            began = time.perf_counter()
            if self._interp_fits(point in late and plan.fast_late_to_end):
                self._restore("fast", point, "interp")
            elif plan.chain_steps:
                self._interp_leg(point)
            self._phase("restores on the interpreter", began)

    def _interp_leg(self, point: Point) -> None:
        """``chain_steps`` of ``point`` on the interpreter, then the rest from its snapshot on wasmtime."""
        legs, outcome = self.engines.run("interp", start=point, at_steps=[self.plan.chain_steps], to_end=False,
                                         timeout=self.plan.timeout)
        if not legs:
            self._check("fast", "interp leg", "wasmtime -> interp -> wasmtime", point.label,
                        [outcome.error or "the interpreter did not stop"], outcome.seconds, point)
            return
        end = self.engines.finish("wasmtime", legs[0], self.plan.timeout)
        end.seconds += outcome.seconds
        self._outcome("fast", "interp leg", "wasmtime -> interp -> wasmtime",
                      f"{point.label}, then {self.plan.chain_steps} steps on interp", end, legs[0])
