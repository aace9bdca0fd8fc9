"""Hostile clients against the real server on 127.0.0.1: slow heads and bodies, too many of them,
JSON past the parser's limits, NaN outputs, and a drain that runs out of time."""

from __future__ import annotations

import http.client
import json
import logging
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sluice.http import Receive, RepeatedNotices, Scope, Send
from sluice.serve.server import ServerThread, ServeSettings
from sluice.serve.slowclients import IncompleteRequests, SlowClientGuard, guarded_protocol

GUARD_S = 30.0  # socket timeout: a broken guard fails the test instead of hanging it

SUM_MODULE = """\
def predict(x):
    return x.sum(axis=1)
"""

SLOW_MODULE = """\
import time

def predict(x):
    if x.max() > 100:  # warm-up sends zeros
        time.sleep({seconds})
    return x.sum(axis=1)
"""


@pytest.fixture(scope="module")
def repository(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-repo")
    (root / "reg" / "1").mkdir(parents=True)
    shutil.copy(models.regressor_onnx, root / "reg" / "1" / "model.onnx")
    (root / "reg" / "model.yaml").write_text("batching: {target_p99_ms: 5000}\n")
    (root / "sum" / "1").mkdir(parents=True)
    (root / "sum" / "1" / "hostile_sum.py").write_text(SUM_MODULE)
    (root / "sum" / "model.yaml").write_text("callable: hostile_sum:predict\nconcurrency: threads\n")
    return root


def _server(repository: Path, **settings: object) -> ServerThread:
    return ServerThread(ServeSettings(repository=repository, port=0, log_level="warning", **settings))  # type: ignore[arg-type]


def _request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD_S)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _connect(port: int, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
    sock.sendall(first_bytes)
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data would mean an answer nobody asked for yet
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(GUARD_S)


# -- slow heads and bodies -----------------------------------------------------------------------


def test_a_slow_head_is_answered_408_and_closed_while_others_are_served(repository: Path) -> None:
    with _server(repository, header_timeout_s=0.5) as server:
        slow = _connect(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=GUARD_S)  # sends nothing at all
        try:
            assert _request(server.port, "GET", "/v2/health/live")[::2] == (200, b'{"live":true}')
            expected = _refusal("408 Request Timeout", "no complete request head within 0.5 s")
            assert _read_to_close(slow) == expected
            assert _read_to_close(idle) == expected
            assert _request(server.port, "GET", "/v2/health/live")[0] == 200
        finally:
            slow.close()
            idle.close()


def test_a_slow_body_is_answered_408(repository: Path) -> None:
    with _server(repository, body_timeout_s=0.5) as server:
        head = b"POST /v2/models/reg/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
        slow = _connect(server.port, head + b'{"inputs": [')
        try:
            answer = _read_to_close(slow)
        finally:
            slow.close()
    assert answer == _refusal("408 Request Timeout", "no complete request body within 0.5 s")


def test_a_keep_alive_connection_gets_a_new_head_deadline_per_request(repository: Path) -> None:
    with _server(repository, header_timeout_s=0.5) as server:
        sock = _connect(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            first = b""
            while not first.endswith(b'{"live":true}'):
                first += sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK\r\n")
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")  # the second request stalls
            assert _read_to_close(sock) == _refusal("408 Request Timeout", "no complete request head within 0.5 s")
        finally:
            sock.close()


def test_past_the_cap_the_connection_waiting_longest_makes_room(repository: Path) -> None:
    with _server(repository, header_timeout_s=600.0, max_incomplete_requests=8) as server:
        stalled: list[socket.socket] = []
        try:
            for _ in range(12):
                stalled.append(_connect(server.port, b"GET /v2/health/live HTTP/1.1\r\nX: "))
                # a good client is served; while its head arrives it is one more incomplete request, so
                # from the eighth stalled connection on, each good one makes the oldest stalled one go
                assert _request(server.port, "GET", "/v2/health/live")[::2] == (200, b'{"live":true}')
            message = "8 connections are still sending their requests, the server's limit; this one had waited longest"
            for sock in stalled[:5]:
                assert _read_to_close(sock) == _refusal("503 Service Unavailable", message)
            assert [_still_open(sock) for sock in stalled[5:]] == [True] * 7
        finally:
            for sock in stalled:
                sock.close()


async def _echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_h11_parser_is_guarded_alike() -> None:
    import uvicorn

    guard = SlowClientGuard(IncompleteRequests(0.5, 0.5, 100), RepeatedNotices(logging.getLogger("test.h11")))
    config = uvicorn.Config(
        _echo_app, host="127.0.0.1", port=0, http=guarded_protocol("h11", guard), lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    slow_head = _connect(port, b"GET / HTTP/1.1\r\nHost: x\r\nX: ")
    slow_body = _connect(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
    try:
        assert _request(port, "POST", "/", b"0123456789")[::2] == (200, b"ok")
        assert _read_to_close(slow_head) == _refusal("408 Request Timeout", "no complete request head within 0.5 s")
        assert _read_to_close(slow_body) == _refusal("408 Request Timeout", "no complete request body within 0.5 s")
    finally:
        slow_head.close()
        slow_body.close()
        server.should_exit = True
        thread.join(GUARD_S)


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


def _ready(port: int) -> bool:
    try:
        return _request(port, "GET", "/v2/health/ready")[0] == 200
    except OSError:
        return False


def _serve(repository: Path, port: int, *flags: str, open_files: int | None = None) -> subprocess.Popen[str]:
    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(repository), "--port", str(port)]
    return subprocess.Popen(
        [*command, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit_open_files,  # noqa: PLW1509 — only setrlimit, before exec
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return output


def test_stalled_connections_past_the_open_file_limit_leave_room_for_real_clients(repository: Path) -> None:
    port = _free_port()
    process = _serve(repository, port, "--log-level", "warning", open_files=128)  # default cap: 64
    stalled: list[socket.socket] = []
    try:
        _wait_for(lambda: _ready(port))
        stalled = [_connect(port, b"GET /v2/health/live HTTP/1.1\r\nX: ") for _ in range(200)]
        statuses = [_request(port, "GET", "/v2/health/live")[0] for _ in range(5)]
    finally:
        for sock in stalled:
            sock.close()
        output = _stop(process)
    assert statuses == [200] * 5
    assert process.returncode == 0
    assert output.count("closed a slow client's connection (503)") == 1  # then counted, not logged
    assert "Too many open files" not in output


# -- client errors: 400, logged once per kind ----------------------------------------------------


def _infer_body(data: bytes, shape: bytes = b"[1,4]") -> bytes:
    return b'{"inputs":[{"name":"X","datatype":"FP32","shape":' + shape + b',"data":' + data + b"}]}"


def test_json_past_the_parser_limits_is_400_and_logged_once_per_kind(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deep = _infer_body(b"[" * 3000 + b"]" * 3000)
    long_number = _infer_body(b"[" + b"7" * 5000 + b",1,2,3]")
    empty = _infer_body(b"[]", shape=b"[0,4]")
    limit = sys.getrecursionlimit()
    expected = {
        deep: "failed to parse the request JSON buffer: arrays or objects are nested too deeply "
        f"(the server parses fewer than {limit} levels)",
        long_number: f"failed to parse the request JSON buffer: a number has more than "
        f"{sys.get_int_max_str_digits()} digits",
        empty: "inference request batch-size must be >= 1 for 'reg': input 'X' has shape [0, 4], which holds no rows",
    }
    with caplog.at_level(logging.INFO, logger="sluice"), _server(repository) as server:
        server.wait_ready()
        for _ in range(10):
            for body, message in expected.items():
                status, _, answer = _request(server.port, "POST", "/v2/models/reg/infer", body)
                assert (status, json.loads(answer)) == (400, {"error": message})
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # the counts are flushed on shutdown; how many seconds they span depends on the machine's pace
    messages = [re.sub(r"in the last \d+ s", "in the last N s", r.getMessage()) for r in logged]
    assert messages == [
        f"refused POST /v2/models/reg/infer: {expected[deep]} (more of this kind are counted, not logged one by one)",
        f"refused POST /v2/models/reg/infer: {expected[long_number]} "
        "(more of this kind are counted, not logged one by one)",
        "9 more of kind 'JSON nested too deeply' in the last N s (10 in all)",
        "9 more of kind 'JSON number too long' in the last N s (10 in all)",
    ]
    assert all(r.exc_info is None for r in logged)
    assert server.app.notices.counts == {"JSON nested too deeply": 10, "JSON number too long": 10}


# -- NaN and infinity out ------------------------------------------------------------------------

NON_FINITE_BODY = (
    b'{"inputs":[{"name":"input","datatype":"FP64","shape":[4,2],"data":[NaN,0,Infinity,0,-Infinity,0,1.5,0]}]}'
)


def _strict(text: bytes) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_null_mode_answers_strict_json_for_nan_and_infinity(repository: Path) -> None:
    with _server(repository, json_non_finite="null") as server:
        server.wait_ready()
        status, _, body = _request(server.port, "POST", "/v2/models/sum/infer", NON_FINITE_BODY)
    assert status == 200
    assert _strict(body) == {
        "model_name": "sum",
        "model_version": "1",
        "outputs": [{"name": "prediction", "datatype": "FP64", "shape": [4], "data": [None, None, None, 1.5]}],
    }


def test_by_default_nan_and_infinity_are_written_as_triton_writes_them(repository: Path) -> None:
    with _server(repository) as server:
        server.wait_ready()
        status, _, body = _request(server.port, "POST", "/v2/models/sum/infer", NON_FINITE_BODY)
    assert status == 200
    assert body.endswith(b'"shape":[4],"data":[NaN,Infinity,-Infinity,1.5]}]}')


# -- a drain that runs out of time ---------------------------------------------------------------


@pytest.fixture
def slow_repository(tmp_path: Path) -> Path:
    (tmp_path / "slow" / "1").mkdir(parents=True)
    (tmp_path / "slow" / "1" / "hostile_slow.py").write_text(SLOW_MODULE.format(seconds=3.0))
    (tmp_path / "slow" / "model.yaml").write_text(
        "callable: hostile_slow:predict\nconcurrency: threads\nbatching: {max_batch_size: 1, target_p99_ms: 600000}\n"
    )
    return tmp_path


def test_what_the_drain_cuts_off_gets_503_with_retry_after_and_no_traceback(slow_repository: Path) -> None:
    port = _free_port()
    process = _serve(slow_repository, port, "--drain-timeout", "0.5", "--log-level", "info")
    body = b'{"inputs":[{"name":"input","datatype":"FP64","shape":[1,2],"data":[1000,0]}]}'
    try:
        _wait_for(lambda: _ready(port))
        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(_request, port, "POST", "/v2/models/slow/infer", body) for _ in range(6)]
            _wait_for(lambda: _queued(port) == 5)  # one runs, five wait
            process.send_signal(signal.SIGTERM)
            answers = [future.result(timeout=GUARD_S) for future in pending]
    finally:
        output = _stop(process)
    # one request runs (3 s) past the drain (0.5 s) and its grace (1 s); five wait in the queue
    assert [status for status, _, _ in answers] == [503] * 6
    assert all(headers["retry-after"] == "1" for _, headers, _ in answers)
    messages = sorted(json.loads(answer)["error"] for _, _, answer in answers)
    assert messages == [
        "the server is shutting down: its drain timeout passed before this request finished",
        *["the server is shutting down: its drain timeout passed before this request ran"] * 5,
    ]
    assert process.returncode == 0
    assert "drain timeout passed: answered 5 queued request(s) 503" in output
    assert "Traceback" not in output and "CancelledError" not in output


def _queued(port: int) -> int:
    text = _request(port, "GET", "/metrics")[2].decode()
    lines = [line for line in text.splitlines() if line.startswith("sluice_queue_depth_requests{")]
    return int(float(lines[0].split()[-1])) if lines else 0
