"""benchmarks/placement.py pads a module's first function at the byte level, so that real_programs.py can time the
26 MB CPython module at several code placements as overhead.py and guest_real.py do the guest alone (overhead.py's
``placed`` now is this one). The padded module must be the program it was (same results), its padding must be what
overhead.py's IR version wrote (never-executed stores, each to a new global of its own, indexed after the imported
and the module's own globals), and a module without a global section gets one in the right place."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.wat import wat_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED

wasmtime = pytest.importorskip("wasmtime")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import placement  # noqa: E402
import real_programs  # noqa: E402

IMPORTS = """(module
  (import "env" "f" (func $f (param i32) (result i32)))
  (import "env" "t" (table 2 funcref))
  (import "env" "m" (memory 1 5))
  (import "env" "g" (global $g i32))
  (import "env" "h" (global $h (mut i64)))
  (global $own (mut i32) (i32.const 7))
  (func $first (result i32) (local i64 i64) (local f32) (i32.add (global.get $g) (global.get $own)))
  (func (export "second") (param $n i32) (result i32)
    (i32.add (call $f (local.get $n)) (call $first))))"""

NO_GLOBALS = """(module
  (memory 1)
  (func $first (export "first") (result i32) (i32.const 5))
  (func (export "second") (param $n i32) (result i32) (i32.mul (local.get $n) (call $first)))
  (data (i32.const 0) "x"))"""


def _ops(body: list) -> list:
    return [(i.op, i.imm) for i in body]


@pytest.mark.parametrize("stores", [1, 2, 9])
def test_padding_after_imported_and_own_globals(stores: int) -> None:
    data = wat_module(IMPORTS).data
    before, after = decode_module(data, features=INSTRUMENTED), \
        decode_module(placement.placed(data, stores), features=INSTRUMENTED)
    first = 2 + 1  # two imported globals, one of the module's own
    assert len(after.globals) == len(before.globals) + stores
    assert all(g.type.mutable and g.type.type == "i32" for g in after.globals[1:])
    pad = [(0x23, first), (0x04, None)]
    for k in range(stores):
        pad += [(0x41, k + 1), (0x24, first + k)]
    assert _ops(after.funcs[0].body) == [*pad, (0x0B, None), *_ops(before.funcs[0].body)]
    assert after.funcs[0].locals == before.funcs[0].locals
    assert _ops(after.funcs[1].body) == _ops(before.funcs[1].body)
    assert [(i.module, i.name) for i in after.imports] == [(i.module, i.name) for i in before.imports]
    # and it runs as the original
    engine = wasmtime.Engine()
    results = []
    for wasm in (data, placement.placed(data, stores)):
        store = wasmtime.Store(engine)
        f = wasmtime.Func(store, wasmtime.FuncType([wasmtime.ValType.i32()], [wasmtime.ValType.i32()]),
                          lambda n: n * 3)
        table = wasmtime.Table(store, wasmtime.TableType(wasmtime.ValType.funcref(), wasmtime.Limits(2, None)), None)
        memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, 5)))
        g = wasmtime.Global(store, wasmtime.GlobalType(wasmtime.ValType.i32(), False), 100)
        h = wasmtime.Global(store, wasmtime.GlobalType(wasmtime.ValType.i64(), True), 0)
        inst = wasmtime.Instance(store, wasmtime.Module(engine, wasm), [f, table, memory, g, h])
        results.append(inst.exports(store)["second"](store, 4))
    assert results == [12 + 107, 12 + 107]


def test_a_module_without_globals_gets_its_global_section_before_the_exports() -> None:
    data = wat_module(NO_GLOBALS).data
    out = placement.placed(data, 2)
    ids = [sid for sid, _s, _e in placement.sections(out)]
    assert ids.index(6) == ids.index(5) + 1 and ids.index(6) < ids.index(7), ids
    ir = decode_module(out, features=INSTRUMENTED)
    assert len(ir.globals) == 2 and _ops(ir.funcs[0].body)[:2] == [(0x23, 0), (0x04, None)]
    store = wasmtime.Store()
    inst = wasmtime.Instance(store, wasmtime.Module(store.engine, out), [])
    assert inst.exports(store)["second"](store, 3) == 15
    assert placement.placed(data, 0) is data  # no stores: the module as it is


def test_same_padding_as_the_ir_version() -> None:
    """What overhead.py's placement wrote before (the module decoded, padded in the IR, encoded again)."""
    from wasmig.binary.encoder import encode_module
    from wasmig.binary.ir import Global, GlobalType, Instr

    data = wat_module(IMPORTS).data
    ir = decode_module(data, features=INSTRUMENTED)
    g = len(ir.all_globals())
    ir.globals += [Global(GlobalType("i32", True), [Instr(0x41, 0), Instr(0x0B)]) for _ in range(6)]
    pad = [Instr(0x23, g), Instr(0x04, None)]
    for k in range(6):
        pad += [Instr(0x41, k + 1), Instr(0x24, g + k)]
    ir.funcs[0].body = [*pad, Instr(0x0B), *ir.funcs[0].body]
    assert encode_module(decode_module(placement.placed(data, 6), features=INSTRUMENTED)) == encode_module(ir)


def test_refused_without_a_function() -> None:
    data = wat_module("(module (memory 1))").data
    with pytest.raises(placement.PlacementError):
        placement.placed(data, 2)


def test_real_programs_runs_each_placement_on_its_own_padded_module(tmp_path: Path) -> None:
    wasm = tmp_path / "prog.wasm"
    wasm.write_bytes(wat_module(NO_GLOBALS).data)
    spec = {"sha256": "ab" * 32}
    work = tmp_path / "work"
    work.mkdir()
    found = real_programs.placed_programs(wasm, spec, 3, str(work))
    assert [m for m, _ in found][0] == wasm and len({m.read_bytes() for m, _ in found}) == 3
    assert all(m.name == "prog.wasm" for m, _ in found)  # the guest's argv[0] is unchanged
    assert len({c for _, c in found}) == 3 and all(c.parent == tmp_path and c.exists() for _, c in found)
    engine = wasmtime.Engine()
    for module, cwasm in found:  # each reference artifact is its own placement's module
        store = wasmtime.Store(engine)
        inst = wasmtime.Instance(store, wasmtime.Module.deserialize_file(engine, str(cwasm)), [])
        assert inst.exports(store)["second"](store, 2) == 10
        assert decode_module(module.read_bytes()).funcs[0].body  # and a valid module


def test_the_report_gives_each_placements_ratio() -> None:
    ref = "wasmtime-py (cached)"
    cpu_at = {("steady", ref, 0): [1.0, 1.2], ("steady", ref, 1): [2.0],
              ("steady", "wasmig run", 0): [1.1, 1.1], ("steady", "wasmig run", 1): [2.2]}
    assert real_programs.by_placement(cpu_at, "steady", "wasmig run") == ["1.00x", "1.10x"]
    assert real_programs.by_placement(cpu_at, "steady", "other") == ["-", "-"]


def test_placements_checked_before_anything_is_fetched(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "5"):
        monkeypatch.setattr(sys, "argv", ["real_programs.py", "--placements", bad])
        with pytest.raises(SystemExit) as e:
            real_programs.main()
        assert e.value.code == 2 and "--placements" in capsys.readouterr().err
