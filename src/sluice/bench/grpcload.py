"""A gRPC load generator for the Open Inference Protocol's ``ModelInfer``, beside the HTTP one.

The request is serialized once and sent as bytes on one grpc.aio channel; answers are not
parsed (only their status counts), so the client pays as little per call as grpcio allows. The
same two ways to offer load as :mod:`sluice.bench.loadgen`, with the same
:class:`~sluice.bench.loadgen.LevelResult`: gRPC codes are counted as the HTTP statuses the
server maps them from (UNAVAILABLE: 503, DEADLINE_EXCEEDED: 504, …), so the tables read alike.
grpcio and tritonclient (the ``serve`` extra) are imported when a load is built.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sluice.bench.loadgen import NO_ANSWER, LevelResult

__all__ = ["GrpcRequest", "closed_loop", "open_loop"]

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_NUMPY = {"BOOL": "bool", "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
_STATUSES = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


@dataclass(frozen=True)
class GrpcRequest:
    """One ``ModelInfer`` call to repeat: the server's ``host:port`` and the serialized request."""

    target: str
    payload: bytes

    @classmethod
    def for_model(
        cls, target: str, model: str, metadata: dict[str, Any], *, rows: int = 1, seed: int = 0
    ) -> GrpcRequest:
        """Random raw inputs of ``rows`` rows, shaped as the model's (HTTP) metadata says."""
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=model)
        rng = np.random.default_rng(seed)
        for spec in metadata["inputs"]:
            shape = [rows if i == 0 and d < 0 else (1 if d < 0 else d) for i, d in enumerate(spec["shape"])]
            values = rng.normal(size=shape).astype(_NUMPY[spec["datatype"]])
            request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=shape)
            request.raw_input_contents.append(np.ascontiguousarray(values).tobytes())
        return cls(target, request.SerializeToString())


Call = Callable[[], Awaitable[int]]


def _caller(request: GrpcRequest) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import grpc

    channel = grpc.aio.insecure_channel(request.target)
    method = channel.unary_unary(_METHOD)  # bytes in, bytes out: nothing is parsed

    async def call() -> int:
        try:
            await method(request.payload)
        except grpc.aio.AioRpcError as exc:
            return _STATUSES.get(exc.code().name, NO_ANSWER)
        return 200

    return call, channel.close


async def _timed(call: Call, result: LevelResult, started: float) -> None:
    status = await call()
    result.statuses[status] += 1
    if status == 200:
        result.latency.record(time.perf_counter() - started)


async def closed_loop(request: GrpcRequest, concurrency: int, duration_s: float) -> LevelResult:
    """``concurrency`` callers, each calling again as soon as its last call is answered."""
    result = LevelResult(f"concurrency {concurrency}")
    call, close = _caller(request)
    start = time.perf_counter()
    deadline = start + duration_s

    async def caller() -> None:
        while time.perf_counter() < deadline:
            await _timed(call, result, time.perf_counter())

    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        result.seconds = time.perf_counter() - start
        await close()
    return result


async def open_loop(
    request: GrpcRequest, rate_per_s: float, duration_s: float, *, max_in_flight: int = 512, seed: int = 0
) -> LevelResult:
    """Poisson arrivals at ``rate_per_s``; latency counts from each arrival's scheduled time."""
    result = LevelResult(f"rate {rate_per_s:g}/s")
    rng = random.Random(seed)  # noqa: S311 - reproducible arrival times, nothing secret
    call, close = _caller(request)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    scheduled = start
    try:
        while scheduled < start + duration_s:
            scheduled += rng.expovariate(rate_per_s)
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_in_flight:
                result.dropped += 1
                continue
            task = asyncio.create_task(_timed(call, result, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        result.seconds = time.perf_counter() - start
        await close()
    return result
