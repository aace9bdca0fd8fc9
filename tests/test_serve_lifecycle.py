"""Serving lifecycle end to end: hot reload under load, broken versions, readiness, SIGTERM drain, shedding."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from sluice.models.repository import ModelRepository
from sluice.serve.server import ServerThread, ServeSettings
from sluice.serve.watch import ModelSnapshot, changed_models, snapshot

SLOW_SETUP_MODULE = """\
import time

class Model:
    def setup(self):
        time.sleep(1.0)

    def predict(self, x):
        return x.sum(axis=1)
"""

SLOW_PREDICT_MODULE = """\
import time

def predict(x):
    if x.max() > 100:  # warm-up sends zeros
        time.sleep({seconds})
    return x.sum(axis=1)
"""

PYTHON_YAML = "callable: {module}\nconcurrency: threads\n"


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _raw(port: int, method: str, path: str, body: bytes = b"", timeout_s: float = 10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _infer_body(value: float) -> bytes:
    data = [value] * 4
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": data}]}).encode()


def _add_version(model_dir: Path, version: int, write: Callable[[Path], None]) -> None:
    """Write a version in a staging directory, then move it in whole (what the docs advise)."""
    staging = model_dir.parent.parent / f".staging-{model_dir.name}-{version}"
    staging.mkdir()
    write(staging)
    staging.rename(model_dir / str(version))


# -- the watcher's pure diff ---------------------------------------------------------------------


def test_changed_models_compares_snapshots() -> None:
    a = ModelSnapshot((1, 10), ((1, 5),))
    before = {"a": a, "b": ModelSnapshot(None, ((1, 5),))}
    after = {"a": a, "c": ModelSnapshot(None, ((1, 7),)), "b": ModelSnapshot(None, ((1, 5), (2, 9)))}
    assert changed_models(before, after) == (["b", "c"], [])
    assert changed_models(after, {"a": a}) == ([], ["b", "c"])


def test_snapshot_sees_new_versions_and_config_edits(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    first = snapshot(ModelRepository(tmp_path))
    (tmp_path / "m" / "model.yaml").write_text("labels: {stable: 1}\n")
    second = snapshot(ModelRepository(tmp_path))
    (tmp_path / "m" / "2").mkdir()
    third = snapshot(ModelRepository(tmp_path))
    assert first["m"].config_stat is None and second["m"].config_stat is not None
    assert [v for v, _ in third["m"].versions] == [1, 2]
    assert changed_models(first, second) == (["m"], []) and changed_models(second, third) == (["m"], [])


# -- hot reload ----------------------------------------------------------------------------------


@pytest.fixture
def watched(models, tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    root = tmp_path / "repo"
    (root / "hot" / "1").mkdir(parents=True)
    shutil.copy(models.onnx, root / "hot" / "1" / "model.onnx")
    (root / "hot" / "model.yaml").write_text("batching: {target_p99_ms: 5000}\n")
    settings = ServeSettings(repository=root, port=0, log_level="warning", watch=True, watch_interval_s=0.1)
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running, root


def test_hot_reload_under_load_fails_no_request(models, watched: tuple[ServerThread, Path]) -> None:
    server, root = watched
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)

    def send_continuously() -> None:
        client = httpclient.InferenceServerClient(url=server.url)
        try:
            while not stop.is_set():
                infer_input = httpclient.InferInput("X", list(x.shape), "FP32")
                infer_input.set_data_from_numpy(x, binary_data=True)
                try:
                    seen.append(client.infer("hot", [infer_input]).get_response()["model_version"])
                except Exception as exc:
                    errors.append(exc)
        finally:
            client.close()

    sender = threading.Thread(target=send_continuously)
    sender.start()
    try:
        _wait_for(lambda: "1" in seen)
        _add_version(root / "hot", 2, lambda d: shutil.copy(models.onnx, d / "model.onnx"))
        _wait_for(lambda: seen[-1:] == ["2"])  # the new version took over
        (root / "hot" / "model.yaml").write_text("labels: {stable: 1}\nbatching: {target_p99_ms: 5000}\n")
        _wait_for(lambda: seen[-1:] == ["1"])  # an edited model.yaml: the label routes back to 1
        shutil.rmtree(root / "hot" / "1")
        _wait_for(lambda: seen[-1:] == ["2"])  # version 1's directory is gone: 2 serves alone
        count = len(seen)
        _wait_for(lambda: len(seen) > count + 5)
    finally:
        stop.set()
        sender.join(10)
    assert errors == []
    assert server.app.host.ready
    assert [v.version for v in server.app.host.served()["hot"]] == [2]


def test_broken_version_leaves_the_old_one_serving(watched: tuple[ServerThread, Path]) -> None:
    server, root = watched
    _add_version(root / "hot", 2, lambda d: (d / "model.onnx").write_bytes(b"not an onnx model"))
    _wait_for(lambda: (state := server.app.host.state("hot", 2)) is not None and state.state == "UNAVAILABLE")
    status, _, body = _raw(server.port, "GET", "/v2/models/hot/versions/2/ready")
    document = json.loads(body)
    assert status == 400 and document["ready"] is False and document["reason"]
    assert _raw(server.port, "GET", "/v2/health/ready")[0] == 200  # version 1 serves as before
    assert _raw(server.port, "GET", "/v2/models/hot/versions/1/ready")[0] == 200
    x = [[0.5, 0.5, 0.5, 0.5]]
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": x}]}).encode()
    status, _, answer = _raw(server.port, "POST", "/v2/models/hot/infer", body)
    assert status == 200 and json.loads(answer)["model_version"] == "1"
    index = {e["version"]: e for e in json.loads(_raw(server.port, "POST", "/v2/repository/index")[2])}
    assert index["2"]["state"] == "UNAVAILABLE" and index["2"]["reason"]


# -- readiness while loading ---------------------------------------------------------------------


def test_not_ready_while_a_slow_model_loads(tmp_path: Path) -> None:
    (tmp_path / "slowsetup" / "1").mkdir(parents=True)
    (tmp_path / "slowsetup" / "1" / "lifecycle_slow_setup.py").write_text(SLOW_SETUP_MODULE)
    (tmp_path / "slowsetup" / "model.yaml").write_text(PYTHON_YAML.format(module="lifecycle_slow_setup:Model"))
    with ServerThread(ServeSettings(repository=tmp_path, port=0, log_level="warning")) as server:
        status, _, body = _raw(server.port, "GET", "/v2/health/ready")
        assert status == 503 and json.loads(body) == {"ready": False}
        assert _raw(server.port, "GET", "/v2/health/live")[0] == 200
        server.wait_ready(timeout_s=30)
        assert _raw(server.port, "GET", "/v2/health/ready")[0] == 200


# -- shedding at the HTTP edge -------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "1" / "lifecycle_tiny.py").write_text(SLOW_PREDICT_MODULE.format(seconds=0.3))
    yaml = PYTHON_YAML.format(module="lifecycle_tiny:predict")
    (tmp_path / "tiny" / "model.yaml").write_text(yaml + "batching: {max_queue_rows: 1, target_p99_ms: 60000}\n")
    with ServerThread(ServeSettings(repository=tmp_path, port=0, log_level="warning")) as server:
        server.wait_ready(timeout_s=30)
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda _: _raw(server.port, "POST", "/v2/models/tiny/infer", _infer_body(1000.0)), range(6))
            )
    statuses = sorted(status for status, _, _ in answers)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    shed = [headers for status, headers, _ in answers if status == 503]
    assert all(int(headers["retry-after"]) >= 1 for headers in shed)


# -- SIGTERM drain -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "drain" / "1").mkdir(parents=True)
    (tmp_path / "drain" / "1" / "lifecycle_drain.py").write_text(SLOW_PREDICT_MODULE.format(seconds=1.0))
    (tmp_path / "drain" / "model.yaml").write_text(PYTHON_YAML.format(module="lifecycle_drain:predict"))
    port = _free_port()
    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(tmp_path), "--port", str(port), "--no-grpc"]
    process = subprocess.Popen(
        [*command, "--drain-timeout", "10", "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: _ready_status(port) == 200, timeout_s=30)
        with ThreadPoolExecutor(3) as pool:
            in_flight = [
                pool.submit(_raw, port, "POST", "/v2/models/drain/infer", _infer_body(1000.0 + i)) for i in range(3)
            ]
            time.sleep(0.3)  # the requests are queued or running
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _wait_for(lambda: _ready_status(port) != 200, timeout_s=2)
            statuses = [future.result(timeout=15)[0] for future in in_flight]
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert statuses == [200, 200, 200]
    assert "not ready; draining" in output


def _ready_status(port: int) -> int | None:
    try:
        return _raw(port, "GET", "/v2/health/ready", timeout_s=1.0)[0]
    except OSError:
        return None
