"""The one check of tensors against a Signature that the protocol, the dispatcher and
``Model.predict_checked`` share: exact messages, and the error class each caller chooses."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.errors import BindError, PredictError, ProtocolError
from sluice.models.checks import (
    check_complete,
    check_fits,
    check_input,
    check_inputs,
    check_outputs,
    common_rows,
    datatype_name,
    dims,
    input_spec,
)
from sluice.models.signature import Signature, TensorSpec

SIGNATURE = Signature(
    (
        TensorSpec("a", np.dtype(np.float32), (-1, 4)),
        TensorSpec("s", np.dtype(object), (-1,)),
        TensorSpec("m", np.dtype(np.int64), (-1, -1, 2)),
    ),
    (TensorSpec("y", np.dtype(np.float32), (-1,)),),
)


def _good() -> dict[str, np.ndarray]:
    return {
        "a": np.zeros((3, 4), np.float32),
        "s": np.array(["x", "y", "z"]),  # str and bytes objects are both BYTES
        "m": np.zeros((3, 5, 2), np.int64),
    }


def test_datatype_names_and_dims() -> None:
    assert datatype_name(np.dtype(">f4")) == "FP32"
    assert datatype_name(np.dtype("U3")) == datatype_name(np.dtype(object)) == "BYTES"
    assert datatype_name(np.dtype(np.complex64)) is None
    assert dims((-1, 4)) == "[-1,4]"


def test_a_request_that_fits_returns_its_rows() -> None:
    assert check_inputs(SIGNATURE, _good(), model_name="m") == 3
    assert check_input(SIGNATURE, "m", "INT64", (1, 9, 2)) is SIGNATURE.inputs[2]  # -1 takes any size


def test_the_spec_lookup_and_the_fit_check_are_the_two_halves_of_check_input() -> None:
    assert input_spec(SIGNATURE, "s") is SIGNATURE.inputs[1]
    with pytest.raises(ProtocolError) as unknown:
        input_spec(SIGNATURE, "q", model_name="m", error=ProtocolError)
    assert str(unknown.value) == "unexpected inference input 'q' for model 'm'"
    check_fits(SIGNATURE.inputs[2], "INT64", (1, 9, 2))
    with pytest.raises(BindError) as shape:
        check_fits(SIGNATURE.inputs[2], "INT64", (1, 9), model_name="m")
    assert str(shape.value) == "unexpected shape for input 'm' for model 'm'. Expected [-1,-1,2], got [1,9]"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"z": np.zeros((3, 4), np.float32)}, "unexpected inference input 'z' for model 'm'"),
        ({"a": np.zeros((3, 4))}, "inference input 'a' data-type is 'FP64', but model 'm' expects 'FP32'"),
        (
            {"a": np.zeros((3, 4), np.complex64)},
            "inference input 'a' data-type is 'complex64', but model 'm' expects 'FP32'",
        ),
        (
            {"a": np.zeros((3, 5), np.float32)},
            "unexpected shape for input 'a' for model 'm'. Expected [-1,4], got [3,5]",
        ),
        ({"a": np.zeros((3,), np.float32)}, "unexpected shape for input 'a' for model 'm'. Expected [-1,4], got [3]"),
        (
            {"m": np.zeros((3, 5, 3), np.int64)},
            "unexpected shape for input 'm' for model 'm'. Expected [-1,-1,2], got [3,5,3]",
        ),
        ({"s": np.array(["x", "y"])}, "input 's' batch size does not match other inputs for 'm': it has 2, 'a' has 3"),
    ],
)
def test_a_request_that_does_not_fit_is_refused_with_the_callers_error(
    change: dict[str, np.ndarray], message: str
) -> None:
    inputs = {**_good(), **change}
    with pytest.raises(ProtocolError) as info:
        check_inputs(SIGNATURE, inputs, model_name="m", error=ProtocolError)
    assert str(info.value) == message
    with pytest.raises(BindError) as default:  # the default error class
        check_inputs(SIGNATURE, inputs, model_name="m")
    assert str(default.value) == message


def test_missing_inputs_are_named() -> None:
    inputs = _good()
    del inputs["s"], inputs["m"]
    expected = (
        "expected 3 inputs but got 1 inputs for model 'm'. Got input(s) ['a'], but missing required "
        "input(s) ['s','m']. Please provide all required input(s)."
    )
    with pytest.raises(BindError) as info:
        check_inputs(SIGNATURE, inputs, model_name="m")
    assert str(info.value) == expected
    with pytest.raises(ProtocolError):
        check_complete(SIGNATURE, ["a"], model_name="m", error=ProtocolError)
    assert common_rows({}) == 0 and common_rows({"a": (2, 4), "b": (2,)}) == 2


def test_outputs_are_checked_for_names_and_rows() -> None:
    y = np.zeros(3, np.float32)
    checked = check_outputs({"y": y, "extra": [1, 2, 3]}, 3, signature=SIGNATURE, source="model iris@1")
    assert checked["y"] is y and checked["extra"].tolist() == [1, 2, 3]
    cases = [
        ([y], 3, "model iris@1 returned list, expected a mapping of output name to array"),
        ({"z": y}, 3, "model iris@1 returned no output 'y' (it returned ['z'])"),
        ({"y": y}, 4, "model iris@1 returned 3 rows of 'y' for a batch of 4 rows from 2 requests"),
        ({"y": np.float32(1)}, 1, "model iris@1 returned a scalar of 'y' for a batch of 1 rows from 2 requests"),
    ]
    for outputs, rows, message in cases:
        with pytest.raises(PredictError) as info:
            check_outputs(outputs, rows, signature=SIGNATURE, source="model iris@1", context=" from 2 requests")
        assert str(info.value) == message
    # without a signature every returned output is still checked for its rows
    with pytest.raises(PredictError, match=r"^the model returned 2 rows of 'q' for a batch of 3 rows$"):
        check_outputs({"q": np.zeros(2)}, 3)
