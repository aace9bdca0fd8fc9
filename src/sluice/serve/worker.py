"""One serving process of ``sluice serve --workers N`` (started by :mod:`sluice.serve.workers`).

A worker is the single-process server with three differences, all at its edges:

- it listens on the fleet's ports with ``SO_REUSEPORT`` (HTTP and gRPC), beside the other
  workers; the kernel spreads new connections across them;
- its :class:`FleetHost` sends the load and unload that a client asks for (HTTP, gRPC, a route
  change, a guardrail's rollback) to the supervisor, which applies them in every worker in one
  order and answers once all have; readiness is the fleet's (every worker ready);
- ``/metrics`` is the fleet's: the supervisor collects every worker's text and sums it.

It reads its :class:`~sluice.serve.fleet_link.WorkerSpec` from the control socket passed as
file descriptor its supervisor names, and drains and exits when told SIGTERM or when the supervisor goes
away (the control socket's end of stream), so a killed supervisor leaves no server behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Container
from typing import Any

from sluice.errors import SluiceError
from sluice.serve.fleet_link import (
    Collect,
    FleetReady,
    GatherMetrics,
    Link,
    ModelChange,
    ReadyChanged,
    Started,
    WorkerSpec,
    read_spec,
)
from sluice.serve.host import ModelHost
from sluice.serve.processes import listening_socket

__all__ = ["FleetHost", "main", "run_worker"]

log = logging.getLogger(__name__)


class FleetHost(ModelHost):
    """A worker's models; load and unload requests reach every worker (see the module docstring).

    Until :attr:`link` is set it behaves as a plain :class:`~sluice.serve.host.ModelHost`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link: Link | None = None
        self.fleet_ready = False
        self.unloaded: set[str] = set()  # models a client unloaded, kept unloaded across a restart

    @property
    def ready(self) -> bool:
        """This worker is ready, and so is every other (as the supervisor last said)."""
        return self.fleet_ready and self.locally_ready

    @property
    def locally_ready(self) -> bool:
        """This worker alone is ready."""
        return super().ready

    async def load(self, name: str) -> None:
        await self._everywhere(ModelChange("load", name))

    async def unload(self, name: str) -> None:
        await self._everywhere(ModelChange("unload", name))

    async def _everywhere(self, change: ModelChange) -> None:
        if self.link is None:
            await self.apply(change)
        else:
            await self.link.call(change)

    async def apply(self, change: ModelChange) -> None:
        """Apply ``change`` in this worker (the supervisor asks, in the fleet's order)."""
        try:
            if change.action == "load":
                self.unloaded.discard(change.model)
                await asyncio.to_thread(self._refresh_source, change.model)
                await ModelHost.load(self, change.model)
            else:
                self.unloaded.add(change.model)
                await ModelHost.unload(self, change.model)
        finally:
            self.publish_readiness()

    def _refresh_source(self, name: str) -> None:
        # the supervisor's watcher saw the registry alias move; this process's repository asks anew
        if name in self.repository.names():
            try:
                self.repository.refresh_source(name)
            except SluiceError as exc:
                log.warning("model '%s': cannot resolve its registry source: %s", name, exc)

    async def load_all(self, *, exclude: Container[str] = frozenset()) -> None:
        """Load the repository's models but those a client unloaded (the fleet's state at start)."""
        try:
            await super().load_all(exclude=_Both(self.unloaded, exclude))
            for name in sorted(self.unloaded):
                if name in self.repository.names():  # reported 'unloaded' in the index, as after an unload
                    await ModelHost.unload(self, name)
        finally:
            self.publish_readiness()

    def begin_drain(self) -> None:
        super().begin_drain()
        self.publish_readiness()

    def publish_readiness(self) -> None:
        """Tell the supervisor this worker's own readiness (it tells every worker the fleet's)."""
        if self.link is not None:
            self.link.tell(ReadyChanged(self.locally_ready))


class _Both:
    """Names in either container, read as each is asked (the unloaded set changes during start-up)."""

    def __init__(self, first: Container[str], second: Container[str]) -> None:
        self.first, self.second = first, second

    def __contains__(self, name: object) -> bool:
        return name in self.first or name in self.second


def run_worker(spec: WorkerSpec, control: socket.socket) -> None:
    """Serve as worker ``spec.slot`` until SIGTERM; ``control`` is the link to the supervisor."""
    from sluice.serve.server import build_app, prepare_process, serve_app

    settings = spec.settings
    prepare_process(settings)
    _name_worker_logs(spec.slot)
    app = build_app(settings, mounts=spec.mounts() if spec.mounts else None, host_type=FleetHost)
    host = app.host
    if not isinstance(host, FleetHost):  # pragma: no cover — build_app made it so
        raise SluiceError("the worker's host is not a FleetHost")
    host.unloaded = set(spec.unloaded)

    async def handle(message: object) -> object:
        if isinstance(message, ModelChange):
            await host.apply(message)
            return None
        if isinstance(message, Collect):
            return app.metrics_text()
        if isinstance(message, FleetReady):
            host.fleet_ready = message.ready
            return None
        raise SluiceError(f"worker {spec.slot}: unknown control message {type(message).__name__}")

    async def gather_metrics() -> str:
        if host.link is None:
            return app.metrics_text()
        return str(await host.link.call(GatherMetrics(), timeout_s=30.0))

    tasks: list[asyncio.Task[None]] = []  # held here: the loop keeps only weak references

    def started() -> None:
        tasks.append(asyncio.get_running_loop().create_task(_connect(host, control, handle, spec.slot)))

    app.gather_metrics = gather_metrics
    sock = listening_socket(settings.host, settings.port)
    serve_app(settings, app, sockets=[sock], on_started=started)


async def _connect(
    host: FleetHost, control: socket.socket, handle: Callable[[object], Awaitable[object]], slot: int
) -> None:
    link = await Link.open(control, handle, name=f"worker {slot}'s link to its supervisor")
    host.link = link
    link.tell(Started(os.getpid()))
    host.publish_readiness()
    await link.serve()
    if not host.draining:  # the supervisor is gone: nobody would restart or stop this worker
        log.warning("worker %d: the supervisor has gone; draining and exiting", slot)
        os.kill(os.getpid(), signal.SIGTERM)


def _name_worker_logs(slot: int) -> None:
    for handler in logging.getLogger("sluice").handlers:
        handler.setFormatter(logging.Formatter(f"%(levelname)s:     [worker {slot} pid {os.getpid()}] %(message)s"))


def main(argv: list[str] | None = None) -> int:
    """The worker process; ``argv[0]`` is the control socket's file descriptor (the supervisor runs it)."""
    args = sys.argv[1:] if argv is None else argv
    control = socket.socket(fileno=int(args[0]))
    spec = read_spec(control)
    sys.path[:0] = [p for p in spec.sys_path if p not in sys.path]
    try:
        run_worker(spec, control)
    except SluiceError as exc:
        print(f"Error: worker {spec.slot}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
