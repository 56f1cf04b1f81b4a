"""benchmarks/code_breakdown.py puts every byte the pass adds to a run module in one category
(docs/instrument.md, "Where the run module's bytes go"): the categories sum to the run module's
code minus plain's, and the cold arms are told apart by kind and by part."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.test_call_arms import WAT
from tests.wat import wat_module
from wasmig.instrument.unwind import instrument

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import code_breakdown  # noqa: E402
from code_size import code_size  # noqa: E402

#: a loop in a small function (its poll's arm stores each value), beside test_call_arms' recursion
LOOP = WAT.replace('(func (export "_start")', """(func $sum (param $n i32) (result i32) (local $s i32)
    (loop $l (local.set $s (i32.add (local.get $s) (local.get $n)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (local.get $s))
  (func (export "_start") (drop (call $sum (i32.const 9)))""")


def test_the_categories_sum_to_what_the_pass_adds() -> None:
    module = wat_module(LOOP)
    run = instrument(module, count_steps=False).data
    parts = code_breakdown.breakdown(module.data, run)
    assert sum(parts.values()) == code_size(run) - code_size(module.data)
    for cat in ("arm post-call: saver: call", "arm post-call: saver: values", "arm post-call: site id",
                "arm post-call: test, if, end", "arm post-call: br $unwind", "arm poll: record stores",
                "arm poll: test, if, end", "framing and record header call", "the pass's own functions"):
        assert parts[cat] > 0, cat
    assert not any(cat.startswith("other added") for cat in parts), parts
