"""The ``threads`` section of a multi-threaded program's snapshot (format version 2): every live
thread, the wait queues, the next tid and the interpreter scheduler's state, engine-neutral like
the rest of :mod:`wasmig.snapshot.state` (docs/snapshot-format.md, "Threads").

The top-level fields of such a snapshot are the main thread's (tid 0); each other thread carries
its own instance (:class:`ThreadInstanceState`). ``threads_from_plain`` checks everything a
restore relies on before any thread is made: tids, limits, that the wait queues and the run queue
name exactly the threads in those states, so a crafted snapshot is one ``SnapshotError`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from wasmig.snapshot.state import (
    POINTS,
    FrameState,
    GlobalState,
    TableState,
    _bool,
    _check,
    _dict,
    _int,
    _list,
    _opt_int,
    _str,
    frames_from_plain,
    frames_to_plain,
    globals_from_plain,
    globals_to_plain,
    tables_from_plain,
    tables_to_plain,
)

#: the format's limit on live threads (the interpreter's scheduler has the same one)
MAX_THREADS = 128
#: wasi-threads' thread ids are positive and below 2^29 (0: the main thread)
MAX_TID = (1 << 29) - 1
THREAD_STATES = ("runnable", "waiting", "host")
#: what ``memory.atomic.wait`` returns when a waiter leaves its queue: notified, timed out
WAIT_RESULTS = (0, 2)


@dataclass
class ThreadInstanceState:
    """A spawned thread's own module instance: as a single-threaded snapshot's top-level fields."""

    point: str
    frames: list[FrameState]
    tables: list[TableState]
    globals: list[GlobalState]
    dropped_data: list[bool]
    dropped_elems: list[bool]


@dataclass
class WaitState:
    """A thread at a ``wait`` point: the memory and effective address it waits on, the time left of
    its timeout (None: none), and its result once it left the queue (None: still queued)."""

    memory: int
    addr: int
    timeout_ns: int | None
    result: int | None


@dataclass
class ThreadState:
    tid: int
    start_arg: int | None  # None: the main thread
    state: str  # runnable | waiting | host
    steps: int | None
    quantum_end: int | None
    wait: WaitState | None
    #: the thread's instance; None for the main thread, whose are the snapshot's top-level fields
    own: ThreadInstanceState | None


@dataclass
class SchedulerState:
    """The interpreter's scheduler: generator state, mean quantum, turn holder, run queue."""

    seed: int
    rng: int
    quantum: int
    current: int | None
    run_queue: list[int]


@dataclass
class ThreadsState:
    next_tid: int
    threads: list[ThreadState]  # sorted by tid, the main thread first
    wait_queues: list[tuple[int, int, list[int]]]  # (memory, addr, tids in queue order), sorted
    scheduler: SchedulerState | None  # None: an engine whose threads run freely


def threads_to_plain(t: ThreadsState) -> dict[str, Any]:
    """The section's plain form (see docs/snapshot-format.md)."""
    entries = []
    for th in t.threads:
        entry: dict[str, Any] = {
            "tid": th.tid, "start_arg": th.start_arg, "state": th.state, "steps": th.steps,
            "quantum_end": th.quantum_end,
            "wait": None if th.wait is None else {"memory": th.wait.memory, "addr": th.wait.addr,
                                                  "timeout_ns": th.wait.timeout_ns, "result": th.wait.result},
        }
        if th.own is not None:
            entry.update({"point": th.own.point, "frames": frames_to_plain(th.own.frames),
                          "globals": globals_to_plain(th.own.globals), "tables": tables_to_plain(th.own.tables),
                          "dropped_data": th.own.dropped_data, "dropped_elems": th.own.dropped_elems})
        entries.append(entry)
    s = t.scheduler
    return {
        "next_tid": t.next_tid,
        "list": entries,
        "wait_queues": [[m, a, list(tids)] for m, a, tids in t.wait_queues],
        "scheduler": None if s is None else {"seed": s.seed, "rng": s.rng, "quantum": s.quantum,
                                             "current": s.current, "run_queue": list(s.run_queue)},
    }


def _tid(v: Any, what: str) -> int:
    return _int(v, what, 0, MAX_TID)


def _wait_from_plain(v: Any, what: str) -> WaitState | None:
    if v is None:
        return None
    w = _dict(v, what)
    result = w.get("result")
    _check(result is None or result in WAIT_RESULTS, f"{what} result is not 0 or 2")
    return WaitState(_int(w.get("memory"), f"{what} memory", hi=0xFFFFFFFF),
                     _int(w.get("addr"), f"{what} address"), _opt_int(w.get("timeout_ns"), f"{what} timeout"),
                     result)


def _own_from_plain(e: dict[str, Any], what: str) -> ThreadInstanceState:
    point = _str(e.get("point"), f"{what} point")
    _check(point in POINTS, f"{what} has unknown point {point!r}")
    return ThreadInstanceState(
        point, frames_from_plain(e.get("frames"), f"{what} frame"), tables_from_plain(e.get("tables"), f"{what} table"),
        globals_from_plain(e.get("globals"), f"{what} global"),
        [_bool(x, f"{what} dropped data flag") for x in _list(e.get("dropped_data"), f"{what} dropped_data")],
        [_bool(x, f"{what} dropped elem flag") for x in _list(e.get("dropped_elems"), f"{what} dropped_elems")])


def _thread_from_plain(v: Any, index: int) -> ThreadState:
    e = _dict(v, f"thread entry {index}")
    tid = _tid(e.get("tid"), f"thread entry {index} tid")
    what = f"thread {tid}"
    start_arg = e.get("start_arg")
    if tid == 0:
        _check(start_arg is None, "thread 0 (the main thread) has a start argument")
        for key in ("point", "frames", "globals", "tables", "dropped_data", "dropped_elems"):
            _check(key not in e, f"thread 0 has its own {key} (the main thread's are the snapshot's)")
        own = None
    else:
        _int(start_arg, f"{what} start argument", hi=0xFFFFFFFF)
        own = _own_from_plain(e, what)
    state = _str(e.get("state"), f"{what} state")
    _check(state in THREAD_STATES, f"{what} has unknown state {state!r}")
    return ThreadState(tid, start_arg, state, _opt_int(e.get("steps"), f"{what} steps"),
                       _opt_int(e.get("quantum_end"), f"{what} quantum end"),
                       _wait_from_plain(e.get("wait"), f"{what} wait"), own)


def threads_from_plain(v: Any, main_point: str, total_steps: int | None) -> ThreadsState:
    """The section from its plain form, every cross-reference checked (see the module docstring).
    ``main_point`` and ``total_steps``: the snapshot's top-level point and step count."""
    d = _dict(v, "threads")
    entries = _list(d.get("list"), "threads list")
    _check(0 < len(entries) <= MAX_THREADS, f"{len(entries)} threads: a snapshot holds 1 to {MAX_THREADS}")
    threads = [_thread_from_plain(e, i) for i, e in enumerate(entries)]
    tids = [t.tid for t in threads]
    _check(tids[0] == 0, "the first thread is not the main thread (tid 0)")
    _check(all(a < b for a, b in pairwise(tids)), "thread ids are not unique and sorted")
    next_tid = _int(d.get("next_tid"), "next_tid", 1, MAX_TID + 1)
    _check(next_tid > tids[-1], f"next_tid {next_tid} is not above every thread id")
    by_tid = {t.tid: t for t in threads}
    for t in threads:
        point = main_point if t.own is None else t.own.point
        _check((point == "wait") == (t.wait is not None), f"thread {t.tid}: a wait point if and only if a wait")
        if t.state == "waiting":
            _check(t.wait is not None and t.wait.result is None, f"thread {t.tid} is waiting without a queued wait")
        elif t.wait is not None:
            _check(t.state == "runnable" and t.wait.result is not None,
                   f"thread {t.tid} left its wait queue without a result")
        if t.state == "host":
            _check(point == "import_call", f"thread {t.tid} is in the host but not at an import call")
    queued: set[int] = set()
    wait_queues: list[tuple[int, int, list[int]]] = []
    for i, q in enumerate(_list(d.get("wait_queues"), "wait_queues")):
        _check(isinstance(q, list) and len(q) == 3, f"wait queue {i} is malformed")
        memory = _int(q[0], f"wait queue {i} memory", hi=0xFFFFFFFF)
        addr = _int(q[1], f"wait queue {i} address")
        waiters = [_tid(x, f"wait queue {i} thread") for x in _list(q[2], f"wait queue {i} threads")]
        _check(bool(waiters), f"wait queue {i} is empty")
        for tid in waiters:
            t = by_tid.get(tid)
            _check(t is not None, f"wait queue {i} names thread {tid}, which the snapshot does not have")
            assert t is not None
            _check(t.state == "waiting" and t.wait is not None and (t.wait.memory, t.wait.addr) == (memory, addr),
                   f"wait queue {i} names thread {tid}, which does not wait there")
            _check(tid not in queued, f"thread {tid} is in a wait queue twice")
            queued.add(tid)
        wait_queues.append((memory, addr, waiters))
    keys = [(m, a) for m, a, _ in wait_queues]
    _check(all(a < b for a, b in pairwise(keys)), "wait queues are not sorted by memory and address")
    missing = [t.tid for t in threads if t.state == "waiting" and t.tid not in queued]
    _check(not missing, f"thread {missing[0] if missing else 0} waits but is in no wait queue")
    scheduler = _scheduler_from_plain(d.get("scheduler"), threads, by_tid)
    if total_steps is not None:
        counted = [t.steps for t in threads]
        _check(all(s is not None for s in counted), "a thread has no step count while the program has one")
        _check(sum(s for s in counted if s is not None) <= total_steps, "the threads' steps exceed the program's")
    return ThreadsState(next_tid, threads, wait_queues, scheduler)


def _scheduler_from_plain(v: Any, threads: list[ThreadState], by_tid: dict[int, ThreadState]) -> SchedulerState | None:
    if v is None:
        return None
    s = _dict(v, "scheduler")
    current = s.get("current")
    if current is not None:
        _tid(current, "scheduler current thread")
    run_queue = [_tid(x, "run queue thread") for x in _list(s.get("run_queue"), "run queue")]
    turns = ([current] if current is not None else []) + run_queue
    _check(len(set(turns)) == len(turns), "a thread is in the run queue twice (or also holds the turn)")
    for tid in turns:
        _check(tid in by_tid, f"the run queue names thread {tid}, which the snapshot does not have")
        _check(by_tid[tid].state == "runnable", f"the run queue names thread {tid}, which is not runnable")
    runnable = {t.tid for t in threads if t.state == "runnable"}
    _check(runnable == set(turns), "a runnable thread is neither in the run queue nor holding the turn")
    return SchedulerState(_int(s.get("seed"), "scheduler seed"), _int(s.get("rng"), "scheduler generator state"),
                          _int(s.get("quantum"), "scheduler quantum", 1, 1 << 40), current, run_queue)
