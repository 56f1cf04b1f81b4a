"""``wasmig inspect`` and ``wasmig diff`` of a multi-threaded program's snapshot: its threads, wait
queues and scheduler (the ``threads`` section, docs/snapshot-format.md), as JSON-able data, as
text, and as a list of differences. The main thread's own state is the snapshot's top-level one,
shown and compared by :mod:`wasmig.snapshot.inspect` as for any snapshot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wasmig.snapshot.state import Snapshot
from wasmig.snapshot.threads_state import ThreadState


def _wait(th: ThreadState) -> dict[str, Any] | None:
    w = th.wait
    if w is None:
        return None
    return {"memory": w.memory, "addr": w.addr, "timeout_s": None if w.timeout_ns is None else w.timeout_ns / 1e9,
            "result": w.result}


def summarize_threads(snapshot: Snapshot, name: Callable[[int], str | None]) -> dict[str, Any]:
    """The section as JSON-able data; ``name(func_index)`` gives a function's name (or None)."""
    section = snapshot.threads
    assert section is not None
    threads = []
    for th in section.threads:
        own = th.own
        frames = snapshot.frames if own is None else own.frames
        entry: dict[str, Any] = {
            "tid": th.tid, "start_arg": th.start_arg, "state": th.state,
            "point": snapshot.point if own is None else own.point, "steps": th.steps, "quantum_end": th.quantum_end,
            "wait": _wait(th),
            "call_stack": [{"depth": d, "func": f.func, "name": name(f.func), "pc": f.pc}
                           for d, f in enumerate(reversed(frames))],
        }
        if own is not None:  # the main thread's locals and globals are the snapshot's top-level ones
            for frame, f in zip(entry["call_stack"], reversed(frames), strict=True):
                frame.update(locals=[list(v) for v in f.locals], stack=[list(v) for v in f.stack])
            entry["globals"] = [{"index": i, "type": g.type, "mutable": g.mutable, "value": list(g.value)}
                                for i, g in enumerate(own.globals)]
        threads.append(entry)
    s = section.scheduler
    return {
        "next_tid": section.next_tid,
        "threads": threads,
        "wait_queues": [{"memory": m, "addr": a, "tids": list(tids)} for m, a, tids in section.wait_queues],
        "scheduler": None if s is None else {"seed": s.seed, "rng": s.rng, "quantum": s.quantum,
                                             "current": s.current, "run_queue": list(s.run_queue)},
    }


def _describe(t: dict[str, Any]) -> str:
    who = "main thread" if t["start_arg"] is None else f"start arg {t['start_arg']:#x}"
    steps = "" if t["steps"] is None else f", {t['steps']} steps"
    wait = t["wait"]
    if wait is not None:
        timeout = "no timeout" if wait["timeout_s"] is None else f"{wait['timeout_s']:.3f} s left"
        where = f"memory {wait['memory']} address {wait['addr']:#x}"
        state = (f"waits on {where} ({timeout})" if wait["result"] is None
                 else f"left its wait on {where} with result {wait['result']}, runs on its turn")
    else:
        state = {"runnable": "runnable", "host": "in a host call (re-issued on restore)"}.get(t["state"], t["state"])
    return f"  thread {t['tid']} ({who}): {state}, {t['point']} point{steps}"


def format_threads(s: dict[str, Any]) -> list[str]:
    """The section as text: one line per thread with its call stack below it, the queues, the scheduler."""
    out = [f"threads ({len(s['threads'])} live, next tid {s['next_tid']}; thread 0's call stack, globals "
           "and tables are the ones above):"]
    for t in s["threads"]:
        out.append(_describe(t))
        if t["tid"] != 0:
            for f in t["call_stack"]:
                label = f"func {f['func']}" + (f" <{f['name']}>" if f["name"] else "")
                out.append(f"      #{f['depth']} {label} at pc {f['pc']:#x}")
    for q in s["wait_queues"]:
        out.append(f"wait queue of memory {q['memory']} address {q['addr']:#x} (first woken first): "
                   + ", ".join(f"thread {tid}" for tid in q["tids"]))
    sched = s["scheduler"]
    if sched is not None:
        turn = "nobody" if sched["current"] is None else f"thread {sched['current']}"
        queue = ", ".join(str(tid) for tid in sched["run_queue"]) or "empty"
        out.append(f"scheduler: seed {sched['seed']}, quantum {sched['quantum']}, turn: {turn}, run queue: {queue}, "
                   f"generator state {sched['rng']:#018x}")
    return out


def diff_threads(a: Snapshot, b: Snapshot) -> list[str]:
    """What changed in the threads section from ``a`` to ``b`` (the main thread's own state is
    compared with the top-level fields)."""
    from wasmig.snapshot.inspect import diff_frame_lists, format_value

    ta, tb = a.threads, b.threads
    if ta is None or tb is None:
        return [f"threads: {'none' if ta is None else len(ta.threads)} -> {'none' if tb is None else len(tb.threads)}"]
    out: list[str] = []
    if ta.next_tid != tb.next_tid:
        out.append(f"next tid: {ta.next_tid} -> {tb.next_tid}")
    by_a = {t.tid: t for t in ta.threads}
    by_b = {t.tid: t for t in tb.threads}
    for tid in sorted(by_a.keys() | by_b.keys()):
        x, y = by_a.get(tid), by_b.get(tid)
        if x is None or y is None:
            out.append(f"thread {tid}: {'spawned' if x is None else 'finished'}")
            continue
        where = f"thread {tid}"
        for field in ("state", "steps", "quantum_end", "wait"):
            if getattr(x, field) != getattr(y, field):
                out.append(f"{where}: {field} {getattr(x, field)} -> {getattr(y, field)}")
        if x.own is not None and y.own is not None:
            if x.own.point != y.own.point:
                out.append(f"{where}: point {x.own.point} -> {y.own.point}")
            out += diff_frame_lists(x.own.frames, y.own.frames, f"{where}: ")
            for i, (ga, gb) in enumerate(zip(x.own.globals, y.own.globals, strict=False)):
                if ga != gb:
                    out.append(f"{where}: global {i}: {format_value(ga.value)} -> {format_value(gb.value)}")
    qa = {(m, addr): tids for m, addr, tids in ta.wait_queues}
    qb = {(m, addr): tids for m, addr, tids in tb.wait_queues}
    for key in sorted(qa.keys() | qb.keys()):
        if qa.get(key) != qb.get(key):
            out.append(f"wait queue of memory {key[0]} address {key[1]:#x}: {qa.get(key, [])} -> {qb.get(key, [])}")
    sa, sb = ta.scheduler, tb.scheduler
    if sa != sb:
        if sa is None or sb is None:
            kinds = ["none" if s is None else "interpreter" for s in (sa, sb)]
            out.append(f"scheduler: {kinds[0]} -> {kinds[1]}")
        else:
            for field in ("seed", "quantum", "current", "run_queue", "rng"):
                if getattr(sa, field) != getattr(sb, field):
                    out.append(f"scheduler {field}: {getattr(sa, field)} -> {getattr(sb, field)}")
    return out
