"""Text inputs read in blocks that grow to hold their longest record.

pyarrow's CSV and JSON readers parse fixed-size blocks, and a record longer than a block is
an error of the reader ("straddling object straddles two block boundaries"), not of the
record. Blocks start at :data:`TEXT_BLOCK_BYTES` and grow, up to :data:`MAX_RECORD_BYTES`,
when a record needs it, so a long record reads like any other and only a record beyond the
limit is refused, with a message that says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from sluice.data.shards import Shard
from sluice.errors import DataError

__all__ = [
    "MAX_RECORD_BYTES",
    "TEXT_BLOCK_BYTES",
    "csv_block_sizes",
    "is_straddling",
    "json_read_options",
    "open_stream",
    "read_block",
    "read_csv_head",
    "read_head_lines",
    "too_long",
    "unreadable",
]

TEXT_BLOCK_BYTES = 1 << 20
MAX_RECORD_BYTES = 1 << 28
"""The longest CSV or JSON Lines record read (256 MiB); a longer one stops the file with a message."""

_GROWTH = 4
_HEADER_BLOCK_BYTES = 1 << 16
# words in pyarrow's messages for data that cannot be decoded, as opposed to storage that failed
_CORRUPT = ("compress", "corrupt", "truncat", "magic", "thrift", "deserializ", "invalid", "page", "unexpected end")


def open_stream(shard: Shard) -> pa.NativeFile:
    """The shard's file as a stream, decompressed when its name says it is compressed."""
    loc = shard.location
    try:
        source: Any = loc.path if loc.is_local else loc.open()
        return pa.input_stream(source, compression=shard.compression)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot open {shard.source}: {exc}") from exc


def read_block(stream: pa.NativeFile, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream`` (fewer only at its end)."""
    return bytes(stream.read(size))


def is_straddling(exc: BaseException) -> bool:
    """Whether pyarrow failed because a record is longer than its block."""
    return "straddl" in str(exc)


def unreadable(shard: Shard, exc: BaseException) -> DataError | None:
    """A message for a file whose bytes cannot be decoded (truncated, corrupt), or None when
    ``exc`` is a storage failure that is not the file's fault."""
    text = str(exc)
    if not any(word in text.lower() for word in _CORRUPT):
        return None
    what = f"{shard.compression}-compressed {shard.format}" if shard.compression else shard.format
    return DataError(f"{shard.source} is truncated or corrupt and cannot be read as {what}: {text}")


def csv_block_sizes() -> list[int]:
    """The block sizes a CSV file is tried with, smallest first."""
    sizes = [TEXT_BLOCK_BYTES]
    while sizes[-1] < MAX_RECORD_BYTES:
        sizes.append(min(sizes[-1] * _GROWTH, MAX_RECORD_BYTES))
    return sizes


def too_long(shard: Shard, what: str) -> DataError:
    """The error for a record beyond :data:`MAX_RECORD_BYTES`."""
    return DataError(
        f"{shard.source} has {what} longer than {MAX_RECORD_BYTES >> 20} MiB, the longest record Sluice "
        "reads; split the record or the file"
    )


def read_csv_head(
    shard: Shard, column_types: Mapping[str, pa.DataType], *, header_only: bool = False
) -> pa.RecordBatch:
    """The first block of a CSV file as one batch (unparseable rows skipped); no rows for a file
    with a header only, no columns for an empty one. ``header_only``: no rows, from a small block."""
    for size in [_HEADER_BLOCK_BYTES, *csv_block_sizes()] if header_only else csv_block_sizes():
        with open_stream(shard) as stream:
            try:
                # the header alone is parsed from its own bytes: the streaming reader reads ahead
                # in the background, and a fault later in the file would surface here at random
                head = _head_bytes(stream, size) if header_only else None
                if header_only and head is None:
                    continue  # the header is longer than the block
                source = pa.BufferReader(head) if head is not None else stream
                reader = pacsv.open_csv(
                    source,
                    read_options=pacsv.ReadOptions(use_threads=False, block_size=size),
                    parse_options=pacsv.ParseOptions(invalid_row_handler=_skip),
                    convert_options=pacsv.ConvertOptions(column_types=dict(column_types)),
                )
                if header_only:
                    return pa.RecordBatch.from_pylist([], schema=reader.schema)
                return reader.read_next_batch()
            except StopIteration:
                return pa.RecordBatch.from_pylist([], schema=reader.schema)
            except pa.ArrowInvalid as exc:
                if is_straddling(exc):
                    continue
                if "Empty CSV file" in str(exc):
                    return pa.RecordBatch.from_pylist([])
                raise DataError(f"{shard.source} is not a readable CSV file: {exc}") from exc
            except OSError as exc:
                raise unreadable(shard, exc) or exc from exc
    raise too_long(shard, "a record (a header or row)")


def _head_bytes(stream: pa.NativeFile, size: int) -> bytes | None:
    """The whole lines of the stream's first ``size`` bytes (all of a shorter file); None when
    they hold no whole line."""
    head = read_block(stream, size)
    if len(head) < size:
        return head
    cut = head.rfind(b"\n")
    return head[: cut + 1] if cut >= 0 else None


def _skip(_row: pacsv.InvalidRow) -> str:
    return "skip"


def read_head_lines(stream: pa.NativeFile, source: str) -> bytes:
    """The first lines of a JSON Lines stream: one block, grown until it holds a whole line;
    the partial line at its end is left out (all of a short file is kept)."""
    head = read_block(stream, TEXT_BLOCK_BYTES)
    if len(head) < TEXT_BLOCK_BYTES:
        return head
    while head.rfind(b"\n") < 0:
        if len(head) >= MAX_RECORD_BYTES:
            raise DataError(f"{source} has a line longer than {MAX_RECORD_BYTES >> 20} MiB, the longest record read")
        more = read_block(stream, len(head))
        head += more
        if not more:
            return head
    return head[: head.rfind(b"\n") + 1]


def json_read_options(chunk: bytes) -> pajson.ReadOptions:
    """One block for the whole chunk: its lines are complete, so none straddles a block boundary."""
    return pajson.ReadOptions(use_threads=False, block_size=max(TEXT_BLOCK_BYTES, len(chunk) + 1))
