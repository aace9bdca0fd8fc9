"""``sluice serve --workers 2``: real worker processes behind one HTTP and one gRPC port on 127.0.0.1.

One server runs for the module (starting Python processes is the slow part); the tests run in
file order against it and the last one stops it with SIGTERM (a route change rewrites
model.yaml, which the watcher then reloads: it comes after the unload test, which that reload
would undo). A request on a fresh connection
goes to whichever worker the kernel picks, so "both workers" is shown by the supervisor's
``sluice_worker_requests_total{worker,pid}``, and "every worker has X" by many fresh
connections all seeing X (a worker without it would be picked with probability 1/2 each time).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sluice.serve.control import ControlClient

FRESH_CONNECTIONS = 24

SLOW_PREDICT_MODULE = """\
import time

def predict(x):
    if x.max() > 100:  # warm-up sends zeros
        time.sleep(1.0)
    return x.sum(axis=1)
"""

CRASHING_MODULE = """\
import os
import time

def predict(x):
    # the warm-up calls it: the worker dies soon after it started (a worker that dies before it
    # listens, at the server's start, stops the server instead: a broken setup, not a crash)
    time.sleep(1.5)
    os._exit(3)
"""


@dataclass
class Fleet:
    process: subprocess.Popen[str]
    port: int
    grpc_port: int
    root: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _raw(port: int, method: str, path: str, body: bytes = b"", timeout_s: float = 15.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)  # a fresh connection each time
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _ready(port: int) -> int | None:
    try:
        return _raw(port, "GET", "/v2/health/ready", timeout_s=2.0)[0]
    except OSError:
        return None


def _lr_body() -> bytes:
    data = [0.5, -1.0, 0.25, 2.0]
    return json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": data}]}).encode()


def _slow_body(value: float) -> bytes:
    data = [value] * 4
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": data}]}).encode()


def _metrics(port: int) -> str:
    status, body = _raw(port, "GET", "/metrics")
    assert status == 200, body
    return body.decode()


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample named exactly ``name``."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {m[1] or "": float(m[2]) for m in pattern.finditer(text)}


def _per_worker_requests(port: int) -> dict[str, float]:
    """Requests answered per worker process: ``{'0/pid': n, …}``."""
    found = _samples(_metrics(port), "sluice_worker_requests_total")
    return {"/".join(re.findall(r'"([^"]*)"', labels)): n for labels, n in found.items()}


def _pids(port: int) -> dict[str, str]:
    """Worker slot → pid of the process in it, from the supervisor's figures."""
    labels = _samples(_metrics(port), "sluice_worker_up")
    return dict(re.findall(r'worker="(\d+)",pid="(\d+)"', "".join(labels)))


def _requests_total(port: int, model: str) -> float:
    found = _samples(_metrics(port), "sluice_requests_total")
    return sum(n for labels, n in found.items() if f'model="{model}"' in labels)


def _spread(port: int, send: Callable[[], None]) -> dict[str, float]:
    """Call ``send`` on FRESH_CONNECTIONS connections; the requests each worker process answered."""
    before = _per_worker_requests(port)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: send(), range(FRESH_CONNECTIONS)))
    after = _per_worker_requests(port)
    return {key: after[key] - before.get(key, 0.0) for key in after}


@pytest.fixture(scope="module")
def fleet(models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    for version in (1, 2):
        (root / "lr" / str(version)).mkdir(parents=True)
        shutil.copy(models.onnx, root / "lr" / str(version) / "model.onnx")
    (root / "lr" / "model.yaml").write_text("labels: {stable: 1}\n")
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "workers_slow.py").write_text(SLOW_PREDICT_MODULE)
    (root / "slow" / "model.yaml").write_text("callable: workers_slow:predict\nconcurrency: threads\n")
    port, grpc_port = _free_port(), _free_port()
    log = root.parent / "fleet.log"
    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(root), "--workers", "2"]
    command += ["--port", str(port), "--grpc-port", str(grpc_port), "--watch", "--watch-interval", "0.2"]
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*command, "--drain-timeout", "10"], stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    try:
        _wait_for(lambda: _ready(port) == 200, timeout_s=60)
        yield Fleet(process, port, grpc_port, root, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_requests_are_answered_by_both_workers_and_counted_exactly(fleet: Fleet) -> None:
    counted = _requests_total(fleet.port, "lr")
    histogram = _samples(_metrics(fleet.port), "sluice_request_seconds_count")
    statuses: list[int] = []
    answered = _spread(
        fleet.port, lambda: statuses.append(_raw(fleet.port, "POST", "/v2/models/lr/infer", _lr_body())[0])
    )
    assert statuses == [200] * FRESH_CONNECTIONS
    assert len(answered) == 2 and all(n > 0 for n in answered.values()), answered
    assert sum(answered.values()) == FRESH_CONNECTIONS
    assert _requests_total(fleet.port, "lr") == counted + FRESH_CONNECTIONS
    after = _samples(_metrics(fleet.port), "sluice_request_seconds_count")
    key = '{model="lr",version="1"}'
    assert after[key] == histogram.get(key, 0.0) + FRESH_CONNECTIONS
    assert _samples(_metrics(fleet.port), "sluice_workers") == {"": 2.0}


def test_grpc_through_tritonclient_on_the_shared_port(fleet: Fleet) -> None:
    import tritonclient.grpc as grpcclient

    def infer() -> None:
        # a local subchannel pool: each client opens its own connection, as separate clients do
        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{fleet.grpc_port}", channel_args=[("grpc.use_local_subchannel_pool", 1)]
        )
        try:
            tensor = grpcclient.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.array([[0.5, -1.0, 0.25, 2.0]], dtype=np.float32))
            result = client.infer("lr", [tensor])
            assert result.as_numpy("label").shape == (1,)
            assert client.is_server_ready()
        finally:
            client.close()

    counted = _requests_total(fleet.port, "lr")
    answered = _spread(fleet.port, infer)
    assert len(answered) == 2 and all(n > 0 for n in answered.values()), answered
    assert _requests_total(fleet.port, "lr") == counted + FRESH_CONNECTIONS


def test_unload_and_load_reach_both_workers(fleet: Fleet) -> None:
    assert _raw(fleet.port, "POST", "/v2/repository/models/lr/unload", b"{}")[0] == 200
    statuses: list[int] = []
    _spread(fleet.port, lambda: statuses.append(_raw(fleet.port, "POST", "/v2/models/lr/infer", _lr_body())[0]))
    assert statuses == [404] * FRESH_CONNECTIONS
    assert _raw(fleet.port, "POST", "/v2/repository/models/lr/load", b"{}")[0] == 200
    statuses.clear()
    answered = _spread(
        fleet.port, lambda: statuses.append(_raw(fleet.port, "POST", "/v2/models/lr/infer", _lr_body())[0])
    )
    assert statuses == [200] * FRESH_CONNECTIONS
    assert all(n > 0 for n in answered.values()), answered


def test_hot_reload_reaches_both_workers(fleet: Fleet) -> None:
    staging = fleet.root.parent / "staging-3"
    staging.mkdir()
    shutil.copy(fleet.root / "lr" / "1" / "model.onnx", staging / "model.onnx")
    staging.rename(fleet.root / "lr" / "3")  # moved in whole, as the docs advise
    _wait_for(lambda: _raw(fleet.port, "GET", "/v2/models/lr/versions/3/ready")[0] == 200)
    statuses = [
        _raw(fleet.port, "POST", "/v2/models/lr/versions/3/infer", _lr_body())[0] for _ in range(FRESH_CONNECTIONS)
    ]
    assert statuses == [200] * FRESH_CONNECTIONS


def test_a_route_change_reaches_both_workers(fleet: Fleet) -> None:
    versions: list[str] = []

    def infer() -> None:
        status, body = _raw(fleet.port, "POST", "/v2/models/lr/infer", _lr_body())
        assert status == 200, body
        versions.append(json.loads(body)["model_version"])

    ControlClient(f"127.0.0.1:{fleet.port}").set_routes("lr", weights={"2": 100})
    answered = _spread(fleet.port, infer)
    assert versions == ["2"] * FRESH_CONNECTIONS
    assert all(n > 0 for n in answered.values()), answered


def test_a_killed_worker_comes_back_and_serving_continues(fleet: Fleet) -> None:
    pids = _pids(fleet.port)
    assert sorted(pids) == ["0", "1"]
    counted = _requests_total(fleet.port, "lr")  # the supervisor keeps what the dead worker had counted
    signal_pid = int(pids["0"])
    subprocess.run(["kill", "-KILL", str(signal_pid)], check=True)
    _wait_for(lambda: _ready(fleet.port) == 503, timeout_s=10)  # one readiness: not every worker is ready
    _wait_for(lambda: _ready(fleet.port) == 200, timeout_s=60)
    now = _pids(fleet.port)
    assert now["1"] == pids["1"] and now["0"] != pids["0"]
    restarts = _samples(_metrics(fleet.port), "sluice_worker_restarts_total")
    assert restarts == {'{worker="0"}': 1.0, '{worker="1"}': 0.0}
    assert f"worker 0 (pid {signal_pid}) killed by SIGKILL; restarting it" in fleet.output()
    answered = _spread(fleet.port, lambda: _raw(fleet.port, "POST", "/v2/models/lr/infer", _lr_body()))
    assert len(answered) == 2 and all(n > 0 for n in answered.values()), answered
    assert _requests_total(fleet.port, "lr") == counted + FRESH_CONNECTIONS


def test_sigterm_drains_both_workers_and_exits_0(fleet: Fleet) -> None:
    with ThreadPoolExecutor(6) as pool:
        in_flight = [
            pool.submit(_raw, fleet.port, "POST", "/v2/models/slow/infer", _slow_body(1000.0 + i)) for i in range(6)
        ]
        time.sleep(0.3)  # the requests are queued or running
        fleet.process.send_signal(signal.SIGTERM)
        statuses = [future.result(timeout=30)[0] for future in in_flight]
    assert fleet.process.wait(timeout=30) == 0
    output = fleet.output()
    assert statuses == [200] * 6
    for slot in ("0", "1"):
        assert re.search(rf"\[worker {slot} pid \d+\] shutting down: not ready; draining", output), output


def test_a_crash_loop_backs_off_and_is_reported(tmp_path: Path) -> None:
    (tmp_path / "crash" / "1").mkdir(parents=True)
    (tmp_path / "crash" / "1" / "workers_crash.py").write_text(CRASHING_MODULE)
    (tmp_path / "crash" / "model.yaml").write_text("callable: workers_crash:predict\nconcurrency: threads\n")
    port = _free_port()
    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(tmp_path), "--workers", "2"]
    process = subprocess.Popen([*command, "--port", str(port), "--no-grpc"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "a crash loop" in line:
                break
        process.send_signal(signal.SIGTERM)  # a worker may crash meanwhile: its exit code is not asserted
        process.wait(timeout=30)
        rest = process.stderr.read()  # the supervisor exits after its workers: every writer has gone
        process.stderr.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = "".join(lines)
    assert "shutting down: not ready" in rest
    slot = re.search(r"worker (\d) \(pid \d+\) exit code 3: 3 exits in a row", text)
    assert slot is not None, text
    pauses = re.findall(rf"worker {slot[1]} \(pid \d+\) exit code 3[:;].*?restarting it in (\S+) s", text)
    assert pauses == ["0.5", "1.0", "2.0"], text


def test_a_port_in_use_exits_2_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "sluice", "serve", "--repository", str(tmp_path), "--workers", "2"]
        result = subprocess.run(
            [*command, "--port", str(port), "--no-grpc"], check=False, capture_output=True, text=True
        )
    assert result.returncode == 2
    assert f"could not serve on 127.0.0.1:{port} (is the port in use?): choose another --port" in result.stderr
    assert "worker" not in result.stderr
