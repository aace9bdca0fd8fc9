"""docs/ab-testing.md's "Try it", run as written against a real ``sluice serve`` on 127.0.0.1: the
demo model, a copied candidate version, one request, one ``"reward": 1`` feedback, then
``sluice ab report`` (the control's success rate is then 1.0 and the candidate has no outcome)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.demo import make_demo_model

TOKEN = "change-me"
ROUTING = """\
routing:
  weights: {stable: 90, 2: 10}
  sticky_key: parameters.routing_key
  guardrail: {max_error_rate_increase: 0.05, window_s: 60, min_requests: 50}
  experiment: {outcome: binary, min_effect: 0.05}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(port: int, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _ready(port: int) -> bool:
    try:
        return _request(port, "GET", "/v2/health/ready")[0] == 200
    except OSError:
        return False


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[int]:
    repository = tmp_path / "models"
    make_demo_model(repository)
    shutil.copytree(repository / "demo" / "1", repository / "demo" / "2")
    with (repository / "demo" / "model.yaml").open("a") as fh:
        fh.write(ROUTING)
    port = _free_port()
    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(repository), "--port", str(port)]
    command.append("--no-grpc")
    env = {**os.environ, "SLUICE_AUTH_TOKEN": TOKEN}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the server did not get ready in 60 s"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _report(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sluice", "ab", "report", "demo", "--url", f"http://127.0.0.1:{port}", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_report_after_the_docs_one_feedback_is_a_report_not_a_traceback(demo_server: int) -> None:
    body = {
        "id": "req-1",
        "parameters": {"routing_key": "user-42"},
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 32], "data": [0.1] * 32}],
    }
    status, answer = _request(demo_server, "POST", "/v2/models/demo/infer", body)
    assert status == 200, answer
    served = answer["model_version"]
    status, answer = _request(demo_server, "POST", "/v2/models/demo/feedback", {"id": "req-1", "reward": 1})
    assert (status, answer["model_version"], answer["outcome"]) == (200, served, 1)
    # user-42 may land on either variant; the docs' state is the primary (version 1) with one
    # success and the candidate with none, so make sure the candidate is the one without outcomes
    assert served == "1", "routing key user-42 is expected to reach the primary under 90/10"

    result = _report(demo_server, "--json")
    assert (result.returncode, result.stderr) == (0, "")
    report = json.loads(result.stdout)
    primary, candidate = report["variants"]
    assert (primary["variant"], primary["outcomes"], primary["mean_outcome"]) == ("stable", 1, 1.0)
    assert (candidate["variant"], candidate["outcomes"], candidate["mean_outcome"]) == ("2", 0, None)
    comparison = candidate["comparison"]
    assert (comparison["p_value"], comparison["confidence_sequence"], comparison["recommendation"]) == (
        None,
        None,
        "keep collecting",
    )
    # a control at 100% can only get worse: the plan is for 1.00 → 0.95
    assert comparison["required_per_variant"] == 152
    assert report["rule"] == "always-valid mSPRT (normal mixture, tau = 0.05, alpha = 0.05)"
    assert (report["recommendation"], report["reason"]) == (
        "keep collecting",
        "2: not enough outcomes yet; the fixed-horizon plan needs 152 more outcomes per variant",
    )

    table = _report(demo_server)
    assert (table.returncode, table.stderr) == (0, "")
    assert table.stdout.startswith(
        "A/B report of model demo: binary outcomes against the primary, always-valid mSPRT (normal mixture, "
        "tau = 0.05, alpha = 0.05); two-proportion z-test at the planned sample size for information\n"
    )
    assert table.stdout.rstrip().endswith(
        "recommendation: keep collecting (2: not enough outcomes yet; the fixed-horizon plan needs 152 more "
        "outcomes per variant)"
    )
