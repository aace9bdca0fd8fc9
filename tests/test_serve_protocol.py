"""The Open Inference Protocol codec, checked against NVIDIA's own tritonclient.http code.

Requests are built by tritonclient's request builder and responses parsed by its
``InferResult``, so these tests prove wire compatibility without a server.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.http import InferInput, InferRequestedOutput, InferResult  # noqa: E402
from tritonclient.http._utils import _get_inference_request  # noqa: E402

import sluice.serve.protocol as protocol  # noqa: E402
import sluice.serve.tensors as tensors  # noqa: E402
from sluice.errors import ConfigError, PredictError, ProtocolError, SluiceError  # noqa: E402
from sluice.models.signature import Signature, TensorSpec  # noqa: E402
from sluice.serve.metadata import model_config, model_metadata, server_metadata  # noqa: E402
from sluice.serve.protocol import (  # noqa: E402
    InferRequest,
    RequestedOutput,
    decode_request,
    encode_response,
    error_body,
)

# -- helpers -------------------------------------------------------------------------------------


def sig(inputs: dict[str, tuple[Any, tuple[int, ...]]], outputs: dict[str, tuple[Any, tuple[int, ...]]]) -> Signature:
    return Signature(
        tuple(TensorSpec(n, np.dtype(d), s) for n, (d, s) in inputs.items()),
        tuple(TensorSpec(n, np.dtype(d), s) for n, (d, s) in outputs.items()),
    )


def triton_request(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool | dict[str, bool] = True,
    request_id: str = "",
    outputs: list[tuple[str, bool]] | None = None,
    timeout: int | None = None,
) -> tuple[bytes, int | None]:
    """Body and Inference-Header-Content-Length exactly as tritonclient.http would send them."""
    inputs = []
    for name, value in arrays.items():
        datatype = tensors.datatype_of(value.dtype)
        tensor = InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=binary if isinstance(binary, bool) else binary[name])
        inputs.append(tensor)
    requested = [InferRequestedOutput(n, binary_data=b) for n, b in outputs or []]
    body, header_length = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=requested,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=timeout,
        custom_parameters=None,
    )
    return body, header_length


def triton_result(body: bytes, headers: dict[str, str]) -> Any:
    length = headers.get("Inference-Header-Content-Length")
    return InferResult.from_response_body(body, header_length=None if length is None else int(length))


def json_request(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def decode_error(body: bytes, signature: Signature, header_length: int | None = None, **kw: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_request(body, header_length, signature, model_name="m", **kw)
    assert info.value.http_status == 400
    return str(info.value)


SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 7, 255], [1, 2, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535], [1, 2, 3]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1], [1, 2, 3]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1], [1, 2, 3]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, -2, 3]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -2, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -2, 3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, -2, 3]], dtype=np.int64),
    "FP16": np.array([[0.1, -65504, 6.1e-5], [1.5, np.inf, -0.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -3.4e38, 1e-45], [1.5, np.inf, -0.0]], dtype=np.float32),
    "FP64": np.array([[0.1, -1.7e308, 5e-324], [1.5, np.inf, -0.0]], dtype=np.float64),
    "BYTES": np.array([[b"", b"a", b"caf\xc3\xa9"], [b"x" * 300, b"\x00z", b"q"]], dtype=object),
}


def assert_same(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.shape == expected.shape
    assert found.dtype == expected.dtype
    if expected.dtype.kind == "f":
        assert found.tobytes() == expected.tobytes()  # bit-exact, signed zeros included
    else:
        assert found.tolist() == expected.tolist()


# -- datatypes -----------------------------------------------------------------------------------


def test_datatype_mappings() -> None:
    assert tensors.datatype_of(np.dtype(">f4")) == "FP32"
    assert tensors.datatype_of(np.dtype("U5")) == "BYTES"
    assert tensors.numpy_dtype("BYTES") == np.dtype(object)
    assert tensors.config_datatype("BYTES") == "TYPE_STRING"
    assert tensors.config_datatype("FP16") == "TYPE_FP16"
    with pytest.raises(ConfigError, match="complex128 has no Open Inference Protocol datatype"):
        tensors.datatype_of(np.dtype(np.complex128))
    with pytest.raises(ProtocolError, match="invalid datatype 'BF16'"):
        tensors.numpy_dtype("BF16")


# -- round trips through tritonclient -----------------------------------------------------------


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    value = SAMPLES[datatype]
    signature = sig({"x": (value.dtype, (-1, 3))}, {"y": (value.dtype, (-1, 3))})
    body, length = triton_request({"x": value}, binary=binary, outputs=[("y", binary)])
    assert (length is not None) == binary

    request = decode_request(body, length, signature)
    assert_same(request.inputs["x"], value)
    assert request.outputs == (RequestedOutput("y", binary),)

    out_body, headers = encode_response("m", 1, None, {"y": request.inputs["x"]}, request.outputs, False)
    assert ("Inference-Header-Content-Length" in headers) == binary
    found = triton_result(out_body, headers).as_numpy("y")
    if datatype == "BYTES" and not binary:
        # tritonclient hands JSON strings back as str; their UTF-8 is the bytes sent
        found = np.array([s.encode() for s in found.ravel()], dtype=object).reshape(found.shape)
    assert_same(found, value)


def test_binary_request_layout_from_tritonclient() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([b"hi", b"there"], dtype=object)
    c = np.array([True, False])
    body, length = triton_request({"a": a, "b": b, "c": c}, binary={"a": True, "b": True, "c": False})
    assert length is not None
    header = json.loads(body[:length])
    assert [i.get("parameters", {}).get("binary_data_size") for i in header["inputs"]] == [24, 15, None]
    assert header["parameters"] == {"binary_data_output": True}
    # the blobs follow the header back to back: raw little-endian floats, then length-prefixed bytes
    assert body[length:] == a.tobytes() + struct.pack("<I", 2) + b"hi" + struct.pack("<I", 5) + b"there"

    signature = sig({"a": (np.float32, (-1, 3)), "b": (object, (-1,)), "c": (bool, (-1,))}, {"y": (np.float32, (-1,))})
    request = decode_request(body, length, signature)
    assert_same(request.inputs["a"], a)
    assert request.inputs["b"].tolist() == [b"hi", b"there"]
    assert_same(request.inputs["c"], c)
    assert request.binary_data_output is True
    assert request.outputs == ()
    assert request.batch_size == 2


def test_response_all_outputs_binary_default_and_selection() -> None:
    outputs = {"label": np.array([1, 0], dtype=np.int64), "proba": np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)}
    body, headers = encode_response("m", 3, "req-7", outputs, [], True)
    assert headers["Content-Type"] == "application/octet-stream"
    result = triton_result(body, headers)
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "3"
    assert_same(result.as_numpy("label"), outputs["label"])
    assert_same(result.as_numpy("proba"), outputs["proba"])

    body, headers = encode_response("m", 3, None, outputs, [RequestedOutput("proba")], False)
    document = json.loads(body)
    assert headers == {"Content-Type": "application/json"}
    assert "id" not in document
    proba = {"name": "proba", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5]}
    assert document["outputs"] == [proba]

    with pytest.raises(ProtocolError, match="unexpected inference output 'nope' for model 'm'") as info:
        encode_response("m", 1, None, outputs, [RequestedOutput("nope")], False)
    assert info.value.http_status == 400


def test_response_strings_and_unsupported_outputs() -> None:
    body, headers = encode_response("m", 1, None, {"s": np.array(["é", "b"])}, [], True)
    assert triton_result(body, headers).as_numpy("s").tolist() == ["é".encode(), b"b"]
    body, _ = encode_response("m", 1, None, {"s": np.array(["é", "b"])}, [], False)
    assert json.loads(body)["outputs"][0]["data"] == ["é", "b"]
    with pytest.raises(ProtocolError, match="output 's' holds bytes that are not UTF-8"):
        encode_response("m", 1, None, {"s": np.array([b"\xff"], dtype=object)}, [], False)
    with pytest.raises(PredictError, match="output 'z' has dtype complex64"):
        encode_response("m", 1, None, {"z": np.zeros(1, np.complex64)}, [], False)


def test_id_timeout_and_parameters_echoed() -> None:
    signature = sig({"x": (np.float32, (-1,))}, {"y": (np.float32, (-1,))})
    body, length = triton_request({"x": np.ones(2, np.float32)}, request_id="abc", timeout=5000, outputs=[("y", False)])
    request = decode_request(body, length, signature)
    assert request.id == "abc"
    assert request.timeout_us == 5000
    assert request.binary_data_output is False
    body, headers = encode_response("m", 1, request.id, {"y": request.inputs["x"]}, request.outputs, False)
    assert triton_result(body, headers).get_response()["id"] == "abc"


# -- JSON data -----------------------------------------------------------------------------------


def test_nested_and_flat_json_data_agree() -> None:
    signature = sig({"x": (np.int32, (-1, 2, 2))}, {"y": (np.int32, (-1,))})
    flat = [{"name": "x", "datatype": "INT32", "shape": [2, 2, 2], "data": list(range(8))}]
    nested = [{"name": "x", "datatype": "INT32", "shape": [2, 2, 2], "data": [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]}]
    a = decode_request(json_request(flat), None, signature).inputs["x"]
    b = decode_request(json_request(nested), None, signature).inputs["x"]
    assert_same(a, np.arange(8, dtype=np.int32).reshape(2, 2, 2))
    assert_same(b, a)


def test_json_bytes_nested_and_ints_widen_to_floats() -> None:
    signature = sig({"s": (object, (-1, 2)), "f": (np.float16, (-1,))}, {"y": (np.float32, (-1,))})
    inputs = [
        {"name": "s", "datatype": "BYTES", "shape": [1, 2], "data": [["a", "bb"]]},
        {"name": "f", "datatype": "FP16", "shape": [1], "data": [3]},
    ]
    request = decode_request(json_request(inputs, id="7"), None, signature)
    assert request.inputs["s"].tolist() == [[b"a", b"bb"]]
    assert_same(request.inputs["f"], np.array([3], np.float16))
    assert request.id == "7"


def test_one_dimensional_tensor_accepts_config_shape() -> None:
    # model_config writes a 1-D batched tensor as dims [1] reshaped to []; [batch, 1] must work
    signature = sig({"x": (np.float32, (-1,))}, {"y": (np.float32, (-1,))})
    body, length = triton_request({"x": np.ones((3, 1), np.float32)})
    assert decode_request(body, length, signature).inputs["x"].shape == (3,)


# -- validation errors ---------------------------------------------------------------------------

TWO_INPUTS = sig({"a": (np.float32, (-1, 4)), "b": (np.int64, (-1,))}, {"y": (np.float32, (-1,))})


def fp32(name: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": shape, "data": data}


def i64(name: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "INT64", "shape": shape, "data": data}


@pytest.mark.parametrize(
    ("inputs", "extra", "message"),
    [
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [1], [1]), fp32("c", [1], [1])],
            {},
            "unexpected inference input 'c' for model 'm'",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4])],
            {},
            "expected 2 inputs but got 1 inputs for model 'm'. Got input(s) ['a'], but missing required "
            "input(s) ['b']. Please provide all required input(s).",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), fp32("b", [1], [1])],
            {},
            "inference input 'b' data-type is 'FP32', but model 'm' expects 'INT64'",
        ),
        (
            [fp32("a", [2, 2], [1, 2, 3, 4]), i64("b", [2], [1, 2])],
            {},
            "unexpected shape for input 'a' for model 'm'. Expected [-1,4], got [2,2]",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3]), i64("b", [1], [1])],
            {},
            "unable to parse 'data' for input 'a': shape [1,4] holds 4 elements but 'data' has 3",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [2], [1, 2])],
            {},
            "input 'b' batch size does not match other inputs for 'm': it has 2, 'a' has 1",
        ),
        (
            [fp32("a", [1, 4], [[1, 2], [3, 4, 5]]), i64("b", [1], [1])],
            {},
            "unable to parse 'data' for input 'a': nested lists of unequal lengths",
        ),
        (
            [fp32("a", [1, 4], ["1", "2", "3", "4"]), i64("b", [1], [1])],
            {},
            "unable to parse 'data' for input 'a': expected FP32 values",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [1], [1.5])],
            {},
            "unable to parse 'data' for input 'b': expected INT64 values",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [1], [2**63])],
            {},
            "unable to parse 'data' for input 'b': values outside the range of INT64 "
            "[-9223372036854775808, 9223372036854775807]",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), {"name": "b", "datatype": "INT64", "shape": [1]}],
            {},
            "input 'b' has neither 'data' nor a binary_data_size parameter",
        ),
        (
            [fp32("a", [1, -4], [1, 2, 3, 4])],
            {},
            "input 'a' needs a 'shape': a list of non-negative integers, got [1, -4]",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [1], [1])],
            {"outputs": [{"name": "z"}]},
            "unexpected inference output 'z' for model 'm'",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [1], [1])],
            {"id": 5},
            "'id' must be a string, got 5",
        ),
        (
            [fp32("a", [1, 4], [1, 2, 3, 4]), i64("b", [1], [1])],
            {"parameters": {"binary_data_output": "yes"}},
            "parameter 'binary_data_output' must be true or false, got 'yes'",
        ),
    ],
)
def test_validation_errors(inputs: list[dict[str, Any]], extra: dict[str, Any], message: str) -> None:
    assert decode_error(json_request(inputs, **extra), TWO_INPUTS) == message


def test_json_bytes_must_be_strings() -> None:
    signature = sig({"s": (object, (-1,))}, {"y": (np.float32, (-1,))})
    body = json_request([{"name": "s", "datatype": "BYTES", "shape": [1], "data": [1]}])
    assert decode_error(body, signature) == "unable to parse 'data' for input 's': expected BYTES values as strings"


def test_json_ints_refuse_none_and_fractions_beside_wide_values() -> None:
    signature = sig({"u": (np.uint64, (-1,))}, {"y": (np.float32, (-1,))})
    for data in ([None, 2**64 - 1], [0.5, 2**64 - 1]):
        body = json_request([{"name": "u", "datatype": "UINT64", "shape": [2], "data": data}])
        assert decode_error(body, signature) == "unable to parse 'data' for input 'u': expected UINT64 values"


def test_max_batch_size() -> None:
    body = json_request([fp32("a", [3, 4], list(range(12))), i64("b", [3], [1, 2, 3])])
    assert decode_error(body, TWO_INPUTS, max_batch_size=2) == (
        "inference request batch-size must be <= 2 for 'm' (the request has 3 rows; the limit is the model's "
        "max_batch_size, set in its model.yaml as 'batching: {max_batch_size: N}')"
    )
    assert decode_request(body, None, TWO_INPUTS, max_batch_size=3).batch_size == 3


def test_malformed_bodies() -> None:
    assert decode_error(b"{nope", TWO_INPUTS).startswith("failed to parse the request JSON buffer: ")
    assert decode_error(b"[]", TWO_INPUTS) == "the request JSON must be an object"
    assert decode_error(b'{"inputs": 3}', TWO_INPUTS) == "'inputs' must be a list of objects"
    assert decode_error(b"{}", TWO_INPUTS, header_length=10) == (
        "Inference-Header-Content-Length is 10, which does not fit a request body of 2 bytes"
    )


def test_binary_errors() -> None:
    signature = sig({"a": (np.float32, (-1, 4))}, {"y": (np.float32, (-1,))})
    good, length = triton_request({"a": np.zeros((1, 4), np.float32)})
    assert length is not None
    assert decode_error(good[:-4], signature, length) == (
        "input 'a' takes 16 bytes of binary data but only 12 remain in the body"
    )
    assert decode_error(good + b"xx", signature, length) == "unexpected additional input data for model 'm'"

    short = InferInput("a", [1, 4], "FP32").set_data_from_numpy(np.zeros((1, 4), np.float32))
    short.set_shape([1, 4])
    short._raw_data = b"\x00" * 8  # a client lying about its sizes
    short._parameters["binary_data_size"] = 8
    body, length = _get_inference_request([short], "", None, 0, False, False, 0, None, None)
    assert decode_error(body, signature, length) == (
        "input byte size mismatch for input 'a' for model 'm'. Expected 16, got 8"
    )

    strings = sig({"s": (object, (-1,))}, {"y": (np.float32, (-1,))})
    body, length = triton_request({"s": np.array([b"ab", b"c"], dtype=object)})
    header = json.loads(body[:length])
    header["inputs"][0]["shape"] = [3]
    forged = json.dumps(header).encode()
    assert decode_error(forged + body[length:], strings, len(forged)) == (
        "expected 3 string elements for inference input 's' for model 'm', got 2"
    )
    header["inputs"][0]["shape"] = [2]
    header["inputs"][0]["parameters"]["binary_data_size"] = 9
    forged = json.dumps(header).encode()
    assert decode_error(forged + body[length : length + 9], strings, len(forged)) == (
        "element byte size indicator exceeds the end of the buffer for inference input 's' for model 'm'"
    )


def test_binary_tensors_are_views_of_the_body() -> None:
    signature = sig({"a": (np.float64, (-1,))}, {"y": (np.float32, (-1,))})
    body, length = triton_request({"a": np.arange(1000, dtype=np.float64)})
    request = decode_request(body, length, signature)
    assert isinstance(request, InferRequest)
    assert not request.inputs["a"].flags.owndata  # no copy of the payload


# -- metadata ------------------------------------------------------------------------------------


def test_model_metadata_and_config() -> None:
    signature = sig(
        {"x": (np.float32, (-1, 4)), "s": (object, (-1,))},
        {"label": (np.int64, (-1,)), "proba": (np.float32, (-1, 2))},
    )
    metadata = model_metadata("iris", [1, 2], signature)
    assert metadata == {
        "name": "iris",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "s", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "proba", "datatype": "FP32", "shape": [-1, 2]},
        ],
    }
    config = model_config("iris", signature, 64)
    assert config["max_batch_size"] == 64
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [4], "format": "FORMAT_NONE"},
        {"name": "s", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}, "format": "FORMAT_NONE"},
    ]
    assert config["output"][1] == {"name": "proba", "data_type": "TYPE_FP32", "dims": [2]}
    assert model_config("iris", signature, 0)["input"][0]["dims"] == [-1, 4]

    fixed = sig({"x": (np.float32, (1, 4))}, {"y": (np.float32, (1,))})
    with pytest.raises(ConfigError, match="x, y have none"):
        model_config("fixed", fixed, 8)


def test_server_metadata_and_error_body() -> None:
    import sluice

    assert server_metadata(["binary_tensor_data"]) == {
        "name": "sluice",
        "version": sluice.__version__,
        "extensions": ["binary_tensor_data"],
    }
    assert json.loads(error_body("bad 'x'")) == {"error": "bad 'x'"}


def test_protocol_error_is_a_sluice_error() -> None:
    assert issubclass(ProtocolError, SluiceError)
    assert ProtocolError.http_status == 400


def test_public_names() -> None:
    defined = {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == protocol.__name__
    }
    assert defined | {"HEADER_LENGTH", "NonFinite"} == set(protocol.__all__)  # NonFinite: a type alias
    tensor_names = {
        name
        for name, value in vars(tensors).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == tensors.__name__
    }
    assert tensor_names | {"DATATYPES", "dims"} == set(tensors.__all__)
