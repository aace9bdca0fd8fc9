"""The ASGI application of ``sluice serve``: the Open Inference Protocol v2 over HTTP.

Raw ASGI, no framework: a request is routed by its path segments to one handler, which
returns a :class:`~sluice.http.Response`; the HTTP edge (:mod:`sluice.http`) reads bodies under
the size limit (413 before reading when ``Content-Length`` is over it) and turns every
:class:`~sluice.errors.SluiceError` into ``{"error": message}`` with the error's
``http_status`` (and ``Retry-After`` when shed). Inference goes through
:class:`~sluice.serve.inference.InferencePath`; inference and repository control need the
bearer token when one is set. ``GET /metrics`` is Prometheus text. With an
:class:`~sluice.serve.accesslog.AccessLog`, every answer is logged as a JSON line off the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from sluice.errors import HttpError, Overloaded, SluiceError
from sluice.http import (
    ASGIApp,
    Handler,
    Receive,
    RepeatedNotices,
    Request,
    Response,
    Scope,
    Send,
    answer,
    error_response,
    find_mount,
    no_route,
    parse_json_object,
    read_body,
    require_method,
    send_response,
)
from sluice.serve.accesslog import AccessLog, AccessRecord
from sluice.serve.auth import BearerAuth
from sluice.serve.batcher import retry_after_header
from sluice.serve.experiment_metrics import render_experiment_metrics
from sluice.serve.experiments_http import TRAFFIC_ROUTES, traffic_endpoint
from sluice.serve.host import ModelHost, ServedVersion
from sluice.serve.inference import TIMEOUT_HEADER, InferencePath
from sluice.serve.metadata import model_config, model_metadata, server_metadata, version_policy
from sluice.serve.prometheus import render_metrics
from sluice.serve.protocol import NonFinite
from sluice.serve.traffic import TrafficRouter
from sluice.serve.watch import RepositoryWatcher

if TYPE_CHECKING:
    from sluice.serve.grpc_config import GrpcEndpoint
    from sluice.serve.grpc_edge import GrpcEdge

__all__ = ["EXTENSIONS", "TIMEOUT_HEADER", "ASGIApp", "Response", "ServeApp"]

log = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "schedule_policy")

_INVALID_JSON = "failed to parse the request JSON buffer"  # Triton's words


class ServeApp:
    """The ASGI callable; ``host`` holds the models, the rest are the server's limits.

    ``mounts`` adds ASGI apps by path prefix (``{"/v1/jobs": app}``): HTTP requests under a
    prefix go to its app once the bearer token is checked; they do not see lifespan events.
    ``non_finite`` says how JSON outputs carry NaN and infinity
    (:data:`~sluice.serve.protocol.NonFinite`). The app's ``notices`` log requests refused at a
    limit, internal errors and slow clients as the first of each kind and then as counts.
    With ``grpc``, the same models are served over gRPC too (:mod:`sluice.serve.grpc_edge`),
    started and stopped with the server.
    """

    def __init__(
        self,
        host: ModelHost,
        *,
        auth_token: str | None = None,
        max_body_bytes: int = 64 << 20,
        watcher: RepositoryWatcher | None = None,
        access_log: AccessLog | None = None,
        mounts: Mapping[str, ASGIApp] | None = None,
        non_finite: NonFinite = "triton",
        grpc: GrpcEndpoint | None = None,
    ) -> None:
        self.host = host
        self.notices = RepeatedNotices(log)
        self.grpc_endpoint = grpc
        self.grpc: GrpcEdge | None = None
        self.startup_error: SluiceError | None = None  # why the server could not start
        self.access_log = access_log
        self.mounts = {prefix.rstrip("/"): app for prefix, app in (mounts or {}).items()}
        self.watcher = watcher
        self.auth = BearerAuth(auth_token)
        self.max_body_bytes = max_body_bytes
        self._loading: asyncio.Task[None] | None = None
        self.traffic = TrafficRouter(host)
        self.inference = InferencePath(host, self.traffic, non_finite=non_finite)
        # a worker of `sluice serve --workers N` answers /metrics for all workers (sluice.serve.worker)
        self.gather_metrics: Callable[[], Awaitable[str]] | None = None

    @property
    def auth_token(self) -> str | None:
        """The bearer token requests must carry, or None."""
        return self.auth.token

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """Inference requests per (model, version)."""
        return self.inference.requests

    @property
    def failures(self) -> Counter[tuple[str, str, int]]:
        """Failed inference requests per (model, version, status)."""
        return self.inference.failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            started_s = time.perf_counter()
            request = Request.from_scope(scope, receive)
            mounted = find_mount(self.mounts, request.path)
            if mounted is None:
                try:
                    response = await self._answer(request)
                except asyncio.CancelledError:
                    # the drain's time ran out while this request waited for its batch
                    if not self.host.draining:
                        raise
                    _uncancel()
                    response = _cut_off_response()
            else:
                denied = self._deny(request)
                if denied is None:
                    await mounted(scope, receive, send)
                    return
                response = denied
            await send_response(send, response)
            if self.access_log is not None:
                _log_access(self.access_log, scope, response, started_s)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start_grpc()
                except SluiceError as exc:
                    self.startup_error = exc
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.access_log is not None:
                    self.access_log.start()
                # load in the background: live answers at once, ready once every model is warm
                self._loading = asyncio.get_running_loop().create_task(self._load_and_watch())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shut_down()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_grpc(self) -> None:
        if self.grpc_endpoint is None:
            return
        from sluice.serve.grpc_edge import GrpcEdge, InferenceService  # grpcio only when gRPC is on

        service = InferenceService(self.host, self.inference, self.auth, EXTENSIONS)
        edge = GrpcEdge(service, self.grpc_endpoint)
        await edge.start()
        self.grpc = edge

    async def _load_and_watch(self) -> None:
        if self.watcher is not None:
            self.watcher.prime()  # before loading: a change made meanwhile is seen on the first poll
        await self.host.load_all()
        if self.watcher is not None:
            self.watcher.start()

    async def _shut_down(self) -> None:
        self.host.begin_drain()
        if self.grpc is not None:
            await self.grpc.stop()
        if self._loading is not None:
            await self._loading
        if self.watcher is not None:
            await self.watcher.stop()
        await self.traffic.close()
        await self.host.close()
        if self.access_log is not None:
            self.access_log.close()
        self.notices.flush()

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        """Route one HTTP request and answer it; errors become ``{"error": …}`` responses."""
        return await self._answer(Request.from_scope(scope, receive))

    async def _answer(self, request: Request) -> Response:
        return await answer(request, self._dispatch, _shed_headers, self.notices)

    async def _dispatch(self, request: Request) -> Response:
        return await self._route(request)(request)

    def _deny(self, request: Request) -> Response | None:
        """The 401 answer for a mounted app's request without the bearer token, else None."""
        try:
            self._authorize(request)
        except HttpError as exc:
            return error_response(exc)
        return None

    # -- routing -------------------------------------------------------------------------------

    def _route(self, request: Request) -> Handler:
        parts = request.parts
        # inference is nearly every request: routed before the tables below are built
        if parts[-1:] == ["infer"] and parts[:2] == ["v2", "models"] and _is_infer_path(parts):
            return _method(request, "POST", self._infer)
        routes: dict[tuple[str, ...], tuple[str, Handler]] = {
            ("v2",): ("GET", self._server_metadata),
            ("v2", "health", "live"): ("GET", self._live),
            ("v2", "health", "ready"): ("GET", self._ready),
            ("metrics",): ("GET", self._metrics),
            ("v2", "repository", "index"): ("POST", self._index),
        }
        if tuple(parts) in routes:
            return _method(request, *routes[tuple(parts)])
        if len(parts) == 5 and parts[:3] == ["v2", "repository", "models"] and parts[4] in ("load", "unload"):
            return _method(request, "POST", self._load if parts[4] == "load" else self._unload)
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            return self._model_route(request)
        raise no_route(request)

    def _model_route(self, request: Request) -> Handler:
        rest = request.parts[3:]
        if tuple(rest) in TRAFFIC_ROUTES:
            return self._traffic
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise HttpError("'versions' must be followed by a version number or label", 400)
            rest = rest[2:]
        action = rest[0] if len(rest) == 1 else "" if not rest else None
        handlers: dict[str | None, tuple[str, Handler]] = {
            "": ("GET", self._model_metadata),
            "ready": ("GET", self._model_ready),
            "config": ("GET", self._model_config),
            "infer": ("POST", self._infer),
        }
        if action not in handlers:
            raise no_route(request)
        return _method(request, *handlers[action])

    # -- health and metadata -------------------------------------------------------------------

    async def _live(self, request: Request) -> Response:
        return Response.json({"live": True})

    async def _ready(self, request: Request) -> Response:
        ready = self.host.ready
        return Response.json({"ready": ready}, 200 if ready else 503)

    async def _server_metadata(self, request: Request) -> Response:
        return Response.json(server_metadata(EXTENSIONS))

    async def _model_metadata(self, request: Request) -> Response:
        served = self._served(request)
        versions = [v.version for v in self.host.served().get(served.name, [])]
        document = model_metadata(served.name, versions, served.signature, served.platform)
        return Response.json(document)

    async def _model_ready(self, request: Request) -> Response:
        name, version = _model_selector(request)
        state = self.host.state(name, int(version)) if version and version.isdigit() else None
        try:
            served = self._served(request)
        except SluiceError as exc:
            if exc.http_status == 404 and "is not found" in str(exc) and state is None:
                raise
            reason = state.reason if state is not None else str(exc)
            return Response.json({"name": name, "version": version or "", "ready": False, "reason": reason}, 400)
        return Response.json({"name": served.name, "version": str(served.version), "ready": True})

    async def _model_config(self, request: Request) -> Response:
        served = self._served(request)
        config = model_config(served.name, served.signature, served.max_batch_size, platform=served.platform)
        loaded = self.host.config(served.name)
        config["version_policy"] = version_policy(loaded.versions) if loaded is not None else {}
        return Response.json(config)

    async def _metrics(self, request: Request) -> Response:
        text = self.metrics_text() if self.gather_metrics is None else await self.gather_metrics()
        return Response(200, text.encode("utf-8"), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def metrics_text(self) -> str:
        """This process's Prometheus text: request counts, the dispatchers' and the experiments' figures."""
        text = render_metrics(self.host.served(), self.requests, self.failures)
        return text + render_experiment_metrics(self.traffic.experiments())

    # -- inference and routing control ---------------------------------------------------------

    async def _infer(self, request: Request) -> Response:
        self._authorize(request)
        name, selector = _model_selector(request)
        answered = await self.inference.infer(
            name, selector, request.headers, lambda: self._body(request), request.receive
        )
        return Response(200, answered.body, answered.headers)

    async def _traffic(self, request: Request) -> Response:
        action = tuple(request.parts[3:])
        require_method(request, *TRAFFIC_ROUTES[action])
        if request.method == "POST":
            self._authorize(request)
        document = await self._json(request)
        return Response.json(await traffic_endpoint(self.traffic, request.parts[2], action, request.method, document))

    # -- repository ----------------------------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        self._authorize(request)
        document = await self._json(request)
        return Response.json(self.host.index(ready_only=bool(document.get("ready", False))))

    async def _load(self, request: Request) -> Response:
        self._authorize(request)
        await self._json(request)
        await self.host.load(request.parts[3])
        return Response.json({})

    async def _unload(self, request: Request) -> Response:
        self._authorize(request)
        await self._json(request)
        await self.host.unload(request.parts[3])
        return Response.json({})

    # -- helpers -------------------------------------------------------------------------------

    def _served(self, request: Request) -> ServedVersion:
        return self.host.get(*_model_selector(request))

    def _authorize(self, request: Request) -> None:
        self.auth.check(request.headers.get("authorization"))

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.max_body_bytes)

    async def _json(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await self._body(request), invalid=_INVALID_JSON)


def _method(request: Request, method: str, handler: Handler) -> Handler:
    require_method(request, method)
    return handler


def _is_infer_path(parts: list[str]) -> bool:
    """``/v2/models/NAME/infer`` or ``/v2/models/NAME/versions/V/infer``."""
    return len(parts) == 4 or (len(parts) == 6 and parts[3] == "versions")


def _model_selector(request: Request) -> tuple[str, str | None]:
    parts = request.parts
    version = parts[4] if len(parts) >= 5 and parts[3] == "versions" else None
    return parts[2], version


def _shed_headers(exc: SluiceError) -> dict[str, str]:
    return {"Retry-After": retry_after_header(exc)} if isinstance(exc, Overloaded) else {}


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _cut_off_response() -> Response:
    error = Overloaded("the server is shutting down: its drain timeout passed before this request finished", 1.0)
    return error_response(error, _shed_headers(error))


def _log_access(log: AccessLog, scope: Scope, response: Response, started_s: float) -> None:
    now_s = time.perf_counter()
    client = scope.get("client")
    log.record(
        AccessRecord(
            time=round(time.time() - (now_s - started_s), 6),
            method=scope["method"],
            path=scope["path"],
            status=response.status,
            duration_ms=round((now_s - started_s) * 1000, 3),
            bytes_out=len(response.body),
            client=f"{client[0]}:{client[1]}" if client else None,
        )
    )
