"""End to end: a model with a dynamic row width, on the real server on 127.0.0.1.

The model sums each row (ONNX ReduceSum over axis 1, input ``x`` FP32 ``[-1,-1]``). No width is
kept from an earlier request: each is checked against the signature, and requests of one width
batch together while the others run in batches of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from sluice.serve.server import ServerThread, ServeSettings

WIDTHS = (3, 4, 7)


def row_sum_model() -> onnx.ModelProto:
    """x FP32 [-1,-1] → ReduceSum(axis 1, keepdims 0) → y FP32 [-1]."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    graph = helper.make_graph(
        [node],
        "row_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("shapes-repo")
    (root / "rowsum" / "1").mkdir(parents=True)
    onnx.save(row_sum_model(), root / "rowsum" / "1" / "model.onnx")
    # client and server share one process and two cores here: a generous target, so nothing is shed
    (root / "rowsum" / "model.yaml").write_text("batching: {target_p99_ms: 5000, max_batch_size: 32}\n")
    settings = ServeSettings(repository=root, port=0, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running


def _input(x: np.ndarray, module: object = httpclient) -> httpclient.InferInput:
    tensor = module.InferInput("x", list(x.shape), "FP32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(x)
    return tensor


def _exact_values(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    # multiples of 1/16 below 64 in magnitude: every partial sum of up to 7 of them needs at
    # most 13 significant bits, so float32 sums them exactly in any order and the model's
    # answer must equal numpy's bit for bit
    return (rng.integers(-1024, 1024, size=(rows, width)) / 16).astype(np.float32)


def test_widths_four_then_seven_are_both_answered(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        rng = np.random.default_rng(4)
        for width in (4, 7, 4):
            x = _exact_values(rng, 3, width)
            y = client.infer("rowsum", [_input(x)]).as_numpy("y")
            assert y.dtype == np.float32 and y.shape == (3,)
            np.testing.assert_array_equal(y, x.sum(axis=1))
    finally:
        client.close()


def test_a_request_that_breaks_the_signature_is_refused_and_the_next_answered(server: ServerThread) -> None:
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        x = np.ones((2, 3, 1), np.float32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("rowsum", [_input(x)])
        assert (info.value.status(), info.value.message()) == (
            "400",
            "unexpected shape for input 'x' for model 'rowsum'. Expected [-1,-1], got [2,3,1]",
        )
        y = client.infer("rowsum", [_input(np.ones((2, 5), np.float32))]).as_numpy("y")
        assert y.tolist() == [5.0, 5.0]
    finally:
        client.close()


async def _concurrent(server: ServerThread, requests: list[np.ndarray]) -> list[np.ndarray]:
    triton = aioclient.InferenceServerClient(url=server.url)
    try:

        async def one(x: np.ndarray) -> np.ndarray:
            return (await triton.infer("rowsum", [_input(x, aioclient)])).as_numpy("y")

        return await asyncio.gather(*(one(x) for x in requests))
    finally:
        await triton.close()


def _mixed(seed: int, values: str) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(100):
        rows, width = int(rng.integers(1, 4)), WIDTHS[i % len(WIDTHS)]
        if values == "exact":
            requests.append(_exact_values(rng, rows, width))
        else:
            requests.append(rng.normal(size=(rows, width)).astype(np.float32))
    return requests


def test_a_hundred_concurrent_requests_of_mixed_widths_are_all_answered_exactly(server: ServerThread) -> None:
    requests = _mixed(seed=12, values="exact")
    answers = asyncio.run(_concurrent(server, requests))
    for x, y in zip(requests, answers, strict=True):
        assert y.dtype == np.float32 and y.shape == (len(x),)
        np.testing.assert_array_equal(y, x.sum(axis=1))


def test_concurrent_mixed_widths_of_any_values_are_within_float32_rounding(server: ServerThread) -> None:
    requests = _mixed(seed=13, values="normal")
    answers = asyncio.run(_concurrent(server, requests))
    for x, y in zip(requests, answers, strict=True):
        exact = x.astype(np.float64).sum(axis=1)
        # summing w float32 values in any order is off by at most (w-1)·u·Σ|x| (u = 2⁻²⁴), plus
        # u·|sum| for the last rounding: a row that came from another request would be far off
        bound = x.shape[1] * 2.0**-24 * np.abs(x).astype(np.float64).sum(axis=1)
        assert np.all(np.abs(y.astype(np.float64) - exact) <= bound)
