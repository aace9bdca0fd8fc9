"""The HTTP edge both apps share (sluice.http): bodies, JSON, errors, routing helpers, and the
inference server and the jobs API behind it on a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from sluice.errors import HttpError, JobNotFound, ProtocolError, SluiceError
from sluice.http import (
    Message,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    answer,
    error_response,
    find_mount,
    no_route,
    parse_json,
    parse_json_object,
    read_body,
    require_method,
)
from sluice.jobs.http import PREFIX, JobsApi
from sluice.jobs.sqlite import SqliteJobStore
from sluice.serve.server import ServerThread, ServeSettings

TOKEN = "edge-token"
LIMIT_BYTES = 1024
TOO_LARGE = {"error": f"request body of {LIMIT_BYTES + 1} bytes exceeds the limit of {LIMIT_BYTES} bytes"}


def _request(
    chunks: Iterable[Message], headers: dict[str, str] | None = None, method: str = "POST", path: str = "/a/b"
) -> tuple[Request, list[Message]]:
    """A request whose ASGI receive hands out ``chunks`` in order and records what it handed out."""
    pending = list(chunks)
    given: list[Message] = []

    async def receive() -> Message:
        given.append(pending.pop(0))
        return given[-1]

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return Request.from_scope(scope, receive), given


def _chunk(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


# -- request side ------------------------------------------------------------------------------


def test_request_from_scope_lowers_headers_and_keeps_the_last_query_value() -> None:
    scope = {
        "method": "GET",
        "path": "/v1//jobs/",
        "query_string": b"state=QUEUED&limit=5&limit=7",
        "headers": [(b"Content-Type", b"application/json")],
    }
    request = Request.from_scope(scope, _never)
    assert (request.parts, request.route, request.path) == (["v1", "jobs"], "/v1/jobs", "/v1//jobs/")
    assert (request.headers, request.query) == ({"content-type": "application/json"}, {"state": "QUEUED", "limit": "7"})


async def _never() -> Message:
    raise AssertionError("the body must not be read")


def test_body_is_joined_from_its_chunks() -> None:
    request, given = _request([_chunk(b"ab", True), _chunk(b"", True), _chunk(b"cd", False)])
    assert asyncio.run(read_body(request, 4)) == b"abcd"
    assert len(given) == 3


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request = Request.from_scope({"method": "POST", "path": "/", "headers": [(b"content-length", b"1025")]}, _never)
    with pytest.raises(HttpError) as info:
        asyncio.run(read_body(request, LIMIT_BYTES))
    assert (info.value.http_status, str(info.value)) == (413, TOO_LARGE["error"])


def test_a_streamed_body_is_refused_at_the_chunk_that_passes_the_limit() -> None:
    request, given = _request([_chunk(b"x" * 1000, True), _chunk(b"x" * 100, True), _chunk(b"x", False)])
    with pytest.raises(HttpError, match=r"^request body of 1100 bytes exceeds the limit of 1024 bytes$"):
        asyncio.run(read_body(request, LIMIT_BYTES))
    assert len(given) == 2  # the rest is never read


def test_a_bad_content_length_and_a_disconnect_are_400() -> None:
    request, _ = _request([], {"content-length": "12x"})
    with pytest.raises(ProtocolError, match=r"^invalid Content-Length '12x'$"):
        asyncio.run(read_body(request, LIMIT_BYTES))
    request, _ = _request([_chunk(b"ab", True), {"type": "http.disconnect"}])
    with pytest.raises(HttpError, match=r"^the client disconnected before sending the whole body$") as info:
        asyncio.run(read_body(request, LIMIT_BYTES))
    assert info.value.http_status == 400


def test_json_errors_name_the_parser_complaint() -> None:
    assert parse_json(b"") is None and parse_json(b"[1]") == [1]
    with pytest.raises(ProtocolError, match=r"^the request body is not valid JSON: Expecting value: line 1 column 1"):
        parse_json(b"nope")
    with pytest.raises(ProtocolError, match=r"^bad buffer: Expecting ',' delimiter: line 1 column 4 \(char 3\)$"):
        parse_json(b"[1 2]", invalid="bad buffer")
    assert parse_json_object(b"  \n") == {} and parse_json_object(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ProtocolError, match=r"^the request JSON must be an object$"):
        parse_json_object(b"[1]")
    with pytest.raises(ProtocolError, match=r"^the request body is not valid JSON: 'utf-8' codec can't decode"):
        parse_json_object(b'{"a": "\xff"}')


# -- answer side -------------------------------------------------------------------------------


def test_errors_become_their_status_with_their_headers() -> None:
    refused = error_response(HttpError("no", 401, {"WWW-Authenticate": "Bearer"}), {"Retry-After": "3"})
    assert (refused.status, refused.body) == (401, b'{"error": "no"}')
    assert refused.headers == {"Content-Type": "application/json", "Retry-After": "3", "WWW-Authenticate": "Bearer"}
    missing = error_response(JobNotFound("no job 'x'"))
    assert (missing.status, missing.body, missing.headers) == (
        404,
        b'{"error": "no job \'x\'"}',
        {"Content-Type": "application/json"},
    )
    assert Response.json({"a": [1, 2]}, 201) == Response(201, b'{"a":[1,2]}', {"Content-Type": "application/json"})


def test_answer_translates_sluice_errors_and_logs_anything_else(caplog: pytest.LogCaptureFixture) -> None:
    request, _ = _request([])

    async def shed(request: Request) -> Response:
        raise SluiceError("busy")

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    shed_answer = asyncio.run(answer(request, shed, lambda exc: {"Retry-After": "1"}))
    assert (shed_answer.status, shed_answer.body, shed_answer.headers["Retry-After"]) == (
        400,
        b'{"error": "busy"}',
        "1",
    )
    with caplog.at_level(logging.ERROR, logger="sluice.http.response"):
        internal = asyncio.run(answer(request, broken))
    assert (internal.status, internal.body) == (500, b'{"error": "internal error: RuntimeError: boom"}')
    assert [r.getMessage() for r in caplog.records] == ["internal error on POST /a/b"]


def test_routing_helpers_name_the_method_and_the_path() -> None:
    request, _ = _request([], method="DELETE", path="/v1/jobs/abc/")
    with pytest.raises(HttpError, match=r"^method DELETE not allowed on /v1/jobs/abc; use GET$") as info:
        require_method(request, "GET", "POST")
    assert info.value.http_status == 405
    require_method(request, "GET", "DELETE")
    assert (str(no_route(request)), no_route(request).http_status) == ("no route for DELETE /v1/jobs/abc", 404)
    mounts = {"/v1/jobs": _jobs_app, "/v1/other": _other_app}
    found = [find_mount(mounts, p) for p in ("/v1/jobs", "/v1/jobs/x", "/v1/jobsx", "/v1/other/y", "/v2")]
    assert found == [_jobs_app, _jobs_app, None, _other_app, None]


async def _jobs_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


async def _other_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


def test_the_edge_imports_neither_app() -> None:
    code = (
        "import sys, sluice; before = set(sys.modules); import sluice.http; "
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('sluice')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    edge = ["sluice.http", "sluice.http.notices", "sluice.http.request", "sluice.http.response", "sluice.http.routing"]
    assert loaded.strip() in (str(edge), str(sorted(["sluice.errors", *edge])))


# -- both apps on a real server ----------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    (tmp_path / "repo").mkdir()
    settings = ServeSettings(
        repository=tmp_path / "repo", port=0, auth_token=TOKEN, max_body_bytes=LIMIT_BYTES, log_level="warning"
    )
    store = SqliteJobStore(tmp_path / "home" / "jobs.db")
    with ServerThread(settings, mounts={PREFIX: JobsApi(store, max_body_bytes=LIMIT_BYTES)}) as running:
        yield running
    store.close()


def _post(server: ServerThread, path: str, body: bytes | Iterable[bytes]) -> tuple[int, bytes]:
    """POST ``body``; an iterable goes out chunked, without a Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        conn.request("POST", path, body=body, headers=headers, encode_chunked=not isinstance(body, bytes))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/v2/repository/index", "/v2/models/any/routes", PREFIX])
def test_both_apps_refuse_a_body_over_the_limit_alike(server: ServerThread, path: str) -> None:
    declared = _post(server, path, b"{" + b" " * LIMIT_BYTES)
    streamed = _post(server, path, iter([b"{" + b" " * 600, b" " * (LIMIT_BYTES - 600)]))
    expected = (413, json.dumps(TOO_LARGE).encode())
    assert (declared, streamed) == (expected, expected)


def test_the_server_names_bad_json_as_triton_does(server: ServerThread) -> None:
    status, body = _post(server, "/v2/repository/index", b"{oops")
    assert (status, json.loads(body)) == (
        400,
        {
            "error": "failed to parse the request JSON buffer: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)"
        },
    )
    status, body = _post(server, "/v2/repository/index", b"[1, 2]")
    assert (status, json.loads(body)) == (400, {"error": "the request JSON must be an object"})
    status, body = _post(server, "/v2/repository/index", iter([b'{"ready":', b" true}"]))
    assert (status, json.loads(body)) == (200, [])


def test_the_jobs_api_names_bad_json(server: ServerThread) -> None:
    status, body = _post(server, PREFIX, iter([b'{"model": "m.onnx",', b" oops}"]))
    assert (status, json.loads(body)) == (
        400,
        {
            "error": "the request body is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 21 (char 20)"
        },
    )
    status, body = _post(server, PREFIX, b"")
    assert (status, json.loads(body)) == (
        400,
        {"error": "job spec must be a JSON object of job fields, found NoneType"},
    )
