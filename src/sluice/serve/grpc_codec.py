"""The Open Inference Protocol over gRPC on the wire: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

The messages are Triton's (``inference.GRPCInferenceService``, as ``tritonclient.grpc`` and
``perf_analyzer -i grpc`` send them). :func:`decode_infer` checks a request against the
signature exactly as the HTTP decoder does (same checks, same wording) and returns the same
:class:`~sluice.serve.protocol.InferRequest`; tensors come from ``raw_input_contents`` (read-only
views, no copy) or from the typed ``contents``. :func:`encode_infer` answers with
``raw_output_contents``, which every Triton client reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from sluice.errors import ProtocolError
from sluice.models.checks import check_complete, check_fits, input_spec
from sluice.models.signature import Signature
from sluice.serve.binary import serialize_bytes, tensor_bytes
from sluice.serve.protocol import InferRequest, RequestedOutput, check_batch, model_shape
from sluice.serve.tensors import DATATYPES, dims, from_binary, output_datatype

__all__ = ["decode_infer", "encode_infer", "parameter_value"]

# the typed field of InferTensorContents that carries each datatype (FP16 and BF16: raw only)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_infer(
    request: Any, signature: Signature, *, model_name: str, max_batch_size: int | None = None
) -> InferRequest:
    """Decode and validate one ``ModelInferRequest`` against ``signature``; problems raise :class:`ProtocolError`."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"expected {len(request.inputs)} raw_input_contents, one per input, got {len(raw)}: "
            "raw_input_contents must be used for all inputs or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name, datatype, sent_shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if any(d < 0 for d in sent_shape):
            raise ProtocolError(f"input '{name}' needs a 'shape' of non-negative integers, got {list(sent_shape)}")
        spec = input_spec(signature, name, model_name=model_name, error=ProtocolError)
        shape = model_shape(spec, sent_shape)
        check_fits(spec, datatype, shape, model_name=model_name, error=ProtocolError)
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given more than once")
        if raw:
            values = from_binary(name, datatype, memoryview(raw[index]), sent_shape, model_name)
        else:
            values = _typed_contents(tensor, datatype, sent_shape)
        inputs[name] = values.reshape(shape) if shape != sent_shape else values
    if len(inputs) != len(signature.inputs):
        check_complete(signature, inputs.keys(), model_name=model_name, error=ProtocolError)
    check_batch(inputs, model_name, max_batch_size)
    known = {s.name for s in signature.outputs}
    for wanted in request.outputs:
        if wanted.name not in known:
            raise ProtocolError(f"unexpected inference output '{wanted.name}' for model '{model_name}'")
    parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
    timeout = parameters.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
        raise ProtocolError(f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")
    return InferRequest(
        id=request.id or None,
        inputs=inputs,
        outputs=tuple(RequestedOutput(wanted.name) for wanted in request.outputs),
        parameters=parameters,
        timeout_us=timeout,
    )


def _typed_contents(tensor: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    name = tensor.name
    field = _CONTENTS.get(datatype)
    if field is None:
        raise ProtocolError(f"input '{name}': {datatype} tensors travel only in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(
            f"unable to parse 'contents' for input '{name}': shape {dims(shape)} holds {count} elements "
            f"but '{field}' has {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    dtype = DATATYPES[datatype]
    wide = np.asarray(values)  # int32/int64/uint32/uint64/float/bool, as the field holds them
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)  # type: ignore[type-var]
        if wide.min() < info.min or wide.max() > info.max:
            raise ProtocolError(
                f"unable to parse 'contents' for input '{name}': values outside the range of {datatype} "
                f"[{info.min}, {info.max}]"
            )
    return wide.astype(dtype, copy=False).reshape(shape)


def parameter_value(parameter: Any) -> Any:
    """The Python value of an ``InferParameter`` (None when it holds none)."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def encode_infer(
    response: Any,
    model_name: str,
    model_version: str | int,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    requested: tuple[RequestedOutput, ...],
) -> Any:
    """Fill the empty ``ModelInferResponse`` ``response`` with ``outputs`` (``requested``: the selection and order)."""
    response.model_name = model_name
    response.model_version = str(model_version)
    if request_id is not None:
        response.id = request_id
    for want in requested or tuple(RequestedOutput(name) for name in outputs):
        if want.name not in outputs:
            raise ProtocolError(f"unexpected inference output '{want.name}' for model '{model_name}'")
        values = np.asarray(outputs[want.name])
        datatype = output_datatype(want.name, values)
        tensor = response.outputs.add()
        tensor.name = want.name
        tensor.datatype = datatype
        tensor.shape.extend(values.shape)
        response.raw_output_contents.append(serialize_bytes(values) if datatype == "BYTES" else tensor_bytes(values))
    return response
