"""The Open Inference Protocol over gRPC: Triton's ``inference.GRPCInferenceService`` on grpcio.

The gRPC edge translates; it decides nothing. Inference goes through the same
:class:`~sluice.serve.inference.InferencePath` as HTTP (admission, routing, A/B and shadows, the
batcher, counting for ``/metrics``); health, metadata, configuration and repository control read
the same :class:`~sluice.serve.host.ModelHost`. The bearer token travels as ``authorization:
Bearer …`` metadata. Errors carry the gRPC code Triton uses for the HTTP status the path raised
(:data:`STATUS_CODES`). A call the client cancels or abandons is cancelled here too, which takes
its request out of the batcher's queue when it has not started.

The service runs on the HTTP server's event loop, started and stopped with it (:class:`GrpcEdge`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from sluice.errors import ConfigError, Overloaded, SluiceError
from sluice.serve.auth import BearerAuth
from sluice.serve.batcher import retry_after_header
from sluice.serve.grpc_codec import decode_infer, encode_infer, parameter_value
from sluice.serve.grpc_config import GrpcEndpoint
from sluice.serve.host import ModelHost, ServedVersion
from sluice.serve.inference import InferencePath
from sluice.serve.metadata import model_config, model_metadata, server_metadata, version_policy
from sluice.serve.protocol import InferRequest

__all__ = ["STATUS_CODES", "GrpcEdge", "InferenceService", "retry_trailers"]

log = logging.getLogger(__name__)

STATUS_CODES: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The gRPC status code for each HTTP status the serving path raises; any other is INTERNAL."""


class _GrpcCall:
    """One ``ModelInfer`` call, as :class:`~sluice.serve.inference.InferCall` sees it."""

    __slots__ = ("context", "deadline_s", "metadata", "request", "response")

    def __init__(self, request: Any, context: grpc.aio.ServicerContext, metadata: Mapping[str, str]) -> None:
        self.request = request
        self.context = context
        self.metadata = metadata
        self.response: Any = None
        # what was left of the call's deadline when it arrived: the path counts time from then
        remaining = context.time_remaining()
        self.deadline_s = None if remaining is None else max(0.0, float(remaining))

    def early_timeout_s(self) -> float | None:
        return self.deadline_s

    async def read(self) -> None:
        return None  # the message arrived whole

    def sticky_key(self, spec: str) -> str | None:
        if spec.startswith("header:"):
            return self.metadata.get(spec.removeprefix("header:").lower())
        path = spec.removeprefix("parameters.")
        if "." in path or path not in self.request.parameters:
            return None  # request parameters are one flat map on gRPC
        value = parameter_value(self.request.parameters[path])
        return None if value is None else str(value)

    def decode(self, served: ServedVersion) -> InferRequest:
        return decode_infer(
            self.request, served.signature, model_name=served.name, max_batch_size=served.max_batch_size
        )

    def timeout_s(self, decoded: InferRequest) -> float | None:
        timeouts = [t for t in (self.early_timeout_s(), (decoded.timeout_us or 0) / 1e6 or None) if t is not None]
        return min(timeouts) if timeouts else None

    def watch_client(self) -> None:
        return None  # grpc cancels the call's task itself when the client cancels or goes away

    def encode(self, served: ServedVersion, decoded: InferRequest, outputs: Mapping[str, Any]) -> Any:
        return encode_infer(
            service_pb2.ModelInferResponse(), served.name, served.version, decoded.id, outputs, decoded.outputs
        )


async def _abort(context: grpc.aio.ServicerContext, exc: SluiceError) -> NoReturn:
    code = STATUS_CODES.get(exc.http_status, grpc.StatusCode.INTERNAL)
    if isinstance(exc, Overloaded):
        context.set_trailing_metadata(retry_trailers(exc))
    await context.abort(code, str(exc))
    raise AssertionError("grpc's abort always raises")  # pragma: no cover


def retry_trailers(error: Overloaded) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a shed call: ``retry-after`` in whole seconds (as HTTP's header)
    and ``grpc-retry-pushback-ms``, which a gRPC client with a retry policy waits for (gRFC A6)."""
    pushback_ms = max(1, math.ceil(error.retry_after_s * 1000))
    return (("retry-after", retry_after_header(error)), ("grpc-retry-pushback-ms", str(pushback_ms)))


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    # the methods carry the RPCs' names
    """The RPCs of ``inference.GRPCInferenceService`` that Triton's clients and perf_analyzer call."""

    def __init__(self, host: ModelHost, inference: InferencePath, auth: BearerAuth, extensions: Sequence[str]) -> None:
        self.host = host
        self.inference = inference
        self.auth = auth
        self.extensions = tuple(extensions)

    # -- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.host.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self.host.get(request.name, request.version or None)
        except SluiceError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerMetadataResponse(**server_metadata(self.extensions))

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        served = await self._served(request.name, request.version, context)
        versions = [v.version for v in self.host.served().get(served.name, [])]
        document = model_metadata(served.name, versions, served.signature, served.platform)
        return json_format.ParseDict(document, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        served = await self._served(request.name, request.version, context)
        try:
            config = model_config(served.name, served.signature, served.max_batch_size, platform=served.platform)
        except SluiceError as exc:
            await _abort(context, exc)
        loaded = self.host.config(served.name)
        if loaded is not None:
            config["version_policy"] = version_policy(loaded.versions)
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=message)

    # -- inference -----------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = _metadata(context)
        try:
            self.auth.check(metadata.get("authorization"))
            return await self.inference.run(
                request.model_name, request.model_version or None, _GrpcCall(request, context, metadata)
            )
        except SluiceError as exc:
            await _abort(context, exc)

    # -- repository ----------------------------------------------------------------------------

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        response = service_pb2.RepositoryIndexResponse()
        for entry in self.host.index(ready_only=request.ready):
            response.models.add(**entry)
        return response

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        try:
            await self.host.load(request.model_name)
        except SluiceError as exc:
            await _abort(context, exc)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        try:
            await self.host.unload(request.model_name)
        except SluiceError as exc:
            await _abort(context, exc)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- helpers -------------------------------------------------------------------------------

    async def _served(self, name: str, version: str, context: grpc.aio.ServicerContext) -> ServedVersion:
        try:
            return self.host.get(name, version or None)
        except SluiceError as exc:
            await _abort(context, exc)

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        try:
            self.auth.check(_metadata(context).get("authorization"))
        except SluiceError as exc:
            await _abort(context, exc)


_UNSUPPORTED = {
    "ModelStreamInfer": "streaming inference",
    "ModelStatistics": "per-model statistics (see GET /metrics)",
    "SystemSharedMemoryStatus": "system shared memory",
    "SystemSharedMemoryRegister": "system shared memory",
    "SystemSharedMemoryUnregister": "system shared memory",
    "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory",
    "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "trace settings",
    "LogSettings": "log settings",
}


def _unsupported(rpc: str, what: str) -> Any:
    async def refuse(self: InferenceService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc}: sluice serve does not offer {what}")

    refuse.__name__ = rpc
    return refuse


for _rpc, _what in _UNSUPPORTED.items():  # the RPCs of Triton's service that Sluice does not offer
    setattr(InferenceService, _rpc, _unsupported(_rpc, _what))


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key.lower(): value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class GrpcEdge:
    """The gRPC server of ``service`` at ``endpoint``, on the running event loop."""

    def __init__(self, service: InferenceService, endpoint: GrpcEndpoint) -> None:
        self.service = service
        self.endpoint = endpoint
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and start serving; a port that cannot be bound raises :class:`~sluice.errors.ConfigError`."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.endpoint.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # a port in use must fail to bind, not be shared silently; the workers of one
                # server share theirs (their supervisor holds it, so no other server can join)
                ("grpc.so_reuseport", 1 if self.endpoint.reuse_port else 0),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, server)
        try:
            self.port = server.add_insecure_port(self.endpoint.address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError(f"could not serve gRPC on {self.endpoint.address} (is the port in use?)")
        await server.start()
        self._server = server
        log.info("gRPC: serving the Open Inference Protocol on %s:%d", self.endpoint.host, self.port)

    async def stop(self) -> None:
        """Stop taking calls; calls in flight get up to the drain timeout to finish."""
        if self._server is not None:
            await self._server.stop(self.endpoint.drain_timeout_s)
            self._server = None
