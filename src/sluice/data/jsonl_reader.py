"""Reading JSON Lines: chunks of whole lines through pyarrow, bad lines set aside one by one.

The fast path hands a chunk of whole lines to pyarrow in one block. A chunk pyarrow rejects
is read again line by line, so that each bad line becomes one :class:`RecordFailure` and the
others are still read. Lines nested deeper than :data:`~sluice.data.jsonl.MAX_JSON_DEPTH`
never reach pyarrow's parser, which would overflow the stack on them; finding them costs two
byte counts per chunk on ordinary data (:func:`~sluice.data.jsonl.deep_lines`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from sluice.arrowcast import describe_mismatch
from sluice.data.blocks import (
    MAX_RECORD_BYTES,
    TEXT_BLOCK_BYTES,
    json_read_options,
    open_stream,
    read_block,
    too_long,
    unreadable,
)
from sluice.data.jsonl import MAX_JSON_DEPTH, deep_lines
from sluice.data.records import RecordFailure, SourceBatch
from sluice.data.shards import Shard

__all__ = ["read_jsonl"]

TOO_DEEP = f"the record is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"


def read_jsonl(shard: Shard, columns: Sequence[str], schema: pa.Schema, key: str | None) -> Iterator[SourceBatch]:
    """Stream ``columns`` of a JSON Lines shard, typed by ``schema``."""
    target = pa.schema([schema.field(c) for c in columns])
    options = pajson.ParseOptions(explicit_schema=target, unexpected_field_behavior="ignore")
    reading = _Lines(target, options, key)
    with open_stream(shard) as stream:
        try:
            yield from reading.chunks(_line_chunks(stream, shard))
        except OSError as exc:
            raise unreadable(shard, exc) or exc from exc


class _Lines:
    """The state of one file's read: the next record and line numbers."""

    def __init__(self, schema: pa.Schema, options: pajson.ParseOptions, key: str | None) -> None:
        self.schema = schema
        self.options = options
        self.key = key
        # JSON numbers cannot be read into a text column by pyarrow: such keys take the slow path
        self.key_as_text = key is not None and key in schema.names and pa.types.is_string(schema.field(key).type)
        self.next_row = 0
        self.next_line = 1

    def chunks(self, chunks: Iterator[bytes]) -> Iterator[SourceBatch]:
        for chunk in chunks:
            table = None if deep_lines(chunk) else _read_whole(chunk, self.options)
            if table is None:
                yield self._slow(chunk)
            else:
                for batch in table.combine_chunks().to_batches():
                    yield SourceBatch(batch, np.arange(self.next_row, self.next_row + batch.num_rows))
                    self.next_row += batch.num_rows
            self.next_line += chunk.count(b"\n")

    def _slow(self, chunk: bytes) -> SourceBatch:
        """Parse a chunk that failed as a whole line by line, setting the bad lines aside."""
        deep = {chunk.count(b"\n", 0, start) for start, _end in deep_lines(chunk)}
        good: list[_Good] = []
        failures: list[RecordFailure] = []
        for offset, line in enumerate(chunk.split(b"\n")[:-1]):
            if not line.strip():
                continue
            parsed = RecordFailure(None, TOO_DEEP) if offset in deep else self._parse(line)
            if isinstance(parsed, RecordFailure):
                failures.append(replace(parsed, row=self.next_row, line=self.next_line + offset))
            else:
                good.append(_Good(self.next_row, self.next_line + offset, *parsed))
            self.next_row += 1
        batch, rows = self._read_good(good, failures)
        return SourceBatch(batch, rows, failures)

    def _parse(self, line: bytes) -> tuple[bytes, dict[str, Any]] | RecordFailure:
        try:
            value = json.loads(line)
        except RecursionError:
            return RecordFailure(None, TOO_DEEP)
        except ValueError as exc:
            return RecordFailure(None, f"not valid JSON: {exc}")
        if not isinstance(value, dict):
            return RecordFailure(None, f"expected a JSON object, found {type(value).__name__}")
        key = self.key
        found = value.get(key) if key is not None else None
        if key is not None and self.key_as_text and isinstance(found, int | float) and not isinstance(found, bool):
            value[key] = json.loads(line, parse_int=str, parse_float=str)[key]  # the digits as written
            line = json.dumps(value).encode()
        return line, value

    def _read_good(self, good: list[_Good], failures: list[RecordFailure]) -> tuple[pa.RecordBatch, np.ndarray]:
        table = _read_lines(good, self.options)
        if table is None and good:
            kept = []
            for item in good:
                problem = self._problem(item.text, item.value)
                if problem is None:
                    kept.append(item)
                else:
                    failures.append(replace(problem, row=item.row, line=item.line))
            failures.sort(key=lambda f: f.row or 0)
            good = kept
            table = _read_lines(good, self.options)
        rows = np.asarray([item.row for item in good], dtype=np.int64)
        if table is None or not table.num_rows:
            return pa.RecordBatch.from_pylist([], schema=self.schema), rows
        return table.combine_chunks().to_batches()[0], rows

    def _problem(self, line: bytes, value: dict[str, Any]) -> RecordFailure | None:
        """Why one JSON line does not read (row numbers are filled in by the caller)."""
        try:
            pajson.read_json(io.BytesIO(line), read_options=json_read_options(line), parse_options=self.options)
        except pa.ArrowInvalid as exc:
            found_key = value.get(self.key) if self.key is not None else None
            for name in self.schema.names:
                if value.get(name) is None:
                    continue
                target = self.schema.field(name).type
                try:
                    pa.array([value[name]], type=target)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    return RecordFailure(None, describe_mismatch(target, value[name]), name, key=found_key)
            return RecordFailure(None, f"the record does not fit the columns of the file: {exc}", key=found_key)
        return None


@dataclass(frozen=True)
class _Good:
    """A line that parsed as a JSON object: its record and line numbers, its text and value."""

    row: int
    line: int
    text: bytes
    value: dict[str, Any]


def _read_lines(good: list[_Good], options: pajson.ParseOptions) -> pa.Table | None:
    return _read_whole(b"\n".join(item.text for item in good) + b"\n", options) if good else None


def _read_whole(chunk: bytes, options: pajson.ParseOptions) -> pa.Table | None:
    try:
        return pajson.read_json(io.BytesIO(chunk), read_options=json_read_options(chunk), parse_options=options)
    except pa.ArrowInvalid:
        return None


def _line_chunks(stream: pa.NativeFile, shard: Shard) -> Iterator[bytes]:
    """Chunks of whole lines, about one block each; a line longer than a block makes its chunk longer."""
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
            if len(block) > MAX_RECORD_BYTES:
                raise too_long(shard, "a line")
            rest = block
            continue
        rest = block[cut + 1 :]
        yield block[: cut + 1]
