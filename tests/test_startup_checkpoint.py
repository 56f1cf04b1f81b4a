"""What a ``wasmig run --checkpoint-dir`` start does before the guest's first instruction (issue 15
item 5): the store's backend (the snapshot writer) and the signing key (the cryptography package)
are made ready beside the running program once it is under way (``CheckpointPolicy.active``,
:mod:`wasmig.engines.under_way`), or by the first checkpoint, not before the guest starts; a
missing key is still made, and announced, at the start; and the snapshots are signed and
restorable whichever came first, the preparation or the checkpoint.

Each run is ``wasmig.cli.main`` in a fresh process that records ``sys.modules`` when the session
arms the program, just before the guest's first instruction, and at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.wasi_harness import REPO, program

#: what the start used to import for --checkpoint-dir and now leaves to the preparation
DEFERRED = ("cryptography", "wasmig.keys", "wasmig.snapshot.signing", "wasmig.snapshot.store",
            "wasmig.snapshot.stores.local")

PROBE = r"""
import json, os, sys
from wasmig.engines import under_way
from wasmig.session import loop

under_way.CPU_S = under_way.WALL_S = float(os.environ["PROBE_UNDER_WAY"])
if os.environ.get("PROBE_REQUEST_WAIT"):  # the waiting thread's fallback look (the wake makes it moot)
    from wasmig.engines.wasmtime import checkpointable

    checkpointable.REQUEST_WAIT = float(os.environ["PROBE_REQUEST_WAIT"])
seen = {}
sessions = []
if os.environ.get("PROBE_REQUEST_AFTER"):  # a request that many seconds into the run: `wasmig checkpoint
    import signal, threading                # PID`'s signal, or from another thread, as a migration's

    after = float(os.environ["PROBE_REQUEST_AFTER"])
    if os.environ.get("PROBE_REQUEST_FROM") == "thread":
        threading.Timer(after, lambda: sessions[0].request()).start()
    else:
        threading.Timer(after, os.kill, (os.getpid(), signal.SIGUSR1)).start()
arm = loop.Session._arm

def spy(self):
    sessions.append(self)
    seen.setdefault("at_start", sorted(sys.modules))
    seen["active"] = self.policy.active
    arm(self)

loop.Session._arm = spy
checkpoint = loop.Session._checkpoint

def spy_checkpoint(self):
    seen.setdefault("store_ready_at_first_checkpoint", self._store is not None)
    checkpoint(self)

loop.Session._checkpoint = spy_checkpoint
from wasmig.cli import main

try:
    main(sys.argv[1:])
except SystemExit as e:
    seen["code"] = e.code
seen["at_end"] = sorted(sys.modules)
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump(seen, f)
"""


def probe(tmp_path: Path, args: list[str], *, under_way: float = 60.0,
          env: dict[str, str | None] | None = None) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run ``wasmig ARGS`` under :data:`PROBE`, the program under way after ``under_way`` s (of CPU or
    wall time: 0, at once; 60, never in these tests); ``env``: more variables (None: unset)."""
    out = tmp_path / "probe.json"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PROBE_OUT": str(out), "PROBE_UNDER_WAY": str(under_way),
                "WASMIG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state"), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=full_env, timeout=300)
    assert out.exists(), p.stderr
    return json.loads(out.read_text()), p


def restore(tmp_path: Path, checkpoint_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WASMIG_RUNTIME_DIR": str(tmp_path / "run")}
    return subprocess.run([sys.executable, "-m", "wasmig", "restore", str(checkpoint_dir)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("engine", ["wasmtime", "interp"])
def test_a_checkpointing_start_leaves_the_store_and_the_key_for_later(tmp_path: Path, engine: str) -> None:
    if engine == "wasmtime":
        pytest.importorskip("wasmtime")
    ck = tmp_path / "ck"
    seen, p = probe(tmp_path, ["run", "--engine", engine, "--checkpoint-dir", str(ck), str(program("hello"))])
    assert seen["code"] == 0 and "hello from wasm" in p.stdout, p.stderr
    assert [m for m in DEFERRED if m in seen["at_start"]] == [], "imported before the guest started"
    assert [m for m in DEFERRED if m in seen["at_end"]] == [], "a program that ends first never pays for them"
    assert seen["active"] is True
    assert ck.is_dir() and p.stderr == "this goes to stderr\n"  # the directory is made (checked writable) at the start


#: the checkpoint code a capture runs (imported once the program is under way, or at the first request)
CHECKPOINT_CODE = ("wasmig.engines.wasmtime.records", "wasmig.instrument.unwind", "wasmig.snapshot.state")


def test_the_preparation_runs_beside_a_longer_program(tmp_path: Path) -> None:
    """A run with a checkpoint planned (here one every 100 s, after the program's end): what it
    needs is made ready once the program is under way."""
    ck = tmp_path / "ck"
    seen, p = probe(tmp_path, ["run", "--checkpoint-dir", str(ck), "--checkpoint-every", "100",
                               str(program("ticker")), "6", "100"],
                    under_way=0.0)  # long enough for the imports to end first on a loaded machine
    assert seen["code"] == 0 and p.stdout.endswith("done\n"), p.stderr
    assert [m for m in DEFERRED if m in seen["at_start"]] == []
    assert [m for m in DEFERRED if m not in seen["at_end"]] == [], "the store and the key were not prepared"
    # its directories too, so that the first checkpoint's pause does not make them
    assert (ck / "pages").is_dir() and (ck / "snapshots").is_dir() and not list((ck / "snapshots").iterdir())


@pytest.mark.parametrize("flags", [[], ["--checkpoint-dir", "{ck}"]], ids=["default", "ck"])
def test_a_run_stopped_only_on_request_prepares_nothing_ahead(tmp_path: Path, flags: list[str]) -> None:
    """No checkpoint planned (``wasmig run`` alone, or ``--checkpoint-dir`` without a trigger): a
    program under way at once that is never asked to stop imports neither the store and the key
    nor the checkpoint code (50-60 ms of CPU beside every longer program, before)."""
    pytest.importorskip("wasmtime")
    flags = [f.format(ck=tmp_path / "ck") for f in flags]
    seen, p = probe(tmp_path, ["run", *flags, str(program("ticker")), "6", "100"], under_way=0.0)
    assert seen["code"] == 0 and p.stdout.endswith("done\n"), p.stderr
    assert [m for m in (*DEFERRED, *CHECKPOINT_CODE) if m in seen["at_end"]] == []


@pytest.mark.parametrize(("flags", "source"), [([], "signal"), (["--checkpoint-dir", "{ck}"], "signal"),
                                              ([], "thread")], ids=["default", "ck", "from-a-thread"])
def test_a_request_makes_ready_before_the_guest_stops(tmp_path: Path, flags: list[str], source: str) -> None:
    """The first request to such a run (``wasmig checkpoint PID``'s SIGUSR1, or another thread's, as a
    migration's: it wakes the thread that waits for the guest) has the checkpoint code
    imported and the store and the key made ready while the guest runs on, and only then stops it:
    the store is ready when the checkpoint starts (never under way here), and the snapshot is signed
    and restorable."""
    pytest.importorskip("wasmtime")
    ck = tmp_path / "ck"
    flags = [f.format(ck=ck) for f in flags]
    state = tmp_path / "state"
    seen, p = probe(tmp_path, ["run", *flags, str(program("ticker")), "8", "150"],
                    env={"PROBE_REQUEST_AFTER": "0.5", "PROBE_REQUEST_FROM": source, "XDG_STATE_HOME": str(state)})
    assert seen["code"] == 0 and p.stdout.endswith("done\n"), p.stderr
    assert seen["store_ready_at_first_checkpoint"] is True
    if not flags:
        ck = next((state / "wasmig" / "checkpoints").iterdir())
    assert list((ck / "snapshots").glob("*.snap")), p.stderr
    r = restore(tmp_path, ck)
    assert r.returncode == 0 and r.stdout.endswith("done\n"), r.stderr


@pytest.mark.parametrize("source", ["signal", "thread", None], ids=["signal", "thread", "no-request"])
def test_a_request_and_the_guests_end_wake_the_waiting_thread_at_once(tmp_path: Path, source: str | None) -> None:
    """The thread that waits for a guest stopped only on request sleeps on a lock that the request
    (a signal handler in that thread, or another thread) and the guest's end release. With its
    fallback look pushed out to 120 s: a request 0.5 s into a 1.2 s program still checkpoints it
    (a lost wake: the guest ends first, and no snapshot), and a run never asked ends with its guest
    (a lost wake at the end: two minutes more)."""
    pytest.importorskip("wasmtime")
    ck = tmp_path / "ck"
    request = {"PROBE_REQUEST_AFTER": "0.5", "PROBE_REQUEST_FROM": source} if source else {}
    started = time.monotonic()
    seen, p = probe(tmp_path, ["run", "--checkpoint-dir", str(ck), str(program("ticker")), "8", "150"],
                    env={**request, "PROBE_REQUEST_WAIT": "120"})
    assert seen["code"] == 0 and p.stdout.endswith("done\n"), p.stderr
    assert time.monotonic() - started < 60, "the run outlived its guest: its end did not wake the waiting thread"
    snapshots = list((ck / "snapshots").glob("*.snap")) if (ck / "snapshots").is_dir() else []
    assert bool(snapshots) == bool(source), "the request did not wake the waiting thread: " + p.stderr


@pytest.mark.parametrize(("under_way", "trigger"), [(0.0, ["--checkpoint-every", "0.7"]),
                                                     (60.0, ["--checkpoint-at-step", "5000"])],
                         ids=["prepared-first", "checkpoint-first"])
def test_snapshots_are_signed_whichever_comes_first(tmp_path: Path, under_way: float, trigger: list[str]) -> None:
    """A checkpoint taken before the preparation (it opens the store itself, the commit loads the
    key) and one after it: both signed with the user's key, so a restore (which trusts only
    that key by default) continues them. (A periodic checkpoint is prepared for by half its
    period: the checkpoint that comes first is at a step.)"""
    ck = tmp_path / "ck"
    seen, p = probe(tmp_path, ["run", "--checkpoint-dir", str(ck), *trigger,
                               str(program("ticker")), "8", "200"], under_way=under_way)
    assert seen["code"] == 0 and p.stdout.endswith("done\n"), p.stderr
    snaps = sorted((ck / "snapshots").glob("*.snap"))
    assert snaps and list(ck.glob("module-*.wasm")), p.stderr
    assert seen["store_ready_at_first_checkpoint"] is (under_way == 0.0)
    r = restore(tmp_path, ck)
    assert r.returncode == 0 and r.stdout.endswith("done\n"), r.stderr


def test_a_periodic_checkpoint_is_prepared_for_by_half_its_period(tmp_path: Path) -> None:
    """A program that sleeps uses no CPU, so it is under way only after 1 s: with
    ``--checkpoint-every 0.8`` its store is ready by 0.4 s, before the first checkpoint."""
    from wasmig.engines.under_way import UnderWay

    assert UnderWay(by=0.0).reached() and not UnderWay().reached()
    ck = tmp_path / "ck"
    seen, p = probe(tmp_path, ["run", "--checkpoint-dir", str(ck), "--checkpoint-every", "0.8",
                               str(program("ticker")), "8", "200"])  # under way: after 60 s of CPU or wall
    assert seen["code"] == 0 and p.stdout.endswith("done\n"), p.stderr
    assert seen["store_ready_at_first_checkpoint"] is True


def test_a_missing_key_is_made_and_announced_before_the_program_runs(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    seen, p = probe(tmp_path, ["run", "--checkpoint-dir", str(tmp_path / "ck"), str(program("hello"))],
                    env={"WASMIG_KEY_DIR": str(keys)})
    assert seen["code"] == 0, p.stderr
    assert "wasmig.keys" in seen["at_start"] and (keys / "wasmig.key").is_file()
    assert p.stderr.startswith("wasmig: note: created your snapshot signing key"), p.stderr


def test_a_bad_checkpoint_store_name_is_still_one_line_at_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for where, why in [("ftp://host/x", "unknown store URL scheme"),
                       (str(tmp_path / "file" / "ck"), "cannot write there")]:
        seen, p = probe(tmp_path, ["run", "--checkpoint-dir", where, str(program("hello"))])
        assert "at_start" not in seen and p.stdout == "", p.stdout  # the program never started
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_a_checkpointable_run_finds_its_runtime_directory_without_tempfile(tmp_path: Path) -> None:
    """Every run but a --plain one has a status file and a control socket in the runtime directory,
    which, without $XDG_RUNTIME_DIR, is in the temporary directory: found as tempfile finds it,
    without importing tempfile (shutil, random, the compressors)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env: dict[str, str | None] = {"WASMIG_RUNTIME_DIR": None, "XDG_RUNTIME_DIR": None, "TMPDIR": str(tmp)}
    probe(tmp_path, ["run", str(program("hello"))], env=env)  # a first run fills the caches (instrumenting)
    seen, p = probe(tmp_path, ["run", str(program("hello"))], env=env)
    assert seen["code"] == 0, p.stderr
    assert "tempfile" not in seen["at_start"]
    assert (tmp / f"wasmig-run-{os.getuid()}").is_dir()


@pytest.mark.parametrize("variables", [{}, {"TMPDIR": "{tmp}"}, {"TMPDIR": "{tmp}/missing", "TMP": "{tmp}"},
                                       {"TMPDIR": "{file}", "TEMP": "relative"}])
def test_temp_dir_is_tempfiles_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      variables: dict[str, str]) -> None:
    import tempfile

    from wasmig.runtime_dir import temp_dir

    (tmp_path / "file").write_text("")
    (tmp_path / "relative").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path, file=tmp_path / "file"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # not the answer it cached
    assert temp_dir() == tempfile.gettempdir()


@pytest.mark.parametrize("flags", [["--plain"], [], ["--checkpoint-dir", "{ck}"]], ids=["plain", "default", "ck"])
def test_a_wasmtime_start_imports_no_dataclasses(tmp_path: Path, flags: list[str]) -> None:
    """``dataclasses`` imports inspect, ast, dis and tokenize: ~9 ms of CPU that wasmtime-py's own
    start does not pay; no run on wasmtime imports it before its guest starts (the IR classes,
    which are dataclasses, are not imported by a start from the caches either)."""
    pytest.importorskip("wasmtime")
    flags = [f.format(ck=tmp_path / "ck") for f in flags]
    args = ["run", "--engine", "wasmtime", *flags, str(program("hello"))]
    probe(tmp_path, args)  # a first run fills the caches (instrumenting decodes the module: the IR's dataclasses)
    seen, p = probe(tmp_path, args)
    assert seen["code"] == 0, p.stderr
    assert [m for m in ("dataclasses", "inspect", "ast") if m in seen["at_start"]] == []
