"""The hidden page (wasmig/instrument/hidden_page.py): the poll byte in a page in front of memory 0.

* the instrumented module's polls read memory 0's byte 0, its memory 0 is a page longer, and
  it tells the host so (``wasmig:base``);
* the program cannot reach that page, and sees the very sizes, growth, bulk operations, data
  and traps it sees uninstrumented, at the edges of its memory too (each call compared with the
  original on wasmtime; the host's view, :class:`ProgramMemory`, compared byte for byte);
* by default only a module with an interpreter's giant function gets it; a module that cannot
  have the page (an imported memory, a data offset that is not a constant,
  a static offset within a page of 4 GiB) or is asked not to polls a memory of its own, as before;
* the host's request reaches the program through the hidden page: the program unwinds
  (tests/test_real_programs.py checkpoints QuickJS and CPython, which get the page by default, at
  many points and restores every snapshot on both engines).
"""

from __future__ import annotations

import ctypes

import pytest

from tests.wat import wat_module
from wasmig.binary.decoder import decode_module
from wasmig.binary.features import INSTRUMENTED
from wasmig.binary.opcodes import IMM, memarg_memidx
from wasmig.instrument.hidden_page import EXPORT, HIDDEN, MIN_FUNCTION, fits
from wasmig.instrument.unwind import POLL, instrument

wasmtime = pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime.program_memory import ProgramMemory, poll_address, program_exports  # noqa: E402
from wasmig.engines.wasmtime.runtime import engine  # noqa: E402

MEMORY_FUNCS = """
  (data $seg "abcdefgh")
  (data (i32.const 16) "0123456789")
  (func (export "load") (param i32) (result i32) (i32.load8_u (local.get 0)))
  (func (export "load_off") (param i32) (result i32) (i32.load offset=65532 (local.get 0)))
  (func (export "store") (param i32 i32) (i32.store8 (local.get 0) (local.get 1)))
  (func (export "size") (result i32) (memory.size))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "fill") (param i32 i32 i32) (memory.fill (local.get 0) (local.get 1) (local.get 2)))
  (func (export "copy") (param i32 i32 i32) (memory.copy (local.get 0) (local.get 1) (local.get 2)))
  (func (export "init") (param i32 i32 i32) (memory.init $seg (local.get 0) (local.get 1) (local.get 2)))
  (func (export "spin") (param i32) (result i32)
    (loop $l (local.set 0 (i32.sub (local.get 0) (i32.const 1))) (br_if $l (local.get 0)))
    (local.get 0))
"""

#: calls in order (state carries over), each compared: results or a trap
CALLS: list[tuple[str, tuple[int, ...]]] = [
    ("size", ()), ("load", (16,)), ("load", (0,)), ("load", (65535,)), ("load", (65536,)),
    ("load", (0xFFFFFFFF,)), ("load", (0xFFFF0000,)), ("load_off", (3,)), ("load_off", (4,)),
    ("load_off", (0xFFFF0000,)), ("store", (0, 7)), ("store", (65535, 9)), ("store", (65536, 1)),
    ("store", (0xFFFFFFFF, 1)), ("fill", (100, 0x5A, 20)), ("fill", (65530, 1, 6)), ("fill", (65530, 1, 7)),
    ("fill", (65536, 1, 0)), ("fill", (65537, 1, 0)), ("fill", (0xFFFF0000, 1, 0)), ("fill", (0xFFFFFFFF, 1, 1)),
    ("copy", (200, 16, 10)), ("copy", (65530, 16, 6)), ("copy", (0, 65530, 7)), ("copy", (0xFFFFFFF0, 0, 4)),
    ("copy", (0, 0xFFFFFFF0, 4)), ("init", (300, 2, 4)), ("init", (65534, 0, 3)), ("init", (0xFFFFFFFF, 0, 1)),
    ("grow", (1,)), ("size", ()), ("load", (65536,)), ("store", (131071, 3)), ("load", (131071,)),
    ("grow", (0,)), ("grow", (1,)), ("grow", (100,)), ("size", ()), ("fill", (131072, 2, 0)), ("spin", (1000,)),
]


def _instance(data: bytes) -> tuple[object, dict[str, object]]:
    store = wasmtime.Store(engine())
    inst = wasmtime.Instance(store, wasmtime.Module(engine(), data), [])
    return store, program_exports(dict(inst.exports(store)))


def _outcomes(data: bytes) -> tuple[list[object], bytes]:
    store, ex = _instance(data)
    out: list[object] = []
    for name, args in CALLS:
        try:
            out.append(ex[name](store, *args))
        except wasmtime.Trap as e:
            out.append(("trap", str(e).splitlines()[0][:40]))
    mem = ex["memory"]
    return out, bytes(mem.read(store, 0, mem.data_len(store)))


@pytest.mark.parametrize("limits", ["1 3", "1"], ids=["max 3 pages", "no max"])
@pytest.mark.parametrize("count_steps", [False, True], ids=["fast", "deterministic"])
def test_the_program_sees_its_own_memory_and_never_the_page(limits: str, count_steps: bool) -> None:
    module = wat_module(f'(module (memory (export "memory") {limits}) {MEMORY_FUNCS})')
    assert fits(module.ir)
    done = instrument(module, count_steps=count_steps, hidden_page=True)
    want, want_memory = _outcomes(module.data)
    got, got_memory = _outcomes(done.data)
    assert got == want
    assert got_memory == want_memory
    assert sum(isinstance(x, tuple) for x in want) >= 10  # the edges trap: the comparison covers them


def test_the_polls_read_memory_0s_hidden_page_and_the_host_writes_it() -> None:
    module = wat_module(f'(module (memory (export "memory") 1) {MEMORY_FUNCS})')
    done = instrument(module, count_steps=False, hidden_page=True)
    run = decode_module(done.data, features=INSTRUMENTED)
    assert run.mems[0].limits.min == 2  # the page in front
    polls = [ins for f in run.funcs for ins in f.body if ins.op == 0xFE12]
    assert polls and all(memarg_memidx(ins.imm) == 0 and ins.imm[1] == POLL for ins in polls)
    moved = [ins for f in run.funcs[:len(module.ir.funcs)] for ins in f.body
             if IMM[ins.op] == "memarg" and ins.op != 0xFE12 and memarg_memidx(ins.imm) == 0]
    assert moved and all(ins.imm[1] >= HIDDEN for ins in moved)
    store, ex = _instance(done.data)
    assert ex[EXPORT].value(store) == HIDDEN
    mem = ex["memory"]
    assert isinstance(mem, ProgramMemory) and mem.size(store) == 1 and mem.data_len(store) == 65536
    program = ctypes.addressof(mem.data_ptr(store).contents)
    assert poll_address(ex, store, POLL) == program - HIDDEN
    # the program's byte 0 is memory 0's byte 65536; its writes never reach the page
    whole = wasmtime.Memory._from_raw(mem._memory)
    ex["store"](store, 0, 7)
    ex["fill"](store, 0, 9, 65536)
    assert whole.read(store, 0, HIDDEN) == bytes(HIDDEN) and whole.read(store, HIDDEN, HIDDEN + 1) == b"\x09"
    assert ex["spin"](store, 10) == 0 and ex["wasmig:state"].value(store) == 0
    # a request set by the host through that address is what the program's poll sees: it unwinds
    ctypes.c_uint8.from_address(poll_address(ex, store, POLL)).value = 1
    ex["spin"](store, 10)
    assert ex["wasmig:state"].value(store) == 1  # unwinding


@pytest.mark.parametrize("wat", [
    '(module (import "m" "memory" (memory 1)) (func (export "f") (result i32) (i32.load (i32.const 0))))',
    '(module (global $g (import "m" "g") i32) (memory 1) (data (global.get $g) "x")'
    ' (func (export "f") (result i32) (i32.load (i32.const 0))))',
    '(module (memory 1) (func (export "f") (result i32) (i32.load offset=4294901761 (i32.const 0))))',
], ids=["imported memory", "data offset from a global", "offset within a page of 4 GiB"])
def test_a_module_that_cannot_have_the_page_polls_a_memory_of_its_own(wat: str) -> None:
    module = wat_module(wat.replace("(result i32)", "(result i32) (loop $l (br_if $l (i32.const 0)))", 1))
    assert not fits(module.ir)
    run = decode_module(instrument(module, count_steps=False, hidden_page=True).data, features=INSTRUMENTED)
    polls = [ins for f in run.funcs for ins in f.body if ins.op == 0xFE12]
    assert polls and all(memarg_memidx(ins.imm) == len(run.all_mems()) - 1 for ins in polls)
    assert EXPORT not in {e.name for e in run.exports}


def test_by_default_only_a_module_with_an_interpreters_giant_function_gets_the_page() -> None:
    """The page costs loops of array arithmetic an instruction per merged load (hidden_page.py):
    by default only a module with a function of MIN_FUNCTION instructions or more gets it."""
    small = wat_module(f'(module (memory (export "memory") 1) {MEMORY_FUNCS})')
    assert EXPORT not in {e.name for e in decode_module(instrument(small).data, features=INSTRUMENTED).exports}
    big_body = "(drop (i32.const 1)) " * ((MIN_FUNCTION + 1) // 2)
    big = wat_module(f'(module (memory (export "memory") 1) {MEMORY_FUNCS} (func (export "big") {big_body}))')
    assert max(len(f.body) for f in big.ir.funcs) >= MIN_FUNCTION
    done = instrument(big)
    assert EXPORT in {e.name for e in decode_module(done.data, features=INSTRUMENTED).exports}
    assert _outcomes(done.data) == _outcomes(big.data)


def test_the_giant_function_size_is_widens() -> None:
    """One size makes a function an interpreter's loop for the page and for widening (written in
    both modules: hidden_page.py is read at every start, widen.py is not)."""
    from wasmig.instrument.widen import MIN_BIG

    assert MIN_FUNCTION == MIN_BIG


def test_the_page_can_be_refused() -> None:
    module = wat_module(f'(module (memory (export "memory") 1) {MEMORY_FUNCS})')
    run = decode_module(instrument(module, count_steps=False, hidden_page=False).data, features=INSTRUMENTED)
    assert run.mems[0].limits.min == 1 and EXPORT not in {e.name for e in run.exports}
    store, ex = _instance(instrument(module, count_steps=False, hidden_page=False).data)
    assert type(ex["memory"]) is wasmtime.Memory and ex["size"](store) == 1
