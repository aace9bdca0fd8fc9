"""Helpers of the overload tests: a deliberately slow Python model that holds its batch on
request, and clients that fill its queue."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

SLOW_MODULE = """\
import time
from pathlib import Path

HERE = Path(__file__).parent

def predict(x):
    with (HERE / "batches.txt").open("a") as log:  # the rows of every batch the model computed
        log.write(f"{len(x)}\\n")
    deadline = time.monotonic() + 60  # a guard: a test that fails never leaves the model held
    while (HERE / "hold").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.02)  # the fixed cost of a batch
    return {"y": x * 2}
"""

QUEUE_ROWS = 4
SLOW_YAML = f"""\
callable: overload_slow:predict
concurrency: threads
inputs: [{{name: x, dtype: float32, shape: [-1]}}]
outputs: [{{name: y, dtype: float32, shape: [-1]}}]
batching: {{max_batch_size: {QUEUE_ROWS}, max_queue_delay_us: 0, max_queue_rows: {QUEUE_ROWS}}}
"""
BURST = 12  # clients at once while one batch runs: QUEUE_ROWS admitted, the rest shed
GUARD_S = 30.0  # a guard against hanging, not a timing assertion
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}).encode()
FULL = f"queue full: {QUEUE_ROWS} rows queued, limit {QUEUE_ROWS}, request has 1"


def write_repository(root: Path) -> Path:
    """``slow`` (one version) and ``ab`` (two, routed half and half) in ``root``; slow's version directory."""
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "overload_slow.py").write_text(SLOW_MODULE)
    (root / "slow" / "model.yaml").write_text(SLOW_YAML)
    for version in ("1", "2"):
        (root / "ab" / version).mkdir(parents=True)
        (root / "ab" / version / "overload_slow.py").write_text(SLOW_MODULE)
    (root / "ab" / "model.yaml").write_text(SLOW_YAML + "versions: all\nrouting: {weights: {1: 50, 2: 50}}\n")
    return root / "slow" / "1"


class Model:
    """The slow model's files: its hold switch and the batches it computed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "hold").unlink(missing_ok=True)
        (directory / "batches.txt").unlink(missing_ok=True)

    def hold(self) -> None:
        (self.directory / "hold").touch()

    def release(self) -> None:
        (self.directory / "hold").unlink(missing_ok=True)

    def batches(self) -> list[int]:
        log = self.directory / "batches.txt"
        return [int(line) for line in log.read_text().split()] if log.exists() else []


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting until {what}")
        time.sleep(0.01)


def metric(port: int, name: str, model: str = "slow", version: str = "1") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line and f'version="{version}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} version {version} not in /metrics")


def post(port: int, path: str = "/v2/models/slow/infer") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD_S)
    try:
        conn.request("POST", path, body=BODY)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def occupy(
    port: int, model: Model, pool: ThreadPoolExecutor, name: str = "slow", version: str = "1"
) -> list[Future[tuple[int, dict[str, str], bytes]]]:
    """Hold the model on one request's batch and fill the queue behind it: the version is full."""
    model.hold()
    before = len(model.batches())
    path = f"/v2/models/{name}/versions/{version}/infer"
    running = pool.submit(post, port, path)
    until(lambda: len(model.batches()) == before + 1, "the first batch runs")
    queued = [pool.submit(post, port, path) for _ in range(QUEUE_ROWS)]
    full = lambda: metric(port, "sluice_queue_depth_requests", name, version) == QUEUE_ROWS  # noqa: E731
    until(full, "the queue is full")
    return [running, *queued]


def retry_after(headers: dict[str, str]) -> int:
    value = headers["retry-after"]
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One whole HTTP response from a raw socket: its status line, headers (lower case) and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data + body!r}"
        body += chunk
    return status_line, headers, body
