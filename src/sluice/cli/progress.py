"""Showing a run's progress: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sluice.batch.progress import NullProgress, ProgressListener
from sluice.data.shards import Shard

__all__ = ["LogProgress", "RichProgress", "make_progress"]


def make_progress(console: Console, quiet: bool) -> ProgressListener:
    if quiet:
        return NullProgress()
    if console.is_terminal:
        return RichProgress(console)
    return LogProgress()


class RichProgress:
    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]predict"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]} rows/s"),
            TextColumn("{task.fields[parts]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: Any = None
        self._lock = threading.Lock()
        self._rows = 0
        self._shards = 0
        self._done = 0
        self._start = time.perf_counter()

    def start(self, total_rows: int | None, shards: int, shards_skipped: int) -> None:
        self._shards, self._done = shards, shards_skipped
        self._start = time.perf_counter()
        self._task = self._progress.add_task("predict", total=total_rows, rate="-", parts=self._parts())
        self._progress.start()

    def _parts(self) -> str:
        return f"parts {self._done}/{self._shards}"

    def advance(self, rows: int, rows_failed: int) -> None:
        with self._lock:
            self._rows += rows + rows_failed
            rate = self._rows / max(time.perf_counter() - self._start, 1e-9)
            self._progress.update(self._task, advance=rows + rows_failed, rate=f"{rate:,.0f}")

    def shard_done(self, shard: Shard, rows: int, rows_failed: int) -> None:
        with self._lock:
            self._done += 1
            self._progress.update(self._task, parts=self._parts())

    def finish(self) -> None:
        self._progress.stop()


class LogProgress:
    """One line per committed part, for logs and pipes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows = 0
        self._shards = 0
        self._done = 0
        self._start = time.perf_counter()

    def start(self, total_rows: int | None, shards: int, shards_skipped: int) -> None:
        self._shards, self._done = shards, shards_skipped
        self._start = time.perf_counter()
        total = f"{total_rows:,} rows" if total_rows is not None else "rows unknown up front"
        skipped = f", {shards_skipped} already complete" if shards_skipped else ""
        _log(f"predict: {shards} parts ({total}{skipped})")

    def advance(self, rows: int, rows_failed: int) -> None:
        with self._lock:
            self._rows += rows + rows_failed

    def shard_done(self, shard: Shard, rows: int, rows_failed: int) -> None:
        with self._lock:
            self._done += 1
            rate = self._rows / max(time.perf_counter() - self._start, 1e-9)
            failed = f", {rows_failed} failed" if rows_failed else ""
            _log(
                f"part {shard.index:05d} done: {rows:,} rows{failed} from {shard.describe()} "
                f"[{self._done}/{self._shards} parts, {rate:,.0f} rows/s]"
            )

    def finish(self) -> None:
        pass


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
