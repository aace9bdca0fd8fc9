"""The load generator against real servers on 127.0.0.1: a trivial one and a misbehaving one."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sluice._net import free_loopback_port
from sluice.bench.loadgen import HttpRequest, closed_loop, open_loop
from sluice.errors import ConfigError
from support import SRC_ROOT


@pytest.fixture(scope="module")
def trivial_port() -> Iterator[int]:
    port = free_loopback_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.bench.trivial", str(port)], env={"PYTHONPATH": str(SRC_ROOT)}
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_request_bytes_are_a_complete_http_post() -> None:
    req = HttpRequest.post("http://127.0.0.1:9/v2/models/m/infer", b'{"a":1}', {"Content-Type": "application/json"})
    assert (req.host, req.port) == ("127.0.0.1", 9)
    assert req.payload == (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 7\r\n"
        b'Content-Type: application/json\r\n\r\n{"a":1}'
    )
    with pytest.raises(ConfigError, match=r"load target 'https://x/' must be an http:// URL with a host"):
        HttpRequest.post("https://x/", b"")


def test_closed_loop_counts_every_answer(trivial_port: int) -> None:
    req = HttpRequest.post(f"http://127.0.0.1:{trivial_port}/", b"{}")
    result = asyncio.run(closed_loop(req, 4, 0.3))
    assert result.requests > 0
    assert result.statuses == {200: result.requests}
    assert result.latency.count == result.requests
    assert result.to_dict()["ok"] == result.requests


def test_open_loop_fires_exactly_the_seeded_poisson_arrivals(trivial_port: int) -> None:
    req = HttpRequest.post(f"http://127.0.0.1:{trivial_port}/", b"{}")
    rate, duration = 300.0, 0.4
    result = asyncio.run(open_loop(req, rate, duration, seed=5))
    rng, t, arrivals = random.Random(5), 0.0, 0
    while t < duration:
        t += rng.expovariate(rate)
        arrivals += 1
    assert result.requests + result.dropped == arrivals
    assert result.statuses == {200: result.requests}


def test_refused_connections_are_counted_not_raised() -> None:
    req = HttpRequest.post(f"http://127.0.0.1:{free_loopback_port()}/", b"{}")
    result = asyncio.run(closed_loop(req, 2, 0.1))
    assert result.ok == 0
    assert set(result.statuses) == {599}
    assert result.throughput_per_s == 0.0
