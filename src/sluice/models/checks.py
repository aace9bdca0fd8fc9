"""Checks of tensors against a :class:`~sluice.models.signature.Signature`.

One check for the tensors a caller hands a model (:func:`check_input` for one tensor's name,
datatype and shape, :func:`check_inputs` for a whole request) and one for what a model hands
back (:func:`check_outputs`). Every path that runs a model on tensors it did not bind itself
uses them: the server's protocol decoder and dispatcher, and :meth:`Model.predict_checked`.

Datatypes are named as the Open Inference Protocol (and Triton, KServe) names them, ``FP32``,
``INT64``, ``BYTES``, and messages follow Triton's wording, so a client sees what it would see
there whichever edge it came through. The error class is the caller's to choose (the protocol
raises :class:`~sluice.errors.ProtocolError`); it is always a :class:`~sluice.errors.SluiceError`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

from sluice.errors import BindError, PredictError, SluiceError
from sluice.models.signature import Signature, TensorSpec

__all__ = [
    "DATATYPES",
    "check_complete",
    "check_fits",
    "check_input",
    "check_inputs",
    "check_outputs",
    "common_rows",
    "datatype_name",
    "dims",
    "input_spec",
]

DATATYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""Every tensor datatype Sluice carries, with the numpy dtype it is held in."""

_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}

_ErrorType = type[SluiceError]


def datatype_name(dtype: np.dtype[Any]) -> str | None:
    """The datatype name of a numpy dtype (strings and objects are ``BYTES``); None if it has none."""
    if dtype.kind in "OUS":
        return "BYTES"
    if dtype.kind not in "biuf":
        return None
    return _BY_DTYPE.get(dtype) or _BY_DTYPE.get(dtype.newbyteorder("="))


def dims(shape: Iterable[int]) -> str:
    """A shape as Triton writes it: ``[-1,4]``."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def check_input(
    signature: Signature,
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    *,
    model_name: str = "model",
    error: _ErrorType = BindError,
) -> TensorSpec:
    """The spec of input ``name``, once a tensor of ``datatype`` and ``shape`` is known to fit it.

    The name must be one of the signature's inputs (:func:`input_spec`), the datatype its
    datatype, and the shape of its rank with every fixed dimension equal (``-1`` dimensions
    take any size; :func:`check_fits`).
    """
    spec = input_spec(signature, name, model_name=model_name, error=error)
    check_fits(spec, datatype, shape, model_name=model_name, error=error)
    return spec


def input_spec(
    signature: Signature, name: str, *, model_name: str = "model", error: _ErrorType = BindError
) -> TensorSpec:
    """The spec of input ``name``; raise if the signature has no such input."""
    for spec in signature.inputs:  # a loop, not next(generator): this runs for every request
        if spec.name == name:
            return spec
    raise error(f"unexpected inference input '{name}' for model '{model_name}'")


def check_fits(
    spec: TensorSpec, datatype: str, shape: tuple[int, ...], *, model_name: str = "model", error: _ErrorType = BindError
) -> None:
    """Raise unless a tensor of ``datatype`` and ``shape`` fits input ``spec`` (see :func:`check_input`)."""
    expected = datatype_name(spec.dtype) or spec.dtype.name
    if datatype != expected:
        raise error(
            f"inference input '{spec.name}' data-type is '{datatype}', but model '{model_name}' expects '{expected}'"
        )
    if len(spec.shape) == len(shape):
        for wanted, sent in zip(spec.shape, shape, strict=True):
            if wanted >= 0 and wanted != sent:
                break
        else:
            return
    raise error(
        f"unexpected shape for input '{spec.name}' for model '{model_name}'. "
        f"Expected {dims(spec.shape)}, got {dims(shape)}"
    )


def check_complete(
    signature: Signature, names: Collection[str], *, model_name: str = "model", error: _ErrorType = BindError
) -> None:
    """Raise unless every input of ``signature`` is among ``names``."""
    missing = [s.name for s in signature.inputs if s.name not in names]
    if missing:
        got = ",".join(f"'{n}'" for n in names)
        lacking = ",".join(f"'{n}'" for n in missing)
        raise error(
            f"expected {len(signature.inputs)} inputs but got {len(names)} inputs for model '{model_name}'. "
            f"Got input(s) [{got}], but missing required input(s) [{lacking}]. Please provide all required input(s)."
        )


def common_rows(
    shapes: Mapping[str, tuple[int, ...]], *, model_name: str = "model", error: _ErrorType = BindError
) -> int:
    """The batch size (first dimension) the tensors of ``shapes`` share; 0 for none or scalars."""
    first_name, batch = None, 0
    for name, shape in shapes.items():
        rows = shape[0] if shape else 0
        if first_name is None:
            first_name, batch = name, rows
        elif rows != batch:
            raise error(
                f"input '{name}' batch size does not match other inputs for '{model_name}': "
                f"it has {rows}, '{first_name}' has {batch}"
            )
    return batch


def check_inputs(
    signature: Signature,
    inputs: Mapping[str, np.ndarray],
    *,
    model_name: str = "model",
    error: _ErrorType = BindError,
) -> int:
    """Check a request's tensors against ``signature`` and return its rows.

    Each tensor passes :func:`check_input`, no input is missing (:func:`check_complete`) and
    all share one batch size (:func:`common_rows`), which is returned.
    """
    for name, values in inputs.items():
        datatype = datatype_name(values.dtype) or values.dtype.name
        check_input(signature, name, datatype, values.shape, model_name=model_name, error=error)
    check_complete(signature, inputs.keys(), model_name=model_name, error=error)
    return common_rows({n: v.shape for n, v in inputs.items()}, model_name=model_name, error=error)


def check_outputs(
    outputs: object,
    rows: int,
    *,
    signature: Signature | None = None,
    source: str = "the model",
    context: str = "",
) -> dict[str, np.ndarray]:
    """``outputs`` as a dict of arrays, once it is known to be a mapping holding every output of
    ``signature`` (when given), each output with ``rows`` rows; raises :class:`PredictError`.

    ``source`` names who returned them in messages ("model iris@1"); ``context`` is appended to
    the row count message (e.g. which requests the batch came from).
    """
    if not isinstance(outputs, Mapping):
        raise PredictError(f"{source} returned {type(outputs).__name__}, expected a mapping of output name to array")
    for spec in signature.outputs if signature is not None else ():
        if spec.name not in outputs:
            raise PredictError(f"{source} returned no output '{spec.name}' (it returned {sorted(outputs)})")
    checked: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != rows:
            found = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise PredictError(f"{source} returned {found} of '{name}' for a batch of {rows} rows{context}")
        checked[str(name)] = array
    return checked
