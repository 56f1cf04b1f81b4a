#!/usr/bin/env python3
"""A fleet on one machine (issue 19): N jobs (default 50) of one module on a Ray cluster of three
nodes (a head and two workers, every address 127.0.0.1), one worker drained while they run.

It reports:
- the drain's wall time (every job on the node moved: target actor started, then either a live
  move -- pre-copy while the program runs, stop, last pages, restore, commit -- or, for the jobs
  submitted with ``live=False``, checkpoint-stop on the source and restore on the target), and the
  per-job downtime of those moves, p50 and p99, for all and per kind, side by side in the one
  drain (even jobs live, odd ones stop-and-copy). A live move's downtime is the source's clock
  from the program's last instruction there to the target's commit confirmed, plus the target's
  clock from that confirmation to its gate open (no two clocks mixed); a stop-and-copy move's is
  from the source's stop request to the program running again on the target (one machine's wall
  clock), with the part spent stopping (the last checkpoint);
- bytes per checkpoint: the job stores' bytes on disk (pages, packs, manifests; the module copy
  left out) over the snapshots they hold, median over jobs;
- the dedup ratio across the jobs of the module: the pages their snapshots reference, counted per
  job (what N separate stores hold) over the distinct pages of all jobs together (what one shared
  content-addressed store would hold);
- the workers' memory (RSS of every JobRunner process, sum and median) and the load average.

With ``--s3``, the jobs' store is a bucket on moto's S3 server (loopback, a process of its own):
snapshots, logs and fences in the bucket (docs/fleet.md), and the bytes and dedup are the
bucket's: what its packs, indexes and snapshot files hold over the snapshots, and the pages the
jobs reference (each job's distinct pages, summed) over the distinct pages the bucket stores.

The drain is wall time on a shared 2-core machine (other agents' load included: the load average
is printed beside it); the figures are medians and percentiles of one run's moves, not timings
of one event. ``--jobs``, ``--steps``, ``--every``, ``--s3``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def store_figures(store: Path) -> tuple[float, float]:
    """(median bytes per checkpoint over the jobs, dedup ratio across them)."""
    from wasmig.snapshot.store import CheckpointDir

    per_job_bytes: list[float] = []
    per_job_pages = 0
    every_page: set[str] = set()
    for job_dir in sorted(p for p in store.iterdir() if (p / "snapshots").is_dir()):
        snaps = job_dir / "snapshots"
        store_dir = CheckpointDir(snaps)
        count = len(store_dir.snapshots())
        if not count:
            continue
        size = sum(f.stat().st_size for f in snaps.rglob("*") if f.is_file() and not f.name.startswith("module-"))
        per_job_bytes.append(size / count)
        pages = set().union(*store_dir.referenced_pages().values())
        per_job_pages += len(pages)
        every_page |= pages
    return statistics.median(per_job_bytes), per_job_pages / max(1, len(every_page))


def s3_store_figures(url: str) -> tuple[float, float]:
    """(bytes per checkpoint, dedup ratio) of a bucket's jobs: everything the bucket holds but
    the module over the snapshots; pages referenced per job over the distinct pages stored."""
    from wasmig.snapshot.stores import open_store

    bucket = open_store(url)
    backend = bucket.backend  # type: ignore[attr-defined]
    total = sum(i.size for i in backend.listing("") if not i.key.startswith(".wasmig/modules/"))
    snapshots = bucket.all_manifests()  # type: ignore[attr-defined]
    per_job: dict[str, set[str]] = {}
    for key in snapshots:
        job = key.split("/snapshots/")[0]
        store = open_store(backend.location(job))
        _, pages = store.load_deferred(backend.location(key))
        per_job.setdefault(job, set()).update(h for m in pages or [] for h in m.entries if isinstance(h, str))
    stored: set[str] = set().union(*per_job.values())  # content-addressed: each distinct page once
    return total / max(1, len(snapshots)), sum(len(p) for p in per_job.values()) / max(1, len(stored))


def runner_memory() -> list[int]:
    """RSS in bytes of every JobRunner worker process on this machine (Ray names them so)."""
    sizes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"JobRunner" not in (proc / "cmdline").read_bytes():
                continue
            rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS"))
            sizes.append(int(rss.split()[1]) * 1024)
        except (OSError, StopIteration):
            continue
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300, help="steps of fleet_work.c, 100 ms apart")
    parser.add_argument("--every", type=float, default=1.0, help="checkpoint period, seconds")
    parser.add_argument("--s3", action="store_true", help="the jobs' store: a bucket on moto's S3 server (loopback)")
    args = parser.parse_args()
    moto = None
    if args.s3:  # before the cluster: its workers inherit the endpoint and credentials
        sys.path.insert(0, str(REPO / "benchmarks"))
        from store_backends import fresh_bucket, start_moto

        moto, endpoint = start_moto()
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
        bucket_url = fresh_bucket(endpoint) + "/fleet"

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (wasmig/ray/client.py says why)
    # no Ray OOM killer (as in tests/ray_cluster.py): it kills workers when the *machine* is 95% full,
    # which the other programs of a shared machine cause (it killed the controller mid-drain once)
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from wasmig.ray import client
    from wasmig.ray.controller import FINAL_STATES
    from wasmig.ray.spec import JobSpec
    from wasmig.toolchain import compile_c

    wasm = compile_c(REPO / "tests" / "programs" / "fleet_work.c").read_bytes()
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024 * 1024, "num_cpus": args.jobs}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={**common, "include_dashboard": False})
    workers = [cluster.add_node(**common) for _ in range(2)]
    cluster.wait_for_nodes()
    client.connect(cluster.address)
    try:
        with tempfile.TemporaryDirectory(prefix="wasmig-fleet-") as tmp:
            store, data = Path(tmp) / "store", Path(tmp) / "data"
            job_store = bucket_url if args.s3 else str(store)
            data.mkdir()
            ctl = client.controller()
            started = time.perf_counter()
            jobs = [client.call(ctl.submit, JobSpec(
                module=wasm, module_name="fleet_work.wasm", args=(f"j{i}", str(args.steps), "100"),
                dirs=((str(data), "data"),), store=job_store, checkpoint_every=args.every, num_cpus=0.5,
                live=i % 2 == 0))
                for i in range(args.jobs)]
            while any(r["checkpoint_age_s"] is None for r in client.call(ctl.ps)):
                time.sleep(0.5)
            print(f"{args.jobs} jobs submitted and checkpointed once in {time.perf_counter() - started:.1f} s "
                  f"(load average {os.getloadavg()[0]:.1f})")
            rss = runner_memory()
            drained = workers[0].node_id
            started = time.perf_counter()
            moves = client.call(ctl.drain, drained)
            drain_s = time.perf_counter() - started
            downtimes = [m["downtime_s"] for m in moves if m.get("downtime_s") is not None]
            stopping = [m["stopped_s"] for m in moves if m.get("stopped_s") is not None]
            print(f"drain: {len(moves)} jobs moved in {drain_s:.2f} s wall (load average {os.getloadavg()[0]:.1f})")
            if downtimes:
                print(f"per-job downtime: p50 {percentile(downtimes, 0.5) * 1000:.0f} ms, "
                      f"p99 {percentile(downtimes, 0.99) * 1000:.0f} ms, max {max(downtimes) * 1000:.0f} ms")
            for mode in ("pre-copy", "stop-and-copy"):
                mine = [m for m in moves if m.get("downtime_s") is not None and m.get("mode") == mode]
                if not mine:
                    continue
                times = [m["downtime_s"] for m in mine]
                detail = (f"stopping with the last checkpoint p50 {percentile(stopping, 0.5) * 1000:.0f} ms, "
                          f"restoring p50 {percentile([m['restore_s'] for m in mine], 0.5) * 1000:.0f} ms"
                          if mode == "stop-and-copy" else
                          f"{statistics.median(m['rounds'] for m in mine):.0f} rounds, "
                          f"{statistics.median(m['bytes_sent'] for m in mine) / 1024:.0f} KiB sent, "
                          f"gate after the commit p50 {percentile([m['gate_s'] for m in mine], 0.5) * 1000:.0f} ms")
                print(f"  {mode:<13}: {len(mine)} moves, downtime p50 {percentile(times, 0.5) * 1000:.0f} ms, "
                      f"p99 {percentile(times, 0.99) * 1000:.0f} ms ({detail})")
            failed = [m for m in moves if m.get("error")]
            if failed:
                print(f"  not moved: {len(failed)} ({failed[0]['error']})")
            for job in jobs:
                if client.call(ctl.job, job)["state"] not in FINAL_STATES:
                    client.call(ctl.cancel, job)
            per_checkpoint, dedup = s3_store_figures(bucket_url) if args.s3 else store_figures(store)
            print(f"bytes per checkpoint: {per_checkpoint / 1024:.1f} KiB "
                  f"({'the bucket, over all snapshots' if args.s3 else 'median over jobs, on disk'})")
            print(f"dedup across the {args.jobs} jobs of one module: {dedup:.1f}x (pages referenced per job / "
                  "distinct pages of all jobs)")
            if rss:
                print(f"runner processes: {len(rss)}, RSS sum {sum(rss) / 2**30:.2f} GiB, "
                      f"median {statistics.median(rss) / 2**20:.0f} MiB")
    finally:
        ray.shutdown()
        cluster.shutdown()
        if moto is not None:
            moto.kill()
            moto.wait()


if __name__ == "__main__":
    main()
