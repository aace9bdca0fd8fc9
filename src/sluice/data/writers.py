"""Sinks: output parts written under a temporary name and made visible whole.

On a local filesystem a part is written as a hidden temporary file and renamed into place;
on object stores (``s3://`` and friends) an object only becomes visible when its upload
completes, so the part is written to its final key directly. Either way no reader ever
sees half a part.
"""

from __future__ import annotations

import errno
import io
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sluice.data.jsonl import encode_jsonl, encode_values
from sluice.data.location import Location
from sluice.errors import ConfigError, OutputError

__all__ = [
    "AtomicFile",
    "ErrorWriter",
    "OutputFormat",
    "PartWriter",
    "check_writable",
    "error_name",
    "output_error",
    "part_name",
]

OutputFormat = Literal["parquet", "csv", "jsonl"]
_EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
ROW_GROUP_ROWS = 1 << 17
_FULL = "completed parts are kept: free some space and run the same command again to resume"
_REASONS = {
    errno.ENOSPC: ("no space left on the device (the disk is full)", _FULL),
    errno.EDQUOT: ("the disk quota is exceeded", _FULL),
    errno.EROFS: ("the filesystem is read-only", "choose a writable output location"),
    errno.EACCES: ("permission denied", "choose a writable output location"),
    errno.EPERM: ("permission denied", "choose a writable output location"),
}


def output_error(exc: OSError, where: str) -> OutputError:
    """``exc``, raised writing the output ``where``, as one message: the file, the problem, the way out."""
    path = exc.filename if isinstance(exc.filename, str) else where
    reason, hint = _REASONS.get(exc.errno or 0, (exc.strerror or str(exc), "completed parts are kept"))
    return OutputError(f"cannot write {path}: {reason}; {hint}")


def part_name(index: int, fmt: OutputFormat) -> str:
    """The file name of output part ``index``: ``part-00000.parquet``."""
    return f"part-{index:05d}.{_EXTENSIONS[fmt]}"


def error_name(index: int) -> str:
    """Where part ``index``'s error records go, relative to the output: ``_errors/errors-00000.jsonl``.

    Under ``_errors/`` because dataset readers (pyarrow, pandas, Spark, Hive) skip what starts
    with ``_``, and a glob for the parts (``out/*.jsonl``) does not reach into a folder, so the
    output reads as its predicted rows only.
    """
    return f"_errors/errors-{index:05d}.jsonl"


class AtomicFile:
    """A file that appears at ``target`` only on :meth:`commit`."""

    def __init__(self, target: Location) -> None:
        self.target = target
        self._path = target.path
        if target.is_local:
            directory, name = os.path.split(target.path)
            self._path = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        self._handle: IO[Any] | None = None

    def open(self) -> IO[Any]:
        if self._handle is None:
            if self.target.is_local:  # object stores have no folders to make
                os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
            self._handle = self.target.fs.open(self._path, "wb")
        return self._handle

    @property
    def opened(self) -> bool:
        return self._handle is not None

    def commit(self) -> None:
        """Make the file visible whole: locally flushed to disk, then renamed; on object stores, uploaded."""
        self.open().close()
        if self._path != self.target.path:
            _fsync(self._path)
            os.replace(self._path, self.target.path)
            _fsync(os.path.dirname(self.target.path) or ".")  # the rename itself

    def abort(self) -> None:
        """Drop what was written; nothing appears at the target (an earlier complete file there stays)."""
        if self._handle is None:
            return
        if self.target.is_local:
            try:
                self._handle.close()
            except OSError:
                pass  # the buffered rest cannot be written (a full disk): the file goes anyway
            finally:
                if self.target.fs.exists(self._path):
                    self.target.fs.rm(self._path)
            return
        # closing an object-store file completes its upload: a partial part would appear at the
        # final key; discard() abandons the upload instead
        discard = getattr(self._handle, "discard", None)
        if discard is not None:
            discard()
            self._handle.closed = True  # type: ignore[misc]  # discard() leaves the buffer unusable; close() would fail on it
            return
        try:
            self._handle.close()
        finally:
            if self.target.fs.exists(self._path):
                self.target.fs.rm(self._path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartWriter:
    """Streams Arrow tables into one output part in Parquet, CSV or JSON Lines."""

    def __init__(self, target: Location, fmt: OutputFormat) -> None:
        self.file = AtomicFile(target)
        self.format = fmt
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        """Append ``table``; an :class:`OutputError` says why the file cannot take it (a full disk)."""
        try:
            self._append(table)
        except OSError as exc:
            raise output_error(exc, self.file.target.url) from None

    def _append(self, table: pa.Table) -> None:
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self.rows += table.num_rows
        if self.format != "parquet":
            self._write_text(table)
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.file.open(), table.schema, use_dictionary=_dictionary_columns(table.schema)
            )
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)

    def _write_text(self, table: pa.Table) -> None:
        handle = self.file.open()
        if self.format == "jsonl":
            handle.write(encode_jsonl(table))
            return
        table = flatten_lists(table)
        if self._writer is None:
            self._writer = pacsv.CSVWriter(handle, table.schema)
        self._writer.write_table(table)

    def commit(self, empty_schema: pa.Schema) -> None:
        """Finish the part and make it visible; ``empty_schema`` shapes a part with no rows."""
        try:
            self._finish(empty_schema)
        except OSError as exc:
            self.abort()  # the run stops here: its temporary file must not stay behind
            raise output_error(exc, self.file.target.url) from None

    def _finish(self, empty_schema: pa.Schema) -> None:
        if self._schema is None:
            self._schema = empty_schema
            if self.format == "parquet":
                self._pending.append(empty_schema.empty_table())
            elif self.format == "csv":
                self._write_text(empty_schema.empty_table())
        self._flush()
        if self._writer is not None:
            self._writer.close()
        self.file.commit()

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except (OSError, pa.ArrowException):
            pass
        finally:
            self.file.abort()


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode text columns only: on unique numbers (ids, scores) it is slower
    (7x on 1M float probabilities here) and no smaller."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_dictionary)
    return [f.name for f in schema if any(check(f.type) for check in text)]


def flatten_lists(table: pa.Table) -> pa.Table:
    """CSV has no nested types: a fixed-size list column ``p`` of numbers becomes ``p_0``, ``p_1``, …;
    any other list, a struct or a map becomes one column of JSON text (``[1,2]``, ``{"a": 1}``)."""
    if not any(_nested(t) for t in table.schema.types):
        return table
    names: list[str] = []
    arrays: list[pa.ChunkedArray] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        t = column.type
        if pa.types.is_fixed_size_list(t) and not _nested(t.value_type):
            for i in range(t.list_size):
                names.append(f"{name}_{i}")
                arrays.append(pc.list_element(column, i))
        elif _nested(t):
            names.append(name)
            arrays.append(pa.chunked_array([encode_values(c) for c in column.chunks], pa.string()))
        else:
            names.append(name)
            arrays.append(column)
    return pa.table(arrays, names=names)


def _nested(t: pa.DataType) -> bool:
    kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_struct, pa.types.is_map)
    return any(kind(t) for kind in kinds)


def check_writable(schema: pa.Schema, fmt: OutputFormat) -> None:
    """Refuse, before any work, output columns that ``fmt`` cannot hold: a ConfigError names each.

    A CSV part is tried on no rows with the real writer, so what it accepts is exactly what the run will.
    """
    if fmt != "csv":
        return
    refused = []
    for field in schema:
        try:
            pacsv.write_csv(flatten_lists(pa.schema([field]).empty_table()), io.BytesIO())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            refused.append(f"'{field.name}' ({field.type})")
    if refused:
        raise ConfigError(
            f"CSV output cannot hold the column(s) {', '.join(refused)}; write Parquet or JSON Lines "
            "output instead, or leave the column(s) out with `exclude` or `include`",
            params=("exclude", "include"),
        )


class ErrorWriter:
    """The per-record error file of one part (``_errors/errors-00000.jsonl``), written only if needed."""

    def __init__(self, target: Location) -> None:
        self.file = AtomicFile(target)
        self.count = 0

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        lines = "".join(json.dumps(r, default=str) + "\n" for r in records)
        try:
            self.file.open().write(lines.encode())
        except OSError as exc:
            raise output_error(exc, self.file.target.url) from None
        self.count += len(records)

    def commit(self) -> None:
        if self.file.opened:
            try:
                self.file.commit()
            except OSError as exc:
                self.file.abort()
                raise output_error(exc, self.file.target.url) from None

    def abort(self) -> None:
        self.file.abort()
