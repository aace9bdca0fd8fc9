"""Streaming readers: one shard in, Arrow record batches out, bad records set aside.

Every reader yields :class:`SourceBatch` objects: the batch, the record number of each of
its rows within the source file, and the records that could not be read at all (an
unparseable CSV or JSON line, a value that does not fit its column's type, a JSON line nested
deeper than :data:`~sluice.data.jsonl.MAX_JSON_DEPTH`). Nothing is read whole into memory; a
0-byte file holds zero records.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sluice.arrowcast import RowFailures, cast_column
from sluice.data.blocks import (
    TEXT_BLOCK_BYTES,
    csv_block_sizes,
    is_straddling,
    open_stream,
    read_block,
    too_long,
    unreadable,
)
from sluice.data.images import ImageFetch, read_images
from sluice.data.jsonl_reader import read_jsonl
from sluice.data.records import RecordFailure, SourceBatch
from sluice.data.schema import PLAIN_INTEGER
from sluice.data.shards import Shard, open_parquet
from sluice.errors import DataError

__all__ = ["TEXT_BLOCK_BYTES", "RecordFailure", "SourceBatch", "open_stream", "read_block", "read_shard", "rebatch"]

_PARQUET_READ_ROWS = 1 << 16


def read_shard(
    shard: Shard,
    *,
    columns: Sequence[str],
    schema: pa.Schema,
    batch_size: int,
    raw_columns: Sequence[str] = (),
    key_column: str | None = None,
    key_as_written: bool = True,
    image_fetch: ImageFetch | None = None,
) -> Iterator[SourceBatch]:
    """Stream ``columns`` of a shard as batches of at most ``batch_size`` rows.

    An image shard's records are its files (:func:`~sluice.data.images.read_images`). With
    ``image_fetch``, the images a column of paths names are read here, in the reader, into one
    more column; a row whose image cannot be read is a failure.

    For CSV and JSON Lines, ``schema`` gives the column types; ``raw_columns`` stay as read
    (strings for CSV) so that the model's own input type decides how they are parsed.
    ``key_column`` names the column whose value identifies a record that fails to read; with
    ``key_as_written``, a text key typed int64 must be spelled as int64 writes it back
    (``000123`` is a per-record error, not the key ``123``); without it (a forced key type) a
    Parquet key column is cast to ``schema``'s type, values that do not convert set aside.
    """
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{shard.source} has no column {_quote(missing)}; its columns are {schema.names}")
    if shard.is_empty:
        return iter(())
    if shard.format == "image":
        return read_images(shard.location, shard.files, columns, batch_size)
    batches = _read_table(shard, columns, schema, batch_size, raw_columns, _Key(key_column, key_as_written))
    if image_fetch is not None:
        return (image_fetch.attach(item, shard.location) for item in batches)
    return batches


def _read_table(
    shard: Shard, columns: Sequence[str], schema: pa.Schema, batch_size: int, raw_columns: Sequence[str], key: _Key
) -> Iterator[SourceBatch]:
    if shard.format == "parquet":
        return _read_parquet(shard, columns, schema, batch_size, key)
    if shard.format == "csv":
        return rebatch(_read_csv(shard, columns, schema, set(raw_columns), key), batch_size)
    return rebatch(read_jsonl(shard, columns, schema, key.name), batch_size)


@dataclass(frozen=True)
class _Key:
    name: str | None
    as_written: bool


def _quote(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _read_parquet(
    shard: Shard, columns: Sequence[str], schema: pa.Schema, batch_size: int, key: _Key
) -> Iterator[SourceBatch]:
    pf = open_parquet(shard.location)
    file_schema = pf.schema_arrow
    missing = [c for c in columns if c not in file_schema.names]
    if missing:
        raise DataError(f"{shard.source} has no column {_quote(missing)}; its columns are {file_schema.names}")
    if shard.row_groups == ():
        return
    # only a forced key type is cast: other columns keep each file's own type, as always
    forced = key.name is not None and not key.as_written and key.name in columns and key.name in schema.names
    recast = {key.name} if forced and schema.field(key.name).type != file_schema.field(key.name).type else set()
    row = shard.first_row
    # Decoding in large batches and slicing them (zero-copy) halves the read cost of small
    # batch sizes: per-batch overhead in the Parquet reader is paid once per 64k rows.
    read_size = max(batch_size, _PARQUET_READ_ROWS)
    # Several shards are read at once by their own threads, so decoding each one's columns
    # on Arrow's thread pool too only adds contention on a small machine.
    batches = pf.iter_batches(
        batch_size=read_size, row_groups=shard.row_groups, columns=list(columns), use_threads=False
    )
    for big in _decoded(shard, batches):
        for start in range(0, big.num_rows, batch_size):
            batch = big.slice(start, batch_size)
            rows = np.arange(row, row + batch.num_rows)
            yield _typed(batch, rows, [], schema, set(columns) - recast, key) if recast else SourceBatch(batch, rows)
            row += batch.num_rows


def _decoded(shard: Shard, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches``, with a corrupt page reported as the file's problem, not a traceback."""
    try:
        yield from batches
    except (OSError, pa.ArrowInvalid) as exc:
        error = unreadable(shard, exc)
        if error is None:
            raise
        raise error from exc


# -- CSV -----------------------------------------------------------------------------------


class _CsvRowNumbers:
    """Record numbers of the good rows, given the lines the CSV parser rejected."""

    def __init__(self, header_lines: int) -> None:
        self.header_lines = header_lines
        self.next_row = 0
        self.rejected: list[RecordFailure] = []
        self._skipped: list[int] = []

    def handle(self, row: pacsv.InvalidRow) -> str:
        record = row.number - self.header_lines - 1 if row.number is not None else None
        message = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        self.rejected.append(RecordFailure(record, message, line=row.number))
        if record is not None:
            self._skipped.append(record)
        return "skip"

    def take(self, count: int) -> tuple[np.ndarray, list[RecordFailure]]:
        skipped = np.array(sorted(s for s in self._skipped if s >= self.next_row), dtype=np.int64)
        candidates = np.arange(self.next_row, self.next_row + count + skipped.size)
        rows = np.setdiff1d(candidates, skipped, assume_unique=True)[:count]
        if rows.size:
            self.next_row = int(rows[-1]) + 1
        self._skipped = [s for s in self._skipped if s >= self.next_row]
        rejected, self.rejected = self.rejected, []
        return rows, rejected


class _BlockTooSmall(Exception):
    """A record is longer than the block: read again with a larger one."""


def _read_csv(
    shard: Shard, columns: Sequence[str], schema: pa.Schema, raw: set[str], key: _Key
) -> Iterator[SourceBatch]:
    """The CSV reader, started again with a larger block when a record does not fit in one;
    the records already yielded are not yielded twice."""
    seen = _Yielded()
    for block_size in csv_block_sizes():
        try:
            for item in _read_csv_blocks(shard, columns, schema, raw, key, block_size):
                yield seen.new_part(item)
            return
        except _BlockTooSmall:
            continue
    raise too_long(shard, "a record (a row or a quoted field)")


class _Yielded:
    """The records a CSV read has yielded, so that a read started again skips them. Good rows
    come in order; rejected lines may be reported ahead of them (the parser reads ahead)."""

    def __init__(self) -> None:
        self.good_until = 0
        self.failed: set[int] = set()

    def new_part(self, item: SourceBatch) -> SourceBatch:
        if item.rows.size and item.rows[0] < self.good_until:
            keep = item.rows >= self.good_until
            item = SourceBatch(item.batch.filter(pa.array(keep)), item.rows[keep], item.failures)
        if any(f.row in self.failed for f in item.failures):
            item = SourceBatch(item.batch, item.rows, [f for f in item.failures if f.row not in self.failed])
        if item.rows.size:
            self.good_until = int(item.rows[-1]) + 1
        self.failed.update(f.row for f in item.failures if f.row is not None)
        return item


def _read_csv_blocks(
    shard: Shard, columns: Sequence[str], schema: pa.Schema, raw: set[str], key: _Key, block_size: int
) -> Iterator[SourceBatch]:
    numbers = _CsvRowNumbers(header_lines=1)
    with open_stream(shard) as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size),
                parse_options=pacsv.ParseOptions(invalid_row_handler=numbers.handle),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in columns},
                    include_columns=list(columns),
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
            for batch in reader:
                rows, rejected = numbers.take(batch.num_rows)
                yield _typed(batch, rows, rejected, schema, raw, key)
        except pa.ArrowKeyError as exc:
            found = re.search(r"Column '(.*)' in include_columns", str(exc))
            missing = f"'{found.group(1)}'" if found else "a needed column"
            raise DataError(f"{shard.source} has no column {missing} (needed as a feature or to pass through)") from exc
        except pa.ArrowInvalid as exc:
            if is_straddling(exc):
                raise _BlockTooSmall from exc
            if "Empty CSV file" in str(exc):
                return
            raise DataError(f"{shard.source} is not a readable CSV file: {exc}") from exc
        except OSError as exc:
            raise unreadable(shard, exc) or exc from exc
        rows, rejected = numbers.take(0)
        if rejected:
            yield SourceBatch(
                pa.RecordBatch.from_pylist([], schema=_target_schema(schema, columns, raw)), rows, rejected
            )


def _target_schema(schema: pa.Schema, columns: Sequence[str], raw: set[str]) -> pa.Schema:
    return pa.schema([pa.field(c, pa.string() if c in raw else schema.field(c).type) for c in columns])


def _typed(
    batch: pa.RecordBatch,
    rows: np.ndarray,
    rejected: list[RecordFailure],
    schema: pa.Schema,
    raw: set[str],
    key: _Key,
) -> SourceBatch:
    """Cast each non-raw column to its schema type; rows with values that do not fit drop out."""
    failures = RowFailures()
    arrays = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        target = schema.field(name).type
        if name in raw or target == column.type:
            arrays.append(column)
            continue
        if name == key.name:
            _check_key_text(column, name, target, key, failures)
        arrays.append(cast_column(column, name, target, failures))
    typed = pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
    if not failures:
        return SourceBatch(typed, rows, rejected)
    bad = failures.mask(batch.num_rows)
    keys = batch.column(key.name) if key.name is not None else None
    rejected = rejected + [
        RecordFailure(int(rows[r]), _key_hint(msg, fld, key), fld, key=None if keys is None else keys[r].as_py())
        for r, fld, msg in failures
    ]
    return SourceBatch(typed.filter(pa.array(~bad)), rows[~bad], rejected)


def _check_key_text(column: pa.Array, name: str, target: pa.DataType, key: _Key, failures: RowFailures) -> None:
    """Text keys typed int64 must read back as written: ``000123`` or ``+5`` would change."""
    if not key.as_written or not pa.types.is_integer(target) or not pa.types.is_string(column.type):
        return
    plain = pc.match_substring_regex(column, PLAIN_INTEGER).fill_null(True)
    if pc.all(plain).as_py():
        return
    bad = np.flatnonzero(~plain.to_numpy(zero_copy_only=False))
    found = column.take(pa.array(bad)).to_pylist()
    failures.add_rows(
        bad,
        name,
        [f"key {v!r} is not written as {target} writes integers, so reading it as one would change it" for v in found],
    )


def _key_hint(message: str, field: str | None, key: _Key) -> str:
    if field is None or field != key.name or not key.as_written:
        return message
    return (
        f"{message}; the key column '{field}' was typed int64 from the file's first rows: "
        "read keys as text with key_type 'string' (--key-type string)"
    )


# -- re-batching ---------------------------------------------------------------------------


def rebatch(batches: Iterator[SourceBatch], batch_size: int) -> Iterator[SourceBatch]:
    """Regroup batches into ``batch_size`` rows (the last may be smaller); failures ride along."""
    pending: list[SourceBatch] = []
    count = 0
    for item in batches:
        pending.append(item)
        count += item.batch.num_rows
        while count >= batch_size:
            merged = _merge(pending)
            yield _slice(merged, 0, batch_size)
            rest = _slice(merged, batch_size, count - batch_size, keep_failures=False)
            pending, count = [rest], count - batch_size
    if pending and (count or any(p.failures for p in pending)):
        yield _merge(pending)


def _merge(items: list[SourceBatch]) -> SourceBatch:
    if len(items) == 1:
        return items[0]
    nonempty = [i.batch for i in items if i.batch.num_rows] or [items[0].batch]
    table = pa.Table.from_batches(nonempty).combine_chunks()
    batch = table.to_batches()[0] if table.num_rows else items[0].batch
    rows = np.concatenate([i.rows for i in items])
    return SourceBatch(batch, rows, [f for i in items for f in i.failures])


def _slice(item: SourceBatch, start: int, length: int, keep_failures: bool = True) -> SourceBatch:
    return SourceBatch(
        item.batch.slice(start, length),
        item.rows[start : start + length],
        item.failures if keep_failures else [],
    )
