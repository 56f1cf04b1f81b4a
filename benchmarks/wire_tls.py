#!/usr/bin/env python3
"""What does a migration's TLS channel cost the receiver, and the sender, per MiB?

One process, two threads, a TLS 1.3 connection over loopback with the channel's pinned-key
contexts (``wasmig/migrate/channel.py``): the sender sends ``--mib`` MiB of incompressible pages as
``page_data`` frames of ``--frame-mib`` MiB (the shape of a migration's pages: 64 KiB pages, 4 MiB
frames, ``protocol.PAGE_BATCH``) through :class:`wasmig.wire.Channel`, the receiver reads them with
``Channel.recv``. Reported: each thread's CPU time (``time.thread_time``) and the wall time, medians
over ``--runs``.

Variants, each in a child process, alternating run by run so that other load falls on all alike:

- ``now``: this tree;
- ``base-REV`` (``--baseline REV``, repeatable): git revision REV's wire code (its files extracted
  into a temporary directory);
- ``nogate`` (``--no-gate``): this tree with the TLS record gate (``Channel._whole_record``, the wait
  for a whole record before each TLS read: docs/security.md) turned off -- what the gate costs.

The figures to quote with the load (``uptime``): CPU times are what the gate adds; the wall time
moves with the machine's other load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from overhead import baseline_tree  # noqa: E402

#: one transfer, run with a tree first on sys.path: prints a JSON line of its figures
CHILD = r"""
import json, os, socket, sys, threading, time
from wasmig.keys import KeyPair
from wasmig.migrate.channel import tls_context
from wasmig.wire import Channel

mib, frame_mib, gate = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "gate"
if not gate:
    Channel._whole_record = lambda self: None
page = 64 << 10
pages = [[k, os.urandom(page)] for k in range(max(1, int(frame_mib * (1 << 20)) // page))]
frames = max(1, int(mib * (1 << 20)) // (len(pages) * page))
listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
for s in (client, server):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(60)
wrapped = {}
def handshake():
    wrapped["client"] = tls_context(KeyPair.generate("c"), False).wrap_socket(client)
t = threading.Thread(target=handshake)
t.start()
receiver = Channel(tls_context(KeyPair.generate("s"), True).wrap_socket(server, server_side=True), "sender")
t.join()
sender = Channel(wrapped["client"], "receiver")
sent = {}
def send():
    start = time.thread_time()
    for _ in range(frames):
        sender.send("page_data", pages=pages)
    sender.send("pages_end")
    sent["cpu"] = time.thread_time() - start
t = threading.Thread(target=send)
wall, cpu = time.perf_counter(), time.thread_time()
t.start()
got = 0
while receiver.recv(timeout=60, expect=("page_data", "pages_end"))["t"] == "page_data":
    got += 1
cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
t.join()
assert got == frames, (got, frames)
mib = frames * len(pages) * page / (1 << 20)
print(json.dumps({"recv_cpu": cpu, "send_cpu": sent["cpu"], "wall": wall, "mib": mib}))
"""


def measure(tree: Path, mib: float, frame_mib: float, gate: bool) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(mib), str(frame_mib), "gate" if gate else "off"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"wire_tls: the transfer with {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=float, default=128.0, help="MiB sent per run (default 128)")
    ap.add_argument("--frame-mib", type=float, default=4.0, help="MiB of pages per frame (default 4)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--baseline", action="append", default=[], metavar="REV",
                    help="also measure git revision REV's wire code (repeatable)")
    ap.add_argument("--no-gate", action="store_true", help="also measure this tree with the TLS record gate off")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wasmig-wire-") as tmp:
        variants: dict[str, tuple[Path, bool]] = {"now": (REPO, True)}
        for rev in args.baseline:
            variants[f"base-{rev}"] = (baseline_tree(rev, Path(tmp)), True)
        if args.no_gate:
            variants["nogate"] = (REPO, False)
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for run in range(args.runs):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))  # alternating
            for name in order:
                tree, gate = variants[name]
                results[name].append(measure(tree, args.mib, args.frame_mib, gate))
        print(f"load after: {os.getloadavg()[0]:.2f}")
    first = statistics.median(r["recv_cpu"] for r in results["now"])
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:>16}: receiver {med['recv_cpu']:.3f} s CPU ({med['recv_cpu'] / first:.2f}x now), "
              f"sender {med['send_cpu']:.3f} s CPU, wall {med['wall']:.3f} s, {med['mib']:.0f} MiB "
              f"({args.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
