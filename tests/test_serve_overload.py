"""Overload end to end: a real server on 127.0.0.1 with a deliberately slow Python model.

Admission is decided before a request's body is read, against a fixed budget: the requests
admitted are the ones the queue has room for, the rest get 503 with Retry-After over HTTP and
UNAVAILABLE with a retry hint over gRPC (tritonclient), and ``sluice_shed_total`` counts exactly
those. The time a request already spent on the server counts against its timeout.

The model holds its batch while a ``hold`` file exists, so a test fills the server exactly and
nothing here depends on how fast the machine is; the waits are guards against hanging.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from overload_support import (
    BODY,
    BURST,
    FULL,
    GUARD_S,
    QUEUE_ROWS,
    Model,
    metric,
    occupy,
    post,
    read_response,
    retry_after,
    until,
    write_repository,
)
from sluice.bench import grpcload
from sluice.serve.server import ServerThread, ServeSettings


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("overload-repo"))


@pytest.fixture(scope="module")
def server(version_dir: Path) -> Iterator[ServerThread]:
    settings = ServeSettings(repository=version_dir.parent.parent, port=0, grpc_port=0, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running


@pytest.fixture
def model(version_dir: Path) -> Iterator[Model]:
    files = Model(version_dir)
    yield files
    files.release()


# -- HTTP ---------------------------------------------------------------------------------------


def test_a_burst_over_http_admits_what_the_queue_holds_and_sheds_the_rest(server: ServerThread, model: Model) -> None:
    shed_before = metric(server.port, "sluice_shed_total")
    model.hold()
    with ThreadPoolExecutor(max_workers=BURST + 1) as pool:
        running = pool.submit(post, server.port)
        until(lambda: len(model.batches()) == 1, "the first batch runs")
        burst = [pool.submit(post, server.port) for _ in range(BURST)]
        # the shed ones are answered while the model is still held: nothing waited for it
        until(lambda: sum(f.done() for f in burst) == BURST - QUEUE_ROWS, "the shed requests are answered")
        assert metric(server.port, "sluice_queue_depth_requests") == QUEUE_ROWS
        model.release()
        answers = [running.result(), *(f.result() for f in burst)]
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * (1 + QUEUE_ROWS) + [503] * (BURST - QUEUE_ROWS)
    for status, headers, body in answers:
        if status == 503:
            retry_after(headers)
            assert json.loads(body) == {"error": FULL}
        else:
            assert json.loads(body)["outputs"][0]["data"] == [3.0]
    assert model.batches() == [1, QUEUE_ROWS]  # the shed requests were never computed
    assert metric(server.port, "sluice_shed_total") - shed_before == BURST - QUEUE_ROWS


def test_a_request_is_shed_before_its_body_is_sent(server: ServerThread, model: Model) -> None:
    shed_before = metric(server.port, "sluice_shed_total")
    with ThreadPoolExecutor(max_workers=QUEUE_ROWS + 1) as pool:
        admitted = occupy(server.port, model, pool)
        with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD_S) as stalled:
            head = (
                f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n"
            )
            stalled.sendall(head.encode())  # and no body: the answer must not wait for it
            status_line, headers, body = read_response(stalled)
        model.release()
        assert [f.result()[0] for f in admitted] == [200] * (1 + QUEUE_ROWS)
    assert status_line == "HTTP/1.1 503 Service Unavailable"
    retry_after(headers)
    assert json.loads(body) == {"error": FULL}
    assert metric(server.port, "sluice_shed_total") - shed_before == 1
    assert model.batches() == [1, QUEUE_ROWS]


def test_a_routed_request_is_shed_before_its_body_when_every_variant_would_shed_it(
    server: ServerThread, version_dir: Path
) -> None:
    variants = [Model(version_dir.parent.parent / "ab" / version) for version in ("1", "2")]
    shed_before = [metric(server.port, "sluice_shed_total", "ab", version) for version in ("1", "2")]
    try:
        with ThreadPoolExecutor(max_workers=2 * (QUEUE_ROWS + 1)) as pool:
            admitted = [f for v, m in zip("12", variants, strict=True) for f in occupy(server.port, m, pool, "ab", v)]
            with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD_S) as stalled:
                head = f"POST /v2/models/ab/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(BODY)}\r\n\r\n"
                stalled.sendall(head.encode())  # and no body: which variant it goes to is still unknown
                status_line, headers, body = read_response(stalled)
            for variant in variants:
                variant.release()
            assert [f.result()[0] for f in admitted] == [200] * 2 * (1 + QUEUE_ROWS)
    finally:
        for variant in variants:
            variant.release()
    assert status_line == "HTTP/1.1 503 Service Unavailable"
    retry_after(headers)
    assert json.loads(body) == {"error": FULL}
    shed_after = [metric(server.port, "sluice_shed_total", "ab", version) for version in ("1", "2")]
    # counted once, on the variant first in the routing table
    assert [a - b for a, b in zip(shed_after, shed_before, strict=True)] == [1, 0]
    assert [variant.batches() for variant in variants] == [[1, QUEUE_ROWS], [1, QUEUE_ROWS]]


def test_the_time_a_request_waited_for_its_body_counts_against_its_timeout(server: ServerThread, model: Model) -> None:
    timeouts_before = metric(server.port, "sluice_timeouts_total")
    with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD_S) as slow:
        head = (
            f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nSluice-Timeout-Ms: 200\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        )
        slow.sendall(head.encode())
        time.sleep(0.4)  # twice the timeout: by the time the body is in, the client has given up
        slow.sendall(BODY)
        status_line, _, body = read_response(slow)
    assert status_line == "HTTP/1.1 504 Gateway Timeout"
    message = json.loads(body)["error"]
    assert re.fullmatch(
        r"the request's timeout of 200 ms passed before it could be queued \(\d+ ms after it arrived\)", message
    )
    assert model.batches() == []  # never computed
    assert metric(server.port, "sluice_timeouts_total") - timeouts_before == 1


# -- gRPC ---------------------------------------------------------------------------------------


def _grpc_input() -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.array([1.5], dtype=np.float32))
    return [x]


def test_a_burst_over_grpc_is_shed_unavailable_as_over_http(server: ServerThread, model: Model) -> None:
    shed_before = metric(server.port, "sluice_shed_total")

    async def main() -> list[object]:
        triton = grpcaio.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
        try:
            model.hold()
            running = asyncio.ensure_future(triton.infer("slow", _grpc_input()))
            await asyncio.to_thread(until, lambda: len(model.batches()) == 1, "the first batch runs")
            burst = [asyncio.ensure_future(triton.infer("slow", _grpc_input())) for _ in range(BURST)]
            done = lambda: sum(f.done() for f in burst) == BURST - QUEUE_ROWS  # noqa: E731
            await asyncio.to_thread(until, done, "the shed calls are answered")
            model.release()
            return await asyncio.gather(running, *burst, return_exceptions=True)
        finally:
            await triton.close()

    outcomes = asyncio.run(main())
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    answered = [o for o in outcomes if isinstance(o, grpcclient.InferResult)]
    assert (len(answered), len(refused)) == (1 + QUEUE_ROWS, BURST - QUEUE_ROWS)
    assert {(e.status(), e.message()) for e in refused} == {("StatusCode.UNAVAILABLE", FULL)}
    assert all(r.as_numpy("y").tolist() == [3.0] for r in answered)
    assert model.batches() == [1, QUEUE_ROWS]
    assert metric(server.port, "sluice_shed_total") - shed_before == BURST - QUEUE_ROWS


def test_a_shed_grpc_call_carries_the_retry_hint_in_its_trailers(server: ServerThread, model: Model) -> None:
    request = service_pb2.ModelInferRequest(model_name="slow")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.5)
    with ThreadPoolExecutor(max_workers=QUEUE_ROWS + 1) as pool:
        admitted = occupy(server.port, model, pool)
        with (
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
            pytest.raises(grpc.RpcError) as exc_info,
        ):
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=GUARD_S)
        model.release()
        assert [f.result()[0] for f in admitted] == [200] * (1 + QUEUE_ROWS)
    error = exc_info.value
    assert isinstance(error, grpc.Call)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, FULL)
    trailers = dict(error.trailing_metadata() or ())
    seconds, pushback_ms = int(trailers["retry-after"]), int(trailers["grpc-retry-pushback-ms"])
    assert seconds >= 1 and pushback_ms >= 1
    assert seconds == max(1, -(-pushback_ms // 1000))  # the same hint, in whole seconds


def test_the_grpc_load_generator_counts_shed_calls_as_503(server: ServerThread, model: Model) -> None:
    metadata = json.loads(urllib.request.urlopen(f"http://{server.url}/v2/models/slow", timeout=10).read())
    call = grpcload.GrpcRequest.for_model(f"127.0.0.1:{server.grpc_port}", "slow", metadata)
    answered = asyncio.run(grpcload.closed_loop(call, 2, 0.2))
    assert set(answered.statuses) == {200} and answered.latency.count == answered.ok > 0
    rng, arrivals, scheduled = random.Random(7), 0, 0.0
    while scheduled < 0.2:  # the arrivals open_loop schedules for this seed and duration
        scheduled += rng.expovariate(100.0)
        arrivals += 1
    shed_before = metric(server.port, "sluice_shed_total")
    with ThreadPoolExecutor(max_workers=QUEUE_ROWS + 1) as pool:
        admitted = occupy(server.port, model, pool)
        refused = asyncio.run(grpcload.open_loop(call, 100.0, 0.2, seed=7))
        model.release()
        assert [f.result()[0] for f in admitted] == [200] * (1 + QUEUE_ROWS)
    assert (dict(refused.statuses), refused.dropped) == ({503: arrivals}, 0)
    assert metric(server.port, "sluice_shed_total") - shed_before == arrivals
