"""benchmarks/jit_profile.py attributes callgrind's counts of compiled code to the module's functions: the
cost lines after a ``calls=`` line are inclusive costs (never added), code of other objects is counted apart,
the load address is the page-aligned offset that puts the most function entries on symbol starts, and a poll
is a byte load at exactly a register (a memory's base), nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import jit_profile  # noqa: E402

BASE = 0x7F00_1234_5000
SYMS = [(0x1000, "wasm[0]::function[3]::alpha"), (0x1400, "wasm[0]::function[4]::beta"),
        (0x2000, "wasm[0]::function[5]")]

CALLGRIND = f"""version: 1
positions: instr line
events: Ir
ob=/usr/lib/libpython3.so
fl=???
fn=PyEval
0x5000 0 70
calls=1 0x{BASE + 0x1000:x}
0x5004 0 999999
ob=???
fl=???
fn=0x{BASE + 0x1000:016x}
0x{BASE + 0x1000:x} 0 10
0x{BASE + 0x1004:x} 0 5
calls=2 0x{BASE + 0x1400:x}
0x{BASE + 0x1008:x} 0 123456
0x{BASE + 0x100c:x} 0 7
fn=0x{BASE + 0x1400:016x}'2
0x{BASE + 0x1400:x} 0 20
fn=0x{BASE + 0x2000:016x}
0x{BASE + 0x2010:x} 0 3
"""


def test_counts_are_self_costs_of_compiled_code(tmp_path: Path) -> None:
    path = tmp_path / "x.callgrind"
    path.write_text(CALLGRIND)
    counts, entries, other = jit_profile.parse_callgrind(path)
    assert counts == {BASE + 0x1000: 10, BASE + 0x1004: 5, BASE + 0x100C: 7, BASE + 0x1400: 20, BASE + 0x2010: 3}
    assert sorted(entries) == [BASE + 0x1000, BASE + 0x1400, BASE + 0x2000]
    assert other == 70  # the inclusive 999999 is not a self cost


def test_load_address_and_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.callgrind"
    path.write_text(CALLGRIND)
    _, entries, _ = jit_profile.parse_callgrind(path)
    assert jit_profile.load_address(entries, SYMS) == BASE
    with pytest.raises(SystemExit, match="match no function"):
        jit_profile.load_address([BASE + 0x1001], SYMS)
    monkeypatch.setattr(jit_profile, "symbols", lambda artifact: SYMS)
    profile = jit_profile.Profile(path, tmp_path / "unused.cwasm")
    assert profile.by_function == {"alpha": 22, "beta": 20, "function[5]": 3}
    assert profile.total() == 45 and profile.outside == 70


@pytest.mark.parametrize(("line", "is_poll"), [
    ("movzbq 0x0(%r13),%rcx", True),
    ("movzbq (%r14),%rdi", True),
    ("movzbq 0x10000(%r14,%rax,1),%rdi", False),  # a program's load (the hidden page moves it up)
    ("movzbq (%r14,%rax,1),%rdi", False),
    ("movzbq 0x8(%r13),%rcx", False),
    ("movzbl (%r14),%edi", False),
])
def test_poll_pattern(line: str, is_poll: bool) -> None:
    assert bool(jit_profile.POLL.match(line)) is is_poll


def test_symbol_table_lines() -> None:
    line = "0000000000071880 l     F .text\t00000000000c3a10 wasm[0]::function[262]::JS_CallInternal"
    m = jit_profile.SYMBOL.match(line)
    assert m is not None and int(m.group(1), 16) == 0x71880
    assert jit_profile.short(m.group(2)) == "JS_CallInternal"
    assert jit_profile.short("wasm[0]::function[5]") == "function[5]"
