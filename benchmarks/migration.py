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

``--compare TREE``: every cell also with the wasmig of another checkout (e.g. ``/work/main``
before a change), alternating run by run with this one, medians side by side and the ratio of
the downtimes (issue 17: TLS with pinned keys must not lengthen it by more than 10%). A tree
whose ``serve`` has no ``--trust-peer`` speaks protocol 2 and gets a token file instead of keys.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wasmig.toolchain import compile_c  # noqa: E402

SUMMARY = re.compile(r"in ([\d.]+) s: downtime ([\d.]+) ms, ([\d.]+) MB sent, (\d+) rounds")


def wasmig(*args: str) -> list[str]:
    return [sys.executable, "-m", "wasmig", *args]


@dataclass
class Tree:
    """A checkout whose wasmig the migrations run (PYTHONPATH, and the working directory: ``python
    -m`` puts that first on the path), and how it authenticates."""

    root: Path
    label: str
    pinned: bool  # protocol 3: keys (this branch on); else protocol 2's token

    @classmethod
    def at(cls, root: Path, label: str) -> Tree:
        env = {**os.environ, "PYTHONPATH": str(root)}
        out = subprocess.run(wasmig("serve", "--help"), capture_output=True, text=True, env=env, cwd=root).stdout
        return cls(root, label, "--trust-peer" in out)

    def env(self, tmp: Path) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.root), "WASMIG_KEY_DIR": str(tmp / "keys" / "source"),
                "WASMIG_RUNTIME_DIR": str(tmp / "run")}

    def serve_auth(self, tmp: Path) -> list[str]:
        if self.pinned:
            return ["--key", str(tmp / "keys" / "target"), "--trust-peer", str(tmp / "keys" / "source" / "wasmig.pub")]
        return ["--token-file", str(tmp / "token")]

    def migrate_auth(self, tmp: Path) -> list[str]:
        if self.pinned:
            return ["--peer-fingerprint", str(tmp / "keys" / "target" / "wasmig.pub")]
        return ["--token-file", str(tmp / "token")]


def credentials(tmp: Path) -> None:
    """Both kinds: a token file (protocol 2) and a key pair each for the source and the target."""
    from wasmig.keys import KeyPair, write_key_pair

    token = tmp / "token"
    token.write_text(os.urandom(24).hex())
    token.chmod(0o600)
    for name in ("source", "target"):
        write_key_pair(KeyPair.generate(name), tmp / "keys" / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(pid: int, address: str, precopy: bool, tree: Tree, tmp: Path, env: dict[str, str],
            what: str = "") -> re.Match[str]:
    """``wasmig migrate PID --to ADDRESS`` of ``tree``; the match of its summary line (exits if it failed)."""
    cmd = wasmig("migrate", str(pid), "--to", address, *tree.migrate_auth(tmp), "--quiet")
    if not precopy:
        cmd.append("--no-precopy")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tree.root)
    m = SUMMARY.search(done.stdout)
    if done.returncode != 0 or m is None:
        raise SystemExit(f"{what}migration failed: {done.stderr.strip()}")
    return m


def one(program: Path, mib: int, rate: float, precopy: bool, tree: Tree, tmp: Path) -> tuple[float, float, float, int]:
    """(total s, downtime ms, MB sent, rounds) of one migration, with ``tree``'s wasmig."""
    address = f"127.0.0.1:{free_port()}"
    state = Path(tempfile.mkdtemp(dir=tmp))
    err = open(state / "serve.err", "wb")
    env = tree.env(tmp)
    daemon = subprocess.Popen(wasmig("serve", "--listen", address, *tree.serve_auth(tmp), "--engine", "wasmtime",
                                     "--state-dir", str(state)), stdout=subprocess.DEVNULL, stderr=err,
                              start_new_session=True, env=env, cwd=tree.root)
    guest = subprocess.Popen(wasmig("run", "--migratable", "--engine", "wasmtime", str(program), str(mib), str(rate)),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tree.root)
    try:
        assert guest.stdout is not None
        if guest.stdout.readline().strip() != b"ready":
            raise SystemExit("the guest did not start")
        while b"listening" not in (state / "serve.err").read_bytes():
            time.sleep(0.02)
        time.sleep(0.3)  # let the dirtying settle in
        m = migrate(guest.pid, address, precopy, tree, tmp, env)
        guest.wait(30)
        return float(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(4))
    finally:
        if guest.poll() is None:
            guest.kill()
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        err.close()
        shutil.rmtree(state, ignore_errors=True)  # its page cache: up to the guest's size, per run


def incremental(program: Path, tmp: Path) -> list[str]:
    """Checkpoint a 256 MiB guest every second while it changes 1% of its heap a second."""
    from wasmig.snapshot.store_stats import checkpoint_chain

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
    ap.add_argument("--compare", type=Path, default=None, metavar="TREE",
                    help="also run every cell with the wasmig of this checkout, alternating (before/after)")
    args = ap.parse_args(argv)
    program = compile_c(HERE / "timing" / "dirtier.c", opt="-O2")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        credentials(tmp)
        this = Tree.at(HERE.parent, "this")
        if args.compare is not None:
            return compare(program, Tree.at(args.compare.resolve(), str(args.compare)), this, args, tmp)
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
                        cells[precopy].append(one(program, mib, rate, precopy, this, tmp))
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


def compare(program: Path, before: Tree, after: Tree, args: argparse.Namespace, tmp: Path) -> int:
    """Each cell with both trees, alternating run by run (the machine's load drifts alike for
    both); medians side by side and after/before of the downtime and the total."""
    print(f"before: {before.root} (protocol {'3, TLS' if before.pinned else '2, token'}); after: {after.root} "
          f"(protocol {'3, TLS' if after.pinned else '2, token'}); median of {args.runs} alternating runs per cell, "
          f"wall clock; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    print(f"{'guest':>8} {'dirty':>8} {'mode':>6} | {'downtime ms before':>18} {'after':>7} {'ratio':>6} | "
          f"{'total s before':>14} {'after':>6} {'ratio':>6} | {'MB before':>9} {'after':>6}")
    ratios = []
    for mib in (int(x) for x in args.sizes.split(",")):
        for rate in (float(x) for x in args.rates.split(",")):
            for precopy in (True, False):
                runs: dict[str, list[tuple[float, float, float, int]]] = {"before": [], "after": []}
                for _ in range(args.runs):
                    runs["before"].append(one(program, mib, rate, precopy, before, tmp))
                    runs["after"].append(one(program, mib, rate, precopy, after, tmp))
                b, a = ([statistics.median(x[i] for x in runs[k]) for i in range(3)] for k in ("before", "after"))
                ratios.append(a[1] / b[1])
                print(f"{mib:>5}MiB {rate:>5g}MB/s {'pre' if precopy else 'stop':>6} | {b[1]:>18.1f} {a[1]:>7.1f} "
                      f"{a[1] / b[1]:>6.2f} | {b[0]:>14.2f} {a[0]:>6.2f} {a[0] / b[0]:>6.2f} | "
                      f"{b[2]:>9.1f} {a[2]:>6.1f}", flush=True)
    print(f"downtime after/before: median ratio {statistics.median(ratios):.2f} over {len(ratios)} cells "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
