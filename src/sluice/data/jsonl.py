"""Vectorised JSON Lines: encoding Arrow tables (pyarrow has a JSON reader but no writer), and
the nesting-depth guard that keeps hostile lines away from pyarrow's JSON parser."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["MAX_JSON_DEPTH", "deep_lines", "encode_jsonl", "encode_values", "nesting_depth"]

MAX_JSON_DEPTH = 512
"""Deepest nesting of arrays and objects a JSON Lines record may have. pyarrow's parser recurses
once per level and overflows the stack (a segfault, not an error) some way above 10,000 levels;
Python's own parser stops near 1,000."""

_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


def encode_jsonl(table: pa.Table) -> pa.Buffer:
    """One JSON object per row, built column-wise with Arrow kernels (no per-row Python)."""
    if table.num_rows == 0:
        return pa.py_buffer(b"")
    pieces: list[pa.Array | pa.Scalar] = []
    for i, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        pieces.append(pa.scalar(("{" if i == 0 else ",") + json.dumps(name) + ":"))
        pieces.append(encode_values(column.combine_chunks()))
    if not table.num_columns:
        pieces.append(pa.array(["{"] * table.num_rows))
    pieces.append(pa.scalar("}\n"))
    rows = pc.binary_join_element_wise(*pieces, "")
    rows = pc.cast(rows, pa.large_string())
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64, count=len(rows) + 1, offset=rows.offset * 8)
    start, stop = int(offsets[0]), int(offsets[-1])
    return rows.buffers()[2].slice(start, stop - start)


def encode_values(col: pa.Array) -> pa.Array:
    """Each value as JSON text; nulls, NaN and infinities as ``null``."""
    t = col.type
    if pa.types.is_boolean(t):
        text = pc.if_else(col, "true", "false")
    elif pa.types.is_integer(t):
        text = pc.cast(col, pa.string())
    elif pa.types.is_floating(t):
        finite = pc.is_finite(col)
        text = pc.if_else(finite, pc.cast(col, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        text = _encode_list(col)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = _quote(col)
    elif pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_dictionary(t):
        text = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())
    else:
        text = _quote(pc.cast(col, pa.string()))
    return pc.fill_null(text, "null")


def _encode_list(col: pa.Array) -> pa.Array:
    if not pa.types.is_list(col.type):  # fixed-size and large lists: one offsets layout
        col = pc.cast(col, pa.list_(col.type.value_type))
    flat = col.flatten() if col.null_count == 0 else col.fill_null(pa.scalar([], col.type)).flatten()
    items = encode_values(flat)
    offsets = col.offsets if col.null_count == 0 else col.fill_null(pa.scalar([], col.type)).offsets
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, items), ",")
    text = pc.binary_join_element_wise("[", joined, "]", "")
    return pc.if_else(col.is_null(), pa.scalar(None, pa.string()), text)


def _quote(col: pa.Array) -> pa.Array:
    if not pa.types.is_string(col.type):  # large_string: the join kernels need one string type
        col = pc.cast(col, pa.string())
    escaped = pc.replace_substring(col, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, '"', '\\"')
    if pc.any(pc.match_substring_regex(escaped, r"[\x00-\x1f]")).as_py():
        escaped = _escape_control(escaped)
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _escape_control(col: pa.Array) -> pa.Array:
    for char in range(0x20):
        replacement = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}.get(char, f"\\u{char:04x}")
        col = pc.replace_substring(col, chr(char), replacement)
    return col


# -- nesting depth -------------------------------------------------------------------------


def deep_lines(chunk: bytes, limit: int = MAX_JSON_DEPTH) -> list[tuple[int, int]]:
    """``(start, end)`` byte offsets of the lines of ``chunk`` (whole lines, ending in ``\\n``)
    nested deeper than ``limit``.

    A line cannot be deeper than it has opening brackets, so only the lines with more than
    ``limit`` of them are scanned exactly; on ordinary data the cost is a few vectorised passes
    over the chunk (about 1 ms per MiB), no per-line Python.
    """
    data = np.frombuffer(chunk, dtype=np.uint8)
    # "[" is 0x5B and "{" 0x7B: with bit 0x20 set, both and only they read 0x7B
    opens = np.flatnonzero((data | 0x20) == ord("{"))
    if opens.size <= limit:
        return []
    ends = np.flatnonzero(data == ord("\n"))
    if data[-1] != ord("\n"):  # a last line without its line end
        ends = np.append(ends, data.size)
    per_line = np.diff(np.searchsorted(opens, ends), prepend=0)
    deep = []
    for i in np.flatnonzero(per_line > limit).tolist():
        start = int(ends[i - 1]) + 1 if i else 0
        end = int(ends[i])
        if nesting_depth(chunk[start:end]) > limit:
            deep.append((start, min(end + 1, data.size)))
    return deep


def nesting_depth(line: bytes) -> int:
    """The deepest nesting of arrays and objects in one line of JSON text, brackets inside
    strings not counted (vectorised: no per-byte Python)."""
    data = np.frombuffer(line, dtype=np.uint8)
    if not data.size:
        return 0
    index = np.arange(data.size)
    backslash = data == ord("\\")
    last_plain = np.maximum.accumulate(np.where(backslash, -1, index))
    quotes = np.flatnonzero(data == ord('"'))
    before = quotes - 1
    escapes = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
    toggles = np.zeros(data.size, dtype=np.int64)
    toggles[quotes[escapes % 2 == 0]] = 1
    in_string = np.cumsum(toggles) % 2 == 1
    step = ((data == _OPEN[0]) | (data == _OPEN[1])).astype(np.int64)
    step -= (data == _CLOSE[0]) | (data == _CLOSE[1])
    step[in_string] = 0
    return int(np.cumsum(step).max(initial=0))
