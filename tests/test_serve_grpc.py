"""End to end over gRPC: the real server on 127.0.0.1, driven by NVIDIA's tritonclient.grpc (sync and asyncio).

Every RPC tritonclient and perf_analyzer call, the typed and the raw tensor contents, BYTES
tensors, the error codes Triton uses, the bearer token as metadata, and one set of counters
for both protocols.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from sluice.errors import ConfigError
from sluice.serve.server import ServerThread, ServeSettings

TOKEN = "grpc-s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}

TEXT_MODULE = """\
import time
from pathlib import Path
import numpy as np

SEEN = Path(__file__).parent / "seen.txt"

def predict(text):
    with SEEN.open("ab") as seen:  # what the model computed, for the cancellation test
        seen.write(b"".join(v + b"\\n" for v in text.tolist() if isinstance(v, bytes)))
    if any(v == b"slow" for v in text.tolist()):
        time.sleep(1.0)
    out = np.empty(len(text), dtype=object)
    out[:] = [v.upper() if isinstance(v, bytes) else b"" for v in text.tolist()]
    return {"upper": out, "length": np.array([len(v) if isinstance(v, bytes) else 0 for v in text.tolist()])}
"""

TEXT_YAML = """\
callable: grpc_text_mod:predict
concurrency: threads
inputs: [{name: text, dtype: object, shape: [-1]}]
outputs: [{name: upper, dtype: object, shape: [-1]}, {name: length, dtype: int64, shape: [-1]}]
batching: {max_batch_size: 16, target_p99_ms: 5000}
"""


@pytest.fixture(scope="module")
def repository(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-repo")
    for version in (1, 2):
        (root / "clf" / str(version)).mkdir(parents=True)
        shutil.copy(models.onnx, root / "clf" / str(version) / "model.onnx")
    (root / "clf" / "model.yaml").write_text("labels: {stable: 1}\nbatching: {max_batch_size: 64}\n")
    (root / "text" / "1").mkdir(parents=True)
    (root / "text" / "1" / "grpc_text_mod.py").write_text(TEXT_MODULE)
    (root / "text" / "model.yaml").write_text(TEXT_YAML)
    # a fixed batching window sheds nothing by latency: the cancellation test queues behind a slow batch
    (root / "queue" / "1").mkdir(parents=True)
    (root / "queue" / "1" / "grpc_text_mod.py").write_text(TEXT_MODULE)
    (root / "queue" / "model.yaml").write_text(TEXT_YAML.replace("target_p99_ms: 5000", "max_queue_delay_us: 1000"))
    (root / "tiny" / "1").mkdir(parents=True)
    (root / "tiny" / "1" / "grpc_text_mod.py").write_text(TEXT_MODULE)
    tiny = "max_queue_delay_us: 1000, max_queue_rows: 1"
    (root / "tiny" / "model.yaml").write_text(TEXT_YAML.replace("target_p99_ms: 5000", tiny))
    for version in (1, 2):
        (root / "ab" / str(version)).mkdir(parents=True)
        shutil.copy(models.onnx, root / "ab" / str(version) / "model.onnx")
    (root / "ab" / "model.yaml").write_text(
        "versions: all\nrouting: {weights: {1: 50, 2: 50}, sticky_key: parameters.user}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    settings = ServeSettings(repository=repository, port=0, grpc_port=0, auth_token=TOKEN, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    yield triton
    triton.close()


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def _expected(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"X": x}), strict=True))


def _input(x: np.ndarray, name: str = "X", datatype: str = "FP32") -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput(name, list(x.shape), datatype)
    infer_input.set_data_from_numpy(x)
    return infer_input


def _status(exc_info: pytest.ExceptionInfo[InferenceServerException]) -> tuple[str | None, str]:
    return exc_info.value.status(), exc_info.value.message()


# -- health, metadata, configuration -------------------------------------------------------------


def test_health_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "sluice"
    assert {"binary_tensor_data", "model_configuration", "model_repository"} <= set(meta["extensions"])
    model = client.get_model_metadata("clf", as_json=True)
    assert model["versions"] == ["1", "2"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    config = client.get_model_config("clf", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": ["4"]}]  # FORMAT_NONE: the default
    assert [o["data_type"] for o in config["output"]] == ["TYPE_INT64", "TYPE_FP32"]
    assert client.is_model_ready("clf") and client.is_model_ready("clf", "2") and client.is_model_ready("clf", "stable")
    assert not client.is_model_ready("clf", "7") and not client.is_model_ready("nope")


def test_rpcs_sluice_does_not_offer_are_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc_info:
        client.get_inference_statistics("clf")
    assert _status(exc_info) == (
        "StatusCode.UNIMPLEMENTED",
        "ModelStatistics: sluice serve does not offer per-model statistics (see GET /metrics)",
    )
    with pytest.raises(InferenceServerException) as exc_info:
        client.get_system_shared_memory_status()
    assert _status(exc_info)[0] == "StatusCode.UNIMPLEMENTED"


def test_metadata_of_an_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc_info:
        client.get_model_metadata("nope")
    assert _status(exc_info) == ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found")


# -- inference -----------------------------------------------------------------------------------


def test_infer_raw_contents_matches_onnx_runtime(client: grpcclient.InferenceServerClient, models) -> None:
    x = _x(5)
    outputs = [grpcclient.InferRequestedOutput("probabilities"), grpcclient.InferRequestedOutput("label")]
    result = client.infer("clf", [_input(x)], outputs=outputs, request_id="req-9", headers=dict(AUTH))
    expected = _expected(models.onnx, x)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("clf", "1", "req-9")  # stable
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])


def test_infer_by_label_and_version(client: grpcclient.InferenceServerClient) -> None:
    x = _x(2)
    for selector, version in (("stable", "1"), ("2", "2"), ("1", "1")):
        response = client.infer("clf", [_input(x)], model_version=selector, headers=dict(AUTH)).get_response()
        assert response.model_version == version


def test_infer_typed_contents(server: ServerThread, models) -> None:
    """A request with ``contents.fp32_contents`` instead of raw bytes, as hand-written clients send."""
    x = _x(3, seed=4)
    request = service_pb2.ModelInferRequest(model_name="clf")
    tensor = request.inputs.add(name="X", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    names = [o.name for o in response.outputs]
    labels = np.frombuffer(response.raw_output_contents[names.index("label")], dtype=np.int64)
    np.testing.assert_array_equal(labels, _expected(models.onnx, x)["label"])


def test_bytes_tensors_in_and_out(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([b"abc", b"", "café".encode(), b"x" * 300], dtype=object)
    result = client.infer("text", [_input(text, "text", "BYTES")], headers=dict(AUTH))
    assert result.as_numpy("upper").tolist() == [b"ABC", b"", "CAFé".encode(), b"X" * 300]
    assert result.as_numpy("length").tolist() == [3, 0, 5, 300]


def test_asyncio_client_concurrent_requests(server: ServerThread, models) -> None:
    xs = [_x(1 + i % 3, seed=i) for i in range(40)]

    async def main() -> list[np.ndarray]:
        triton = grpcaio.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
        try:
            results = await asyncio.gather(*(triton.infer("clf", [_input(x)], headers=dict(AUTH)) for x in xs))
        finally:
            await triton.close()
        return [r.as_numpy("label") for r in results]

    labels = asyncio.run(main())
    for x, got in zip(xs, labels, strict=True):
        np.testing.assert_array_equal(got, _expected(models.onnx, x)["label"])


# -- errors: Triton's gRPC codes ---------------------------------------------------------------------


def test_errors_carry_tritons_codes(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("nope", [_input(_x(1))], headers=dict(AUTH))
    assert _status(exc_info) == ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found")
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [_input(np.zeros((2, 3), np.float32))], headers=dict(AUTH))
    status, message = _status(exc_info)
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("unexpected shape for input 'X' for model 'clf'"), message
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [_input(np.zeros((2, 4), np.float64), datatype="FP64")], headers=dict(AUTH))
    assert _status(exc_info)[0] == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [_input(_x(65))], headers=dict(AUTH))
    status, message = _status(exc_info)
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith("inference request batch-size must be <= 64 for 'clf' (the request has 65 rows;")
    assert client.infer("clf", [_input(_x(2))], headers=dict(AUTH)).as_numpy("label").shape == (2,)  # still serving


def test_bearer_token_is_required_as_metadata(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [_input(_x(1))])
    assert _status(exc_info) == (
        "StatusCode.UNAUTHENTICATED",
        "missing bearer token: send 'Authorization: Bearer <token>'",
    )
    with pytest.raises(InferenceServerException) as exc_info:
        client.get_model_repository_index(headers={"authorization": "Bearer wrong"})
    assert _status(exc_info) == ("StatusCode.UNAUTHENTICATED", "invalid bearer token")
    assert client.is_server_ready()  # health and metadata need no token, as over HTTP


def test_the_requests_timeout_is_deadline_exceeded(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([b"slow"], dtype=object)
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("text", [_input(text, "text", "BYTES")], headers=dict(AUTH), timeout=200_000)
    status, message = _status(exc_info)
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert message == "no result within the request's timeout of 200 ms"


def test_a_client_deadline_is_the_requests_timeout(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([b"slow"], dtype=object)
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("text", [_input(text, "text", "BYTES")], headers=dict(AUTH), client_timeout=0.3)
    assert _status(exc_info)[0] == "StatusCode.DEADLINE_EXCEEDED"


# -- repository control ------------------------------------------------------------------------------


def test_repository_index_unload_and_load(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(headers=dict(AUTH), as_json=True)["models"]
    assert {(m["name"], m["version"], m.get("state")) for m in index} == {
        ("clf", "1", "READY"),
        ("clf", "2", "READY"),
        ("text", "1", "READY"),
        ("queue", "1", "READY"),
        ("tiny", "1", "READY"),
        ("ab", "1", "READY"),
        ("ab", "2", "READY"),
    }
    client.unload_model("clf", headers=dict(AUTH))
    assert not client.is_model_ready("clf")
    with pytest.raises(InferenceServerException) as exc_info:
        client.infer("clf", [_input(_x(1))], headers=dict(AUTH))
    assert _status(exc_info)[0] == "StatusCode.NOT_FOUND"
    client.load_model("clf", headers=dict(AUTH))
    assert client.is_model_ready("clf")
    assert client.infer("clf", [_input(_x(1))], headers=dict(AUTH)).as_numpy("label").shape == (1,)


# -- one server, two edges -------------------------------------------------------------------------------


def test_http_and_grpc_share_models_and_metrics(server: ServerThread, client: grpcclient.InferenceServerClient) -> None:
    def served(version: str) -> float:
        text = urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10).read().decode()
        line = next(
            (
                ln
                for ln in text.splitlines()
                if ln.startswith("sluice_requests_total{") and f'version="{version}"' in ln and 'model="clf"' in ln
            ),
            None,
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = served("1")
    client.infer("clf", [_input(_x(1))], model_version="1", headers=dict(AUTH))
    http = httpclient.InferenceServerClient(url=server.url)
    try:
        infer_input = httpclient.InferInput("X", [1, 4], "FP32")
        infer_input.set_data_from_numpy(_x(1))
        http.infer("clf", [infer_input], model_version="1", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        http.close()
    assert served("1") == before + 2


def test_a_grpc_port_in_use_is_a_clear_error(repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ServeSettings(repository=repository, port=0, grpc_port=port, log_level="critical")
        with pytest.raises(ConfigError, match=rf"could not serve gRPC on 127\.0\.0\.1:{port} \(is the port in use\?\)"):
            ServerThread(settings).start()


# -- cancellation ------------------------------------------------------------------------------------


def _metric(server: ServerThread, name: str, model: str) -> float:
    text = urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not in /metrics")


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30  # a guard against hanging, not a timing assertion
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting until {what}")
        await asyncio.sleep(0.01)


def test_a_cancelled_call_leaves_the_queue_unrun(server: ServerThread, repository: Path) -> None:
    seen = repository / "queue" / "1" / "seen.txt"
    marker = f"busy-{uuid.uuid4().hex}".encode()
    cancelled_before = _metric(server, "sluice_cancelled_total", "queue")

    def queued() -> float:
        return _metric(server, "sluice_queue_depth_requests", "queue")

    def text(*values: bytes) -> list[grpcclient.InferInput]:
        return [_input(np.array(values, dtype=object), "text", "BYTES")]

    async def main() -> list[bytes]:
        triton = grpcaio.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
        try:
            busy = asyncio.ensure_future(triton.infer("queue", text(b"slow", marker), headers=dict(AUTH)))
            await _until(lambda: seen.exists() and marker in seen.read_bytes(), "the slow batch runs")
            doomed = asyncio.ensure_future(triton.infer("queue", text(b"doomed"), headers=dict(AUTH)))
            await _until(lambda: queued() == 1, "the second request is queued behind it")
            doomed.cancel()
            await _until(lambda: queued() == 0, "the server takes it out of the queue")
            result = await busy
        finally:
            await triton.close()
        return result.as_numpy("upper").tolist()

    assert asyncio.run(main()) == [b"SLOW", marker.upper()]
    assert _metric(server, "sluice_cancelled_total", "queue") == cancelled_before + 1
    assert b"doomed" not in seen.read_bytes()  # never computed


def test_an_http_client_that_hangs_up_leaves_the_queue_unrun(server: ServerThread, repository: Path) -> None:
    seen = repository / "queue" / "1" / "seen.txt"
    marker = f"busy-{uuid.uuid4().hex}".encode()
    cancelled_before = _metric(server, "sluice_cancelled_total", "queue")

    def queued() -> float:
        return _metric(server, "sluice_queue_depth_requests", "queue")

    def post(word: bytes) -> socket.socket:
        body = json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [word.decode()]}]}
        ).encode()
        head = (
            f"POST /v2/models/queue/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(head + body)
        return sock

    async def main() -> None:
        triton = grpcaio.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
        try:
            values = np.array([b"slow", marker], dtype=object)
            busy = asyncio.ensure_future(triton.infer("queue", [_input(values, "text", "BYTES")], headers=dict(AUTH)))
            await _until(lambda: seen.exists() and marker in seen.read_bytes(), "the slow batch runs")
            doomed = post(b"hung-up")
            await _until(lambda: queued() == 1, "the HTTP request is queued behind it")
            doomed.close()
            await _until(lambda: queued() == 0, "the server takes it out of the queue")
            await busy
        finally:
            await triton.close()

    asyncio.run(main())
    assert _metric(server, "sluice_cancelled_total", "queue") == cancelled_before + 1
    assert b"hung-up" not in seen.read_bytes()  # never computed
    answered = post(b"still-serving")  # the server goes on serving
    try:
        assert answered.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        answered.close()


# -- routing and shedding: the same decisions as over HTTP ---------------------------------------


def test_a_sticky_key_in_the_request_parameters_routes_as_over_http(client: grpcclient.InferenceServerClient) -> None:
    chosen: dict[str, set[str]] = {}
    for user in (f"user-{i}" for i in range(20)):
        for _ in range(4):
            response = client.infer("ab", [_input(_x(1))], headers=dict(AUTH), parameters={"user": user})
            chosen.setdefault(user, set()).add(response.get_response().model_version)
    assert all(len(versions) == 1 for versions in chosen.values()), chosen  # sticky
    assert set().union(*chosen.values()) == {"1", "2"}  # split between the variants


def test_shed_requests_are_unavailable_with_retry_after(server: ServerThread, repository: Path) -> None:
    seen = repository / "tiny" / "1" / "seen.txt"
    marker = f"busy-{uuid.uuid4().hex}".encode()

    def text(*values: bytes) -> list[grpcclient.InferInput]:
        return [_input(np.array(values, dtype=object), "text", "BYTES")]

    shed = service_pb2.ModelInferRequest(model_name="tiny")
    shed.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"shed")

    async def main() -> grpc.aio.AioRpcError:
        triton = grpcaio.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        try:
            busy = asyncio.ensure_future(triton.infer("tiny", text(b"slow", marker), headers=dict(AUTH)))
            await _until(lambda: seen.exists() and marker in seen.read_bytes(), "the slow batch runs")
            queued = asyncio.ensure_future(triton.infer("tiny", text(b"queued"), headers=dict(AUTH)))
            await _until(lambda: _metric(server, "sluice_queue_depth_requests", "tiny") == 1, "one request waits")
            with pytest.raises(grpc.aio.AioRpcError) as exc_info:
                await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(shed, metadata=tuple(AUTH.items()))
            assert (await queued).as_numpy("upper").tolist() == [b"QUEUED"]
            await busy
        finally:
            await channel.close()
            await triton.close()
        return exc_info.value

    error = asyncio.run(main())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "queue full: 1 rows queued, limit 1, request has 1"
    assert ("retry-after", "1") in tuple(error.trailing_metadata() or ())
    assert b"shed" not in seen.read_bytes()
