"""Run the Open Inference Protocol server: in the foreground (``sluice serve``) or in a thread.

:class:`ServeSettings` is the one validated settings object; :func:`run` serves until
SIGINT/SIGTERM (with ``workers`` > 1, as a supervisor of that many serving processes:
:mod:`sluice.serve.workers`); :class:`ServerThread` starts the same server in-process on a
background thread (tests, notebooks) and stops it again. uvicorn is imported only here (and by
:mod:`sluice.serve.slowclients`, whose protocol guards it against slow clients), when serving.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Literal

from sluice.errors import ConfigError, MissingDependency
from sluice.serve.settings import (
    CUT_OFF_GRACE_S,
    SWITCH_INTERVAL_S,
    MountFactory,
    Mounts,
    ServeSettings,
    prepare_process,
)

if TYPE_CHECKING:
    import uvicorn

    from sluice.serve.app import ServeApp
    from sluice.serve.grpc_config import GrpcEndpoint
    from sluice.serve.host import ModelHost

__all__ = [
    "CUT_OFF_GRACE_S",
    "SWITCH_INTERVAL_S",
    "MountFactory",
    "Mounts",
    "ServeSettings",
    "ServerThread",
    "build_app",
    "prepare_process",
    "run",
    "serve_app",
]

log = logging.getLogger(__name__)


def build_app(
    settings: ServeSettings, *, mounts: Mounts | None = None, host_type: type[ModelHost] | None = None
) -> ServeApp:
    """The ASGI application for ``settings`` (models load when the server starts).

    ``mounts`` adds apps by path prefix behind the same bearer token (see :class:`ServeApp`);
    ``host_type`` holds the models (a worker process's :class:`~sluice.serve.worker.FleetHost`).
    """
    from sluice.models.config import LoadOptions
    from sluice.models.repository import ModelRepository
    from sluice.serve.accesslog import AccessLog
    from sluice.serve.app import ServeApp
    from sluice.serve.host import ModelHost
    from sluice.serve.watch import RepositoryWatcher

    if not settings.repository.is_dir():
        raise ConfigError(f"model repository {settings.repository} is not a directory")
    host = (host_type or ModelHost)(
        ModelRepository(settings.repository),
        options=LoadOptions(
            trust_pickle=settings.trust_pickle,
            intra_op_threads=settings.intra_op_threads,
            device=settings.device,
            precision=settings.precision,
        ),
        target_p99_ms=settings.target_p99_ms,
    )
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    watcher = RepositoryWatcher(host, interval_s=settings.watch_interval_s) if settings.watch else None
    access_log = AccessLog.open(settings.access_log) if settings.access_log else None
    return ServeApp(
        host,
        auth_token=token,
        max_body_bytes=settings.max_body_bytes,
        watcher=watcher,
        access_log=access_log,
        mounts=mounts,
        non_finite=settings.json_non_finite,
        grpc=_grpc_endpoint(settings),
    )


def _grpc_endpoint(settings: ServeSettings) -> GrpcEndpoint | None:
    if settings.grpc_port is None:
        return None
    from sluice.serve.grpc_config import GrpcEndpoint

    for module in ("grpc", "tritonclient.grpc"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependency(
                module.split(".")[0], "serve", "serving gRPC (grpc_port=None serves HTTP only)"
            ) from None
    return GrpcEndpoint(
        host=settings.host,
        port=settings.grpc_port,
        max_message_bytes=settings.max_body_bytes,
        drain_timeout_s=settings.drain_timeout_s,
        reuse_port=settings.workers > 1,
    )


def _uvicorn_server(
    settings: ServeSettings,
    app: ServeApp,
    *,
    foreground: bool = False,
    on_started: Callable[[], None] | None = None,
) -> uvicorn.Server:
    try:
        import uvicorn
    except ImportError:
        raise MissingDependency("uvicorn", "serve", "sluice serve") from None
    loop: Literal["uvloop", "asyncio"] = "asyncio"
    if foreground:  # uvloop sets a process-wide loop policy: only when the process is the server
        try:
            import uvloop  # noqa: F401 — the faster event loop, when installed

            loop = "uvloop"
        except ImportError:
            pass
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=_guarded_protocol(settings, app),
        loop=loop,
        lifespan="on",
        access_log=False,
        log_level=settings.log_level,
        # past the drain timeout the app answers what is still queued 503 itself (cut_off_drain);
        # uvicorn cancels what still runs a little later, and the app answers those 503 too
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s) + CUT_OFF_GRACE_S,
    )

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.host.begin_drain()  # readiness false at once; in-flight requests still finish
            log.info("shutting down: not ready; draining in-flight requests (up to %.0f s)", settings.drain_timeout_s)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if on_started is not None and self.started:
                on_started()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.host.begin_drain()
            cut_off = asyncio.get_running_loop().call_later(settings.drain_timeout_s, _cut_off, app)
            try:
                await super().shutdown(sockets)
            finally:
                cut_off.cancel()

    return DrainingServer(config)


def _guarded_protocol(settings: ServeSettings, app: ServeApp) -> type[asyncio.Protocol]:
    from sluice.serve.slowclients import IncompleteRequests, SlowClientGuard, default_max_incomplete, guarded_protocol

    try:
        import httptools  # noqa: F401 — the faster HTTP parser, when installed

        http: Literal["httptools", "h11"] = "httptools"
    except ImportError:
        http = "h11"
    requests = IncompleteRequests(
        settings.header_timeout_s,
        settings.body_timeout_s,
        settings.max_incomplete_requests or default_max_incomplete(),
    )
    return guarded_protocol(http, SlowClientGuard(requests, app.notices))


def _cut_off(app: ServeApp) -> None:
    shed = app.host.cut_off_drain()
    if shed:
        log.warning("drain timeout passed: answered %d queued request(s) 503", shed)


def run(settings: ServeSettings, *, mounts: Mounts | MountFactory | None = None) -> None:
    """Serve in the foreground until interrupted; queued requests finish before it returns.

    With ``settings.workers`` > 1 this process supervises that many serving processes
    (:func:`sluice.serve.workers.run_workers`); ``mounts`` must then be a :data:`MountFactory`.
    """
    if settings.workers > 1:
        from sluice.serve.workers import run_workers

        if mounts is not None and not callable(mounts):
            raise ConfigError(
                "mounted apps cannot be shared by worker processes: pass a function that builds them "
                "(each worker calls it), or `workers=1`",
                params=("workers",),
            )
        run_workers(settings, mounts)
        return
    prepare_process(settings)
    app = build_app(settings, mounts=mounts() if callable(mounts) else mounts)
    serve_app(settings, app)


def serve_app(
    settings: ServeSettings,
    app: ServeApp,
    *,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` in the foreground (on ``sockets`` when given, else on the settings' port) until
    SIGINT/SIGTERM; ``on_started`` runs on the event loop once the sockets listen."""
    server = _uvicorn_server(settings, app, foreground=True, on_started=on_started)
    # uvicorn re-raises the signal it stopped on once it is done; a SIGTERM handler that does
    # nothing turns that into the clean exit 0 a supervisor expects after a drain
    previous = signal.signal(signal.SIGTERM, _ignore_signal)
    try:
        _serve(server, sockets)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        if app.startup_error is not None:
            raise app.startup_error
        raise ConfigError(
            f"could not serve on {settings.host}:{settings.port} (is the port in use?): choose another `port`",
            params=("port",),
        )


def _serve(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    # uvicorn exits the process (status 3) when it cannot start: a port in use, a failed
    # startup. The caller tells why instead, with the server's own exit codes.
    try:
        server.run(sockets)
    except SystemExit:
        if server.started:
            raise


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    pass


class ServerThread:
    """The server on a background thread: ``with ServerThread(settings) as s: … s.url …``."""

    def __init__(self, settings: ServeSettings, *, mounts: Mounts | None = None) -> None:
        if settings.workers > 1:
            raise ConfigError(
                "ServerThread serves in this process: `workers` must be 1 "
                "(sluice.serve.server.run serves with several)",
                params=("workers",),
            )
        self.settings = settings
        self.app = build_app(settings, mounts=mounts)
        self._server = _uvicorn_server(settings, self.app)
        self._thread = threading.Thread(target=_serve, args=(self._server,), name="sluice-serve", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (the real one when the settings asked for port 0)."""
        sockets = [sock for server in self._server.servers for sock in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.settings.port

    @property
    def grpc_port(self) -> int | None:
        """The bound gRPC port, once started (None without gRPC)."""
        return self.app.grpc.port if self.app.grpc is not None else None

    @property
    def url(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        """Start serving; returns once the socket is bound (models may still be loading)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                if self.app.startup_error is not None:
                    raise self.app.startup_error
                raise ConfigError(f"the server did not start on {self.settings.host}:{self.settings.port}")
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every model has loaded and answered its warm-up."""
        deadline = time.monotonic() + timeout_s
        while not self.app.host.ready:
            if time.monotonic() > deadline:
                raise ConfigError(f"the models did not become ready within {timeout_s:.0f} s")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, finish queued requests, unload the models."""
        self.app.host.begin_drain()
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
