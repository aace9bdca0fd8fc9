"""Vectorised JSON Lines encoding of Arrow tables (pyarrow has a JSON reader but no writer)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["encode_jsonl", "encode_values"]


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
