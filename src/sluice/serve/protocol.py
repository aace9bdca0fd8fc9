"""The Open Inference Protocol (KServe v2) on the wire, framework-free.

:func:`decode_request` turns an inference request body (JSON, or a JSON header followed by
binary tensor data) into checked numpy tensors; :func:`encode_response` turns model outputs
into a response body and its headers; :mod:`sluice.serve.tensors` converts each tensor.
Error messages follow Triton's wording, so clients and their users see what they would see
there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sluice.errors import ProtocolError
from sluice.http import json_limit_error
from sluice.models.checks import check_complete, check_fits, common_rows, input_spec
from sluice.models.signature import Signature, TensorSpec
from sluice.serve.binary import serialize_bytes, tensor_bytes
from sluice.serve.tensors import (
    from_binary,
    from_json,
    json_data,
    output_datatype,
)

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "NonFinite",
    "RequestedOutput",
    "check_batch",
    "decode_request",
    "encode_response",
    "error_body",
    "model_shape",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

NonFinite = Literal["triton", "null"]
"""How JSON ``data`` carries NaN and ±infinity, which JSON has no numbers for: ``triton`` (the
bare ``NaN``, ``Infinity``, ``-Infinity`` that Triton writes and tritonclient, Python's ``json``
and rapidjson's lenient mode read back exactly) or ``null`` (valid JSON for strict parsers,
which cannot tell the three apart)."""

_INVALID_JSON = "failed to parse the request JSON buffer"  # Triton's words
_STRICT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_LENIENT_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class RequestedOutput:
    """One output a request asks for; ``binary_data`` ``None`` means the request's default."""

    name: str
    binary_data: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A decoded, validated inference request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]  # empty: every output
    parameters: dict[str, Any]
    timeout_us: int | None = None

    @property
    def binary_data_output(self) -> bool:
        """Whether outputs without their own ``binary_data`` flag go back as binary data."""
        return bool(self.parameters.get("binary_data_output", False))

    @property
    def batch_size(self) -> int:
        """Rows in the request (the first dimension of its inputs; 0 without inputs)."""
        first = next(iter(self.inputs.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim else 0


# -- requests ----------------------------------------------------------------------------------


def decode_request(
    body: bytes,
    header_length: int | None,
    signature: Signature,
    *,
    model_name: str = "model",
    max_batch_size: int | None = None,
) -> InferRequest:
    """Decode and validate one inference request against ``signature``.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: the length of the
    JSON part, binary tensor data following it; ``None`` when the body is all JSON. Inputs
    carrying ``parameters.binary_data_size`` take that many bytes of binary data, in order.
    Binary tensors are read-only views of ``body``. Every problem raises :class:`ProtocolError`.
    """
    header, blobs = _split_body(body, header_length)
    document = _parse_json(header)
    raw_inputs = _list_field(document, "inputs")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        name, datatype, sent_shape, parameters = _input_header(raw)
        spec = input_spec(signature, name, model_name=model_name, error=ProtocolError)
        shape = model_shape(spec, sent_shape)
        check_fits(spec, datatype, shape, model_name=model_name, error=ProtocolError)
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in raw:
                raise ProtocolError(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
            inputs[name] = from_json(name, datatype, raw["data"], sent_shape)
        else:
            if not _is_count(size):
                raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(blobs):
                raise ProtocolError(
                    f"input '{name}' takes {size} bytes of binary data "
                    f"but only {len(blobs) - offset} remain in the body"
                )
            inputs[name] = from_binary(name, datatype, blobs[offset : offset + size], sent_shape, model_name)
            offset += size
        if shape != sent_shape:
            inputs[name] = inputs[name].reshape(shape)
    if offset != len(blobs):
        raise ProtocolError(f"unexpected additional input data for model '{model_name}'")
    if len(inputs) != len(signature.inputs):  # every name is known by now: as many means all
        check_complete(signature, inputs.keys(), model_name=model_name, error=ProtocolError)
    check_batch(inputs, model_name, max_batch_size)
    parameters = _parameters(document)
    return InferRequest(
        id=_request_id(document),
        inputs=inputs,
        outputs=_requested_outputs(document, signature, model_name),
        parameters=parameters,
        timeout_us=_timeout(parameters),
    )


def _split_body(body: bytes, header_length: int | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    if not 0 < header_length <= len(view):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length}, which does not fit a request body of {len(view)} bytes"
        )
    return view[:header_length], view[header_length:]


def _parse_json(header: memoryview) -> dict[str, Any]:
    try:
        document = json.loads(bytes(header))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{_INVALID_JSON}: {exc.msg} at {exc.pos}") from None
    except UnicodeDecodeError:
        raise ProtocolError(f"{_INVALID_JSON}: it is not UTF-8") from None
    except (RecursionError, ValueError) as exc:
        raise json_limit_error(exc, _INVALID_JSON) from None
    if not isinstance(document, dict):
        raise ProtocolError("the request JSON must be an object")
    return document


def _list_field(document: Mapping[str, Any], key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProtocolError(f"'{key}' must be a list of objects")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _input_header(raw: Mapping[str, Any]) -> tuple[str, str, tuple[int, ...], Mapping[str, Any]]:
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError("every input needs a string 'name'")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise ProtocolError(f"input '{name}' needs a string 'datatype'")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ProtocolError(f"input '{name}' needs a 'shape': a list of non-negative integers, got {shape!r}")
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(f"input '{name}': 'parameters' must be an object")
    return name, datatype, tuple(shape), parameters


def model_shape(spec: TensorSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the model takes for a tensor sent with ``shape``."""
    # A 1-D batched tensor is configured as dims [1] reshaped to [] (as Triton does), so
    # clients that follow the configuration send [batch, 1]: that is the model's [batch].
    if len(spec.shape) == 1 and len(shape) == 2 and shape[1] == 1:
        return shape[:1]
    return shape


def check_batch(inputs: Mapping[str, np.ndarray], model_name: str, max_batch_size: int | None) -> None:
    """Every input has the same number of rows, and no more than ``max_batch_size`` (when > 0)."""
    batch = common_rows({n: v.shape for n, v in inputs.items()}, model_name=model_name, error=ProtocolError)
    if batch == 0 and inputs:
        name, values = next(iter(inputs.items()))
        raise ProtocolError(
            f"inference request batch-size must be >= 1 for '{model_name}': input '{name}' has shape "
            f"{list(values.shape)}, which holds no rows"
        )
    if max_batch_size is not None and max_batch_size > 0 and batch > max_batch_size:
        raise ProtocolError(
            f"inference request batch-size must be <= {max_batch_size} for '{model_name}' (the request has "
            f"{batch} rows; the limit is the model's max_batch_size, set in its model.yaml as "
            "'batching: {max_batch_size: N}')"
        )


def _request_id(document: Mapping[str, Any]) -> str | None:
    value = document.get("id")
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'id' must be a string, got {value!r}")
    return value


def _parameters(document: Mapping[str, Any]) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    flag = parameters.get("binary_data_output", False)
    if not isinstance(flag, bool):
        raise ProtocolError(f"parameter 'binary_data_output' must be true or false, got {flag!r}")
    return parameters


def _timeout(parameters: Mapping[str, Any]) -> int | None:
    value = parameters.get("timeout")
    if value is not None and not _is_count(value):
        raise ProtocolError(f"parameter 'timeout' must be a non-negative integer of microseconds, got {value!r}")
    return value


def _requested_outputs(
    document: Mapping[str, Any], signature: Signature, model_name: str
) -> tuple[RequestedOutput, ...]:
    known = {s.name for s in signature.outputs}
    requested = []
    for raw in _list_field(document, "outputs"):
        name = raw.get("name")
        if not isinstance(name, str):
            raise ProtocolError("every requested output needs a string 'name'")
        if name not in known:
            raise ProtocolError(f"unexpected inference output '{name}' for model '{model_name}'")
        parameters = raw.get("parameters", {})
        flag = parameters.get("binary_data") if isinstance(parameters, dict) else None
        if flag is not None and not isinstance(flag, bool):
            raise ProtocolError(f"output '{name}': parameter 'binary_data' must be true or false, got {flag!r}")
        requested.append(RequestedOutput(name, flag))
    return tuple(requested)


# -- responses ---------------------------------------------------------------------------------


def encode_response(
    model_name: str,
    model_version: str | int,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    requested: Sequence[RequestedOutput],
    binary_default: bool,
    non_finite: NonFinite = "triton",
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an inference response.

    ``requested`` selects and orders the outputs (empty: all of ``outputs``); each goes back as
    binary data when its ``binary_data`` flag says so, else when ``binary_default`` does.
    JSON ``data`` is flat and row-major; NaN and ±infinity in it follow ``non_finite`` (see
    :data:`NonFinite`). A requested output the model did not produce raises :class:`ProtocolError`.
    """
    selection = list(requested) or [RequestedOutput(name) for name in outputs]
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for want in selection:
        if want.name not in outputs:
            raise ProtocolError(f"unexpected inference output '{want.name}' for model '{model_name}'")
        values = np.asarray(outputs[want.name])
        datatype = output_datatype(want.name, values)
        entry: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": list(values.shape)}
        if want.binary_data if want.binary_data is not None else binary_default:
            blob = serialize_bytes(values) if datatype == "BYTES" else tensor_bytes(values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(want.name, datatype, values)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = entries
    header = _encode_json(document, entries, non_finite).encode("utf-8")
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers


def _encode_json(document: dict[str, Any], entries: list[dict[str, Any]], non_finite: NonFinite) -> str:
    if non_finite == "triton":
        return _LENIENT_JSON.encode(document)
    try:
        return _STRICT_JSON.encode(document)
    except ValueError:  # a NaN or infinity in some float output: only then are the values scanned
        for entry in entries:
            if entry["datatype"].startswith("FP") and "data" in entry:
                entry["data"] = [v if math.isfinite(v) else None for v in entry["data"]]
        return _STRICT_JSON.encode(document)


def error_body(message: str) -> bytes:
    """An error response body: ``{"error": message}``."""
    return json.dumps({"error": message}).encode("utf-8")
