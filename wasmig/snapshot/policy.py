"""What a run is asked to do about checkpoints, and how a run ends when one makes it stop.

Kept apart from the run loops (:mod:`wasmig.snapshot.session`) because every ``wasmig run`` needs
these few names, also a plain run on wasmtime that never checkpoints, and it should not import
the interpreter and the snapshot writer to get them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CheckpointPolicy:
    directory: Path | None = None
    at_step: int | None = None
    at_instruction: int | None = None
    every: float | None = None
    then: str = "continue"  # or "exit"
    stable_only: bool = False
    #: on wasmtime, run the deterministic variant that counts steps (the interpreter always counts)
    count_steps: bool = False
    on_signal: bool = True
    written: list[Path] = field(default_factory=list)
    #: accept ``wasmig migrate PID`` (the control socket; on wasmtime, the checkpointable variant)
    migratable: bool = False
    #: ``wasmig run --migrate-to``: (target HOST:PORT, token, seconds after the start)
    migrate_to: tuple[str, bytes, float] | None = None

    @property
    def active(self) -> bool:
        return self.directory is not None


class CheckpointExit(Exception):  # noqa: N818 - control flow
    """``--checkpoint-then exit``: the program stops after its snapshot was written."""


class MigratedAway(Exception):  # noqa: N818 - control flow
    """The program now runs on another machine: this run ends (exit code 0)."""


class MigrationInDoubt(MigratedAway):
    """The target was sent the commit but never confirmed it: the program may run there, so it
    must not go on here; its state was saved for a manual restore (``path``)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def ignore_checkpoint_request(*_: Any) -> None:
    """SIGUSR1 in a run without ``--checkpoint-dir``: say no (its default action would kill the program)."""
    print("wasmig: checkpoint requested, but this run has no --checkpoint-dir; ignoring", file=sys.stderr)
