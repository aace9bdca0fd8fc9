"""Tensors of the Open Inference Protocol: its datatypes, and tensor data as JSON or binary.

:mod:`sluice.serve.protocol` frames requests and responses; this module converts one tensor
at a time, with Triton's error wording.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from sluice.errors import ConfigError, PredictError, ProtocolError
from sluice.models.checks import DATATYPES, datatype_name, dims
from sluice.serve.binary import MalformedBytes, deserialize_bytes, tensor_from_bytes

__all__ = [
    "DATATYPES",
    "config_datatype",
    "datatype_of",
    "dims",
    "from_binary",
    "from_json",
    "json_data",
    "numpy_dtype",
    "output_datatype",
]

# JSON value kinds (numpy's, after np.asarray) each datatype accepts; ints widen to floats.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol datatype of a numpy dtype (strings and objects are ``BYTES``)."""
    name = datatype_name(dtype)
    if name is None:
        raise ConfigError(f"dtype {dtype} has no Open Inference Protocol datatype; use one of {_names()}")
    return name


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype a protocol datatype decodes to (``object`` for ``BYTES``)."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise ProtocolError(f"invalid datatype '{datatype}'; expected one of {_names()}") from None


def config_datatype(datatype: str) -> str:
    """Triton's model-configuration name of a protocol datatype: ``FP32`` → ``TYPE_FP32``."""
    numpy_dtype(datatype)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _names() -> str:
    return ", ".join(DATATYPES)


def from_json(name: str, datatype: str, data: object, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    values = _json_bytes(name, data) if datatype == "BYTES" else _json_numbers(name, datatype, data)
    if values.size != count:
        raise ProtocolError(
            f"unable to parse 'data' for input '{name}': shape {dims(shape)} holds {count} elements "
            f"but 'data' has {values.size}"
        )
    return values.reshape(shape)


def _json_numbers(name: str, datatype: str, data: object) -> np.ndarray:
    dtype = DATATYPES[datatype]
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ProtocolError(f"unable to parse 'data' for input '{name}': nested lists of unequal lengths") from None
    if values.size and dtype.kind in "iu" and values.dtype.kind in "fO":
        return _json_wide_ints(name, datatype, data, values)
    if values.size and values.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise ProtocolError(f"unable to parse 'data' for input '{name}': expected {datatype} values")
    if values.size and dtype.kind in "iu":
        info = np.iinfo(cast("np.dtype[np.integer[Any]]", dtype))
        if values.min() < info.min or values.max() > info.max:
            raise ProtocolError(
                f"unable to parse 'data' for input '{name}': values outside the range of {datatype} "
                f"[{info.min}, {info.max}]"
            )
    return values.astype(dtype, copy=False)


def _json_wide_ints(name: str, datatype: str, data: object, natural: np.ndarray) -> np.ndarray:
    # numpy reads ints beyond int64 mixed with small ones as floats: convert again exactly,
    # and refuse real fractions (or None, strings) by comparing with the first reading.
    try:
        exact = np.asarray(data, dtype=DATATYPES[datatype])
    except (TypeError, ValueError, OverflowError):
        exact = None
    if exact is None or (natural.dtype.kind == "f" and not np.array_equal(exact.astype(np.float64), natural)):
        raise ProtocolError(f"unable to parse 'data' for input '{name}': expected {datatype} values")
    return exact


def _json_bytes(name: str, data: object) -> np.ndarray:
    values = np.asarray(data, dtype=object)
    flat = values.ravel().tolist()
    if not all(isinstance(v, str) for v in flat):
        raise ProtocolError(f"unable to parse 'data' for input '{name}': expected BYTES values as strings")
    out = np.empty(len(flat), dtype=object)
    out[:] = [v.encode("utf-8") for v in flat]
    return out.reshape(values.shape)


def from_binary(name: str, datatype: str, blob: memoryview, shape: tuple[int, ...], model_name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            values = deserialize_bytes(blob)
        except MalformedBytes as exc:
            raise ProtocolError(f"{exc} for inference input '{name}' for model '{model_name}'") from None
        if values.size != count:
            raise ProtocolError(
                f"expected {count} string elements for inference input '{name}' for model '{model_name}', "
                f"got {values.size}"
            )
        return values.reshape(shape)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise ProtocolError(
            f"input byte size mismatch for input '{name}' for model '{model_name}'. "
            f"Expected {expected}, got {len(blob)}"
        )
    return tensor_from_bytes(blob, dtype, shape)


def output_datatype(name: str, values: np.ndarray) -> str:
    try:
        return datatype_of(values.dtype)
    except ConfigError:
        raise PredictError(
            f"output '{name}' has dtype {values.dtype}, which the Open Inference Protocol cannot carry"
        ) from None


def json_data(name: str, datatype: str, values: np.ndarray) -> list[Any]:
    flat: list[Any] = values.ravel(order="C").tolist()
    if datatype != "BYTES":
        return flat
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    except UnicodeDecodeError:
        raise ProtocolError(
            f"output '{name}' holds bytes that are not UTF-8, which JSON cannot carry; request it with binary_data"
        ) from None
