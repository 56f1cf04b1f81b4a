"""benchmarks/unwind_exceptions.py: its variants compute the same thing and unwind alike.

The script prices unwinding by wasm exceptions against the fast variant's post-call checks
(docs/instrument.md, "Unwinding by wasm exceptions"); a variant that computed something else, or
whose handler arms recorded other frames than the check arms, would price the wrong code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

wasmtime = pytest.importorskip("wasmtime")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import unwind_exceptions as ue  # noqa: E402

MODES = ("plain", "check", "exc")


def _instance(mode: str, live: int = 10, trip: bool = False):
    engine = ue.make_engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wasmtime.wat2wasm(ue.module_wat(mode, live, trip=trip)))
    return store, wasmtime.Instance(store, module, []).exports(store)


@pytest.mark.parametrize("live", [3, 10])
def test_variants_compute_the_same(live: int) -> None:
    results = set()
    for mode in MODES:
        store, exports = _instance(mode, live)
        results.add((exports["dispatch"](store, 5000), exports["fib"](store, 15)))
    assert len(results) == 1
    assert results.pop()[1] == 610


def _records(store, exports) -> bytes:
    poll = exports["poll"]
    ptr = poll.data_ptr(store)
    return bytes(ptr[64:64 + 2 * 128])


def test_unwind_from_a_callee_records_the_same_frames() -> None:
    """The leaf's 50th call raises the request and polls: check arms return, handlers throw; both
    leave the leaf's record then the dispatch loop's (its call site, its live locals)."""
    seen = {}
    for mode, dummy in (("check", 0), ("exc", -1)):
        store, exports = _instance(mode, 10, trip=True)
        exports["trip"].set_value(store, wasmtime.Val.i32(50))
        assert exports["dispatch"](store, 100_000) == dummy
        seen[mode] = _records(store, exports)
    assert seen["check"] == seen["exc"]
    leaf_site = int.from_bytes(seen["exc"][:4], "little")
    caller_site = int.from_bytes(seen["exc"][128:132], "little")
    assert leaf_site == 0 and caller_site - 100 in ue.CALLERS


def test_header_poll_unwinds_both_ways() -> None:
    seen = {}
    for mode, dummy in (("check", 0), ("exc", -1)):
        store, exports = _instance(mode, 10)
        exports["poll"].data_ptr(store)[0] = 1
        assert exports["dispatch"](store, 1000) == dummy
        seen[mode] = _records(store, exports)[:128]
    assert seen["check"] == seen["exc"] and int.from_bytes(seen["exc"][:4], "little") == 1


def test_pricing_modules_of_fib(tmp_path: Path, capsys) -> None:
    """The QuickJS pricing rewrite on a small program: both of fib's post-call checks go, the
    try_table/tag encoding validates and the result is unchanged."""
    program = tmp_path / "fib.wasm"
    program.write_bytes(wasmtime.wat2wasm((BENCH / "fib.wat").read_text()))
    modules = ue.pricing_modules(program)
    config = wasmtime.Config()
    config.wasm_multi_memory = config.wasm_threads = config.wasm_tail_call = config.wasm_exceptions = True
    engine = wasmtime.Engine(config)
    for name in ("exc", "nocheck"):
        store = wasmtime.Store(engine)
        exports = wasmtime.Instance(store, wasmtime.Module(engine, modules[name]), []).exports(store)
        assert exports["fib"](store, 20) == 6765, name
    out = capsys.readouterr().out
    assert "exc: 2 post-call checks rewritten" in out and "nocheck: 2 post-call checks rewritten" in out


def test_bad_live_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        ue.main(["micro", "--live", "ten"])
    assert "--live wants numbers" in str(exc.value)


def test_quickjs_mode_bad_input_is_one_line(monkeypatch, tmp_path: Path) -> None:
    import tests.real_programs as rp

    def unavailable(name: str) -> Path:
        raise rp.ProgramUnavailable("offline")

    monkeypatch.setattr(rp, "obtain", unavailable)
    with pytest.raises(SystemExit) as exc:
        ue.main(["quickjs", str(tmp_path / "out")])
    assert str(exc.value) == "unwind_exceptions: QuickJS is not available: offline"
    monkeypatch.setattr(rp, "obtain", lambda name: tmp_path / "qjs.wasm")
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        ue.main(["quickjs", str(tmp_path / "file" / "out")])
    assert str(exc.value).startswith(f"unwind_exceptions: cannot make {tmp_path / 'file' / 'out'}: ")
