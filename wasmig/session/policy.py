"""What a run is asked to do about checkpoints, and how a run ends when one makes it stop.

Kept apart from the run loops (:mod:`wasmig.session.loop`) because every ``wasmig run`` needs
these few names, also a plain run on wasmtime that never checkpoints, and it should not import
the interpreter and the snapshot writer to get them (nor ``dataclasses``, which brings ``inspect``
and ``ast``: a plain class here).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


class CheckpointPolicy:
    """When a run checkpoints, where to, and what then (a plain class: see the module docstring)."""

    def __init__(self, directory: Path | str | None = None, at_step: int | None = None,
                 at_instruction: int | None = None, every: float | None = None, then: str = "continue",
                 stable_only: bool = False,
                 count_steps: bool = False, on_signal: bool = True, written: list[str] | None = None,
                 migratable: bool = False, migrate_to: tuple[str, bytes, float] | None = None) -> None:
        #: a checkpoint directory, or a store URL (``s3://...``, ``file://...``: a str)
        self.directory = directory
        self.at_step = at_step
        self.at_instruction = at_instruction
        self.every = every
        self.then = then  # "continue" or "exit"
        self.stable_only = stable_only
        #: on wasmtime, run the deterministic variant that counts steps (the interpreter always counts)
        self.count_steps = count_steps
        self.on_signal = on_signal
        #: the snapshots written so far (file paths, or URLs in a store)
        self.written: list[str] = [] if written is None else written
        #: accept ``wasmig migrate PID`` (the control socket; on wasmtime, the checkpointable variant)
        self.migratable = migratable
        #: ``wasmig run --migrate-to``: (target HOST:PORT, token, seconds after the start)
        self.migrate_to = migrate_to

    @property
    def active(self) -> bool:
        """The run writes snapshots. Then what writing one needs (the store opened, the signing key
        loaded) is made ready beside the program once it is under way
        (:mod:`wasmig.engines.under_way`), so neither its start nor (mostly) its first checkpoint
        waits for it. A run that is only migratable writes none, and prepares nothing."""
        return self.directory is not None

    @property
    def planned(self) -> bool:
        """A stop fires by itself (``--checkpoint-every``, ``--checkpoint-at-step``,
        ``--checkpoint-at-instruction``, ``--migrate-to``), not only on request (``wasmig checkpoint
        PID``, ``wasmig migrate PID``): what it needs is made ready once the program is under way.
        A run stopped only on request makes it ready when the first request comes, before the
        guest stops (:meth:`wasmig.engines.base.Program.ready_on_request`): most are never stopped."""
        return (self.every is not None or self.at_step is not None or self.at_instruction is not None
                or self.migrate_to is not None)

    def __repr__(self) -> str:
        return f"CheckpointPolicy({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k != 'migrate_to')})"


class CheckpointExit(Exception):  # noqa: N818 - control flow
    """``--checkpoint-then exit``: the program stops after its snapshot was written."""


class MigratedAway(Exception):  # noqa: N818 - control flow
    """The program now runs on another machine: this run ends (exit code 0)."""


class MigrationInDoubt(MigratedAway):
    """The target was sent the commit and may run the program (or did, and lost it), so it must
    not go on here; its state was saved for a manual restore (``path``); ``why``: what happened."""

    def __init__(self, path: str, why: str = "the migration target did not confirm the commit") -> None:
        super().__init__(path)
        self.path = path
        self.why = why


def ignore_checkpoint_request(*_: Any) -> None:
    """SIGUSR1 in a run that cannot checkpoint (``--plain``, ``--invoke``, threads on wasmtime):
    say no (its default action would kill the program)."""
    print("wasmig: checkpoint requested, but this run cannot checkpoint (started with --plain, --invoke, "
          "or threads on wasmtime); ignoring", file=sys.stderr)


def default_checkpoint_dir(program: str) -> Path:
    """Where a run started without ``--checkpoint-dir`` writes the snapshots ``wasmig checkpoint
    PID`` asks for: ``$XDG_STATE_HOME/wasmig/checkpoints/<program>-<pid>-<start time>`` (else
    ``~/.local/state/...``), made (0700) only by the first such checkpoint. The pid and start
    time keep two runs, and a pid reused later, from sharing a directory; it is not a temporary
    directory because a snapshot must outlive the run (and a reboot) to be restored."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    stem = os.path.splitext(os.path.basename(program))[0] or "program"
    return Path(state) / "wasmig" / "checkpoints" / f"{stem}-{os.getpid()}-{int(time.time())}"
