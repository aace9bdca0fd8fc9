"""Vectorised Arrow type conversion with per-row failure capture, shared by data sources and signatures.

Converting a batch must never fail as a whole because of one bad value: the rows that
cannot be converted are recorded in a :class:`RowFailures` (row, field, message) and the
rest of the batch goes on. The fast path is one Arrow cast; the per-value work happens
only for the values that failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "RowFailures",
    "array_from_numpy",
    "cast_column",
    "describe_mismatch",
    "describe_type",
    "numpy_view",
    "parse_numeric",
]

_NUMBER = r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)$"


# Arrow ↔ numpy for primitive numbers, by buffer: zero-copy, and unlike pa.array() and
# Array.to_numpy() it does not make pyarrow import pandas (0.2 s) on first use.
_NUMERIC: dict[pa.DataType, np.dtype[Any]] = {
    pa.int8(): np.dtype("int8"),
    pa.int16(): np.dtype("int16"),
    pa.int32(): np.dtype("int32"),
    pa.int64(): np.dtype("int64"),
    pa.uint8(): np.dtype("uint8"),
    pa.uint16(): np.dtype("uint16"),
    pa.uint32(): np.dtype("uint32"),
    pa.uint64(): np.dtype("uint64"),
    pa.float16(): np.dtype("float16"),
    pa.float32(): np.dtype("float32"),
    pa.float64(): np.dtype("float64"),
}
_ARROW = {dtype: t for t, dtype in _NUMERIC.items()}


def numpy_view(col: pa.Array) -> np.ndarray:
    """The values of an Arrow column as numpy, zero-copy for primitive numbers without nulls."""
    dtype = _NUMERIC.get(col.type)
    if dtype is None or col.null_count:
        return np.asarray(col.to_numpy(zero_copy_only=False))
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)


def array_from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-D numpy array as an Arrow array, zero-copy for primitive numbers."""
    arrow_type = _ARROW.get(values.dtype.newbyteorder("=")) if values.dtype.isnative else None
    if arrow_type is None or not values.flags.c_contiguous:
        return pa.array(values)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


class RowFailures:
    """Rows of one batch that failed, each with the field and the reason; first failure wins."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._fields: list[str | None] = []
        self._messages: list[str | list[str]] = []

    def __bool__(self) -> bool:
        return bool(self._rows)

    def __len__(self) -> int:
        return int(self.rows().shape[0])

    def add_mask(self, mask: np.ndarray, field: str | None, message: str) -> None:
        rows = np.flatnonzero(mask)
        if rows.size:
            self.add_rows(rows, field, message)

    def add_rows(self, rows: np.ndarray, field: str | None, message: str | list[str]) -> None:
        """Record ``rows`` as failed; ``message`` is one for all rows or one per row."""
        self._rows.append(np.asarray(rows, dtype=np.int64))
        self._fields.append(field)
        self._messages.append(message)

    def extend(self, other: RowFailures, rows: np.ndarray) -> None:
        """Add ``other``'s failures, whose row numbers index into ``rows``."""
        for idx, fld, msg in zip(other._rows, other._fields, other._messages, strict=True):
            self.add_rows(rows[idx], fld, msg)

    def rows(self) -> np.ndarray:
        if not self._rows:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(self._rows))

    def mask(self, num_rows: int) -> np.ndarray:
        out = np.zeros(num_rows, dtype=bool)
        for rows in self._rows:
            out[rows] = True
        return out

    def __iter__(self) -> Iterator[tuple[int, str | None, str]]:
        """(row, field, message) for each failed row, in row order, first failure per row."""
        first: dict[int, tuple[str | None, str]] = {}
        for rows, fld, msg in zip(self._rows, self._fields, self._messages, strict=True):
            for i, row in enumerate(rows.tolist()):
                if row not in first:
                    first[row] = (fld, msg if isinstance(msg, str) else msg[i])
        for row in sorted(first):
            yield (row, *first[row])

    def first(self) -> tuple[int, str | None, str]:
        return next(iter(self))


def parse_numeric(col: pa.Array, name: str, failures: RowFailures, target: pa.DataType | None = None) -> pa.Array:
    """Parse a string column into numbers; unparseable values become failures (and nulls)."""
    target = target or pa.float64()
    trimmed = pc.utf8_trim_whitespace(col)
    empty = pc.equal(pc.utf8_length(trimmed), 0).fill_null(False)
    if pc.any(empty).as_py():
        trimmed = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
    return cast_column(trimmed, name, target, failures)


def cast_column(col: pa.Array, name: str, target: pa.DataType, failures: RowFailures) -> pa.Array:
    """Cast ``col`` to ``target``; values that do not convert become failures and nulls."""
    try:
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    candidates = np.ones(len(col), dtype=bool)
    if pa.types.is_string(col.type) and (pa.types.is_floating(target) or pa.types.is_integer(target)):
        candidates = pc.match_substring_regex(col, _NUMBER, ignore_case=True).fill_null(True)
        candidates = candidates.to_numpy(zero_copy_only=False)
    bad = ~candidates
    try:
        cast = pc.cast(pc.if_else(pa.array(candidates), col, pa.scalar(None, col.type)), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        cast, bad = _cast_each(col, target, bad)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    bad &= valid
    rows = np.flatnonzero(bad)
    if rows.size:
        found = col.take(pa.array(rows)).to_pylist()
        failures.add_rows(rows, name, [describe_mismatch(target, v) for v in found])
    return cast


def _cast_each(col: pa.Array, target: pa.DataType, bad: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    bad = bad.copy()
    values: list[object] = []
    for i, scalar in enumerate(col):
        if bad[i] or not scalar.is_valid:
            values.append(None)
            continue
        try:
            values.append(pc.cast(pa.array([scalar.as_py()], col.type), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values.append(None)
            bad[i] = True
    return pa.array(values, type=target), bad


_INTEGER_TEXT = re.compile(r"^\s*[-+]?\d+\s*$")


def describe_mismatch(target: pa.DataType, found: object) -> str:
    """Why ``found`` is not a value of ``target``: "expected an integer, found 'abc'", or, for an
    integer too large for the type, which range it must be in."""
    text = str(found) if isinstance(found, (str, int)) and not isinstance(found, bool) else ""
    if pa.types.is_integer(target) and _INTEGER_TEXT.match(text):
        info = np.iinfo(_NUMERIC[target])
        if info.min <= int(text) <= info.max:
            return f"expected {describe_type(target)}, found {found!r}"
        return f"expected an integer from {info.min} to {info.max} ({target}), found {found!r}, which is out of range"
    return f"expected {describe_type(target)}, found {found!r}"


def describe_type(t: pa.DataType) -> str:
    """A type as a user reads it in an error message: 'a number', 'an integer'…"""
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "a number"
    if pa.types.is_integer(t):
        return "an integer"
    if pa.types.is_boolean(t):
        return "true or false"
    return f"a value of type {t}"
