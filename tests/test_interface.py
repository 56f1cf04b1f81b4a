"""wasmig/binary/interface.py reads a module's types and imports as the full decoder does, and a
module it cannot read gets the full decoder's error (what ``wasmig run`` on wasmtime reports)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import wasmig
from tests.wasi_harness import program
from tests.wat import wat_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.interface import read_interface
from wasmig.errors import WasmError

IMPORTS_OF_EVERY_KIND = """
(module
  (type $t (func (param i32 i64 f32 f64) (result i32)))
  (import "env" "f" (func (type $t)))
  (import "env" "tab" (table 2 10 funcref))
  (import "env" "mem" (memory 1 2))
  (import "env" "g" (global (mut i64)))
  (import "env" "h" (func (param externref)))
  (import "\u00e9" "f" (func (type $t)))
  (func (export "x") (result i32) i32.const 1))
"""


def _same(data: bytes) -> None:
    full = decode_module(data)
    light = read_interface(data)
    assert [(t.params, t.results) for t in light.types] == [(tuple(t.params), tuple(t.results)) for t in full.types]
    want = [(i.module, i.name, i.kind, i.desc if i.kind == "func" else None) for i in full.imports]
    assert [tuple(i) for i in light.imports] == want


@pytest.mark.parametrize("name", ["hello", "fileops", "kv_server", "deeprec"])
def test_programs_read_as_the_decoder_reads_them(name: str) -> None:
    _same(program(name).read_bytes())


def test_every_import_kind() -> None:
    _same(wat_module(IMPORTS_OF_EVERY_KIND).data)


@pytest.mark.parametrize("data", [
    b"", b"\0asm", b"\0asm\x02\0\0\0", b"\0asm\1\0\0\0\1\5\1\x60\0\0",  # truncated type section
    b"\0asm\1\0\0\0\2\4\1\1a\1",  # truncated import
    b"\0asm\1\0\0\0\1\4\1\x60\0\0\2\7\1\1a\1b\0\5",  # a function import of a type that does not exist
], ids=["empty", "magic-only", "version", "types", "import", "type-index"])
def test_a_malformed_module_gets_the_decoders_error(data: bytes) -> None:
    with pytest.raises(WasmError) as full:
        wasmig.Module.from_bytes(data)
    with pytest.raises(WasmError) as light:
        wasmig.Module.from_bytes(data, decode=False)
    assert (type(light.value), str(light.value)) == (type(full.value), str(full.value))


def test_a_lazy_module_decodes_when_asked() -> None:
    data = program("hello").read_bytes()
    lazy = wasmig.Module.from_bytes(data, decode=False)
    assert lazy._ir is None and lazy.imports == wasmig.Module.from_bytes(data).imports
    assert lazy._ir is None, "reading the imports decoded the module"
    assert len(lazy.ir.funcs) == len(decode_module(data).funcs)


def test_invalid_module_reports_the_same_on_both_engines(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A module that decodes but is invalid: the plain wasmtime run (which never validated it in
    Python) and the instrumented one (which validates only when it instruments) report wasmig's
    validation error, as the interpreter does."""
    bad = wat_module("(module (func (export \"_start\")))").data
    # replace the body `end` of a () -> () function with `i32.const 1; end`: a value left on the stack
    body = bytes([0x02, 0x00, 0x0B])
    assert bad.count(body) == 1
    bad = bad.replace(b"\x0a\x04\x01" + body, b"\x0a\x06\x01\x04\x00\x41\x01\x0b")
    path = tmp_path / "bad.wasm"
    path.write_bytes(bad)
    out = {}
    ways = {"interp": ["--engine", "interp"], "wasmtime": ["--engine", "wasmtime", "--plain"],
            "instrumented": ["--engine", "wasmtime", "--checkpoint-dir", str(tmp_path / "ck")],
            "default": ["--engine", "wasmtime"]}
    for way, options in ways.items():
        proc = subprocess.run([sys.executable, "-m", "wasmig", "run", *options, str(path)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "WASMIG_CACHE": str(tmp_path / "cache")})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        out[way] = [line for line in proc.stderr.splitlines() if line.startswith("wasmig: error:")]
    assert out["interp"] == out["wasmtime"] == out["instrumented"] == out["default"], out
    assert len(out["interp"]) == 1 and "not a valid WebAssembly module" in out["interp"][0]
