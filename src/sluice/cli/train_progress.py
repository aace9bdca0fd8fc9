"""A progress bar for rank 0's training events."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """Receives TrainStart / StepMetrics / EpochMetrics; shows steps, loss and samples/s."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  loss {task.fields[loss]}  {task.fields[rate]} samples/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task: Any = None

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, event: Any) -> None:
        from sluice.train.launch import EpochMetrics, StepMetrics, TrainStart

        if isinstance(event, TrainStart):
            total = event.epochs * event.steps_per_epoch
            done = event.start_epoch * event.steps_per_epoch
            self._task = self._progress.add_task("train", total=total, completed=done, loss="-", rate="-")
        elif isinstance(event, StepMetrics) and self._task is not None:
            self._progress.update(self._task, advance=1, loss=f"{event.loss:.4f}", rate=f"{event.samples_per_s:,.0f}")
        elif isinstance(event, EpochMetrics):
            self._progress.console.print(
                f"epoch {event.epoch}: val {event.metric_name} {event.val_metric:.4f}, "
                f"{event.samples_per_s:,.0f} samples/s, comm {event.comm_s:.2f} s of {event.wall_s:.2f} s",
                highlight=False,
            )
