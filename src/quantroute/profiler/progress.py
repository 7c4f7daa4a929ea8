"""Rich progress bars while profiling: one bar per variant and phase, on stderr."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RichProgress:
    """A :data:`quantroute.profiler.runner.Progress` callback drawing rich progress bars."""

    def __init__(self, console: Console | None = None) -> None:
        self._bars = Progress(
            TextColumn("[bold]{task.fields[variant]:<18}[/] {task.fields[phase]:<7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __call__(self, variant: str, phase: str, done: int, total: int) -> None:
        key = (variant, phase)
        task = self._tasks.get(key)
        if task is None:
            task = self._bars.add_task("", total=total, variant=variant, phase=phase)
            self._tasks[key] = task
        self._bars.update(task, completed=done, total=total)

    def __enter__(self) -> Self:
        self._bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bars.stop()
