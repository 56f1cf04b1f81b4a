"""What the instrumentation pass emits: encoded instructions and their origin tags, appended as
the pass goes.

The pass emits about ten instructions per original one (26 M for CPython's 2.7 M). Making each
an object (or a list) and encoding it afterwards cost half of the pass's time, so each is
encoded as it is emitted -- a memoised ``bytes`` per (opcode, immediate): a module repeats a few
thousand of them millions of times -- and its origin tag (:mod:`wasmig.instrument.origins`) is
appended beside it. A run of original instructions copied unchanged (most of a body, copied into
the normal body and again into the rewind copy) is one slice of the function's original code
encoded once (:class:`OriginalCode`), not an instruction at a time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from wasmig.binary.encoder import encode_each, encoded_instr
from wasmig.binary.ir import Instr
from wasmig.binary.leb128 import encode_u

#: the origin tag of offset ``o`` is the LEB128 of ``o + 1`` (0: an instruction the pass added);
#: most offsets are below 2**14 (a tag of one or two bytes): those are looked up
_TAGS = [encode_u(n) for n in range(1 << 14)]
#: the tag of original offset o (< 2**14 - 1), for :class:`OriginalCode`'s map
_TAG_OF = _TAGS[1:]
_TAGGED = len(_TAG_OF)  # the offsets whose tag is looked up
#: the bytes that are not the last byte of a LEB128 (continuation bit set): deleted to count tags
_LAST_BYTES = bytes(range(0x80))


def origin_tag(offset: int) -> bytes:
    """The tag of an instruction copied from original offset ``offset`` (-1: added by the pass)."""
    n = offset + 1 if offset >= 0 else 0
    return _TAGS[n] if n < 1 << 14 else encode_u(n)


#: the encodings of the (opcode, immediate) pairs emitted so far: ten emitted instructions per
#: original one are mostly the same few thousand pairs. Bounded: cleared when full.
_ENCODED: dict[tuple[int, object], bytes] = {}
_ENCODED_MAX = 1 << 18


def _remember(op: int, imm: object) -> bytes:
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.clear()
    encoded = _ENCODED[(op, imm)] = encoded_instr(op, imm)
    return encoded


def encode_seq(*instrs: tuple[int, object] | tuple[int]) -> bytes:
    """The encoding of a sequence of ``(op, imm)`` (or ``(op,)``) instructions, for
    :meth:`Code.add_encoded`."""
    return b"".join([encoded_instr(ins[0], ins[1] if len(ins) > 1 else None) for ins in instrs])


_ZERO_TAGS = [bytes(n) for n in range(64)]


class Code:
    """A stretch of emitted code: its encoded instructions (``chunks``: an instruction, a run of
    them, or a placeholder filled in later) and one origin tag per instruction (``tags``)."""

    __slots__ = ("chunks", "tags")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.tags = bytearray()

    def add(self, op: int, imm: object = None, origin: int = -1) -> None:
        """Append an instruction; ``origin``: the offset of the original instruction it copies
        (-1 for one the pass adds), kept for trap reports (:mod:`wasmig.instrument.origins`)."""
        try:
            encoded = _ENCODED[(op, imm)]
        except KeyError:
            encoded = _remember(op, imm)
        except TypeError:  # an unhashable immediate
            encoded = encoded_instr(op, imm)
        self.chunks.append(encoded)
        if origin < 0:
            self.tags.append(0)
        elif origin < _TAGGED:  # origin_tag(origin), inline: 1.5 million calls on CPython
            self.tags += _TAGS[origin + 1]
        else:
            self.tags += encode_u(origin + 1)

    def add_encoded(self, encoded: bytes, count: int) -> None:
        """``count`` instructions the pass adds, already encoded together (:func:`encode_seq`:
        a sequence emitted many times)."""
        self.chunks.append(encoded)
        try:  # 2.5 million calls on CPython: no len() for the common case
            self.tags += _ZERO_TAGS[count]
        except IndexError:
            self.tags += bytes(count)

    def extend(self, other: Code) -> None:
        self.chunks += other.chunks
        self.tags += other.tags

    def count(self) -> int:
        """The number of instructions: one tag each, and each tag has exactly one last byte."""
        return len(self.tags) - len(self.tags.translate(None, _LAST_BYTES))

    def body(self) -> bytes:
        return b"".join(self.chunks)

    def origin_entry(self) -> bytes:
        """This code's entry of the ``wasmig.origins`` section (as :func:`origins.origin_tags`)."""
        return encode_u(self.count()) + self.tags


class OriginalCode:
    """One original body's instructions encoded once, with their origin tags, so that a run of
    them copied unchanged is a slice of each.

    ``module``: the bytes of the module a decoded function with :attr:`Function.canonical` came
    from; its instructions are then those bytes (at ``body_offset`` plus each offset), not
    encoded again: the encoder would make the very same bytes (0.78 s of CPython's pass)."""

    __slots__ = ("data", "pos", "tags", "tag_pos")

    def __init__(self, body: Sequence[Instr], module: bytes | None = None, body_offset: int = 0,
                 body_size: int = 0) -> None:
        # every instruction of every body passes here (2.7 M on CPython): the loops are map()s
        # over the memo and the tag table, which run in C, with the rare misses done after
        offsets = [ins.offset for ins in body]  # (faster than map(attrgetter) on CPython 3.11)
        if module is not None:
            self.data = module
            self.pos = [*map(body_offset.__add__, offsets), body_offset + body_size]
        else:
            encoded = encode_each(body)
            self.data = b"".join(encoded)
            self.pos = [0, *accumulate(map(len, encoded))]
        # offsets ascend: those below 2**14 - 1 are looked up, the rest of a body longer than
        # 16 KB (their tags take three bytes) made one by one (CPython's biggest functions: the
        # whole body one by one took 0.1 s)
        looked_up = bisect_left(offsets, _TAGGED)
        try:
            tags = list(map(_TAG_OF.__getitem__, offsets[:looked_up] if looked_up < len(offsets) else offsets))
        except IndexError:  # offsets out of order (IR made by hand): each one by one
            tags = [origin_tag(o) for o in offsets]
        else:
            tags += [encode_u(o + 1) for o in offsets[looked_up:]]
        self.tags = b"".join(tags)
        self.tag_pos = [0, *accumulate(map(len, tags))]

    def copy(self, out: Code, start: int, end: int) -> None:
        """Append instructions ``start`` to ``end`` (exclusive), unchanged, to ``out``."""
        out.chunks.append(self.data[self.pos[start]:self.pos[end]])
        out.tags += self.tags[self.tag_pos[start]:self.tag_pos[end]]
