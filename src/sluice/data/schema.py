"""Inferring the columns of an input from its first block, tolerating bad records.

Parquet carries its schema. For CSV and JSON Lines the types come from the first block of
the first file, and a few bad records there must not decide them: a numeric column with one
``"abc"`` in it stays numeric (that record becomes a per-record error), and an unparseable
line is skipped for inference.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from sluice.data.readers import TEXT_BLOCK_BYTES, open_stream, read_block
from sluice.data.shards import Shard, open_parquet
from sluice.errors import DataError

__all__ = ["feature_read_schema", "infer_schema"]

# A text column is numeric when at least this share of its sampled values are numbers.
NUMERIC_SHARE = 0.9
_INTEGER = r"^\s*[-+]?\d+\s*$"
_NUMBER = r"^\s*[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)\s*$"


def infer_schema(shard: Shard) -> pa.Schema:
    """The schema of a shard's file: Parquet metadata, or types inferred from the first block."""
    if shard.format == "parquet":
        return open_parquet(shard.location).schema_arrow
    if shard.format == "csv":
        return _infer_csv(shard)
    return _infer_jsonl(shard)


def feature_read_schema(schema: pa.Schema, raw: Sequence[str]) -> pa.Schema:
    """Types to read text inputs with: features whose sample looked integral widen to float64,
    so that a later ``1.5`` is a value, not an error (the model's dtype decides in the end)."""
    wide = set(raw)
    return pa.schema(
        [pa.field(f.name, pa.float64()) if f.name in wide and pa.types.is_integer(f.type) else f for f in schema]
    )


def _infer_csv(shard: Shard) -> pa.Schema:
    with open_stream(shard) as stream:
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=TEXT_BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
            )
            first = reader.read_next_batch()
        except StopIteration:
            return reader.schema
        except pa.ArrowInvalid as exc:
            raise DataError(f"{shard.source} is not a readable CSV file: {exc}") from exc
    fields = []
    for f, column in zip(first.schema, first.columns, strict=True):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            fields.append(pa.field(f.name, _mostly_numeric(column) or f.type))
        else:
            fields.append(f)
    return pa.schema(fields)


def _mostly_numeric(column: pa.Array) -> pa.DataType | None:
    values = column.drop_null()
    if not len(values):
        return None
    numeric = pc.match_substring_regex(values, _NUMBER, ignore_case=True)
    count = pc.sum(numeric).as_py() or 0
    if count < NUMERIC_SHARE * len(values):
        return None
    integers = pc.sum(pc.match_substring_regex(values, _INTEGER)).as_py() or 0
    return pa.int64() if integers == count else pa.float64()


def _infer_jsonl(shard: Shard) -> pa.Schema:
    with open_stream(shard) as stream:
        head = read_block(stream, TEXT_BLOCK_BYTES)
    cut = head.rfind(b"\n")
    if cut > 0 and len(head) == TEXT_BLOCK_BYTES:
        head = head[: cut + 1]
    try:
        return pajson.read_json(io.BytesIO(head)).schema
    except pa.ArrowInvalid:
        return _vote_jsonl(shard, head)


def _vote_jsonl(shard: Shard, head: bytes) -> pa.Schema:
    """Type each field by the type most of the sampled lines give it (ints widen to floats)."""
    votes: dict[str, Counter[pa.DataType]] = {}
    for line in head.splitlines():
        if not line.strip() or not _is_object(line):
            continue
        try:
            schema = pajson.read_json(io.BytesIO(line)).schema
        except pa.ArrowInvalid:
            continue
        for f in schema:
            if not pa.types.is_null(f.type):
                votes.setdefault(f.name, Counter())[f.type] += 1
    if not votes:
        raise DataError(f"{shard.source} holds no readable JSON object in its first block")
    fields = []
    for name, counter in votes.items():
        if counter[pa.int64()] and counter[pa.float64()]:
            counter[pa.float64()] += counter.pop(pa.int64())
        fields.append(pa.field(name, counter.most_common(1)[0][0]))
    return pa.schema(fields)


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
