"""Compile a validated function body into the interpreter's flat code.

The flat code has exactly one entry per IR instruction, so a program counter is an
instruction index and maps 1:1 to ``Instr.offset`` (the canonical pc of a snapshot).
Structured control flow is resolved here, once:

- ``block``/``end`` become no-ops, ``loop`` stays (it is a stable point: it counts a step),
- every branch gets its absolute target and, when the operand stack holds values below the
  branch's results that must be discarded, the exact number to drop — known statically from
  the validator's operand-stack heights, so the run-time needs no label stack at all,
- pure numeric operators are bound to their Python implementation.

Control labels are therefore never part of the run-time state; they follow from the pc and
the validator, which is what the canonical snapshot relies on.
"""

from __future__ import annotations

import struct
from typing import Any

from wasmig.binary import opcodes
from wasmig.binary.blocks import match_blocks
from wasmig.binary.ir import Function, FuncType
from wasmig.interp import ops
from wasmig.interp.atomics import handler_for
from wasmig.interp.numeric import f32_from_bits, f64_from_bits


def _block_arity(bt: Any, types: list[FuncType]) -> tuple[int, int]:
    """(param count, result count) of a block type."""
    if bt is None:
        return 0, 0
    if isinstance(bt, str):
        return 0, 1
    ft = types[bt]
    return len(ft.params), len(ft.results)


_LOAD_STRUCTS = {
    0x28: ("<I", None), 0x29: ("<Q", None), 0x2A: ("f32", None), 0x2B: ("<d", None),
    0x2C: ("<b", 0xFFFFFFFF), 0x2D: ("<B", None), 0x2E: ("<h", 0xFFFFFFFF), 0x2F: ("<H", None),
    0x30: ("<b", 0xFFFFFFFFFFFFFFFF), 0x31: ("<B", None), 0x32: ("<h", 0xFFFFFFFFFFFFFFFF), 0x33: ("<H", None),
    0x34: ("<i", 0xFFFFFFFFFFFFFFFF), 0x35: ("<I", None),
}
_STORE_STRUCTS = {
    0x36: ("<I", 0xFFFFFFFF), 0x37: ("<Q", 0xFFFFFFFFFFFFFFFF), 0x38: ("f32", None), 0x39: ("<d", None),
    0x3A: ("<B", 0xFF), 0x3B: ("<H", 0xFFFF), 0x3C: ("<B", 0xFF), 0x3D: ("<H", 0xFFFF), 0x3E: ("<I", 0xFFFFFFFF),
}


def compile_function(func: Function, ftype: FuncType, stack_before: list[tuple], unreachable: list[bool],
                     types: list[FuncType], funcs: list[Any]) -> list[tuple]:
    """Translate ``func.body`` into flat code (see module docstring and :mod:`wasmig.interp.ops`).

    ``funcs`` is the instance's function index space, so direct calls embed their callee.
    """
    body = func.body
    end_of, else_of = match_blocks(body)
    n_results = len(ftype.results)
    # control stack entries: (kind, start index, label height, label arity)
    ctl: list[tuple[str, int, int, int]] = [("func", -1, 0, n_results)]
    code: list[tuple] = []
    emit = code.append

    def branch(depth: int, height: int, i: int) -> tuple[str, int, int, int]:
        """Resolve a branch of label ``depth`` taken with ``height`` values on the stack."""
        kind, start, label_height, arity = ctl[-1 - depth]
        drop = height - arity - label_height
        if unreachable[i] or drop < 0:
            drop = 0  # dead code: never executed, keep it harmless
        if kind == "func":
            return ("ret", -1, arity, drop)
        target = start if kind == "loop" else end_of[start] + 1
        return ("jump", target, arity, drop)

    for i, ins in enumerate(body):
        op = ins.op
        imm = ins.imm
        height = len(stack_before[i])
        if op == 0x02 or op == 0x03 or op == 0x04:
            nparams, nresults = _block_arity(imm, types)
            entry_height = height - nparams - (1 if op == 0x04 else 0)
            kind = "loop" if op == 0x03 else "block"
            ctl.append((kind, i, entry_height, nparams if op == 0x03 else nresults))
            if op == 0x02:
                emit((ops.NOP,))
            elif op == 0x03:
                emit((ops.LOOP,))
            else:
                target = else_of[i] + 1 if i in else_of else end_of[i] + 1
                emit((ops.IF, target))
        elif op == 0x05:
            start = ctl[-1][1]
            emit((ops.JUMP, end_of[start] + 1))
        elif op == 0x0B:
            ctl.pop()
            if not ctl:
                emit((ops.RETURN, n_results, 0))
            else:
                emit((ops.NOP,))
        elif op == 0x0C:
            kind, target, arity, drop = branch(imm, height, i)
            if kind == "ret":
                emit((ops.RETURN, arity, drop))
            elif drop:
                emit((ops.BR_ADJ, target, arity, drop))
            else:
                emit((ops.JUMP, target))
        elif op == 0x0D:
            kind, target, arity, drop = branch(imm, height - 1, i)
            if kind == "ret":
                emit((ops.BR_IF_RET, arity, drop))
            elif drop:
                emit((ops.BR_IF_ADJ, target, arity, drop))
            else:
                emit((ops.BR_IF, target))
        elif op == 0x0E:
            labels, default = imm
            # an arm that leaves the function drops its extra values, then jumps to the
            # function's final `end`, which is the RETURN: the loop needs no second return path
            final_end = len(body) - 1
            arms = [branch(d, height - 1, i) for d in (*labels, default)]
            arms = [(final_end, arity, drop) if kind == "ret" else (target, arity, drop)
                    for kind, target, arity, drop in arms]
            emit((ops.BR_TABLE, tuple(arms[:-1]), arms[-1]))
        elif op == 0x0F:
            drop = height - n_results if not unreachable[i] else 0
            emit((ops.RETURN, n_results, max(drop, 0)))
        elif op == 0x10:
            emit((ops.CALL, funcs[imm]))  # the callee object itself: no lookup at run time
        elif op == 0x11:
            emit((ops.CALL_INDIRECT, types[imm[0]], imm[1]))
        elif op in _LOAD_STRUCTS:
            fmt, mask = _LOAD_STRUCTS[op]
            offset = imm[1]
            if fmt == "f32":
                emit((ops.LOAD_F32, offset))
            elif fmt in ("<B",):
                emit((ops.LOAD8_U, offset))
            elif mask is None:
                emit((ops.LOAD, offset, struct.Struct(fmt).unpack_from))
            else:
                emit((ops.LOAD_S, offset, struct.Struct(fmt).unpack_from, mask))
        elif op in _STORE_STRUCTS:
            fmt, mask = _STORE_STRUCTS[op]
            offset = imm[1]
            if fmt == "f32":
                emit((ops.STORE_F32, offset))
            elif fmt == "<B":
                emit((ops.STORE8, offset))
            elif fmt == "<d":
                emit((ops.STORE_F64, offset))
            else:
                emit((ops.STORE, offset, struct.Struct(fmt).pack_into, mask))
        elif op == 0x41 or op == 0x42:
            emit((ops.CONST, imm))
        elif op == 0x43:
            emit((ops.CONST, f32_from_bits(imm)))
        elif op == 0x44:
            emit((ops.CONST, f64_from_bits(imm)))
        elif op in opcodes.THREADS_OPS:
            emit((ops.ATOMIC, handler_for(op), imm[1] if imm is not None else 0))
        elif op in ops.DIRECT:
            emit((op, imm))
        elif op in ops.BINARY:
            emit((ops.BINOP, ops.BINARY[op]))
        elif op in ops.UNARY:
            emit((ops.UNOP, ops.UNARY[op]))
        else:  # pragma: no cover - the opcode table and this compiler out of sync
            raise AssertionError(f"no compilation for opcode {op:#x}")
    return code
