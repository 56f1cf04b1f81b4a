"""Session-wide set-up (a signing key of the test run's own) and reporting hooks."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.migration_gate import Gate
from tests.migration_keys import Keys, make_keys

_key_dir: str | None = None


def pytest_configure(config: Any) -> None:
    """Give the test run (and every wasmig process it starts) a key pair of its own, made before
    any test runs: snapshots the tests write are signed with it and restored under the same trust
    rules as a user's, without touching the user's own key.
    (Each pytest-xdist worker configures itself, so each has its own key.)"""
    global _key_dir
    from wasmig.keys import KeyPair, write_key_pair

    _key_dir = tempfile.mkdtemp(prefix="wasmig-test-keys-")
    os.environ["WASMIG_KEY_DIR"] = os.path.join(_key_dir, "keys")
    # made now, so no test's first checkpoint announces a new key on its stderr
    write_key_pair(KeyPair.generate("wasmig tests"), Path(os.environ["WASMIG_KEY_DIR"]))


def pytest_unconfigure(config: Any) -> None:
    if _key_dir is not None:
        shutil.rmtree(_key_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Per-file counts of tests/test_instrument_spec.py (carried in user_properties, so they survive
    pytest-xdist): totals always, every file with ``-v``, otherwise only files that are not clean."""
    rows = []
    for key in ("passed", "failed"):
        for rep in terminalreporter.stats.get(key, []):
            for name, value in getattr(rep, "user_properties", ()):
                if name == "instrument_spec" and getattr(rep, "when", "call") == "call":
                    rows.append(value)
    if not rows:
        return
    rows.sort(key=lambda r: r["line"])
    tr = terminalreporter
    tr.write_sep("-", "instrumentation pass on the spec testsuite")
    for row in rows:
        if config.getoption("verbose") > 0 or row["refused"] or row["skipped"] or row["differing"] or row["problems"]:
            tr.write_line(row["line"])
    total = {k: sum(r[k] for r in rows) for k in ("modules", "instrumented", "skipped", "compared", "differing",
                                                 "problems")}
    refused = sum(sum(r["refused"].values()) for r in rows)
    tr.write_line(f"{len(rows)} scripts: modules {total['modules']} (instrumented {total['instrumented']}, "
                  f"refused {refused}, skipped {total['skipped']}); assertions compared {total['compared']}, "
                  f"differing {total['differing']}; other problems {total['problems'] - total['differing']}")


@pytest.fixture()
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keys:
    """A key pair per role (tests/migration_keys.py); the source's is the runs' and `wasmig migrate`'s
    (WASMIG_KEY_DIR), so that no test touches the user's own key."""
    k = make_keys(tmp_path / "keys")
    monkeypatch.setenv("WASMIG_KEY_DIR", str(k.dir("source")))
    return k


@pytest.fixture()
def gate(tmp_path: Path) -> Gate:
    """A closed gate in ``tmp_path / "gate"`` (tests/migration_gate.py)."""
    (tmp_path / "gate").mkdir()
    return Gate(tmp_path / "gate")


@pytest.fixture(autouse=True)
def wasmtime_keeps_its_signal_handlers() -> Any:
    """Fail the test after which wasmtime's signal handlers are no longer installed, and put them
    back: a library that replaces or resets them (Ray's driver did, issue 20) would otherwise kill
    the worker at a later, unrelated test's first trap in wasm, with no stack at all (pytest's
    faulthandler, which prints every thread's stack on a native crash, is bypassed as well)."""
    yield
    from wasmig.engines import trap_signals

    gone = trap_signals.replaced()
    if gone:
        trap_signals.restore()
        pytest.fail(f"this test replaced wasmtime's handlers of {', '.join(s.name for s in gone)}: a later trap "
                    "in wasm would kill the pytest worker (put back)", pytrace=False)
