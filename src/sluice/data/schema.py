"""Inferring the columns of an input from its first block, tolerating bad records.

Parquet carries its schema. For CSV and JSON Lines the types come from the first block of
the first file that holds a record (an empty or header-only file decides nothing), and a few
bad records there must not decide them: a numeric column with one ``"abc"`` in it stays
numeric (that record becomes a per-record error), and an unparseable line is skipped for
inference.

The key column is read as written: int64 only while its sampled values are plain integers
that fit int64 exactly (no leading zeros, no sign but ``-``), otherwise text; never a float,
which would merge keys such as ``9007199254740992`` and ``9007199254740993``. ``key_type``
forces either.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from sluice.data.blocks import json_read_options, open_stream, read_csv_head, read_head_lines
from sluice.data.images import IMAGE_SCHEMA
from sluice.data.jsonl import MAX_JSON_DEPTH, deep_lines
from sluice.data.shards import Shard, open_parquet
from sluice.errors import DataError

__all__ = [
    "KeyType",
    "check_input_columns",
    "check_unique",
    "feature_read_schema",
    "file_columns",
    "infer_input_schema",
    "infer_schema",
    "input_columns",
    "key_field_type",
]

KeyType = Literal["string", "int64"]

# A text column is numeric when at least this share of its sampled values are numbers.
NUMERIC_SHARE = 0.9
_INTEGER = r"^\s*[-+]?\d+\s*$"
# an integer exactly as int64 writes it back: reading any other spelling as int64 changes the key
PLAIN_INTEGER = r"^(0|-?[1-9][0-9]*)$"
_NUMBER = r"^\s*[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)\s*$"


def infer_schema(shard: Shard, key_column: str | None = None, key_type: KeyType | None = None) -> pa.Schema:
    """The schema of a shard's file: Parquet metadata, or types inferred from the first block.

    ``key_column`` is typed as the module docstring says (``key_type`` forces its type).
    """
    return _infer(shard, key_column, key_type)[0]


def infer_input_schema(
    shards: Sequence[Shard], key_column: str | None = None, key_type: KeyType | None = None
) -> pa.Schema:
    """The schema of the first shard that holds a record; 0-byte and header-only files are passed over.

    Raises :class:`DataError` when no file holds anything to take the columns from.
    """
    for shard in shards:
        if shard.is_empty:
            continue
        schema, has_records = _infer(shard, key_column, key_type)
        if has_records:
            return schema
    for shard in shards:
        if not shard.is_empty:
            return _infer(shard, key_column, key_type)[0]  # header-only files: their columns, untyped
    first = shards[0].source if shards else "the input"
    raise DataError(f"every input file is empty (0 bytes), starting with {first}: there are no columns to read")


def _infer(shard: Shard, key: str | None, key_type: KeyType | None) -> tuple[pa.Schema, bool]:
    if shard.format == "image":
        return IMAGE_SCHEMA, True
    if shard.format == "parquet":
        schema = open_parquet(shard.location).schema_arrow
        return _with_key(schema, key, key_type), True  # Parquet keys keep their declared type
    if shard.format == "csv":
        schema, sample = _infer_csv(shard, key)
        return _with_key(schema, key, key_type or _csv_key_type(sample, key)), sample.num_rows > 0
    schema = _infer_jsonl(shard)
    return _with_key(schema, key, key_type or _json_key_type(schema, key)), len(schema) > 0


def key_field_type(key_type: KeyType) -> pa.DataType:
    """The Arrow type a forced ``key_type`` reads keys as."""
    return pa.string() if key_type == "string" else pa.int64()


def _with_key(schema: pa.Schema, key: str | None, key_type: KeyType | None) -> pa.Schema:
    if key is None or key_type is None or key not in schema.names:
        return schema
    index = schema.get_field_index(key)
    if index < 0:  # a duplicated name: the input check names it
        return schema
    return schema.set(index, pa.field(key, key_field_type(key_type)))


def _csv_key_type(sample: pa.RecordBatch, key: str | None) -> KeyType:
    if key is None or key not in sample.schema.names:
        return "string"
    values = sample.column(key).drop_null()
    if not len(values) or not pa.types.is_string(values.type):
        return "string"
    if not pc.all(pc.match_substring_regex(values, PLAIN_INTEGER)).as_py():
        return "string"
    try:
        pc.cast(values, pa.int64())
    except pa.ArrowInvalid:  # beyond int64
        return "string"
    return "int64"


def _json_key_type(schema: pa.Schema, key: str | None) -> KeyType | None:
    """JSON integers that fit int64 stay int64; a float (a number beyond int64, or a fraction) is read as text."""
    if key is None or key not in schema.names:
        return None
    found = schema.field(key).type
    if pa.types.is_integer(found):
        return "int64"
    if pa.types.is_floating(found) or pa.types.is_null(found):
        return "string"
    return None


def feature_read_schema(schema: pa.Schema, raw: Sequence[str]) -> pa.Schema:
    """Types to read text inputs with: features whose sample looked integral widen to float64,
    so that a later ``1.5`` is a value, not an error (the model's dtype decides in the end)."""
    wide = set(raw)
    return pa.schema(
        [pa.field(f.name, pa.float64()) if f.name in wide and pa.types.is_integer(f.type) else f for f in schema]
    )


def _infer_csv(shard: Shard, key: str | None) -> tuple[pa.Schema, pa.RecordBatch]:
    """The inferred schema and the first block (the key column as text, to type it as written)."""
    column_types = {key: pa.string()} if key is not None else {}
    first = read_csv_head(shard, column_types)
    fields = []
    for f, column in zip(first.schema, first.columns, strict=True):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            fields.append(pa.field(f.name, _mostly_numeric(column) or f.type))
        else:
            fields.append(f)
    return pa.schema(fields), first


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
        head = read_head_lines(stream, shard.source)
    if not head.strip():
        return pa.schema([])
    if deep_lines(head, MAX_JSON_DEPTH):  # pyarrow's parser would overflow the stack on them
        return _vote_jsonl(shard, head)
    try:
        return pajson.read_json(io.BytesIO(head), read_options=json_read_options(head)).schema
    except pa.ArrowInvalid:
        return _vote_jsonl(shard, head)


def _vote_jsonl(shard: Shard, head: bytes) -> pa.Schema:
    """Type each field by the type most of the sampled lines give it (ints widen to floats).

    A field that pyarrow cannot type on some line (a list mixing numbers and text) is voted on
    alone, so that it does not take the line's other fields with it; a field no line could type
    is read as text.
    """
    votes: dict[str, Counter[pa.DataType]] = {}
    for line in head.splitlines():
        value = _object_of(line)
        if value is None:
            continue
        for name, found in _line_types(line, value):
            counter = votes.setdefault(name, Counter())
            if found is not None and not pa.types.is_null(found):
                counter[found] += 1
    if not votes:
        raise DataError(f"{shard.source} holds no readable JSON object in its first block")
    fields = []
    for name, counter in votes.items():
        if counter[pa.int64()] and counter[pa.float64()]:
            counter[pa.float64()] += counter.pop(pa.int64())
        fields.append(pa.field(name, counter.most_common(1)[0][0] if counter else pa.string()))
    return pa.schema(fields)


def _line_types(line: bytes, value: dict[str, object]) -> list[tuple[str, pa.DataType | None]]:
    try:
        return [(f.name, f.type) for f in pajson.read_json(io.BytesIO(line)).schema]
    except pa.ArrowInvalid:
        pass
    typed: list[tuple[str, pa.DataType | None]] = []
    for name, item in value.items():
        try:
            one = json.dumps({name: item}).encode()
            typed.append((name, pajson.read_json(io.BytesIO(one)).schema.field(0).type))
        except (pa.ArrowInvalid, ValueError):
            typed.append((name, None))
    return typed


def _object_of(line: bytes) -> dict[str, object] | None:
    if not line.strip() or deep_lines(line + b"\n", MAX_JSON_DEPTH):
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# -- every file's columns, before any work ---------------------------------------------------


def input_columns(shards: Sequence[Shard]) -> dict[str, list[str]]:
    """Each Parquet and CSV file's column names, from its footer or header only (JSON Lines has
    neither); a file with a duplicated column name stops the job here."""
    found: dict[str, list[str]] = {}
    for shard in shards:
        if shard.source in found or shard.is_empty or shard.format in ("jsonl", "image"):
            continue
        names = file_columns(shard)
        check_unique(shard.source, names)
        found[shard.source] = names
    return found


def check_input_columns(columns_by_file: Mapping[str, Sequence[str]], needed: Sequence[str]) -> None:
    """Every file holds each ``needed`` column: a file that does not stops the job before its
    first part is written (an empty file, with no columns, holds zero records and passes)."""
    for source, names in columns_by_file.items():
        missing = [c for c in needed if c not in names] if names else []
        if missing:
            listed = ", ".join(f"'{c}'" for c in missing)
            needed_as = "needed as a feature or to pass through"
            raise DataError(f"{source} has no column {listed} ({needed_as}); its columns are {list(names)}")


def file_columns(shard: Shard) -> list[str]:
    """The column names of a Parquet or CSV file, from its footer or header only."""
    if shard.format == "parquet":
        return list(open_parquet(shard.location).schema_arrow.names)
    return list(read_csv_head(shard, {}, header_only=True).schema.names)


def check_unique(source: str, names: Sequence[str]) -> None:
    """Column names must be unique: a duplicated name makes "which column?" unanswerable."""
    counts = Counter(names)
    twice = [n for n, c in counts.items() if c > 1]
    if twice:
        where = "; ".join(f"'{n}' is columns {[i + 1 for i, m in enumerate(names) if m == n]}" for n in twice)
        raise DataError(f"{source} has duplicated column names ({where}); rename them so that each is unique")
