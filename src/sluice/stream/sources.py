"""Stream sources: micro-batches from a live source, and the position to resume from.

A source hands out :class:`MicroBatch` objects one at a time (:meth:`StreamSource.poll`) and
tells the position after every micro-batch it has handed out (:meth:`StreamSource.progress`),
a JSON-able value that the sink commits together with the outputs. A restarted stream opens the
source at the committed position, so what a crash lost is read again and nothing is read twice.

The directory source reads each **complete** file once, in name order. A file is complete
when its name (and every folder between it and the watched directory) starts with neither
``_`` nor ``.``: writers put a file in place with a rename, as Spark and Hadoop do
(``_temporary/``, ``.part-….crc``) and as Sluice's own writers do (``.name.tmp-…``). A file
written in place under its final name may be read before it is whole; write it under a hidden
name and rename it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from sluice.batch.plan import ColumnPlan
from sluice.data.location import DataFormat, Location, detect_format, resolve_location
from sluice.data.readers import SourceBatch, read_shard
from sluice.data.schema import infer_schema
from sluice.data.shards import Shard, plan_shards
from sluice.errors import DataError

__all__ = ["ColumnPlanner", "DirectorySource", "GroupLost", "MicroBatch", "StreamSource"]

ColumnPlanner = Callable[[pa.Schema, bool], ColumnPlan]
"""``(schema, text_input) → ColumnPlan``: how records of that schema bind and pass through."""


@dataclass(frozen=True)
class MicroBatch:
    """Records read together: the batch, where they came from, when they arrived, how they bind.

    ``source.rows`` numbers each row within ``origin`` (a file, or the stream); ``arrived_s``
    holds each row's arrival in the source (wall-clock seconds); ``entry_ids`` the Redis
    entry ID of each row (empty for files).
    """

    source: SourceBatch
    origin: str
    arrived_s: np.ndarray
    columns: ColumnPlan
    entry_ids: tuple[str, ...] = ()


class GroupLost(Exception):
    """A sink refused a group's commit: another consumer claimed some of its source records.

    Nothing of the group was written; the source's :meth:`StreamSource.rewind` reads again what
    is still this consumer's. Not an error: the claimer commits the records it took.
    """


class StreamSource(Protocol):
    """Where a stream's records come from."""

    url: str
    blocks: bool  # poll() itself waits for records; otherwise the driver waits between polls

    def open(self, committed: Any) -> None:
        """Start reading after ``committed`` (a :meth:`progress` value a sink committed, or None)."""

    def poll(self, wait_s: float) -> MicroBatch | None:
        """The next micro-batch, or None when the source holds nothing new (waiting up to ``wait_s`` if it blocks)."""

    def progress(self) -> Any:
        """The position after every micro-batch handed out so far (JSON-able)."""

    def acknowledge(self, progress: Any) -> None:
        """``progress`` is committed in the sink: the source may forget what lies before it."""

    def rewind(self) -> None:
        """The group in flight was lost (:class:`GroupLost`): hand out again what is still this reader's."""

    def lag(self) -> int | None:
        """Records (or files) in the source not read yet, when the source can tell cheaply."""

    def close(self) -> None:
        """Release connections and open files."""


@dataclass(frozen=True)
class _Read:
    micro: MicroBatch
    end_row: int  # the record number after the last one it covers


@dataclass
class _OpenFile:
    name: str  # relative to the watched directory
    batches: Iterator[_Read]
    next_row: int  # the record number after those handed out
    ahead: _Read | None = None


class DirectorySource:
    """New complete files of a directory (local or fsspec URI), each read once, in name order."""

    blocks = False

    def __init__(
        self,
        uri: str,
        planner: ColumnPlanner,
        *,
        batch_size: int,
        fmt: DataFormat | None = None,
        key_column: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.storage_options = storage_options or None
        self.root = resolve_location(uri, self.storage_options)
        self.url = self.root.url
        self.key_column = key_column
        self.planner = planner
        self.batch_size = batch_size
        self.format = fmt
        self.consumed: set[str] = set()
        self._current: _OpenFile | None = None
        self._waiting = 0

    def open(self, committed: Any) -> None:
        """Resume: skip the files ``committed`` lists, and the rows of its partly read file."""
        if not self.root.fs.isdir(self.root.path):
            raise DataError(f"source directory {self.url} does not exist")
        committed = committed or {}
        self.consumed = set(committed.get("consumed", []))
        partial = committed.get("partial")
        if partial:
            self._current = self._open_file(partial["file"], int(partial["next_row"]))

    def poll(self, wait_s: float) -> MicroBatch | None:
        """The next micro-batch of the current file, or of the next new file; None when none is there.

        One micro-batch is read ahead, so the one that ends a file marks the file consumed.
        """
        while True:
            if self._current is None:
                name = self._next_name()
                if name is None:
                    return None
                self._current = self._open_file(name, 0)
            current = self._current
            ahead = current.ahead if current.ahead is not None else next(current.batches, None)
            if ahead is None:
                self._finish(current)
                continue
            current.ahead = next(current.batches, None)
            current.next_row = ahead.end_row
            if current.ahead is None:
                self._finish(current)
            return ahead.micro

    def _finish(self, current: _OpenFile) -> None:
        self.consumed.add(current.name)
        self._current = None

    def progress(self) -> dict[str, Any]:
        current = self._current
        partial = None if current is None else {"file": current.name, "next_row": current.next_row}
        return {"consumed": sorted(self.consumed), "partial": partial}

    def acknowledge(self, progress: Any) -> None:
        pass  # the sink's manifest is the only record of what was read

    def rewind(self) -> None:
        raise NotImplementedError("a directory has one reader: no other reader takes its files")

    def lag(self) -> int | None:
        return self._waiting

    def close(self) -> None:
        self._current = None

    # -- files -----------------------------------------------------------------------------

    def _next_name(self) -> str | None:
        fs, base = self.root.fs, self.root.path.rstrip("/")
        names = sorted(name for name in (p[len(base) :].lstrip("/") for p in fs.find(base)) if self._complete(name))
        new = [n for n in names if n not in self.consumed]
        self._waiting = len(new)
        return new[0] if new else None

    def _complete(self, name: str) -> bool:
        if any(part.startswith(("_", ".")) for part in name.split("/")):
            return False
        if self.format is not None:
            return True
        try:
            detect_format(name)
        except DataError:
            return False
        return True

    def _open_file(self, name: str, next_row: int) -> _OpenFile:
        opened = _OpenFile(name, iter(()), next_row)
        opened.batches = self._read(self.root.child(name), opened)
        return opened

    def _read(self, location: Location, opened: _OpenFile) -> Iterator[_Read]:
        shards = plan_shards(location.url, self.format, storage_options=self.storage_options)
        arrived = _modified_s(location)
        schema = infer_schema(shards[0])  # a file's shards share its schema
        columns = self.planner(schema, shards[0].format != "parquet")
        first = end = opened.next_row
        for shard in shards:
            for source in self._batches(shard, columns, columns.read_schema(schema)):
                kept = _from_row(source, first)
                end = max(end, _end_row(source))
                if kept.batch.num_rows or kept.failures:
                    micro = MicroBatch(kept, shard.source, np.full(kept.batch.num_rows, arrived), columns)
                    yield _Read(micro, end)

    def _batches(self, shard: Shard, columns: ColumnPlan, schema: pa.Schema) -> Iterator[SourceBatch]:
        return read_shard(
            shard,
            columns=columns.read,
            schema=schema,
            batch_size=self.batch_size,
            raw_columns=columns.raw,
            key_column=self.key_column,
        )


def _modified_s(location: Location) -> float:
    """When the file landed: its modification time, or now when the filesystem does not say."""
    try:
        return float(location.fs.modified(location.path).timestamp())
    except (NotImplementedError, OSError, AttributeError):
        return time.time()


def _end_row(source: SourceBatch) -> int:
    """The record number after the last one ``source`` covers, good or failed."""
    ends = [int(source.rows[-1]) + 1] if source.rows.size else []
    ends += [f.row + 1 for f in source.failures if f.row is not None]
    return max(ends, default=0)


def _from_row(source: SourceBatch, first: int) -> SourceBatch:
    """``source`` without the records before record number ``first`` (committed before a restart)."""
    if first == 0 or (source.rows.size and int(source.rows[0]) >= first):
        return SourceBatch(source.batch, source.rows, [f for f in source.failures if f.row is None or f.row >= first])
    keep = source.rows >= first
    return SourceBatch(
        source.batch.filter(pa.array(keep)),
        source.rows[keep],
        [f for f in source.failures if f.row is not None and f.row >= first],
    )
