"""Streaming readers: one shard in, Arrow record batches out, bad records set aside.

Every reader yields :class:`SourceBatch` objects: the batch, the record number of each of
its rows within the source file, and the records that could not be read at all (an
unparseable CSV or JSON line, a value that does not fit its column's type). Nothing is
read whole into memory.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from sluice.arrowcast import RowFailures, cast_column, describe_type
from sluice.data.shards import Shard, open_parquet
from sluice.errors import DataError

__all__ = ["RecordFailure", "SourceBatch", "open_stream", "read_shard", "rebatch"]

TEXT_BLOCK_BYTES = 1 << 20
_PARQUET_READ_ROWS = 1 << 16


@dataclass(frozen=True)
class RecordFailure:
    """A record that failed: its record number in the source file, and why."""

    row: int | None
    message: str
    field: str | None = None
    line: int | None = None
    key: object = None


@dataclass
class SourceBatch:
    batch: pa.RecordBatch
    rows: np.ndarray  # record number (0-based, within the source file) of each row
    failures: list[RecordFailure] = field(default_factory=list)


def read_shard(
    shard: Shard,
    *,
    columns: Sequence[str],
    schema: pa.Schema,
    batch_size: int,
    raw_columns: Sequence[str] = (),
    key_column: str | None = None,
) -> Iterator[SourceBatch]:
    """Stream ``columns`` of a shard as batches of at most ``batch_size`` rows.

    For CSV and JSON Lines, ``schema`` gives the column types; ``raw_columns`` stay as read
    (strings for CSV) so that the model's own input type decides how they are parsed.
    ``key_column`` names the column whose value identifies a record that fails to read.
    """
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"{shard.source} has no column {_quote(missing)}; its columns are {schema.names}")
    if shard.format == "parquet":
        return _read_parquet(shard, columns, batch_size)
    if shard.format == "csv":
        return rebatch(_read_csv(shard, columns, schema, set(raw_columns), key_column), batch_size)
    return rebatch(_read_jsonl(shard, columns, schema, key_column), batch_size)


def _quote(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _read_parquet(shard: Shard, columns: Sequence[str], batch_size: int) -> Iterator[SourceBatch]:
    pf = open_parquet(shard.location)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise DataError(f"{shard.source} has no column {_quote(missing)}; its columns are {pf.schema_arrow.names}")
    row = shard.first_row
    if shard.row_groups == ():
        return
    # Decoding in large batches and slicing them (zero-copy) halves the read cost of small
    # batch sizes: per-batch overhead in the Parquet reader is paid once per 64k rows.
    read_size = max(batch_size, _PARQUET_READ_ROWS)
    # Several shards are read at once by their own threads, so decoding each one's columns
    # on Arrow's thread pool too only adds contention on a small machine.
    batches = pf.iter_batches(
        batch_size=read_size, row_groups=shard.row_groups, columns=list(columns), use_threads=False
    )
    for big in batches:
        for start in range(0, big.num_rows, batch_size):
            batch = big.slice(start, batch_size)
            yield SourceBatch(batch, np.arange(row, row + batch.num_rows))
            row += batch.num_rows


def open_stream(shard: Shard) -> pa.NativeFile:
    loc = shard.location
    try:
        source: Any = loc.path if loc.is_local else loc.open()
        return pa.input_stream(source, compression=shard.compression)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot open {shard.source}: {exc}") from exc


def read_block(stream: pa.NativeFile, size: int) -> bytes:
    return bytes(stream.read(size))


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


def _read_csv(
    shard: Shard, columns: Sequence[str], schema: pa.Schema, raw: set[str], key: str | None
) -> Iterator[SourceBatch]:
    numbers = _CsvRowNumbers(header_lines=1)
    with open_stream(shard) as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=TEXT_BLOCK_BYTES),
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
            raise DataError(f"{shard.source} is not a readable CSV file: {exc}") from exc
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
    key: str | None,
) -> SourceBatch:
    """Cast each non-raw column to its schema type; rows with values that do not fit drop out."""
    failures = RowFailures()
    arrays = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        target = schema.field(name).type
        arrays.append(column if name in raw or target == column.type else cast_column(column, name, target, failures))
    typed = pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
    if not failures:
        return SourceBatch(typed, rows, rejected)
    bad = failures.mask(batch.num_rows)
    keys = batch.column(key) if key is not None else None
    rejected = rejected + [
        RecordFailure(int(rows[r]), msg, fld, key=None if keys is None else keys[r].as_py()) for r, fld, msg in failures
    ]
    return SourceBatch(typed.filter(pa.array(~bad)), rows[~bad], rejected)


# -- JSON Lines ----------------------------------------------------------------------------


def _read_jsonl(shard: Shard, columns: Sequence[str], schema: pa.Schema, key: str | None) -> Iterator[SourceBatch]:
    target = pa.schema([schema.field(c) for c in columns])
    options = pajson.ParseOptions(explicit_schema=target, unexpected_field_behavior="ignore")
    next_row, next_line = 0, 1
    with open_stream(shard) as stream:
        for chunk in _line_chunks(stream):
            try:
                table = pajson.read_json(io.BytesIO(chunk), parse_options=options)
            except pa.ArrowInvalid:
                out, next_row = _jsonl_slow(chunk, target, options, (next_row, next_line), key)
                yield out
            else:
                table = table.combine_chunks()
                for batch in table.to_batches():
                    yield SourceBatch(batch, np.arange(next_row, next_row + batch.num_rows))
                    next_row += batch.num_rows
            next_line += chunk.count(b"\n")


def _line_chunks(stream: pa.NativeFile) -> Iterator[bytes]:
    rest = b""
    while True:
        block = read_block(stream, TEXT_BLOCK_BYTES)
        if not block:
            if rest.strip():
                yield rest if rest.endswith(b"\n") else rest + b"\n"
            return
        block = rest + block
        cut = block.rfind(b"\n")
        if cut < 0:
            rest = block
            continue
        rest = block[cut + 1 :]
        yield block[: cut + 1]


def _jsonl_slow(
    chunk: bytes, schema: pa.Schema, options: pajson.ParseOptions, start: tuple[int, int], key: str | None
) -> tuple[SourceBatch, int]:
    """Parse a chunk that failed as a whole line by line, setting the bad lines aside."""
    good: list[bytes] = []
    rows: list[int] = []
    failures: list[RecordFailure] = []
    row, first_line = start
    for offset, line in enumerate(chunk.split(b"\n")[:-1]):
        if not line.strip():
            continue
        problem = _json_problem(line, schema, options, key)
        if problem is None:
            good.append(line)
            rows.append(row)
        else:
            failures.append(RecordFailure(row, problem.message, problem.field, first_line + offset, problem.key))
        row += 1
    record_batch = pa.RecordBatch.from_pylist([], schema=schema)
    if good:
        table = pajson.read_json(io.BytesIO(b"\n".join(good)), parse_options=options).combine_chunks()
        record_batch = table.to_batches()[0]
    return SourceBatch(record_batch, np.asarray(rows, dtype=np.int64), failures), row


def _json_problem(
    line: bytes, schema: pa.Schema, options: pajson.ParseOptions, key: str | None
) -> RecordFailure | None:
    """Why one JSON line does not read (row numbers are filled in by the caller)."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        return RecordFailure(None, f"not valid JSON: {exc}")
    if not isinstance(value, dict):
        return RecordFailure(None, f"expected a JSON object, found {type(value).__name__}")
    try:
        pajson.read_json(io.BytesIO(line), parse_options=options)
    except pa.ArrowInvalid:
        found_key = value.get(key) if key is not None else None
        for name in schema.names:
            if value.get(name) is None:
                continue
            target = schema.field(name).type
            try:
                pa.array([value[name]], type=target)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                message = f"expected {describe_type(target)}, found {value[name]!r}"
                return RecordFailure(None, message, name, key=found_key)
        return RecordFailure(None, "the record does not fit the columns of the file", key=found_key)
    return None


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
