"""The instrumentation pass (unwind half): instrumented modules validate (wasmig's validator with
multi-memory, and wasmtime), behave exactly like the originals, and — stopped at the same step —
write frame records that translate into the very canonical state the interpreter captures."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import wasmig
from tests.wat import wat_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.binary.validator import validate_module
from wasmig.engines.interp.capture import capture
from wasmig.engines.wasmtime.records import frames_from_records
from wasmig.instrument.unwind import instrument
from wasmig.session.command import instantiate_with_wasi, run_command
from wasmig.toolchain import compile_c
from wasmig.wasi.preview1 import ProcExit, Wasi

wasmtime_engine = pytest.importorskip("wasmig.engines.wasmtime.runtime")
PROGRAMS = Path(__file__).parent / "programs"
_opened: list[Wasi] = []


def new_wasi(*args: object, **kwargs: object) -> Wasi:
    """A Wasi closed when the test ends (each holds a wakeup pipe: many steps must not leak fds)."""
    wasi = Wasi(*args, **kwargs)  # type: ignore[arg-type]
    _opened.append(wasi)
    return wasi


@pytest.fixture(autouse=True)
def _close_wasi() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()

# folded code on purpose: values buried beneath blocks, loops with parameters, multi-value,
# call_indirect, recursion, and calls inside expressions
WAT = """
(module
  (type $bin (func (param i32 i32) (result i32)))
  (type $pair (func (param i32) (result i32 i32)))
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 7))
  (table 2 funcref)
  (elem (i32.const 0) $add $mul)
  (func $add (type $bin) (i32.add (local.get 0) (local.get 1)))
  (func $mul (type $bin) (i32.mul (local.get 0) (local.get 1)))
  (func $split (type $pair) (local.get 0) (i32.add (local.get 0) (i32.const 1)))
  (func $fact (param i64) (result i64)
    (if (result i64) (i64.eqz (local.get 0)) (then (i64.const 1))
      (else (i64.mul (local.get 0) (call $fact (i64.sub (local.get 0) (i64.const 1)))))))
  (func $work (export "work") (param $n i32) (result i32) (local $i i32) (local $acc i32)
    (local.set $acc
      (i32.add (i32.const 1000)                       ;; buried beneath the block below
        (block (result i32)
          (i32.const 0)
          (loop $l (param i32) (result i32)            ;; a loop with a parameter
            (call_indirect (type $bin)
              (call $split (local.get $i)) (i32.and (local.get $i) (i32.const 1)))
            (i32.add)
            (global.set $g (i32.add (global.get $g) (i32.wrap_i64 (call $fact (i64.const 5)))))
            (i32.store (i32.mul (local.get $i) (i32.const 4)) (global.get $g))
            (local.tee $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $n)))
            (drop (i32.const 0)) (i32.const 0) (i32.add)))))
    (local.get $acc))
  (func (export "_start") (drop (call $work (i32.const 30)))))
"""


def instrumented_module(module: wasmig.Module) -> tuple[wasmig.Module, object]:
    ins = instrument(module)
    data = ins.data
    return wasmig.Module.from_bytes(data, features=INSTRUMENTED), ins.sitemap


def interp_state(module: wasmig.Module, args: list[str], k: int) -> object:
    wasi = new_wasi(args, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    inst = instantiate_with_wasi(module, wasi)
    inst.stop_at(step=k)
    try:
        inst.invoke("_start")
    except (wasmig.Suspended, ProcExit):
        pass
    if inst.machine.point is None:
        return None
    s = capture(inst)
    return s.frames, s.point, s.steps, s.memories[0].data, [g.value[1] for g in s.globals]


def wasmtime_state(imod: wasmig.Module, sitemap: object, n_globals: int, args: list[str], k: int) -> object:
    wasi = new_wasi(args, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO())
    inst = wasmtime_engine.WasmtimeInstance(imod, wasi)
    store, ex = inst.store, inst.exports
    ex["wasmig:stop_at"].set_value(store, k)
    try:
        inst.invoke("_start")
    except ProcExit:
        return None
    if ex["wasmig:state"].value(store) != 1:
        return None
    ctl = ex["wasmig:ctl"]
    frames, point = frames_from_records(bytes(ctl.read(store, 0, ctl.data_len(store))), sitemap)  # type: ignore[arg-type]
    mem = ex["memory"]
    globs = [ex[f"wasmig:g{i}"].value(store) & 0xFFFFFFFFFFFFFFFF for i in range(n_globals)]
    return frames, point, ex["wasmig:steps"].value(store), bytes(mem.read(store, 0, mem.data_len(store))), globs


def test_instrumented_modules_validate_and_keep_their_behaviour(tmp_path: Path) -> None:
    for name, args in (("checksum", []), ("hello", ["x"]), ("exitcode", ["9"])):
        module = wasmig.Module.from_file(compile_c(PROGRAMS / f"{name}.c"))
        imod, _ = instrumented_module(module)
        validate_module(imod.ir, features=INSTRUMENTED)
        outputs = []
        for mod in (module, imod):
            out = io.BytesIO()
            code = run_command(mod, new_wasi([name, *args], stdin=b"in\n", stdout=out, stderr=io.BytesIO()),
                               "wasmtime")
            outputs.append((code, out.getvalue()))
        assert outputs[0] == outputs[1], name


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 40, 77, 150, 300, 499])
def test_hand_written_code_stops_like_the_interpreter(tmp_path: Path, k: int) -> None:
    module = wat_module(WAT)
    imod, sitemap = instrumented_module(module)
    n_globals = len(module.ir.all_globals())
    expected = interp_state(module, ["m"], k)
    got = wasmtime_state(imod, sitemap, n_globals, ["m"], k)
    assert (expected is None) == (got is None)
    if expected is not None:
        assert got[:3] == expected[:3]  # type: ignore[index]
        assert got[3] == expected[3]  # type: ignore[index]
        assert [g & 0xFFFFFFFF for g in got[4]] == [g & 0xFFFFFFFF for g in expected[4]]  # type: ignore[index]


@pytest.mark.parametrize("k", [1, 2, 3, 1000, 3168, 9890, 14074, 21226, 33259, 38197])
def test_c_program_stops_like_the_interpreter(k: int) -> None:
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    imod, sitemap = instrumented_module(module)
    expected = interp_state(module, ["checksum"], k)
    got = wasmtime_state(imod, sitemap, len(module.ir.all_globals()), ["checksum"], k)
    assert expected is not None and got is not None
    frames, point, steps, memory, globs = got  # type: ignore[misc]
    assert (frames, point, steps) == expected[:3]  # type: ignore[index]
    assert memory == expected[3]  # type: ignore[index]


@pytest.mark.parametrize("k", [1, 5, 500, 3000, 9000, 20000, 39000])
def test_wasmtime_snapshot_equals_interpreter_and_restores_there(k: int) -> None:
    """The whole canonical snapshot, taken on wasmtime, equals the interpreter's at the same step
    (WASI state included), and restoring it on the interpreter finishes the program exactly."""
    from wasmig.engines.wasmtime.capture import capture_wasmtime
    from wasmig.snapshot.state import from_plain, to_plain

    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    ins = instrument(module)
    imod = wasmig.Module.from_bytes(ins.data, features=INSTRUMENTED)
    reference = io.BytesIO()
    try:
        instantiate_with_wasi(module, new_wasi(["checksum"], stdin=b"", stdout=reference, stderr=io.BytesIO())).invoke(
            "_start")
    except ProcExit:
        pass

    out = io.BytesIO()
    wasi = new_wasi(["checksum"], stdin=b"", stdout=out, stderr=io.BytesIO())
    inst = wasmtime_engine.WasmtimeInstance(imod, wasi)
    inst.exports["wasmig:stop_at"].set_value(inst.store, k)
    inst.invoke("_start")
    snap = from_plain(to_plain(capture_wasmtime(inst, module, ins.sitemap)))
    wasi.close()

    interp = instantiate_with_wasi(module, new_wasi(["checksum"], stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO()))
    interp.stop_at(step=k)
    with pytest.raises(wasmig.Suspended):
        interp.invoke("_start")
    expected = capture(interp)
    for name in ("frames", "point", "steps", "memories", "globals", "tables", "dropped_data", "dropped_elems"):
        assert getattr(snap, name) == getattr(expected, name), name
    assert snap.wasi is not None and expected.wasi is not None
    assert [f.__dict__ for f in snap.wasi.fds] == [f.__dict__ for f in expected.wasi.fds]

    restored = wasmig.restore(snap, module=module, stdin=b"", stdout=out, stderr=io.BytesIO())
    _opened.append(restored.wasi)
    try:
        restored.resume()
    except ProcExit:
        pass
    assert out.getvalue() == reference.getvalue()


#: decodes, but is invalid: a function of type () -> i32 whose body leaves nothing on the stack
_INVALID = bytes.fromhex("0061736d01000000" "010501600001" "7f" "03020100" "0a040102000b")


def test_deferred_validation_still_refuses_an_invalid_module(tmp_path: Path) -> None:
    """A restore on wasmtime loads its module without validating it (a cached instrumented module
    proves the same bytes were valid); an uncached one is validated by the pass, so an invalid
    module is still refused with ValidationError, never instrumented."""
    from wasmig.engines.wasmtime.instrumented import instrumented_bytes
    from wasmig.errors import ValidationError

    with pytest.raises(ValidationError):
        wasmig.Module.from_bytes(_INVALID)
    module = wasmig.Module.from_bytes(_INVALID, validate=False)
    with pytest.raises(ValidationError):
        instrumented_bytes(module, tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing may be cached for an invalid module"
    with pytest.raises(ValidationError):
        module.validation  # noqa: B018 - the property validates


def test_a_drop_of_a_segment_beyond_the_drop_flags_is_refused() -> None:
    """The control memory holds a drop flag for the first 15,360 segments (DROPS_BASE..GLOBALS_BASE):
    a passive segment past them would have its flag written over the globals' bits, so the pass
    refuses the module with a clear error (active ones have no flag: tests/test_restore_regressions.py)."""
    from wasmig.instrument.unwind import DROPS_BASE, GLOBALS_BASE, InstrumentError, instrument

    last = GLOBALS_BASE - DROPS_BASE  # the first segment index without a flag
    for index, refused in ((last - 1, False), (last, True)):
        datas = '(data "x")\n' * (index + 1)  # passive: segment `index` is the last
        module = wat_module(f'(module (memory 1) {datas} (func (export "f") (data.drop {index})))')
        if refused:
            with pytest.raises(InstrumentError, match=f"passive segment {index} .* beyond .* {last} drop flags"):
                instrument(module)
        else:
            instrument(module)


def test_the_pass_runs_with_the_collector_paused_and_restores_it() -> None:
    """The pass pauses the cyclic garbage collector (its collections walked the whole decoded
    module, 1.1 s of CPython's pass) and restores the caller's setting after, also when it fails."""
    import gc

    from wasmig.instrument.unwind import InstrumentError

    module = wat_module('(module (func (export "f") (loop (br 0))))')
    seen: list[bool] = []
    assert gc.isenabled()
    instrument(module, progress=lambda done, total: seen.append(gc.isenabled()))
    assert seen and not any(seen), "the collector ran during the pass"
    assert gc.isenabled()
    gc.disable()
    try:
        instrument(module)
        assert not gc.isenabled(), "a collector the caller had off was turned on"
    finally:
        gc.enable()
    refused = wat_module('(module (func (export "f") (local externref)))')
    with pytest.raises(InstrumentError, match="reference-typed locals"):
        instrument(refused)
    assert gc.isenabled()


# --- two modules (docs/instrument.md, "Two modules and compact records") ----------------------------
def test_the_run_module_has_no_rewind_copies_and_the_rewind_module_only_them() -> None:
    """The run module holds the instrumented functions and the pass's own, no copy and no rewind
    export; the rewind module holds one copy per defined function, imports every function of the
    run module and exports the copies of the exported functions. Both validate."""
    from wasmig.binary.decoder import decode_module
    from wasmig.instrument.linking import HELPERS

    module = wat_module(WAT)
    ins = instrument(module)
    assert ins.rewind is not None
    run = decode_module(ins.data, features=INSTRUMENTED)
    rewind = decode_module(ins.rewind, features=INSTRUMENTED)
    validate_module(run, features=INSTRUMENTED)
    validate_module(rewind, features=INSTRUMENTED)
    n = len(module.ir.funcs)
    assert len(run.funcs) == n + HELPERS and len(rewind.funcs) == n
    assert not any(e.name.startswith("wasmig:rewind") for e in run.exports)
    assert rewind.num_imported_funcs() == run.num_imported_funcs() + len(run.funcs)
    exported = {e.index for e in module.ir.exports if e.kind == "func"}
    assert {e.name for e in rewind.exports} == {f"wasmig:rewind{f}" for f in exported}


def test_a_module_using_its_own_segments_keeps_its_copies_in_one_module() -> None:
    """``data.drop`` in a function: a rewind instance would have segments of its own, so the copies
    stay in the run module (as with ``split=False``), which then exports the rewinds itself."""
    from wasmig.binary.decoder import decode_module

    module = wat_module("""(module (memory 1) (data "abc")
      (func (export "_start") (data.drop 0)))""")
    for ins in (instrument(module), instrument(wat_module(WAT), split=False)):
        assert ins.rewind is None
        assert any(e.name.startswith("wasmig:rewind") for e in decode_module(ins.data, features=INSTRUMENTED).exports)


def test_a_run_is_never_rewound_without_compiling_the_rewind_module_and_a_restore_links_it() -> None:
    """A run to the end never links the rewind module; a checkpoint in a big function (compact
    records at every site) and one in a small one both rewind into a second run that finishes
    exactly like the uninterrupted one."""
    from wasmig.engines.wasmtime.checkpointable import Checkpointable
    from wasmig.wasi.snapshot import restore_wasi

    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    reference = io.BytesIO()
    plain = Checkpointable(module, new_wasi(["checksum"], stdin=b"", stdout=reference, stderr=io.BytesIO()),
                           count_steps=True)
    _run(plain.start)
    assert not plain._rewind_linked and plain._rewind_compiling is None
    big = {module.ir.num_imported_funcs() + i for i, f in enumerate(module.ir.funcs) if len(f.body) >= 1000}
    in_big = 0
    for k in (700, 20000, *range(38000, 40000, 150)):
        out = io.BytesIO()
        runner = Checkpointable(module, new_wasi(["checksum"], stdin=b"", stdout=out, stderr=io.BytesIO()),
                                count_steps=True)
        runner.arm(k)
        runner.start()
        if not runner.unwound:  # past the end
            continue
        snap = runner.capture()
        in_big += any(f.func in big for f in snap.frames)
        assert snap.wasi is not None
        wasi = restore_wasi(snap.wasi, stdin=b"", stdout=out, stderr=io.BytesIO())
        _opened.append(wasi)
        resumed = Checkpointable(module, wasi, count_steps=True)
        resumed.load(snap)
        _run(resumed.resume)
        assert resumed._rewind_linked and "wasmig:rewind" + str(snap.frames[0].func) in resumed.instance.exports
        assert out.getvalue() == reference.getvalue(), k
    assert big and in_big, "some stop is inside printf's big function, whose every site saves compactly"


def _run(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except ProcExit as e:
        assert e.code == 0
