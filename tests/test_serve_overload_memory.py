"""Memory under sustained overload: ``sluice serve`` as a user runs it, shedding round after round.

Each round fills the slow model's queue and then sends many requests that are all shed, each
with a large header, over HTTP and gRPC. If a shed request left anything behind (its
headers, its exception, its call), the server's resident memory would grow by about a header
per request; it must stay flat. A leak check, not a timing test: the bound is generous.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from overload_support import BODY, GUARD_S, QUEUE_ROWS, Model, occupy, write_repository

ROUNDS = 5
SHED_PER_ROUND = 600  # over HTTP, and a third as many over gRPC
PADDING = "p" * 8192  # bytes of header each shed HTTP request carries
GRPC_PADDING = "p" * 4096  # gRPC's default limit on a call's metadata is 8 KiB in all


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int, Model]]:
    version_dir = write_repository(tmp_path / "models")
    port, grpc_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(tmp_path / "models")]
    command += ["--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the server did not get ready in 60 s"
            time.sleep(0.1)
        model = Model(version_dir)
        yield process, port, grpc_port, model
        model.release()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def _shed_over_http(port: int, count: int) -> int:
    """Send ``count`` padded requests on keep-alive connections; how many were answered 503."""
    shed = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD_S)
    try:
        for _ in range(count):
            conn.request("POST", "/v2/models/slow/infer", body=BODY, headers={"X-Padding": PADDING})
            response = conn.getresponse()
            response.read()
            shed += response.status == 503
            if response.getheader("connection", "").lower() == "close":
                conn.close()
    finally:
        conn.close()
    return shed


def _shed_over_grpc(grpc_port: int, count: int) -> int:
    request = service_pb2.ModelInferRequest(model_name="slow")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.5)
    shed = 0
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            try:
                stub.ModelInfer(request, metadata=(("x-padding", GRPC_PADDING),), timeout=GUARD_S)
            except grpc.RpcError as exc:
                shed += isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAVAILABLE
    return shed


def test_resident_memory_stays_flat_across_rounds_of_overload(
    served: tuple[subprocess.Popen[str], int, int, Model],
) -> None:
    process, port, grpc_port, model = served
    rss: list[int] = []
    for _ in range(ROUNDS):
        with ThreadPoolExecutor(max_workers=QUEUE_ROWS + 1) as pool:
            admitted = occupy(port, model, pool)
            assert _shed_over_http(port, SHED_PER_ROUND) == SHED_PER_ROUND
            assert _shed_over_grpc(grpc_port, SHED_PER_ROUND // 3) == SHED_PER_ROUND // 3
            model.release()
            assert [f.result()[0] for f in admitted] == [200] * (1 + QUEUE_ROWS)
        rss.append(_rss_bytes(process.pid))
    shed_bytes = (ROUNDS - 1) * (SHED_PER_ROUND * len(PADDING) + SHED_PER_ROUND // 3 * len(GRPC_PADDING))
    growth = rss[-1] - rss[0]  # the first round warms up: what grows after it is what stays
    assert growth < shed_bytes / 2, (
        f"resident memory grew by {growth / 2**20:.1f} MiB over {ROUNDS - 1} rounds after the first "
        f"(keeping one header per shed request would be {shed_bytes / 2**20:.1f} MiB): {rss}"
    )
    assert process.poll() is None  # still serving after the rounds
    assert model.batches() == [1, QUEUE_ROWS] * ROUNDS  # only the admitted requests were computed
