"""The two opt-in features of the binary layer that the instrumentation pass's output uses
besides multi-memory (tests/test_multi_memory.py).

``"tail-call"``: the pass enters a function's rewind copy without a deeper stack.

* without the feature, ``return_call`` (0x12) and ``return_call_indirect`` (0x13) are illegal
  opcodes, as in WebAssembly 2.0, for the decoder and the validator alike;
* with it they decode, validate (operands as a call's, results exactly the function's, then the
  rest of the block is unreachable), re-encode byte-exactly and run the same on wasmtime.

``"atomic-loads"``: the threads proposal's seven atomic loads, which the polls use so that the
compiler cannot merge one poll's load with an earlier one.

* without the feature, 0xFE is the unsupported threads prefix, as before;
* with it the loads decode, validate (alignment exactly natural), re-encode and run on wasmtime;
  every other 0xFE instruction is still reported unsupported, by name of the proposal.
"""

from __future__ import annotations

import pytest

from wasmig.binary import opcodes
from wasmig.binary.decoder import decode_module
from wasmig.binary.encoder import encode_module
from wasmig.binary.ir import Data, Elem, Export, Function, FuncType, Instr, Limits, MemType, Module, TableType
from wasmig.binary.validator import validate_function, validate_module
from wasmig.errors import DecodeError, UnsupportedFeature, ValidationError

TC = frozenset({"tail-call"})
END = Instr(0x0B)


def _module(body: list[Instr], *, results: tuple[str, ...] = ("i32",), callee_results: tuple[str, ...] = ("i32",)
            ) -> Module:
    """func 0: (i32) -> results with ``body``; func 1: (i32) -> callee_results, returns its
    argument plus one (or nothing); a funcref table holding func 1 at index 0."""
    callee_body = [Instr(0x20, 0), Instr(0x41, 1), Instr(0x6A), END] if callee_results else [END]
    return Module(
        types=[FuncType(("i32",), results), FuncType(("i32",), callee_results)],
        funcs=[Function(0, [], body), Function(1, [], callee_body)],
        tables=[TableType("funcref", Limits(1))],
        elems=[Elem("active", "funcref", [[Instr(0xD2, 1), END]], 0, [Instr(0x41, 0), END])],
        exports=[Export("f", "func", 0)],
    )


RETURN_CALL = [Instr(0x20, 0), Instr(0x12, 1), END]
RETURN_CALL_INDIRECT = [Instr(0x20, 0), Instr(0x41, 0), Instr(0x13, (1, 0)), END]


@pytest.mark.parametrize("body", [RETURN_CALL, RETURN_CALL_INDIRECT], ids=["return_call", "return_call_indirect"])
def test_tail_calls_need_the_feature(body: list[Instr]) -> None:
    data = encode_module(_module(body))
    with pytest.raises(DecodeError, match="illegal opcode 0x1[23]"):
        decode_module(data)
    m = decode_module(data, features=TC)
    assert m.funcs[0].body == body and encode_module(m) == data
    validate_module(m, features=TC)
    validate_function(m, 0, features=TC)
    with pytest.raises(ValidationError, match="tail-call"):
        validate_module(m)
    with pytest.raises(ValidationError, match="tail-call"):
        validate_function(m, 0)


def test_code_after_a_tail_call_is_unreachable() -> None:
    # a tail call ends the block like `return`: what follows may pop anything
    m = _module([Instr(0x20, 0), Instr(0x12, 1), Instr(0x6A), END])
    validate_module(m, features=TC)


@pytest.mark.parametrize(("results", "callee_results"), [(("i32",), ()), ((), ("i32",))])
def test_a_tail_callee_must_return_what_the_function_returns(results: tuple[str, ...],
                                                             callee_results: tuple[str, ...]) -> None:
    for body in (RETURN_CALL, RETURN_CALL_INDIRECT):
        m = _module(body, results=results, callee_results=callee_results)
        with pytest.raises(ValidationError, match="tail call returns"):
            validate_module(m, features=TC)


def test_a_tail_call_pops_the_callee_operands() -> None:
    m = _module([Instr(0x12, 1), END])  # no argument on the stack
    with pytest.raises(ValidationError, match="type mismatch"):
        validate_module(m, features=TC)
    m = _module([Instr(0x20, 0), Instr(0x13, (1, 0)), END])  # no table index
    with pytest.raises(ValidationError, match="type mismatch"):
        validate_module(m, features=TC)


def _run_on_wasmtime(module: Module, setting: str, *args: int) -> object:
    """Call export ``f`` of ``module`` on a wasmtime engine with the Config flag ``setting`` on."""
    wasmtime = pytest.importorskip("wasmtime")
    config = wasmtime.Config()
    setattr(config, setting, True)
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    inst = wasmtime.Instance(store, wasmtime.Module(engine, encode_module(module)), [])
    return inst.exports(store)["f"](store, *args)


def test_tail_calls_run_on_wasmtime() -> None:
    for body in (RETURN_CALL, RETURN_CALL_INDIRECT):
        assert _run_on_wasmtime(_module(body), "wasm_tail_call", 41) == 42


# --- atomic loads ---------------------------------------------------------------------------------
AL = frozenset({"atomic-loads"})


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
