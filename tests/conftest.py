"""Session-wide reporting hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.migration_keys import Keys, make_keys


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
