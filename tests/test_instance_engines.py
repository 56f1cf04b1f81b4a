"""``wasmig.Instance(..., engine="wasmtime")`` and ``wasmig.restore``'s signature: the embedding
API on wasmtime gives what the interpreter gives for the same calls — export callables with the
same value conventions, ``invoke(raw=True)`` bits, memory and global views, host functions and
immutable globals as imports (and functions exported by an instance of the other engine), traps
as ``wasmig.Trap`` with the same reason and backtrace, host exceptions as themselves, the same
``LinkError`` messages — and says clearly what it does not do (checkpointing, shared memories,
unknown or uninstalled engines)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import wasmig
from tests.wat import threads_module, wat_module
from wasmig.session import restore as api

pytest.importorskip("wasmtime")

WAT = """
(module
  (import "env" "log" (func $log (param i32)))
  (import "env" "scale" (global $scale i32))
  (import "env" "twice" (func $twice (param f64) (result f64)))
  (memory (export "memory") 1)
  (global (export "g") (mut i64) (i64.const -5))
  (data (i32.const 0) "hello")
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "f32") (param f32) (result f32) local.get 0)
  (func (export "pair") (result i32 i64) i32.const -1 i64.const 7)
  (func (export "say") (param i32) (call $log (i32.mul (local.get 0) (global.get $scale))))
  (func (export "twice") (param f64) (result f64) (call $twice (local.get 0)))
  (func $inner (param i32) (result i32) (i32.div_s (i32.const 1) (local.get 0)))
  (func (export "div") (param i32) (result i32) (call $inner (local.get 0))))
"""


@pytest.fixture(scope="module")
def module() -> wasmig.Module:
    return wat_module(WAT)


def imports(log: list[int]) -> dict[str, dict[str, object]]:
    return {"env": {"log": wasmig.HostFunc(["i32"], [], log.append), "scale": wasmig.Global("i32", 3),
                    "twice": wasmig.HostFunc(["f64"], ["f64"], lambda x: 2 * x)}}


def observe(inst: wasmig.Instance, log: list[int]) -> list[object]:
    """Everything the API shows for a run of the module, comparable across engines."""
    out: list[object] = [
        inst.exports["add"](2, 3), inst.exports["add"](2**31 - 1, 1), inst.invoke("add", -1, 0, raw=True),
        inst.invoke("f32", 1.5), inst.invoke("f32", wasmig.Val("f32", 0x7FC00123), raw=True),
        inst.invoke("pair"), inst.invoke("pair", raw=True), inst.exports["twice"](1.25),
        inst.exports["memory"].read(0, 5), inst.exports["memory"].size_pages,
        inst.exports["g"].value, inst.exports["g"].raw, sorted(inst.exports),
    ]
    inst.exports["say"](-7)
    out.append(list(log))
    inst.exports["g"].value = 9
    inst.exports["memory"].write(1, b"ELL")
    out += [inst.exports["g"].value, inst.exports["memory"].read(0, 5), inst.exports["memory"].grow(1),
            inst.exports["memory"].size_pages]
    with pytest.raises(wasmig.Trap) as trap:
        inst.invoke("div", 0)
    out.append((trap.value.reason, trap.value.backtrace))
    for bad in (lambda: inst.exports["memory"].read(2 * 65536 - 2, 4), lambda: inst.invoke("nope"),
                lambda: inst.invoke("add", 1)):
        with pytest.raises((IndexError, KeyError, TypeError)) as info:
            bad()
        out.append(type(info.value).__name__)
    return out


def test_wasmtime_instance_matches_the_interpreter(module: wasmig.Module) -> None:
    seen = {}
    for engine in ("interp", "wasmtime"):
        log: list[int] = []
        inst = wasmig.Instance(module, imports(log), engine=engine)
        assert isinstance(inst, wasmig.Instance) and inst.engine == engine
        seen[engine] = observe(inst, log)
    assert seen["wasmtime"] == seen["interp"]
    assert seen["interp"][:3] == [5, -(2**31), [("i32", 0xFFFFFFFF)]]
    assert seen["interp"][13] == [-21]


def test_functions_cross_engines(module: wasmig.Module) -> None:
    """An export of an instance on one engine is an import of an instance on the other."""
    for first, second in (("interp", "wasmtime"), ("wasmtime", "interp")):
        env = imports([])["env"]
        a = wasmig.Instance(module, {"env": {**env, "twice": wasmig.HostFunc(["f64"], ["f64"], lambda x: x + 0.5)}},
                            engine=first)
        b = wasmig.Instance(module, {"env": {**env, "twice": a.exports["twice"]}}, engine=second)
        assert b.exports["twice"](3.0) == 3.5  # b's import is a's export, which calls a's host function


def test_host_exceptions_come_out_as_themselves(module: wasmig.Module) -> None:
    class Boom(Exception):
        pass

    def fail(x: float) -> float:
        raise Boom(x)

    inst = wasmig.Instance(module, {"env": {**imports([])["env"], "twice": wasmig.HostFunc(["f64"], ["f64"], fail)}},
                           engine="wasmtime")
    with pytest.raises(Boom):
        inst.exports["twice"](1.0)
    assert inst.exports["add"](1, 1) == 2  # and the instance goes on


def link_error(module: wasmig.Module, engine: str, imports: dict) -> str:
    with pytest.raises(wasmig.LinkError) as info:
        wasmig.Instance(module, imports, engine=engine)
    return str(info.value)


def test_link_errors_are_the_interpreters(module: wasmig.Module) -> None:
    env = imports([])["env"]
    for bad in ({}, {"env": {**env, "scale": wasmig.Global("i32", 3, mutable=True)}},
                {"env": {**env, "log": wasmig.HostFunc(["i64"], [], print)}}, {"env": {**env, "log": 5}}):
        assert link_error(module, "wasmtime", bad) == link_error(module, "interp", bad)


def test_shared_memories_and_mutable_globals_are_refused_clearly() -> None:
    memory = wat_module('(module (import "env" "m" (memory 1)))')
    glob = wat_module('(module (import "env" "g" (global (mut i32))))')
    assert "a memory cannot be shared" in link_error(memory, "wasmtime", {"env": {"m": wasmig.Memory(1)}})
    assert "a mutable global cannot be shared" in link_error(
        glob, "wasmtime", {"env": {"g": wasmig.Global("i32", 1, mutable=True)}})
    wasmig.Instance(glob, {"env": {"g": wasmig.Global("i32", 1, mutable=True)}})  # fine on the interpreter


SHARES = """
(module
  (import "host" "memory" (memory 1 3))
  (import "host" "table" (table 2 funcref))
  (func $seven (result i32) i32.const 7)
  (elem (i32.const 1) func $seven)
  (type $t (func (result i32)))
  (func (export "load") (param i32) (result i32) (i32.load8_u (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "call") (param i32) (result i32) (call_indirect (type $t) (local.get 0))))
"""


def test_memories_and_tables_of_a_wasmtime_store_are_shared_by_its_instances() -> None:
    """What the spec suites' imports.wast needs on wasmtime: a host memory and table made in a
    store are the same objects in every instance importing them (writes, growth, table entries),
    and an instance's exported memory can be imported by the next."""
    from wasmig.engines.wasmtime.api import WasmtimeMemory, WasmtimeTable, new_store

    store = new_store()
    host = {"host": {"memory": WasmtimeMemory.create(store, 1, 3), "table": WasmtimeTable.create(store, "funcref", 2)}}
    first = wasmig.Instance(wat_module(SHARES), host, engine="wasmtime")
    second = wasmig.Instance(wat_module(SHARES), host, engine="wasmtime")
    first.exports["store"](100, 42)
    assert second.exports["load"](100) == 42 and host["host"]["memory"].read(100, 1) == b"*"
    assert second.exports["grow"](1) == 1 and first.exports["grow"](0) == 2
    assert first.exports["call"](1) == 7 and host["host"]["table"].size == 2
    reexport = wat_module('(module (import "host" "memory" (memory 1)) (export "m" (memory 0)))')
    chained = wasmig.Instance(reexport, host, engine="wasmtime")
    third = wasmig.Instance(wat_module(SHARES), {"host": {**host["host"], "memory": chained.exports["m"]}},
                            engine="wasmtime")
    assert third.exports["load"](100) == 42


def test_externs_of_two_stores_or_the_wrong_kind_are_link_errors() -> None:
    from wasmig.engines.wasmtime.api import WasmtimeMemory, WasmtimeTable, new_store

    host = {"host": {"memory": WasmtimeMemory.create(new_store(), 1),
                     "table": WasmtimeTable.create(new_store(), "funcref", 2)}}
    assert "come from two wasmtime stores" in link_error(wat_module(SHARES), "wasmtime", host)
    store = new_store()
    table = WasmtimeTable.create(store, "funcref", 2)
    wrong = {"host": {"memory": table, "table": table}}
    assert "host.memory must be a memory, not a table" in link_error(wat_module(SHARES), "wasmtime", wrong)
    small = {"host": {"memory": WasmtimeMemory.create(store, 1, 5), "table": table}}
    assert "cannot instantiate on wasmtime" in link_error(wat_module(SHARES), "wasmtime", small)  # max 5 > 3
    with pytest.raises(ValueError, match="funcref or externref"):
        WasmtimeTable.create(store, "i32", 1)


def test_a_host_shared_memory_is_imported_by_instances_of_any_store() -> None:
    from wasmig.engines.wasmtime.api import WasmtimeSharedMemory

    shared = threads_module("""(module (import "host" "m" (memory 1 2 shared)) (export "m" (memory 0))
      (func (export "add") (param i32 i32) (result i32) (i32.atomic.rmw.add (local.get 0) (local.get 1))))""")
    memory = WasmtimeSharedMemory.create(1, 2)
    first, second = (wasmig.Instance(shared, {"host": {"m": memory}}, engine="wasmtime") for _ in range(2))
    assert first.exports["add"](8, 5) == 0 and second.exports["add"](8, 1) == 5
    assert memory.read(8, 1) == b"\x06" and second.exports["m"].read(8, 1) == b"\x06"
    assert memory.grow(1) == 1 and second.exports["m"].size_pages == 2 and memory.grow(1) == -1


def test_a_single_null_reference_result_is_one_result() -> None:
    """wasmtime-py returns None both for "no results" and for one null reference."""
    nulls = wat_module('(module (func (export "r") (result externref) ref.null extern) (func (export "n")))')
    for name in ("r", "n"):
        got = [wasmig.Instance(nulls, engine=e).invoke(name, raw=True) for e in ("interp", "wasmtime")]
        assert got[0] == got[1], (name, got)


def test_checkpointing_is_refused_with_directions(module: wasmig.Module) -> None:
    inst = wasmig.Instance(module, imports([]), engine="wasmtime")
    for call in (lambda: inst.stop_at(step=5), inst.checkpoint, inst.resume):
        with pytest.raises(NotImplementedError, match="interpreter feature.*Checkpointable"):
            call()
    with pytest.raises(TypeError, match="interpreter options"):
        wasmig.Instance(module, imports([]), engine="wasmtime", max_frames=10)


def test_unknown_engines(module: wasmig.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"unknown engine 'v8' \(available: interp, wasmtime\)"):
        wasmig.Instance(module, imports([]), engine="v8")
    with pytest.raises(ValueError, match="unknown engine 'v8'"):
        wasmig.restore("nowhere", engine="v8")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wasmtime" else real(name, *a))
    with pytest.raises(ValueError, match=r"engine 'wasmtime' needs the wasmtime Python package, which is not "
                                         r"installed \(pip install wasmtime\); available: interp"):
        wasmig.Instance(module, imports([]), engine="wasmtime")


def test_restore_has_the_real_signature() -> None:
    assert inspect.signature(wasmig.restore) == inspect.signature(api.restore)
    assert wasmig.restore.__doc__ and "engine=\"wasmtime\"" in wasmig.restore.__doc__


def test_import_wasmig_does_not_import_wasmtime() -> None:
    code = "import sys, wasmig; wasmig.Instance; print('wasmtime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# --- a WASI program: the same checkpoint API on both engines ------------------------------------
def _stopped_at(engine: str, module: wasmig.Module, step: int) -> tuple[object, bytes]:
    """``module`` (checksum.c) run on ``engine`` through the public API until stable point ``step``:
    its snapshot and what it printed before."""
    import io

    out = io.BytesIO()
    inst = wasmig.Instance(module, wasmig.wasi.Wasi(["checksum"], stdin=b"", stdout=out, stderr=io.BytesIO()),
                           engine=engine)
    inst.stop_at(step=step)
    try:
        with pytest.raises(wasmig.Suspended):
            inst.invoke("_start")
        return inst.checkpoint(), out.getvalue()
    finally:
        inst.wasi.close()


def test_a_wasi_program_checkpoints_and_restores_alike_on_both_engines() -> None:
    """``wasmig.Instance(module, wasmig.wasi.Wasi(...), engine=E)``: ``stop_at``, ``invoke("_start")``
    raising ``Suspended``, ``checkpoint``; ``wasmig.restore(snapshot, F)``: ``stop_at`` again,
    ``resume``: for every pair (E, F) the same snapshots and the output of an uninterrupted run."""
    import io

    from tests.wasi_harness import program
    from wasmig.session.command import run_command

    module = wasmig.Module.from_file(program("checksum"))
    whole = io.BytesIO()
    assert run_command(module, wasmig.wasi.Wasi(["checksum"], stdin=b"", stdout=whole, stderr=io.BytesIO())) == 0
    engines = ("interp", "wasmtime")
    stopped = {engine: _stopped_at(engine, module, 5000) for engine in engines}
    first = stopped["interp"][0]
    for engine in engines:
        snap, printed = stopped[engine]
        assert (snap.steps, snap.point, snap.frames, snap.memories) == (  # type: ignore[attr-defined]
            first.steps, first.point, first.frames, first.memories)  # type: ignore[attr-defined]
        assert printed == stopped["interp"][1] and printed != whole.getvalue()
    for a in engines:
        for b in engines:
            out = io.BytesIO()
            inst = wasmig.restore(stopped[a][0], b, module=module, stdin=b"", stdout=out,  # type: ignore[arg-type]
                                  stderr=io.BytesIO(), count_steps=True)
            assert isinstance(inst, wasmig.Instance) and inst.engine == b
            try:
                inst.stop_at(step=9000)
                with pytest.raises(wasmig.Suspended):
                    inst.resume()
                assert inst.checkpoint().steps == 9000, (a, b)
                inst.stop_at(step=None)
                try:
                    assert inst.resume() is None
                except wasmig.wasi.ProcExit as e:
                    assert e.code == 0
            finally:
                inst.wasi.close()
            assert stopped[a][1] + out.getvalue() == whole.getvalue(), (a, b)
