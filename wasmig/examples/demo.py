"""``python -m wasmig.examples.demo`` (``make demo``): checkpoint, restore and live-migrate a
running WebAssembly program between wasmtime and wasmig's interpreter, then prove that nothing
changed its result.

The program is ``pi.c`` (the first 1000 digits of pi, 20 a round, each round printed and appended
to ``pi.txt``, a file it keeps open for the whole run and reads back at the end), compiled to
wasm32-wasi with zig (``wasmig.toolchain.compile_c``, cached under ``.cache/wasm``). Everything
else is the real command line, run as subprocesses (``python -m wasmig ...``) in a temporary
directory, each command printed before it runs:

1. build the module;
2. an uninterrupted ``wasmig run``: the reference output and file;
3. ``wasmig run --engine wasmtime --checkpoint-dir ck --checkpoint-then exit``, checkpointed
   part-way by ``wasmig checkpoint PID``: the snapshot is written and that process exits;
4. ``wasmig restore --engine interp`` of that snapshot, which runs a few rounds on the
   interpreter and is checkpointed again the same way (the second, incremental snapshot);
5. ``wasmig restore --engine wasmtime`` of the second snapshot, which runs to the end;
6. a second run, ``wasmig run --migratable`` on wasmtime, live-migrated by ``wasmig migrate PID
   --to`` to a ``wasmig serve --engine interp`` daemon and from there to a ``wasmig serve
   --engine wasmtime`` daemon (both on 127.0.0.1, free ports, a mode-600 token file), where it
   finishes; the daemons map the program's directory, so its open file moves with it;
7. the proof: the stdout of each interrupted run (its processes' outputs put together) and its
   ``pi.txt`` are byte for byte those of the uninterrupted run (sha256s printed).

Figures printed on the way: how long each ``wasmig checkpoint`` took (signal to snapshot on
disk), each snapshot's size (file bytes, new page bytes, memory pages), how long each restore took
to its first new line of output, and each migration's summary (total time, downtime, bytes sent).
Exit 0 when everything matched; otherwise 1 with a one-line reason (no traceback), and 130 on
Ctrl-C. Every wait is bounded, and every process the demo started (daemons and the programs they
run included) is killed on the way out. It needs the ``wasmtime`` and ``ziglang`` packages (the
``dev`` extra); after the first build it takes about 20 s.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PI_C = Path(__file__).resolve().with_name("pi.c")
DIGITS = 1000  # 50 rounds of 20 digits
SLEEP_MS = 80  # per round: about 4 s on wasmtime, so that there is a middle to catch
# per round in the live migration, whose two hops and the rounds between them must fit in the run
# (the output does not depend on it): at 80 ms the second hop came at round 23 of 50 at load 4,
# so a machine 2-3x slower could see the program end first; 160 ms leaves about 2.5x that
LIVE_SLEEP_MS = 160
GUEST_DIR = "/out"
STEPS = 7
PROOF_LINE = "identical: every interrupted run printed and wrote exactly what the uninterrupted run did"


class DemoError(Exception):
    """A step failed: the message says which and why."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM."""


def say(text: str = "") -> None:
    print(text, flush=True)


def header(n: int, title: str) -> None:
    say(f"\n[{n}/{STEPS}] {title}")


def figure(label: str, value: str) -> None:
    say(f"    {label:<12} {value}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rounds_of(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^round +(\d+)/", text, re.M)]


def span(text: str) -> str:
    r = rounds_of(text)
    return f"rounds {r[0]}-{r[-1]}" if r else "no rounds"


@dataclass
class Proc:
    """A ``wasmig`` subprocess started in the work directory, its stdout and stderr in files."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float = field(default_factory=time.monotonic)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def last_error(self) -> str:
        lines = [line for line in self.stderr().splitlines() if line.strip()]
        return lines[-1] if lines else "(nothing on stderr)"


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[Proc] = []
        self.seq = 0
        env = dict(os.environ)
        # the control sockets and checkpoint status files of `wasmig run` go in the work directory
        env["WASMIG_RUNTIME_DIR"] = str(work / "run")
        # the key pair the runs show migration targets: the demo's own, not the user's
        env["WASMIG_KEY_DIR"] = str(work / "keys" / "source")
        # `python -m wasmig` in the work directory finds this very package, installed or not
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.env = env

    # --- processes ------------------------------------------------------------------------------
    def start(self, args: list[str], name: str, *, show: bool = True, background: bool = True) -> Proc:
        if show:
            say(f"  $ wasmig {shlex.join(args)}{' &' if background else ''}")
        self.seq += 1
        out, err = self.work / f"{self.seq:02d}-{name}.out", self.work / f"{self.seq:02d}-{name}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen([sys.executable, "-m", "wasmig", *args], cwd=self.work, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=o, stderr=e, start_new_session=True)
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def finish(self, proc: Proc, timeout: float, what: str) -> int:
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise DemoError(f"{what}: still running after {timeout:g} s") from None

    def run(self, args: list[str], name: str, timeout: float, *, show: bool = True) -> tuple[Proc, float]:
        """Run to the end; (the process, its wall time). A non-zero exit is an error."""
        proc = self.start(args, name, show=show, background=False)
        code = self.finish(proc, timeout, f"`wasmig {args[0]}`")
        took = time.monotonic() - proc.started
        if code != 0:
            raise DemoError(f"`wasmig {args[0]}` failed (exit {code}): {proc.last_error()}")
        return proc, took

    def kill(self, proc: Proc) -> None:
        """The process and everything in its process group (a daemon's programs)."""
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            self.kill(proc)

    def wait_until(self, cond: Callable[[], bool], what: str, timeout: float = 60.0,
                   watch: Proc | None = None) -> float:
        """Poll ``cond`` until it holds; its time. Fails when ``watch`` ends first or time is up."""
        start = time.monotonic()
        while not cond():
            if watch is not None and watch.popen.poll() is not None and not cond():
                raise DemoError(f"{what}: `{watch.name}` ended (exit {watch.popen.returncode}): "
                                f"{watch.last_error()}")
            if time.monotonic() - start > timeout:
                raise DemoError(f"{what}: nothing after {timeout:g} s")
            time.sleep(0.01)
        return time.monotonic() - start

    # --- showing the program's output -------------------------------------------------------------
    @staticmethod
    def show_output(text: str, *, tail: int = 0) -> None:
        """The first and last progress lines of ``text`` (and ``tail`` more lines after them)."""
        lines = text.splitlines()
        progress = [line for line in lines if line.startswith("round")]
        rest = lines[len(progress):]
        shown = progress if len(progress) <= 3 else [progress[0], f"  ... {len(progress) - 2} more rounds ...",
                                                      progress[-1]]
        for line in shown + rest[:tail]:
            say(f"      | {line}")

    # --- snapshots --------------------------------------------------------------------------------
    def describe_snapshot(self, path: str) -> None:
        proc, _ = self.run(["inspect", "--json", path], "inspect", 60)
        try:
            info = json.loads(proc.stdout())
            mem = info["memories"][0]
            this = next(c for c in info["chain"] if c.get("this"))
            files = [f for f in info["wasi"]["fds"] if f.get("kind") == "file"]
        except (ValueError, KeyError, IndexError, StopIteration) as e:
            raise DemoError(f"`wasmig inspect --json {path}`: unexpected output ({e!r})") from None
        pages = f"{this['new_bytes']:,} B of pages ({this['pages_new']} pages, compressed"
        if len(info["chain"]) > 1:
            shared = max(mem["nonzero_pages"] - this["pages_new"], 0)
            pages += f"; {shared} unchanged ones shared with {info['chain'][-2]['snapshot']}"
        figure("snapshot", f"{this['snapshot_bytes']:,} B file + {pages})")
        figure("memory", f"{mem['size_pages']} pages of 64 KiB ({mem['size_bytes'] / 2**20:.1f} MiB): "
                         f"{mem['nonzero_pages']} non-zero, the rest zero and not stored")
        for f in files:
            figure("open file", f"fd {f['fd']} {f['path']} at offset {f['offset']}")

    def checkpoint(self, proc: Proc, what: str) -> str:
        """``wasmig checkpoint PID`` of a run started with --checkpoint-then exit; the snapshot."""
        ck, took = self.run(["checkpoint", str(proc.popen.pid)], "checkpoint", 60)
        snap = ck.stdout().strip()
        code = self.finish(proc, 60, what)
        if code != 0:
            raise DemoError(f"{what} exited with {code} after the checkpoint: {proc.last_error()}")
        say(f"    {snap} written; the process then exited (--checkpoint-then exit). It had printed:")
        self.show_output(proc.stdout())
        figure("checkpoint", f"{took:.2f} s  (the whole `wasmig checkpoint` command: signal, stop, capture, write)")
        return snap

    # --- the steps --------------------------------------------------------------------------------
    def build(self) -> Path:
        from wasmig.toolchain import ToolchainError, compile_c

        header(1, "Build: a C program that computes pi, keeps a file open, prints a line per round")
        say(f"  compiling {PI_C.name} to wasm32-wasi with zig (cached; a first build on a machine also builds "
            "wasi-libc, ~30 s)")
        t0 = time.monotonic()
        try:
            wasm = compile_c(PI_C)
        except ToolchainError as e:
            raise DemoError(f"cannot build {PI_C.name}: {str(e).splitlines()[0]}") from None
        shutil.copyfile(wasm, self.work / "pi.wasm")
        say(f"    pi.wasm: {wasm.stat().st_size:,} bytes ({time.monotonic() - t0:.1f} s; cache: {wasm})")
        return self.work / "pi.wasm"

    def program(self, out_dir: str, sleep_ms: int = SLEEP_MS) -> list[str]:
        (self.work / out_dir).mkdir()
        return ["--dir", f"{out_dir}::{GUEST_DIR}", "pi.wasm", GUEST_DIR, str(DIGITS), str(sleep_ms)]

    def reference(self) -> tuple[bytes, bytes]:
        header(2, "Reference: one uninterrupted run")
        proc, took = self.run(["run", *self.program("ref")], "reference", 120)
        self.show_output(proc.stdout(), tail=2)
        figure("took", f"{took:.1f} s ({DIGITS // 20} rounds, {SLEEP_MS} ms pause each)")
        return proc.out.read_bytes(), (self.work / "ref" / "pi.txt").read_bytes()

    def checkpoint_restore(self) -> tuple[bytes, bytes]:
        header(3, "Run on wasmtime, checkpoint it part-way")
        first = self.start(["run", "--engine", "wasmtime", "--checkpoint-dir", "ck", "--checkpoint-then", "exit",
                            *self.program("cr")], "run-wasmtime")
        self.wait_until(lambda: len(rounds_of(first.stdout())) >= 8, "the program on wasmtime", watch=first)
        snap1 = self.checkpoint(first, "the run on wasmtime")
        self.describe_snapshot(snap1)

        header(4, "Restore it on the interpreter, let it run, checkpoint it again")
        second = self.start(["restore", "--engine", "interp", "--checkpoint-dir", "ck", "--checkpoint-then", "exit",
                             snap1], "restore-interp")
        took = self.wait_until(lambda: rounds_of(second.stdout()) != [], "the restore on the interpreter",
                               watch=second)
        figure("restore", f"{took:.2f} s  (from `wasmig restore` to the program's first new line)")
        self.wait_until(lambda: len(rounds_of(second.stdout())) >= 5, "the program on the interpreter",
                        watch=second)
        snap2 = self.checkpoint(second, "the run on the interpreter")
        self.describe_snapshot(snap2)

        header(5, "Restore that on wasmtime and run it to the end")
        third = self.start(["restore", "--engine", "wasmtime", snap2], "restore-wasmtime", background=False)
        took = self.wait_until(lambda: rounds_of(third.stdout()) != [], "the restore on wasmtime", watch=third)
        figure("restore", f"{took:.2f} s  (from `wasmig restore` to the program's first new line)")
        code = self.finish(third, 120, "the restored run on wasmtime")
        if code != 0:
            raise DemoError(f"the restored run on wasmtime exited with {code}: {third.last_error()}")
        say("    it printed, and exited with 0:")
        self.show_output(third.stdout(), tail=2)
        out = first.out.read_bytes() + second.out.read_bytes() + third.out.read_bytes()
        say(f"    3 processes on 2 engines: wasmtime {span(first.stdout())}, interpreter {span(second.stdout())}, "
            f"wasmtime {span(third.stdout())}")
        return out, (self.work / "cr" / "pi.txt").read_bytes()

    def daemon(self, name: str, engine: str, dir_option: list[str]) -> tuple[Proc, str]:
        for _attempt in range(3):  # a free port can be taken before the daemon binds it
            address = f"127.0.0.1:{free_port()}"
            proc = self.start(["serve", "--listen", address, "--key", f"keys/{name}", "--trust-peer",
                               "keys/source/wasmig.pub", "--trust-peer", "keys/A/wasmig.pub", "--trust-peer",
                               "keys/B/wasmig.pub", "--engine", engine,
                               "--state-dir", f"state-{name}", *dir_option], f"serve-{name}")
            try:
                self.wait_until(lambda p=proc: "listening on" in p.stderr(), f"daemon {name}", 60, watch=proc)
                return proc, address
            except DemoError:
                if proc.popen.poll() is None or "address" not in proc.stderr().lower():
                    raise
        raise DemoError(f"daemon {name}: could not bind a free port on 127.0.0.1")

    def migrate(self, pid: int, address: str, name: str) -> None:
        proc, _ = self.run(["migrate", str(pid), "--to", address, "--peer-fingerprint", f"keys/{name}/wasmig.pub",
                            "--quiet"], "migrate", 120)
        summary = proc.stdout().strip().splitlines()[-1] if proc.stdout().strip() else ""
        say(f"    {summary}")
        m = re.search(r"in ([\d.]+) s: downtime ([\d.]+) ms, ([\d.]+) MB sent, (\d+) rounds?, (\d+) pages? sent",
                      summary)
        if not m:
            raise DemoError(f"`wasmig migrate` printed no summary line: {summary!r}")
        total, downtime, mb, rounds, pages = m.groups()
        figure("migration", f"{float(total):.2f} s in all, {rounds} rounds of pages")
        figure("downtime", f"{downtime} ms  (the program stopped here until it ran there)")
        figure("sent", f"{mb} MB  (module, {pages} pages zstd-compressed, state)")

    @staticmethod
    def running_pid(daemon: Proc) -> int | None:
        m = re.search(r"committed: running as pid (\d+)", daemon.stderr())
        return int(m.group(1)) if m else None

    def live_migration(self) -> tuple[bytes, bytes]:
        header(6, "Live-migrate a second run: wasmtime -> daemon A (interpreter) -> daemon B (wasmtime)")
        from wasmig.keys import KeyPair, write_key_pair

        for name in ("source", "A", "B"):  # on real machines: each its own `~/.config/wasmig`, made on first use
            if not (self.work / "keys" / name / "wasmig.key").exists():  # the source's signed the checkpoints
                write_key_pair(KeyPair.generate(name), self.work / "keys" / name)
        say("  keys: an Ed25519 key pair each in ./keys/{source,A,B} (0600); each daemon trusts the others'")
        say("  wasmig.pub, and `wasmig migrate` pins the target's: TLS 1.3, both sides authenticated")
        program = self.program("live", LIVE_SLEEP_MS)
        dir_option = ["--dir", f"live::{GUEST_DIR}"]  # shared storage: both daemons map /out to ./live
        a, a_address = self.daemon("A", "interp", dir_option)
        b, b_address = self.daemon("B", "wasmtime", dir_option)
        source = self.start(["run", "--migratable", "--engine", "wasmtime", *program], "run-migratable")
        self.wait_until(lambda: len(rounds_of(source.stdout())) >= 6, "the program on wasmtime", watch=source)
        self.migrate(source.popen.pid, a_address, "A")
        code = self.finish(source, 60, "the source run")
        if code != 0:
            raise DemoError(f"the source run exited with {code} after migrating: {source.last_error()}")
        say("    the source process exited (the program moved); it had printed:")
        self.show_output(source.stdout())
        pid = self.running_pid(a)
        if pid is None:
            raise DemoError(f"daemon A logged no committed migration: {a.last_error()}")
        say(f"    the program goes on in daemon A (pid {pid}), on the interpreter")
        self.wait_until(lambda: len(rounds_of(a.stdout())) >= 4, "the program on daemon A", watch=a)
        self.migrate(pid, b_address, "B")
        say("    on daemon A the program had printed:")
        self.show_output(a.stdout())
        self.wait_until(lambda: "program exited with code" in b.stderr(), "the program on daemon B", 120, watch=b)
        if "program exited with code 0" not in b.stderr():
            raise DemoError(f"the program failed on daemon B: {b.last_error()}")
        say(f"    daemon B ran it on wasmtime as pid {self.running_pid(b)} to the end:")
        self.show_output(b.stdout(), tail=2)
        say(f"    3 processes on 2 engines: wasmtime {span(source.stdout())}, daemon A {span(a.stdout())}, "
            f"daemon B {span(b.stdout())}")
        return source.out.read_bytes() + a.out.read_bytes() + b.out.read_bytes(), \
            (self.work / "live" / "pi.txt").read_bytes()

    def prove(self, ref: tuple[bytes, bytes], runs: dict[str, tuple[bytes, bytes]]) -> bool:
        header(7, "Proof: the interrupted runs against the uninterrupted one")
        ok = True
        for i, what in enumerate(("stdout", "pi.txt")):
            say(f"  {what}:")
            say(f"    {'uninterrupted':<20} {len(ref[i]):>5} B  sha256 {sha256(ref[i])}")
            for name, data in runs.items():
                same = data[i] == ref[i]
                ok &= same
                say(f"    {name:<20} {len(data[i]):>5} B  sha256 {sha256(data[i])}  "
                    f"{'identical' if same else 'DIFFERENT'}")
        return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wasmig.examples.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the work directory (its path is printed)")
    opts = ap.parse_args(argv)

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="wasmig-demo-"))
    demo = Demo(work)
    try:
        say("wasmig demo: checkpoint, restore and live-migrate a running WebAssembly program between wasmtime "
            "and wasmig's interpreter")
        say(f"(commands run in {work}, with WASMIG_RUNTIME_DIR=./run; `wasmig` is "
            f"`{Path(sys.executable).name} -m wasmig`)")
        for package in ("wasmtime", "ziglang"):
            if importlib.util.find_spec(package) is None:
                raise DemoError(f"this demo needs the '{package}' package: pip install -e '.[dev]' (or `make demo`)")
        demo.build()
        ref = demo.reference()
        runs = {"checkpoint/restore": demo.checkpoint_restore(), "live migration": demo.live_migration()}
        if not demo.prove(ref, runs):
            say("\nDIFFERENT: an interrupted run's output or file is not the uninterrupted run's")
            return 1
        say(f"\n{PROOF_LINE} ({time.monotonic() - t_start:.1f} s in all)")
        return 0
    except DemoError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("\ndemo interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # noqa: BLE001 - a demo ends with one line, not a traceback
        print(f"\ndemo failed: unexpected {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.cleanup()
        if opts.keep:
            print(f"(work directory kept: {work})", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
