"""How the ``wasmig`` process ends (:func:`wasmig.cli.leave`): as Python's own exit would -- the exit
code, non-daemon threads joined, ``atexit`` handlers run, stdout flushed -- but without the
interpreter's finalization (~15 ms of CPU a run: wasmtime's objects and every module torn down);
``main(argv)`` called with its arguments (tests, embedders) still raises ``SystemExit``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wasi_harness import REPO, program

#: ``wasmig ARGS`` as the console script runs it (``main()``, the process's own argv), with an
#: atexit handler, a non-daemon thread still working, buffered output, and an object whose
#: finalizer runs only if the interpreter is finalized
PROBE = r"""
import atexit, os, sys, threading, time
out = os.environ["PROBE_DIR"]

def mark(name):
    with open(os.path.join(out, name), "w"):
        pass

class Finalized:
    def __del__(self, path=os.path.join(out, "finalized"), open=open):  # module globals may be gone by then
        open(path, "w").close()

kept = Finalized()
atexit.register(mark, "atexit")

def late():
    time.sleep(0.3)
    mark("thread")

threading.Thread(target=late).start()
if os.environ.get("PROBE_PROFILE"):
    sys.setprofile(lambda *a: None)
sys.stdout.write("buffered line from the host\n")
sys.argv = ["wasmig", *sys.argv[1:]]
from wasmig.cli import main

main()
"""


def run_probe(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    marks = tmp_path / "marks"
    marks.mkdir()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PROBE_DIR": str(marks),
                "WASMIG_RUNTIME_DIR": str(tmp_path / "run"), **env}
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=full_env,
                       timeout=300)
    return p, {m.name for m in marks.iterdir()}


@pytest.mark.parametrize("how", ["return", "exit"])
def test_the_process_ends_with_the_guests_code_without_finalization(tmp_path: Path, how: str) -> None:
    p, marks = run_probe(tmp_path, ["run", "--plain", str(program("exitcode")), "7", how])
    assert p.returncode == 7, p.stderr
    assert p.stdout == "buffered line from the host\nexiting with 7\n", p.stdout
    assert marks == {"atexit", "thread"}, "atexit handlers and threads as at any exit, no finalization"


def test_a_usage_error_ends_the_same_way(tmp_path: Path) -> None:
    p, marks = run_probe(tmp_path, ["run", "--no-such-option"])
    assert p.returncode == 2 and "No such option" in p.stderr, p.stderr
    assert marks == {"atexit", "thread"}


def test_under_a_profiler_the_exit_is_pythons_own(tmp_path: Path) -> None:
    """A profiler writes its results after ``main`` returns: the interpreter exits as usual."""
    p, marks = run_probe(tmp_path, ["run", "--plain", str(program("exitcode")), "3"], PROBE_PROFILE="1")
    assert p.returncode == 3, p.stderr
    assert marks == {"atexit", "thread", "finalized"}


def test_main_with_arguments_raises_system_exit() -> None:
    from wasmig.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--no-such-option"])
    assert e.value.code == 2


#: the console script's own start (``from wasmig.cli import main``) with a Ctrl-C arriving while the
#: command modules load (simulated: the import of one of them raises KeyboardInterrupt)
INTERRUPTED_IMPORT = r"""
import builtins
real = builtins.__import__

def interrupted(name, *args, **kwargs):
    if name == "wasmig.cli" and args[2] and "snapshots" in args[2]:
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)

builtins.__import__ = interrupted
from wasmig.cli import main
"""


def test_a_ctrl_c_while_the_command_loads_exits_130_without_a_traceback() -> None:
    p = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert (p.returncode, p.stderr) == (130, ""), p.stderr
