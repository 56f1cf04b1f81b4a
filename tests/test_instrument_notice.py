"""What ``wasmig run``/``restore`` on wasmtime say while a module not instrumented before is
instrumented: a line at the start, progress once it takes a while (redrawn in place on a terminal,
a line now and then elsewhere), a line with the time taken; nothing when the cache has it."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasmig
from tests.wasi_harness import REPO
from wasmig.engines.wasmtime.instrumented import InstrumentNotice

#: three functions of type [] -> [], each empty
THREE_FUNCTIONS = bytes.fromhex("0061736d01000000" "010401600000" "030403000000" "0a0a03" "02000b" "02000b" "02000b")


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _section(ident: int, content: bytes) -> bytes:
    return bytes([ident]) + _leb(len(content)) + content


def _many_functions(n: int) -> bytes:
    """A WASI command of ``n`` functions: ``_start`` (function 0) calls each of the others once."""
    start = b"\x00" + b"".join(b"\x10" + _leb(i) for i in range(1, n)) + b"\x0b"
    bodies = [start] + [b"\x00\x0b"] * (n - 1)
    exports = b"\x02" + b"\x06_start\x00\x00" + b"\x06memory\x02\x00"
    return (b"\x00asm\x01\x00\x00\x00" + _section(1, b"\x01\x60\x00\x00")
            + _section(3, _leb(n) + b"\x00" * n) + _section(5, b"\x01\x00\x01") + _section(7, exports)
            + _section(10, _leb(n) + b"".join(_leb(len(b)) + b for b in bodies)))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _module() -> wasmig.Module:
    return wasmig.Module.from_bytes(THREE_FUNCTIONS)


def test_start_line_names_the_module_its_functions_and_size() -> None:
    out = io.StringIO()
    notice = InstrumentNotice("prog.wasm", out)
    notice.start(_module())
    notice.end(ok=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == (f"wasmig: instrumenting prog.wasm (3 functions, {len(THREE_FUNCTIONS)} bytes) for checkpoints; "
                        "cached for next time")
    assert lines[1].startswith("wasmig: instrumented prog.wasm in ") and lines[1].endswith(" s")
    assert len(lines) == 2, "a quick pass shows no progress"


def test_progress_on_a_terminal_is_one_line_redrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InstrumentNotice, "QUIET_S", 0.0)
    out = _Terminal()
    notice = InstrumentNotice("prog.wasm", out)
    started = time.monotonic()
    notice.start(_module())
    for done in range(0, 1000, 50):  # about 2 s of a 1000-function pass
        notice.progress(done, 1000)
        time.sleep(0.1)
    notice.end(ok=True)
    elapsed = time.monotonic() - started
    text = out.getvalue()
    start, rest = text.split("\n", 1)
    assert start.startswith("wasmig: instrumenting prog.wasm (3 functions")
    draws = rest.split("\r")
    shown = [d for d in draws if " of 1000 functions (" in d]
    assert 1 <= len(shown) <= elapsed + 1, draws  # at most once a second
    assert rest.count("\n") == 1 and rest.endswith("\n"), "progress stays on one line"
    final = draws[-1]
    assert final.startswith("wasmig: instrumented prog.wasm in "), draws
    assert draws[-2].strip() == "", "the progress line is blanked before the final line"


def test_progress_elsewhere_is_a_line_now_and_then(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InstrumentNotice, "QUIET_S", 0.0)
    monkeypatch.setattr(InstrumentNotice, "LINE_EVERY_S", 0.5)
    out = io.StringIO()
    notice = InstrumentNotice("prog.wasm", out)
    notice.start(_module())
    notice.progress(10, 40)
    time.sleep(1.2)
    notice.progress(40, 40)  # all rewritten: encoding
    time.sleep(1.0)
    notice.end(ok=True)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert any("10 of 40 functions (25%)" in line for line in lines), lines
    assert any("encoding the instrumented module" in line for line in lines), lines
    assert len(lines) <= 2 + (2.2 + 1) / 0.5, lines  # no more than one every LINE_EVERY_S (the sleeps may run long)
    assert lines[-1].startswith("wasmig: instrumented prog.wasm in ")


def test_only_big_modules_are_announced() -> None:
    assert not InstrumentNotice.worth_it(_module())
    assert not InstrumentNotice.worth_it(wasmig.Module.from_bytes(_many_functions(InstrumentNotice.BIG_FUNCTIONS - 1)))
    assert InstrumentNotice.worth_it(wasmig.Module.from_bytes(_many_functions(InstrumentNotice.BIG_FUNCTIONS)))


def test_a_failed_pass_has_no_final_line() -> None:
    out = _Terminal()
    notice = InstrumentNotice("prog.wasm", out)
    notice.start(_module())
    notice.end(ok=False)
    assert out.getvalue().count("\n") == 1 and "instrumented prog.wasm in" not in out.getvalue()


@pytest.mark.skipif(importlib.util.find_spec("wasmtime") is None, reason="wasmtime is not installed")
def test_cli_announces_a_cache_miss_only(tmp_path: Path) -> None:
    """``run --checkpoint-dir``, ``restore`` and a ``run`` without options on wasmtime of a big
    module, each with an empty cache and then with the same one again; a small module, and a
    ``--plain`` run, are not announced."""
    big = _many_functions(InstrumentNotice.BIG_FUNCTIONS + 200)
    (tmp_path / "prog.wasm").write_bytes(big)
    (tmp_path / "small.wasm").write_bytes(_many_functions(50))

    def wasmig_cli(cache: Path, *args: str) -> str:
        env = dict(os.environ, WASMIG_CACHE=str(cache))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        proc = subprocess.run([sys.executable, "-m", "wasmig", *args], input=b"", capture_output=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stderr.decode()

    def announced(stderr: str) -> bool:
        lines = [line for line in stderr.splitlines() if "instrument" in line]
        if not lines:
            return False
        assert lines[0] == (f"wasmig: instrumenting prog.wasm ({InstrumentNotice.BIG_FUNCTIONS + 200} functions, "
                            f"{len(big)} bytes) for checkpoints; cached for next time"), stderr
        done = [line for line in lines if line.startswith("wasmig: instrumented prog.wasm in ")]
        assert len(done) == 1 and done[0].endswith(" s"), stderr
        # then the instrumented module's compile (no progress from Cranelift: a line before and after)
        assert lines[-2].startswith("wasmig: compiling the instrumented prog.wasm ("), stderr
        assert lines[-1].startswith("wasmig: compiled the instrumented prog.wasm in ") and lines[-1].endswith(" s")
        return True

    run = ["run", "--engine", "wasmtime", "--checkpoint-dir", "ck", "--checkpoint-at-step", "20",
           "--checkpoint-then", "exit", "prog.wasm"]
    assert announced(wasmig_cli(tmp_path / "cache-run", *run))
    assert (tmp_path / "ck" / "snapshots").is_dir()
    again = ["ck2" if a == "ck" else a for a in run]
    assert not announced(wasmig_cli(tmp_path / "cache-run", *again))
    assert (tmp_path / "ck2" / "snapshots").is_dir()
    restore = ["restore", "--engine", "wasmtime", "ck"]
    assert announced(wasmig_cli(tmp_path / "cache-restore", *restore))
    assert not announced(wasmig_cli(tmp_path / "cache-restore", *restore))
    small = wasmig_cli(tmp_path / "cache-small", "run", "--engine", "wasmtime", "--migratable", "small.wasm")
    assert "instrument" not in small, small
    # a run with no checkpoint option is checkpointable too (issue 18 item 6): its first run says so
    assert announced(wasmig_cli(tmp_path / "cache-default", "run", "--engine", "wasmtime", "prog.wasm"))
    assert not announced(wasmig_cli(tmp_path / "cache-default", "run", "--engine", "wasmtime", "prog.wasm"))
    assert "instrument" not in wasmig_cli(tmp_path / "cache-plain", "run", "--engine", "wasmtime", "--plain",
                                          "prog.wasm")
