"""When a running program is *under way*: no longer one that may end at once, so that what its
first checkpoint will need is worth making ready beside it (docs/design.md, "Start-up").

A start-up benchmark's run (``python -c pass``: 40-60 ms of CPU) and most of a test suite's
programs end before any of it would be used, and on a shared, loaded machine their wall time is
several times their CPU time: a wall-clock delay alone (0.1 s was used) made them pay 15-50 ms of
imports they never needed. So a program is under way once its process has used
:data:`CPU_S` of CPU since the guest started, or :data:`WALL_S` has passed (a program blocked in
a WASI call uses no CPU, and is then the likeliest to be checkpointed)."""

from __future__ import annotations

import time
from collections.abc import Callable

#: CPU seconds (all of the process's threads) since the guest started
CPU_S = 0.1
#: wall seconds since the guest started
WALL_S = 1.0
#: how often a waiter looks
POLL_S = 0.05


class UnderWay:
    """The clock of one guest's run, started when the guest is. ``by``: under way after that many
    wall seconds at the latest, if fewer than :data:`WALL_S` (a checkpoint planned that soon)."""

    def __init__(self, by: float | None = None) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()
        self._wall_s = WALL_S if by is None else min(WALL_S, by)

    def reached(self) -> bool:
        return time.process_time() - self._cpu >= CPU_S or time.monotonic() - self._wall >= self._wall_s

    def wait(self, running: Callable[[float], bool]) -> bool:
        """Wait until the program is under way (True), or until ``running(timeout)`` -- which
        waits at most ``timeout`` seconds and says whether the program still runs -- says it
        ended first (False). Looks every :data:`POLL_S`, and at the wall-clock limit itself."""
        while not self.reached():
            left = self._wall_s - (time.monotonic() - self._wall)
            if not running(max(0.0, min(POLL_S, left))):
                return False
        return True
