"""The binary layer's opt-in feature ``"atomic-loads"``: the threads proposal's seven atomic
loads, which the instrumentation pass's polls use so that the compiler cannot merge one poll's
load with an earlier one (the pass's other proposal, multi-memory: tests/test_multi_memory.py).

* without the feature, 0xFE is the unsupported threads prefix, as before;
* with it the loads decode, validate (alignment exactly natural), re-encode and run on wasmtime;
  every other 0xFE instruction is still reported unsupported, by name of the proposal.
"""

from __future__ import annotations

import pytest

from wasmig.binary import opcodes
from wasmig.binary.decoder import decode_module
from wasmig.binary.encoder import encode_module
from wasmig.binary.ir import Data, Export, Function, FuncType, Instr, Limits, MemType, Module
from wasmig.binary.validator import validate_module
from wasmig.errors import UnsupportedFeature, ValidationError

END = Instr(0x0B)
AL = frozenset({"atomic-loads"})

def _run_on_wasmtime(module: Module, setting: str, *args: int) -> object:
    """Call export ``f`` of ``module`` on a wasmtime engine with the Config flag ``setting`` on."""
    wasmtime = pytest.importorskip("wasmtime")
    config = wasmtime.Config()
    setattr(config, setting, True)
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, encode_module(module)), [])
    return inst.exports(store)["f"](store, *args)


def _load_module(op: int, align: int) -> Module:
    """func 0: () -> T, the atomic load ``op`` of address 8 in a memory whose data puts bytes
    1, 2, ... 8 there."""
    t = opcodes.ATOMIC_LOADS[op][0]
    return Module(types=[FuncType((), (t,))], funcs=[Function(0, [], [Instr(0x41, 8), Instr(op, (align, 0)), END])],
                  mems=[MemType(Limits(1))], datas=[Data("active", bytes(range(1, 9)), 0, [Instr(0x41, 8), END])],
                  exports=[Export("f", "func", 0)])


def _natural(op: int) -> int:
    return opcodes.ATOMIC_LOADS[op][1].bit_length() - 1


@pytest.mark.parametrize("op", sorted(opcodes.ATOMIC_LOADS), ids=lambda op: opcodes.name(op))
def test_atomic_loads_need_the_feature_and_natural_alignment(op: int) -> None:
    data = encode_module(_load_module(op, _natural(op)))
    with pytest.raises(UnsupportedFeature, match="threads"):
        decode_module(data)
    m = decode_module(data, features=AL)
    assert m.funcs[0].body[1] == Instr(op, (_natural(op), 0)) and encode_module(m) == data
    validate_module(m, features=AL)
    with pytest.raises(ValidationError, match="atomic-loads"):
        validate_module(m)
    for align in {0, _natural(op) - 1, _natural(op) + 1} - {_natural(op), -1}:
        with pytest.raises(ValidationError, match="alignment must be equal to natural"):
            validate_module(_load_module(op, align), features=AL)


def test_other_threads_instructions_stay_unsupported() -> None:
    data = encode_module(_load_module(0xFE10, 2))
    rmw = data.replace(bytes((0xFE, 0x10)), bytes((0xFE, 0x1E)))  # i32.atomic.rmw.add
    with pytest.raises(UnsupportedFeature, match="0xfe 0x1e is not supported"):
        decode_module(rmw, features=AL)


def test_atomic_loads_run_on_wasmtime() -> None:
    for op, (_t, width, _name) in opcodes.ATOMIC_LOADS.items():
        got = _run_on_wasmtime(_load_module(op, _natural(op)), "wasm_threads")
        assert got == int.from_bytes(bytes(range(1, 9))[:width], "little"), opcodes.name(op)
