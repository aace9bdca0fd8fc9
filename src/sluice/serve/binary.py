"""The binary tensor data extension: raw tensor bytes after the JSON header of a message.

Fixed-size datatypes travel as their little-endian, row-major bytes (BOOL one byte per
element). BYTES elements each travel as a 4-byte little-endian length followed by that many
bytes. These helpers know nothing of JSON; :mod:`sluice.serve.protocol` calls them.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["MalformedBytes", "deserialize_bytes", "serialize_bytes", "tensor_bytes", "tensor_from_bytes"]

_LENGTH = struct.Struct("<I")


class MalformedBytes(ValueError):
    """A BYTES buffer whose length prefixes run past its end."""


def serialize_bytes(values: np.ndarray) -> bytes:
    """A BYTES tensor (object, ``bytes_`` or ``str_`` array) as length-prefixed elements in C order.

    ``str`` elements are encoded as UTF-8; any other object as the UTF-8 of its ``str()``.
    """
    parts: list[bytes] = []
    for item in np.asarray(values).ravel(order="C").tolist():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview) -> np.ndarray:
    """Length-prefixed BYTES elements as a 1-D object array of ``bytes``.

    Raises :class:`MalformedBytes` when a length prefix runs past the end of the buffer.
    """
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise MalformedBytes("element byte size indicator exceeds the end of the buffer")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise MalformedBytes("element byte size indicator exceeds the end of the buffer")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def tensor_bytes(values: np.ndarray) -> bytes:
    """A fixed-size tensor's little-endian, row-major bytes."""
    arr = np.asarray(values)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes(order="C")


def tensor_from_bytes(buffer: bytes | memoryview, dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> np.ndarray:
    """A read-only view of ``buffer`` as a tensor; the caller has checked the byte count."""
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)
