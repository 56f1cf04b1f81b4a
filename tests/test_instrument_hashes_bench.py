"""benchmarks/instrument_hashes.py is how a change meant to keep the pass's output checks it byte
for byte: its digest covers the run module (with the site map) and the rewind module, so a change
to the rewind copies alone shows too (it hashed the run module only before session 10)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.wat import wat_module
from wasmig.instrument.unwind import Instrumented, instrument

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import instrument_hashes  # noqa: E402

WAT = '(module (func $f (export "f") (loop (br 0))) (func (export "g") (call $f)))'


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.wasm"
    path.write_bytes(wat_module(WAT).data)
    return path


def test_a_rewind_module_that_differs_changes_the_digest(module_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = instrument_hashes.digest(module_file, count_steps=False)
    done = instrument(wat_module(WAT), count_steps=False)
    assert done.rewind is not None
    assert real == instrument_hashes.digest(module_file, count_steps=False)  # deterministic

    def with_rewind(rewind: bytes):  # type: ignore[no-untyped-def]
        return lambda module, count_steps: Instrumented(done.data, done.sitemap, rewind)

    monkeypatch.setattr(instrument_hashes, "instrument", with_rewind(done.rewind))
    assert instrument_hashes.digest(module_file, count_steps=False) == real
    monkeypatch.setattr(instrument_hashes, "instrument", with_rewind(done.rewind + b"\0"))
    assert instrument_hashes.digest(module_file, count_steps=False) != real
