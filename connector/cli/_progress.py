"""A rich progress bar that implements the engine's ``Progress`` protocol."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class RichProgress:
    """One bar per step; unknown totals (paged imports) show a spinner and a running count."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task: int | None = None
        self._started = False

    def start(self, label: str, total: int | None = None) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        self.finish()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)  # type: ignore[arg-type]

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            if task.total is None:
                self._progress.update(self._task, total=task.completed)  # type: ignore[arg-type]
            self._task = None

    def close(self) -> None:
        self.finish()
        if self._started:
            self._progress.stop()
