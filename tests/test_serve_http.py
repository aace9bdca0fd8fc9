"""End to end: the real server on 127.0.0.1, driven by NVIDIA's tritonclient (sync and asyncio)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from sluice.serve.server import ServerThread, ServeSettings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # tritonclient adds headers to the dict it gets: pass copies
MAX_BODY_BYTES = 256 * 1024

SLOW_MODULE = """\
import time
import numpy as np

def predict(x):
    if x.max() > 100:  # warm-up sends zeros; the timeout test sends large values
        time.sleep(0.5)
    return x.sum(axis=1)
"""


@pytest.fixture(scope="module")
def repository(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-repo")
    for version in (1, 2):
        (root / "clf" / str(version)).mkdir(parents=True)
        shutil.copy(models.onnx, root / "clf" / str(version) / "model.onnx")
    (root / "clf" / "model.yaml").write_text("labels: {stable: 1}\nbatching: {max_batch_size: 64}\n")
    (root / "reg" / "1").mkdir(parents=True)
    shutil.copy(models.regressor_onnx, root / "reg" / "1" / "model.onnx")
    # client and server share one process and two cores here: a generous target, so nothing is shed
    (root / "reg" / "model.yaml").write_text("batching: {target_p99_ms: 5000}\n")
    (root / "fixed" / "1").mkdir(parents=True)
    shutil.copy(models.regressor_onnx, root / "fixed" / "1" / "model.onnx")
    (root / "fixed" / "model.yaml").write_text("batching: {max_batch_size: 8, max_queue_delay_us: 2000000}\n")
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "serve_slow_mod.py").write_text(SLOW_MODULE)
    (root / "slow" / "model.yaml").write_text("callable: serve_slow_mod:predict\nconcurrency: threads\n")
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    settings = ServeSettings(
        repository=repository, port=0, auth_token=TOKEN, max_body_bytes=MAX_BODY_BYTES, log_level="warning"
    )
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=server.url)
    yield triton
    triton.close()


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def _expected(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"X": x}), strict=True))


def _raw(server: ServerThread, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _error(exc_info: pytest.ExceptionInfo[InferenceServerException]) -> tuple[str | None, str]:
    return exc_info.value.status(), exc_info.value.message()


# -- health and metadata -----------------------------------------------------------------------


def test_health_and_metadata(client: httpclient.InferenceServerClient, server: ServerThread) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "sluice"
    assert {"binary_tensor_data", "model_configuration", "model_repository"} <= set(meta["extensions"])
    model = client.get_model_metadata("clf")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    config = client.get_model_config("clf")
    assert config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [4]
    assert client.is_model_ready("clf") and client.is_model_ready("clf", "2") and client.is_model_ready("clf", "stable")
    assert not client.is_model_ready("clf", "7")
    status, headers, body = _raw(server, "GET", "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True} and headers["content-type"] == "application/json"
    assert json.loads(_raw(server, "GET", "/v2/health/live")[2]) == {"live": True}


# -- inference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_infer_json_and_binary(client: httpclient.InferenceServerClient, models, binary: bool) -> None:
    x = _x(5)
    infer_input = httpclient.InferInput("X", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer("clf", [infer_input], outputs=outputs, request_id="req-7", headers=dict(AUTH))
    expected = _expected(models.onnx, x)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6)
    response = result.get_response()
    assert (
        response["id"] == "req-7" and response["model_name"] == "clf" and response["model_version"] == "1"
    )  # the stable label


def test_requested_output_selection_and_label(client: httpclient.InferenceServerClient, models) -> None:
    x = _x(3, seed=1)
    infer_input = httpclient.InferInput("X", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    result = client.infer("clf", [infer_input], model_version="stable", outputs=wanted, headers=dict(AUTH))
    assert result.as_numpy("label") is None
    np.testing.assert_allclose(result.as_numpy("probabilities"), _expected(models.onnx, x)["probabilities"], rtol=1e-6)
    assert result.get_response()["model_version"] == "1"


async def _burst(server: ServerThread, model: str, count: int) -> list[np.ndarray]:
    """``count`` one-row requests at once through tritonclient's asyncio client, in order."""
    triton = aioclient.InferenceServerClient(url=server.url)
    try:

        async def one(i: int) -> np.ndarray:
            infer_input = aioclient.InferInput("X", [1, 4], "FP32")
            infer_input.set_data_from_numpy(_x(1, seed=i))
            return (await triton.infer(model, [infer_input], headers=dict(AUTH))).as_numpy("variable")

        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await triton.close()


def test_concurrent_requests_are_batched(server: ServerThread, models) -> None:
    def batch_sizes() -> tuple[int, int]:
        text = _raw(server, "GET", "/metrics")[2].decode()
        le1 = re.search(r'sluice_batch_size_bucket\{model="reg",version="1",le="1"\} (\d+)', text)
        count = re.search(r'sluice_batch_size_count\{model="reg",version="1"\} (\d+)', text)
        assert le1 and count, text
        return int(le1.group(1)), int(count.group(1))

    singles_before, batches_before = batch_sizes()
    results = asyncio.run(_burst(server, "reg", 96))
    expected = _expected(models.regressor_onnx, np.concatenate([_x(1, seed=i) for i in range(96)]))["variable"]
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-5)
    singles, batches = batch_sizes()
    assert batches - batches_before < 96, "no request shared a batch"
    assert (batches - batches_before) > (singles - singles_before), "every new batch held one row"
    text = _raw(server, "GET", "/metrics")[2].decode()
    assert re.search(r'sluice_requests_total\{model="reg",version="1"\} (\d+)', text)
    assert 'sluice_request_seconds_bucket{model="reg",version="1",le="+Inf"}' in text


def test_fixed_policy_closes_a_batch_when_full(server: ServerThread, models) -> None:
    """max_queue_delay_us of 2 s: eight one-row requests make one full batch long before it."""

    results = asyncio.run(_burst(server, "fixed", 8))
    expected = _expected(models.regressor_onnx, np.concatenate([_x(1, seed=i) for i in range(8)]))["variable"]
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-5)
    text = _raw(server, "GET", "/metrics")[2].decode()
    assert 'sluice_batch_size_count{model="fixed",version="1"} 1\n' in text
    assert 'sluice_batch_size_sum{model="fixed",version="1"} 8' in text


# -- errors ------------------------------------------------------------------------------------


def test_unknown_model_bad_shape_wrong_datatype(client: httpclient.InferenceServerClient) -> None:
    x = _x(2)
    good = httpclient.InferInput("X", [2, 4], "FP32")
    good.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("nope", [good], headers=dict(AUTH))
    assert _error(exc_info) == ("404", "Request for unknown model: 'nope' is not found")
    with pytest.raises(InferenceServerException) as exc_info:
        client.get_model_metadata("clf", "9")
    assert _error(exc_info) == ("404", "Request for unknown model: 'clf' version 9 is not found")
    bad_shape = httpclient.InferInput("X", [2, 2, 2], "FP32")
    bad_shape.set_data_from_numpy(x.reshape(2, 2, 2))
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [bad_shape], headers=dict(AUTH))
    assert _error(exc_info) == (
        "400",
        "unexpected shape for input 'X' for model 'clf'. Expected [-1,4], got [2,2,2]",
    )
    wrong_type = httpclient.InferInput("X", [2, 4], "FP64")
    wrong_type.set_data_from_numpy(x.astype(np.float64))
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [wrong_type], headers=dict(AUTH))
    assert _error(exc_info) == ("400", "inference input 'X' data-type is 'FP64', but model 'clf' expects 'FP32'")
    assert client.infer("clf", [good], headers=dict(AUTH)).as_numpy("label").shape == (2,)  # still serving


def test_malformed_json_body_limit_and_auth(server: ServerThread) -> None:
    status, _, body = _raw(server, "POST", "/v2/models/clf/infer", b"{not json", dict(AUTH))
    assert status == 400 and json.loads(body)["error"].startswith("failed to parse the request JSON buffer")
    status, _, body = _raw(server, "POST", "/v2/models/clf/infer", b"x" * (MAX_BODY_BYTES + 1), dict(AUTH))
    assert status == 413
    assert json.loads(body) == {
        "error": f"request body of {MAX_BODY_BYTES + 1} bytes exceeds the limit of 262144 bytes"
    }
    request = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]})
    status, headers, body = _raw(server, "POST", "/v2/models/clf/infer", request.encode())
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body) == {"error": "missing bearer token: send 'Authorization: Bearer <token>'"}
    status, _, body = _raw(server, "POST", "/v2/models/clf/infer", request.encode(), {"Authorization": "Bearer no"})
    assert (status, json.loads(body)) == (401, {"error": "invalid bearer token"})
    status, _, body = _raw(server, "POST", "/v2/models/clf/infer", request.encode(), dict(AUTH))
    assert status == 200 and json.loads(body)["outputs"][0]["name"] == "label"
    assert _raw(server, "GET", "/v2/models/clf/infer")[0] == 405
    assert _raw(server, "GET", "/v2/nothing/here")[0] == 404


def test_timeout_answers_504(client: httpclient.InferenceServerClient, server: ServerThread) -> None:
    x = np.full((1, 3), 1000.0)
    infer_input = httpclient.InferInput("input", [1, 3], "FP64")
    infer_input.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("slow", [infer_input], headers={**AUTH, "Sluice-Timeout-Ms": "100"})
    assert _error(exc_info) == ("504", "no result within the request's timeout of 100 ms")
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("slow", [infer_input], headers=dict(AUTH), timeout=100_000)  # microseconds, Triton's parameter
    assert exc_info.value.status() == "504"
    text = _raw(server, "GET", "/metrics")[2].decode()
    assert 'sluice_request_failures_total{model="slow",version="1",code="504"} 2' in text


# -- repository extension ----------------------------------------------------------------------


def test_repository_index_load_unload(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(headers=dict(AUTH))
    states = {(e["name"], e["version"]): e.get("state") for e in index}
    assert states[("clf", "1")] == "READY" and states[("reg", "1")] == "READY"
    client.unload_model("reg", headers=dict(AUTH))
    assert not client.is_model_ready("reg")
    x = _x(1)
    infer_input = httpclient.InferInput("X", [1, 4], "FP32")
    infer_input.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("reg", [infer_input], headers=dict(AUTH))
    assert _error(exc_info) == ("404", "Request for unknown model: 'reg' has no available versions")
    assert client.is_server_ready()  # an unloaded model is not a failed one
    client.load_model("reg", headers=dict(AUTH))
    assert client.is_model_ready("reg")
    assert client.infer("reg", [infer_input], headers=dict(AUTH)).as_numpy("variable").shape == (1, 1)
    with pytest.raises(InferenceServerException) as exc_info:
        client.load_model("ghost", headers=dict(AUTH))
    assert exc_info.value.status() == "404"
    with pytest.raises(InferenceServerException) as exc_info:
        client.unload_model("reg")  # no token
    assert exc_info.value.status() == "401"
