"""Hostile input without sockets: the slow-client bookkeeping, counted log lines, the JSON limits
of the protocol decoder and the rule for NaN and infinity in JSON outputs."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from sluice.errors import LimitExceeded, ProtocolError
from sluice.http import RepeatedNotices, Request, answer
from sluice.models.signature import Signature, TensorSpec
from sluice.serve.protocol import decode_request, encode_response
from sluice.serve.slowclients import IncompleteRequests, Refusal, refusal_bytes

SIGNATURE = Signature(
    inputs=(TensorSpec("X", np.dtype(np.float32), (-1, 32)),),
    outputs=(TensorSpec("y", np.dtype(np.float32), (-1, 1)),),
)


class Client:
    def __init__(self, name: str) -> None:
        self.name = name

    def refuse(self, status: int, message: str, phase: str) -> None:
        raise AssertionError("the bookkeeping refuses nobody itself")

    def __repr__(self) -> str:
        return self.name


# -- the slow-client bookkeeping -----------------------------------------------------------------


def test_a_head_is_late_once_its_timeout_has_passed() -> None:
    requests = IncompleteRequests(header_timeout_s=10.0, body_timeout_s=60.0, max_connections=100)
    slow, later = Client("slow"), Client("later")
    requests.head_started(slow, 0.0)
    requests.head_started(later, 5.0)
    assert requests.expired(9.99) == []
    late = Refusal(slow, 408, "request head too slow", "no complete request head within 10 s", "head")
    assert requests.expired(10.0) == [late]
    assert requests.phase(slow) is None and requests.phase(later) == "head" and len(requests) == 1


def test_a_body_has_its_own_timeout_from_the_end_of_the_head() -> None:
    requests = IncompleteRequests(header_timeout_s=10.0, body_timeout_s=60.0, max_connections=100)
    client = Client("upload")
    requests.head_started(client, 0.0)
    requests.body_started(client, 9.0)
    assert requests.phase(client) == "body"
    assert requests.expired(68.9) == []
    assert requests.expired(69.0) == [
        Refusal(client, 408, "request body too slow", "no complete request body within 60 s", "body")
    ]


def test_a_request_that_arrived_whole_is_forgotten() -> None:
    requests = IncompleteRequests(header_timeout_s=1.0, body_timeout_s=1.0, max_connections=100)
    client = Client("quick")
    requests.head_started(client, 0.0)
    requests.body_started(client, 0.0)
    requests.finished(client)
    assert requests.expired(1000.0) == [] and len(requests) == 0
    requests.head_started(client, 2000.0)  # the next request on the same connection starts anew
    assert requests.expired(2000.5) == [] and requests.phase(client) == "head"


def test_one_connection_too_many_refuses_the_one_sending_its_head_longest() -> None:
    requests = IncompleteRequests(header_timeout_s=60.0, body_timeout_s=60.0, max_connections=3)
    clients = [Client(f"c{i}") for i in range(5)]
    requests.body_started(clients[0], 0.0)  # an upload under way is spared while heads wait
    assert [requests.head_started(c, float(i)) for i, c in enumerate(clients[1:3], 1)] == [None, None]
    refused = requests.head_started(clients[3], 3.0)
    message = "3 connections are still sending their requests, the server's limit; this one had waited longest"
    assert refused == Refusal(clients[1], 503, "too many incomplete requests", message, "head")
    assert requests.head_started(clients[3], 4.0) is None  # a head already counted is not counted twice
    assert requests.head_started(clients[4], 5.0) == Refusal(
        clients[2], 503, "too many incomplete requests", message, "head"
    )
    assert len(requests) == 3 and requests.phase(clients[0]) == "body"


def test_with_no_other_head_waiting_the_oldest_body_makes_room() -> None:
    requests = IncompleteRequests(header_timeout_s=60.0, body_timeout_s=60.0, max_connections=1)
    upload, newcomer = Client("upload"), Client("new")
    requests.body_started(upload, 0.0)
    refused = requests.head_started(newcomer, 1.0)
    assert refused is not None and (refused.client, refused.phase) == (upload, "body")
    assert requests.phase(newcomer) == "head"


def test_checks_run_four_times_per_shortest_timeout_within_bounds() -> None:
    assert IncompleteRequests(2.0, 60.0, 1).next_check_s() == 0.5
    assert IncompleteRequests(100.0, 60.0, 1).next_check_s() == 1.0
    assert IncompleteRequests(0.01, 60.0, 1).next_check_s() == 0.05


def test_a_refusal_is_a_whole_response_that_closes_the_connection() -> None:
    body = b'{"error": "no complete request head within 10 s"}'
    assert refusal_bytes(408, "no complete request head within 10 s") == (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    )


def test_the_default_cap_is_half_the_open_file_limit() -> None:
    code = (
        "import resource; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard)); "
        "from sluice.serve.slowclients import default_max_incomplete; print(default_max_incomplete())"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "256"


# -- counted log lines ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.notices"]


def test_the_first_event_of_a_kind_is_logged_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    notices = RepeatedNotices(logging.getLogger("test.notices"), interval_s=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.notices"):
        for _ in range(100):
            notices.note("deep", "refused: too deep")
        notices.note("long", "refused: too long")
        assert _lines(caplog) == [
            "refused: too deep (more of this kind are counted, not logged one by one)",
            "refused: too long (more of this kind are counted, not logged one by one)",
        ]
        clock.now_s = 60.0
        notices.note("deep", "refused: too deep")
        assert _lines(caplog)[2:] == ["100 more of kind 'deep' in the last 60 s (101 in all)"]
        clock.now_s = 70.0
        notices.note("deep", "refused: too deep")
        notices.flush()
        assert _lines(caplog)[3:] == ["1 more of kind 'deep' in the last 10 s (102 in all)"]
        notices.flush()  # nothing new: nothing logged
    assert len(_lines(caplog)) == 4
    assert notices.counts == {"deep": 102, "long": 1}


def test_internal_errors_log_one_traceback_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    notices = RepeatedNotices(logging.getLogger("test.notices"))

    async def broken(request: Request) -> object:
        raise RuntimeError("a bug")

    async def main() -> list[int]:
        request = Request("POST", "/x", ["x"], {}, {}, None)  # type: ignore[arg-type]
        return [(await answer(request, broken, None, notices)).status for _ in range(20)]  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="test.notices"):
        assert asyncio.run(main()) == [500] * 20
    records = [r for r in caplog.records if r.name == "test.notices"]
    assert [r.getMessage() for r in records] == [
        "internal error on POST /x (more of this kind are counted, not logged one by one)"
    ]
    assert records[0].exc_info is not None and notices.counts == {"internal error RuntimeError": 20}


# -- JSON past the parser's limits, empty batches ------------------------------------------------


def _body(data: bytes, shape: bytes = b"[1,32]") -> bytes:
    return b'{"inputs":[{"name":"X","datatype":"FP32","shape":' + shape + b',"data":' + data + b"}]}"


def _refusal(body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(body, None, SIGNATURE, model_name="reg")
    assert info.value.http_status == 400
    return info.value


def test_json_nested_past_the_recursion_limit_is_a_400() -> None:
    error = _refusal(_body(b"[" * 5000 + b"]" * 5000))
    assert isinstance(error, LimitExceeded) and error.kind == "JSON nested too deeply"
    assert str(error) == (
        "failed to parse the request JSON buffer: arrays or objects are nested too deeply "
        f"(the server parses fewer than {sys.getrecursionlimit()} levels)"
    )


def test_a_number_past_the_digit_limit_is_a_400() -> None:
    error = _refusal(_body(b"[" + b"9" * 5000 + b"]"))
    assert isinstance(error, LimitExceeded) and error.kind == "JSON number too long"
    assert str(error) == (
        f"failed to parse the request JSON buffer: a number has more than {sys.get_int_max_str_digits()} digits"
    )


def test_a_request_without_rows_is_a_400() -> None:
    error = _refusal(_body(b"[]", shape=b"[0,32]"))
    assert not isinstance(error, LimitExceeded)
    assert str(error) == (
        "inference request batch-size must be >= 1 for 'reg': input 'X' has shape [0, 32], which holds no rows"
    )


# -- NaN and infinity in JSON outputs ------------------------------------------------------------

VALUES = np.array([[np.nan], [np.inf], [-np.inf], [1.5]], dtype=np.float32)


def _strict(text: bytes) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_null_mode_writes_strict_json() -> None:
    body, headers = encode_response("reg", 1, "r1", {"y": VALUES}, (), False, "null")
    assert headers == {"Content-Type": "application/json"}
    assert _strict(body) == {
        "model_name": "reg",
        "model_version": "1",
        "id": "r1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4, 1], "data": [None, None, None, 1.5]}],
    }


def test_triton_mode_writes_the_literals_triton_writes() -> None:
    body, _ = encode_response("reg", 1, None, {"y": VALUES}, (), False)
    assert body.endswith(b'"data":[NaN,Infinity,-Infinity,1.5]}]}')
    with pytest.raises(ValueError, match="not JSON: NaN"):
        _strict(body)
    assert np.array_equal(np.array(json.loads(body)["outputs"][0]["data"]), VALUES.ravel(), equal_nan=True)


def test_finite_outputs_are_the_same_in_both_modes() -> None:
    finite = {"y": np.array([[0.25], [-3.0]], dtype=np.float32)}
    assert encode_response("reg", 1, None, finite, (), False, "null") == encode_response(
        "reg", 1, None, finite, (), False, "triton"
    )
