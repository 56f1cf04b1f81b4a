#!/usr/bin/env python3
"""How long does a live migration take, how long is the program stopped, how much goes over?

For guests of 16, 64 and 256 MiB (``benchmarks/timing/dirtier.c``: a heap of that size filled
with incompressible bytes, then dirtying pages at a set rate), idle and while dirtying, each is
started with ``wasmig run --migratable --engine wasmtime`` and moved with ``wasmig migrate PID
--to`` to a ``wasmig serve --engine wasmtime`` daemon on loopback, with pre-copy and with
``--no-precopy`` (stop-and-copy) side by side, alternating, ``--runs`` times each (median
reported). Each migration's own summary line gives the numbers:

- total: from the request to the target's confirmation;
- downtime: from the moment the program stopped at the source to the target's confirmation that
  it starts it (the target starts right after sending it);
- bytes sent: everything on the wire from source to target, module included (a fresh daemon
  state directory per run, so the module is always sent).

Target (issue 6): downtime <= 50 ms for a 256 MiB guest dirtying less than 10 MiB/s.

Then incremental checkpoints: the same 256 MiB guest dirtying 2.56 MiB/s (1% of its heap a second)
under ``wasmig run --checkpoint-dir D --checkpoint-every 1``: the bytes each later snapshot
wrote (its new pages and its file) against the first, full one, from ``checkpoint_chain``.
Target: about 1%.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wasmig.toolchain import compile_c  # noqa: E402

SUMMARY = re.compile(r"in ([\d.]+) s: downtime ([\d.]+) ms, ([\d.]+) MB sent, (\d+) rounds")


def wasmig(*args: str) -> list[str]:
    return [sys.executable, "-m", "wasmig", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(program: Path, mib: int, rate: float, precopy: bool, token: Path, tmp: Path) -> tuple[float, float, float, int]:
    """(total s, downtime ms, MB sent, rounds) of one migration."""
    address = f"127.0.0.1:{free_port()}"
    state = Path(tempfile.mkdtemp(dir=tmp))
    err = open(state / "serve.err", "wb")
    daemon = subprocess.Popen(wasmig("serve", "--listen", address, "--token-file", str(token), "--engine", "wasmtime",
                                     "--state-dir", str(state)), stdout=subprocess.DEVNULL, stderr=err,
                              start_new_session=True)
    guest = subprocess.Popen(wasmig("run", "--migratable", "--engine", "wasmtime", str(program), str(mib), str(rate)),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert guest.stdout is not None
        if guest.stdout.readline().strip() != b"ready":
            raise SystemExit("the guest did not start")
        while b"listening" not in (state / "serve.err").read_bytes():
            time.sleep(0.02)
        time.sleep(0.3)  # let the dirtying settle in
        cmd = wasmig("migrate", str(guest.pid), "--to", address, "--token-file", str(token), "--quiet")
        if not precopy:
            cmd.append("--no-precopy")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        m = SUMMARY.search(done.stdout)
        if done.returncode != 0 or m is None:
            raise SystemExit(f"migration failed: {done.stderr.strip()}")
        guest.wait(30)
        return float(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(4))
    finally:
        if guest.poll() is None:
            guest.kill()
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        err.close()


def incremental(program: Path, tmp: Path) -> list[str]:
    """Checkpoint a 256 MiB guest every second while it changes 1% of its heap a second."""
    from wasmig.snapshot.store import checkpoint_chain

    ck = tmp / "incremental"
    guest = subprocess.Popen(wasmig("run", "--engine", "wasmtime", "--checkpoint-dir", str(ck),
                                    "--checkpoint-every", "1", str(program), "256", "2.56"),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert guest.stdout is not None
        guest.stdout.readline()
        deadline = time.monotonic() + 60
        while len(list((ck / "snapshots").glob("*.snap"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        guest.kill()
        guest.wait()
    chain = checkpoint_chain(ck) or []
    if len(chain) < 2:
        return ["incremental checkpoints: fewer than two snapshots were written"]
    full = chain[0]["new_bytes"] + chain[0]["snapshot_bytes"]
    lines = [f"incremental checkpoints of a 256 MiB guest changing 1% of its heap a second, one a second: "
             f"full snapshot {full / 2**20:.1f} MiB ({chain[0]['pages_new']} pages)"]
    for c in chain[1:]:
        wrote = c["new_bytes"] + c["snapshot_bytes"]
        share = 100 * c["pages_new"] / chain[0]["pages_new"]
        lines.append(f"  {c['snapshot']}: {c['pages_new']} new pages ({share:.2f}% of the pages), "
                     f"wrote {wrote / 2**20:.2f} MiB = {100 * wrote / full:.2f}% of the full one")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="16,64,256", help="guest heap sizes in MiB")
    ap.add_argument("--rates", default="0,8", help="dirtying rates in MiB/s (0: idle)")
    ap.add_argument("--runs", type=int, default=3, help="migrations per cell and mode (median reported)")
    ap.add_argument("--no-incremental", action="store_true", help="skip the incremental checkpoint figures")
    args = ap.parse_args(argv)
    program = compile_c(HERE / "timing" / "dirtier.c", opt="-O2")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        token = tmp / "token"
        token.write_text(os.urandom(24).hex())
        token.chmod(0o600)
        print(f"live migration on loopback, wasmtime -> wasmtime, median of {args.runs} per cell; "
              f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
        print(f"{'guest':>8} {'dirty':>8} | {'pre-copy: total s':>17} {'downtime ms':>11} {'MB sent':>8} {'rounds':>6} "
              f"| {'stop-and-copy: total s':>22} {'downtime ms':>11} {'MB sent':>8}")
        verdicts = []
        for mib in (int(x) for x in args.sizes.split(",")):
            for rate in (float(x) for x in args.rates.split(",")):
                cells: dict[bool, list[tuple[float, float, float, int]]] = {True: [], False: []}
                for _ in range(args.runs):
                    for precopy in (True, False):
                        cells[precopy].append(one(program, mib, rate, precopy, token, tmp))
                med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in cells.items()}
                p, s = med[True], med[False]
                print(f"{mib:>5}MiB {rate:>5g}MB/s | {p[0]:>17.2f} {p[1]:>11.1f} {p[2]:>8.1f} {p[3]:>6.0f} "
                      f"| {s[0]:>22.2f} {s[1]:>11.1f} {s[2]:>8.1f}", flush=True)
                if mib == 256 and rate < 10:
                    verdicts.append(f"256 MiB guest dirtying {rate:g} MiB/s: pre-copy downtime {p[1]:.1f} ms "
                                    f"({'within' if p[1] <= 50 else 'OVER'} the 50 ms target), "
                                    f"{s[1] / p[1]:.1f}x less than stop-and-copy")
        for v in verdicts:
            print(v)
        if not args.no_incremental:
            for line in incremental(program, tmp):
                print(line, flush=True)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
