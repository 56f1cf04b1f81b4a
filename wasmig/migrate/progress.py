"""The progress bar of ``wasmig migrate``: pages and bytes of the current round, with rich."""

from __future__ import annotations

from typing import Any

try:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
except ImportError:  # pragma: no cover - rich is optional: no bar, the summary line still comes
    Progress = None  # type: ignore[assignment,misc]


class ProgressView:
    """Shows a migration's progress messages (see :class:`wasmig.migrate.source.Progress`) on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and Progress is not None
        if not self.enabled:
            return
        self._bar = Progress(TextColumn("[bold]{task.fields[phase]:<14}"), TextColumn("round {task.fields[round]}"),
                             BarColumn(), MofNCompleteColumn(), TextColumn("pages"),
                             TextColumn("{task.fields[mb]:.1f} MB sent"), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=False, disable=False)
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if not self.enabled:
            return self
        self._bar.__enter__()
        self._task = self._bar.add_task("migrate", total=None, phase="connecting", round=0, mb=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(None, None, None)

    def update(self, p: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._bar.update(self._task, total=max(int(p.get("round_pages", 0)), 1),
                         completed=int(p.get("round_done", 0)), phase=str(p.get("phase", "")),
                         round=int(p.get("round", 0)), mb=int(p.get("bytes_sent", 0)) / 1e6)

    def finish(self) -> None:
        if self.enabled:
            self._bar.update(self._task, phase="done")
