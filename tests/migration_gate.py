"""The gate a migrated test program waits for (docs/architecture.md, "Tests that wait on other
processes")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Gate:
    """A directory the source, the daemons and a restore map at /g: a program given /g/open as its
    gate (tests/programs/migrate_work.c, threads_migrate.c) goes on, round after round, until the
    test opens it, once its migrations are over. A fixed run (test_migrate's 80 rounds, 3.2 s) had
    to outlast the migration: at load 3-4 it moved at round 18-19, and a stall of the test's
    process beyond the run's end failed the test. The ``gate`` fixture (tests/conftest.py) makes one."""

    dir: Path

    @property
    def mapped(self) -> list[str]:
        return ["--dir", f"{self.dir}::/g"]

    def open(self) -> None:
        (self.dir / "open").touch()
