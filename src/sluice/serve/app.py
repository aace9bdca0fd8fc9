"""The ASGI application of ``sluice serve``: the Open Inference Protocol v2 over HTTP.

Raw ASGI, no framework: a request is routed by its path segments to one handler, which
returns a :class:`Response`; every :class:`~sluice.errors.SluiceError` becomes
``{"error": message}`` with the error's ``http_status`` (and ``Retry-After`` when shed).
Inference and repository control need the bearer token when one is set; bodies over the
limit are refused with 413 before they are read. ``GET /metrics`` is Prometheus text. With an
:class:`~sluice.serve.accesslog.AccessLog`, every answer is logged as a JSON line off the hot path.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from sluice.errors import HttpError, Overloaded, ProtocolError, SluiceError
from sluice.serve.accesslog import AccessLog, AccessRecord
from sluice.serve.experiment_metrics import render_experiment_metrics
from sluice.serve.experiments_http import TRAFFIC_ROUTES, traffic_endpoint
from sluice.serve.host import ModelHost, ServedVersion
from sluice.serve.metadata import model_config, model_metadata, server_metadata, version_policy
from sluice.serve.prometheus import render_metrics
from sluice.serve.protocol import HEADER_LENGTH, InferRequest, decode_request, encode_response, error_body
from sluice.serve.traffic import VERSION_HEADER, TrafficRouter
from sluice.serve.watch import RepositoryWatcher

__all__ = ["EXTENSIONS", "TIMEOUT_HEADER", "ASGIApp", "Response", "ServeApp"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "schedule_policy")
TIMEOUT_HEADER = "Sluice-Timeout-Ms"
"""Request header with a timeout in milliseconds (the ``timeout`` parameter takes microseconds)."""

_JSON = {"Content-Type": "application/json"}


@dataclass
class Response:
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: object, status: int = 200) -> Response:
        return cls(status, json.dumps(document, separators=(",", ":")).encode("utf-8"), dict(_JSON))


@dataclass
class _Request:
    method: str
    parts: list[str]
    headers: dict[str, str]
    receive: Receive


Handler = Callable[[_Request], Awaitable[Response]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeApp:
    """The ASGI callable; ``host`` holds the models, the rest are the server's limits.

    ``mounts`` adds ASGI apps by path prefix (``{"/v1/jobs": app}``): HTTP requests under a
    prefix go to its app once the bearer token is checked; they do not see lifespan events.
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
    ) -> None:
        self.host = host
        self.access_log = access_log
        self.mounts = {prefix.rstrip("/"): app for prefix, app in (mounts or {}).items()}
        self.watcher = watcher
        self.auth_token = auth_token
        self.max_body_bytes = max_body_bytes
        self.requests: Counter[tuple[str, str]] = Counter()
        self.failures: Counter[tuple[str, str, int]] = Counter()
        self._loading: asyncio.Task[None] | None = None
        self.traffic = TrafficRouter(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            started_s = time.perf_counter()
            mounted = self._mounted(scope["path"])
            denied = self._deny(scope) if mounted is not None else None
            if mounted is not None and denied is None:
                await mounted(scope, receive, send)
                return
            response = denied or await self.handle(scope, receive)
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
            headers.append((b"content-length", str(len(response.body)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": response.body})
            if self.access_log is not None:
                _log_access(self.access_log, scope, response, started_s)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.access_log is not None:
                    self.access_log.start()
                # load in the background: live answers at once, ready once every model is warm
                self._loading = asyncio.get_running_loop().create_task(self._load_and_watch())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.host.begin_drain()
                if self._loading is not None:
                    await self._loading
                if self.watcher is not None:
                    await self.watcher.stop()
                await self.traffic.close()
                await self.host.close()
                if self.access_log is not None:
                    self.access_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _load_and_watch(self) -> None:
        if self.watcher is not None:
            self.watcher.prime()  # before loading: a change made meanwhile is seen on the first poll
        await self.host.load_all()
        if self.watcher is not None:
            self.watcher.start()

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        """Route one HTTP request and answer it; errors become ``{"error": …}`` responses."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = _Request(scope["method"], [p for p in scope["path"].split("/") if p], headers, receive)
        try:
            return await self._route(request)(request)
        except SluiceError as exc:
            return _error_response(exc)
        except Exception as exc:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            return Response(500, error_body(f"internal error: {type(exc).__name__}: {exc}"), dict(_JSON))

    def _mounted(self, path: str) -> ASGIApp | None:
        for prefix, app in self.mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                return app
        return None

    def _deny(self, scope: Scope) -> Response | None:
        """The 401 answer for a mounted app's request without the bearer token, else None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._authorize(_Request(scope["method"], [], headers, _no_body))
        except HttpError as exc:
            return _error_response(exc)
        return None

    # -- routing -------------------------------------------------------------------------------

    def _route(self, request: _Request) -> Handler:
        parts = request.parts
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
        raise HttpError(f"no route for {request.method} /{'/'.join(parts)}", 404)

    def _model_route(self, request: _Request) -> Handler:
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
            raise HttpError(f"no route for {request.method} /{'/'.join(request.parts)}", 404)
        return _method(request, *handlers[action])

    # -- health and metadata -------------------------------------------------------------------

    async def _live(self, request: _Request) -> Response:
        return Response.json({"live": True})

    async def _ready(self, request: _Request) -> Response:
        ready = self.host.ready
        return Response.json({"ready": ready}, 200 if ready else 503)

    async def _server_metadata(self, request: _Request) -> Response:
        return Response.json(server_metadata(EXTENSIONS))

    async def _model_metadata(self, request: _Request) -> Response:
        served = self._served(request)
        versions = [v.version for v in self.host.served().get(served.name, [])]
        document = model_metadata(served.name, versions, served.signature, served.platform)
        return Response.json(document)

    async def _model_ready(self, request: _Request) -> Response:
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

    async def _model_config(self, request: _Request) -> Response:
        served = self._served(request)
        config = model_config(served.name, served.signature, served.max_batch_size, platform=served.platform)
        loaded = self.host.config(served.name)
        config["version_policy"] = version_policy(loaded.versions) if loaded is not None else {}
        return Response.json(config)

    async def _metrics(self, request: _Request) -> Response:
        text = render_metrics(self.host.served(), self.requests, self.failures)
        text += render_experiment_metrics(self.traffic.experiments())
        return Response(200, text.encode("utf-8"), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # -- inference -----------------------------------------------------------------------------

    async def _infer(self, request: _Request) -> Response:
        self._authorize(request)
        name, selector = _model_selector(request)
        key = ("", "")
        try:
            admitting = self.host.get(name, selector)
            key = (admitting.name, str(admitting.version))
            # a version that would shed even a one-row request refuses before the body is
            # read, the cheapest answer under overload (a routed request's version is known
            # only from its body)
            if selector is not None or self.traffic.experiment(name) is None:
                admitting.dispatcher.refuse_early(_timeout_s(request.headers, None))
            body = await self._read_body(request)
            # resolved again after the last await: a version swapped out meanwhile is closing,
            # and from here to the dispatcher's queue nothing yields to the loop
            choice = self.traffic.choose(name, selector, body, request.headers)
            served = self.host.get(name, choice.selector)
        except SluiceError as exc:
            self.failures[(*key, exc.http_status)] += 1
            raise
        key = (served.name, str(served.version))
        self.requests[key] += 1
        started_s = self.traffic.clock()
        try:
            response, decoded, outputs = await self._run_inference(body, request, served)
        except SluiceError as exc:
            self.failures[(*key, exc.http_status)] += 1
            self.traffic.failed(choice, served, started_s, exc.http_status)
            raise
        self.traffic.answered(choice, served, decoded.id, decoded.inputs, outputs, started_s)
        return response

    async def _run_inference(
        self, body: bytes, request: _Request, served: ServedVersion
    ) -> tuple[Response, InferRequest, dict[str, Any]]:
        decoded = decode_request(
            body,
            _header_length(request.headers),
            served.signature,
            model_name=served.name,
            max_batch_size=served.max_batch_size,
        )
        timeout_s = _timeout_s(request.headers, decoded.timeout_us)
        outputs = await served.dispatcher.submit(decoded.inputs, decoded.batch_size, timeout_s)
        payload, headers = encode_response(
            served.name, served.version, decoded.id, outputs, decoded.outputs, decoded.binary_data_output
        )
        headers[VERSION_HEADER] = str(served.version)
        return Response(200, payload, headers), decoded, outputs

    async def _traffic(self, request: _Request) -> Response:
        action = tuple(request.parts[3:])
        allowed = TRAFFIC_ROUTES[action]
        if request.method not in allowed:
            raise HttpError(f"method {request.method} not allowed on /{'/'.join(request.parts)}; use {allowed[0]}", 405)
        if request.method == "POST":
            self._authorize(request)
        document = _json_object(await self._read_body(request))
        return Response.json(await traffic_endpoint(self.traffic, request.parts[2], action, request.method, document))

    # -- repository ----------------------------------------------------------------------------

    async def _index(self, request: _Request) -> Response:
        self._authorize(request)
        document = _json_object(await self._read_body(request))
        return Response.json(self.host.index(ready_only=bool(document.get("ready", False))))

    async def _load(self, request: _Request) -> Response:
        self._authorize(request)
        _json_object(await self._read_body(request))
        await self.host.load(request.parts[3])
        return Response.json({})

    async def _unload(self, request: _Request) -> Response:
        self._authorize(request)
        _json_object(await self._read_body(request))
        await self.host.unload(request.parts[3])
        return Response.json({})

    # -- helpers -------------------------------------------------------------------------------

    def _served(self, request: _Request) -> ServedVersion:
        return self.host.get(*_model_selector(request))

    def _authorize(self, request: _Request) -> None:
        if self.auth_token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="sluice"'}
        if not given:
            raise HttpError("missing bearer token: send 'Authorization: Bearer <token>'", 401, challenge)
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.auth_token.encode()):
            raise HttpError("invalid bearer token", 401, challenge)

    async def _read_body(self, request: _Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ProtocolError(f"invalid Content-Length {declared!r}")
            if int(declared) > self.max_body_bytes:
                raise self._too_large(int(declared))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise HttpError("the client disconnected before sending the whole body", 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int) -> HttpError:
        return HttpError(f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes", 413)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _method(request: _Request, method: str, handler: Handler) -> Handler:
    if request.method != method:
        raise HttpError(f"method {request.method} not allowed on /{'/'.join(request.parts)}; use {method}", 405)
    return handler


def _model_selector(request: _Request) -> tuple[str, str | None]:
    parts = request.parts
    version = parts[4] if len(parts) >= 5 and parts[3] == "versions" else None
    return parts[2], version


def _header_length(headers: dict[str, str]) -> int | None:
    value = headers.get(HEADER_LENGTH.lower())
    if value is None:
        return None
    if not value.isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    return int(value)


def _timeout_s(headers: dict[str, str], timeout_us: int | None) -> float | None:
    value = headers.get(TIMEOUT_HEADER.lower())
    if value is not None:
        try:
            timeout_ms = float(value)
        except ValueError:
            raise ProtocolError(f"{TIMEOUT_HEADER} must be a number of milliseconds, got {value!r}") from None
        if not math.isfinite(timeout_ms) or timeout_ms <= 0:
            raise ProtocolError(f"{TIMEOUT_HEADER} must be a positive number of milliseconds, got {value!r}")
        return timeout_ms / 1000
    return timeout_us / 1e6 if timeout_us else None  # 0 means none, as in Triton


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError("the request JSON must be an object")
    return document


def _error_response(exc: SluiceError) -> Response:
    headers = dict(_JSON)
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, HttpError):
        headers.update(exc.headers)
    return Response(exc.http_status, error_body(str(exc)), headers)


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
