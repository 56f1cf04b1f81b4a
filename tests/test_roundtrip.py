"""decode -> encode -> decode over every binary module of the spec testsuite.

This is what makes the encoder trustworthy for instrumented modules: each of the few thousand
modules wabt writes for the core testsuite must come back as an equal IR, and encoding must be
a fixed point (``encode(decode(encode(m))) == encode(m)``). Modules the decoder rejects are
the testsuite's *malformed* cases and are skipped. One test per ``.wast`` file keeps the test
count readable; failures inside a file are collected and reported together.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from tests.spec.convert import DEFAULT_CACHE_ROOT, convert_wast, find_testsuite, wast2json
from tests.test_encoder import ELEM_CASES, INSTR_CASES
from wasmig.binary.decoder import decode_module
from wasmig.binary.encoder import encode_module
from wasmig.binary.ir import CustomSection, Data, Function, FuncType, Instr, Module, NameSection
from wasmig.errors import DecodeError


def _wast_files() -> list[Path]:
    """Every non-SIMD ``.wast`` of the core testsuite (empty when the testsuite is absent)."""
    root = find_testsuite()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*.wast") if not p.name.startswith("simd_"))


WAST_FILES = _wast_files()


@pytest.fixture(scope="module")
def spec_cache() -> Path:
    """The shared conversion cache; skips the whole module when wabt is unavailable."""
    if wast2json() is None:
        pytest.skip("wast2json (wabt) is not installed")
    return DEFAULT_CACHE_ROOT


def _first_difference(a: Any, b: Any, path: str = "module") -> str | None:
    """Where two IR values first differ, e.g. ``module.funcs[3].body[7].imm: 1 != 2``."""
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        for f in dataclasses.fields(a):
            if not f.compare:
                continue
            diff = _first_difference(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
            if diff:
                return diff
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and type(a) is type(b):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            diff = _first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys(), key=repr):
            diff = _first_difference(a.get(k), b.get(k), f"{path}[{k!r}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def _roundtrip_one(wasm: Path) -> str | None:
    """``None`` if ``wasm`` round-trips (or is rejected by the decoder), else what went wrong."""
    data = wasm.read_bytes()
    try:
        original = decode_module(data)
    except DecodeError:
        return None  # a malformed-module test: nothing to round-trip
    try:
        encoded = encode_module(original)
    except Exception as exc:  # report any encoder crash with the module name, not a traceback
        return f"{wasm.name}: encode failed: {type(exc).__name__}: {exc}"
    try:
        again = decode_module(encoded)
    except DecodeError as exc:
        return f"{wasm.name}: re-encoded module does not decode: {exc}"
    if again != original:
        return f"{wasm.name}: IR differs after round-trip: {_first_difference(original, again)}"
    if encode_module(again) != encoded:
        return f"{wasm.name}: encoding is not stable (encode(decode(encode(m))) != encode(m))"
    return None


@pytest.mark.parametrize("wast", WAST_FILES, ids=lambda p: p.stem)
def test_spec_modules_roundtrip(wast: Path, spec_cache: Path) -> None:
    json_path = convert_wast(wast, spec_cache)
    modules = sorted(json_path.parent.glob("*.wasm"))
    failures = [msg for msg in map(_roundtrip_one, modules) if msg]
    if failures:
        shown = "\n  ".join(failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        pytest.fail(f"{len(failures)} of {len(modules)} modules failed to round-trip:\n  {shown}{more}")


# --- hand-built IR through the decoder ------------------------------------------------------------
# The spec modules carry no name section and use few of the encoding choices the encoder makes
# on its own (element forms, constants at the edges), so these cover that against the decoder.

END = Instr(0x0B)


def _assert_roundtrip(m: Module) -> Module:
    encoded = encode_module(m)
    again = decode_module(encoded)
    assert encode_module(again) == encoded
    return again


def test_every_instruction_case_roundtrips() -> None:
    funcs = []
    for instr, _ in INSTR_CASES:
        closing = [END] if instr.op in (0x02, 0x03, 0x04) else []
        funcs.append(Function(0, [(1, "i32"), (2, "i32")], [instr, *closing, END]))
    m = Module(types=[FuncType((), ()), FuncType(("i32",), ("i64",))], funcs=funcs)
    again = _assert_roundtrip(m)
    assert again == m, _first_difference(m, again)


def test_every_elem_form_roundtrips() -> None:
    m = Module(elems=[e for e, _ in ELEM_CASES])
    again = _assert_roundtrip(m)
    assert again == m, _first_difference(m, again)


def test_data_and_datacount_roundtrip() -> None:
    m = Module(
        datas=[Data("active", b"ab", 0, [Instr(0x41, 4), END]), Data("passive", b""), Data("active", b"c", 3, [END])],
        data_count=3,
        customs=[CustomSection("after-count", b"", 12), CustomSection("after-data", b"\x00\xff", 11)],
    )
    again = _assert_roundtrip(m)
    assert again == m, _first_difference(m, again)


def test_name_section_roundtrips() -> None:
    names = NameSection(
        module="mod \u00e9", functions={0: "f", 2: "h\U0001f600", 1: ""}, locals={2: {0: "x", 5: "y"}, 0: {}}
    )
    m = Module(
        types=[FuncType((), ())],
        funcs=[Function(0, [], [END])] * 3,
        names=names,
        customs=[CustomSection("before", b"1", 0)],
    )
    again = decode_module(encode_module(m))
    assert again.names == names
    # the decoder keeps the raw section too, so re-encoding emits it verbatim at the same place
    assert [c.name for c in again.customs] == ["before", "name"]
    assert encode_module(again) == encode_module(m)
    # and a module whose names were decoded from a raw section re-encodes to the same names
    without_raw = Module(types=again.types, funcs=again.funcs, names=again.names, customs=again.customs[:1])
    assert encode_module(without_raw) == encode_module(m)


# --- the conversion cache ------------------------------------------------------------------------


def test_convert_wast_caches_and_refreshes(tmp_path: Path) -> None:
    if wast2json() is None:
        pytest.skip("wast2json (wabt) is not installed")
    wast = tmp_path / "tiny.wast"
    wast.write_text(
        '(module (func (export "f") (result i32) (i32.const 7)))\n'
        '(assert_return (invoke "f") (i32.const 7))\n'
    )
    cache = tmp_path / "cache"
    json_path = convert_wast(wast, cache)
    assert json_path == cache / "tiny" / "tiny.json"
    assert [p.name for p in json_path.parent.glob("*.wasm")] == ["tiny.0.wasm"]
    assert decode_module((json_path.parent / "tiny.0.wasm").read_bytes()).exports[0].name == "f"

    stamp = json_path.stat().st_mtime_ns
    assert convert_wast(wast, cache) == json_path
    assert json_path.stat().st_mtime_ns == stamp  # reused, not reconverted

    wast.write_text("(module)\n")
    future = json_path.stat().st_mtime + 10
    os.utime(wast, (future, future))
    assert convert_wast(wast, cache) == json_path
    assert json_path.stat().st_mtime_ns != stamp
    assert '"commands"' in json_path.read_text()
    assert [p.name for p in cache.iterdir()] == ["tiny"]  # no temporary directories left behind


def test_convert_wast_reports_wast2json_errors(tmp_path: Path) -> None:
    if wast2json() is None:
        pytest.skip("wast2json (wabt) is not installed")
    wast = tmp_path / "broken.wast"
    wast.write_text("(module (func (i32.bogus)))\n")
    with pytest.raises(RuntimeError, match="wast2json failed"):
        convert_wast(wast, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
