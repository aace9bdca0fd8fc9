"""``sluice serve --workers N``: N serving processes behind one HTTP port and one gRPC port.

**Why ``SO_REUSEPORT``, and a supervisor that holds the ports.** grpcio binds its own sockets
and takes no listening socket from outside, so for gRPC the only way to share a port between
processes is ``SO_REUSEPORT``; HTTP uses the same, for one mechanism and for balance: with one
inherited socket, the worker that wakes first accepts a whole burst of connections (asyncio
and libuv accept in a loop), while ``SO_REUSEPORT`` gives each worker its own accept queue and
the kernel spreads new connections evenly across them. The supervisor binds each port first,
without listening (:func:`~sluice.serve.processes.listening_socket`): that finds a port in use
before any worker starts, resolves port 0 once for all, and keeps any other server off the
port while a worker restarts; the kernel hands connections only to the workers' listening
sockets. What a worker that dies had accepted but not answered is lost with it (its clients see
the connection close), and so are the connections waiting in its own accept queue.

**The supervisor** (:class:`Supervisor`, one asyncio loop) starts each worker as a new
interpreter running :func:`sluice.serve.worker.main` with one control socket (:mod:`sluice.serve.fleet_link`) and:

- restarts a worker that exits, logging its exit code or signal; one that keeps exiting soon
  after it starts is restarted after a growing pause (:class:`~sluice.serve.processes.RestartBackoff`) and reported as a
  crash loop. A worker that fails at the server's own start stops the server with its exit code;
- applies every model load and unload (HTTP, gRPC, a route change that rewrote model.yaml, a
  guardrail's rollback, and with ``--watch`` its one repository watcher) in every worker, one
  change at a time, and answers the worker that asked once all have; a worker that starts later
  loads the repository as it is then, less the models a client unloaded;
- answers ``/metrics`` for all (:mod:`sluice.serve.fleet_metrics`: counters and histograms
  summed; restarted workers' counts kept), and tells every worker whether all are ready;
- on SIGTERM or SIGINT, turns readiness off, sends every worker SIGTERM (each drains as a single
  server does), and exits 0 once all have exited 0 (1 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sluice.errors import ConfigError, SluiceError
from sluice.serve.fleet_link import (
    Collect,
    FleetReady,
    GatherMetrics,
    Link,
    LinkClosed,
    ModelChange,
    ReadyChanged,
    Started,
    WorkerSpec,
    write_spec,
)
from sluice.serve.fleet_metrics import Retired, WorkerFigures, fleet_metrics_text
from sluice.serve.processes import RestartBackoff, WorkerProcess, describe_exit, listening_socket, start_worker
from sluice.serve.settings import CUT_OFF_GRACE_S, MountFactory, ServeSettings, prepare_process

if TYPE_CHECKING:
    from sluice.models.repository import ModelRepository
    from sluice.serve.watch import RepositoryWatcher

__all__ = ["Supervisor", "run_workers"]

log = logging.getLogger(__name__)

COLLECT_TIMEOUT_S = 10.0

STOP_MARGIN_S = 10.0  # past each worker's own drain and cut-off, before it is killed


@dataclass
class _Slot:
    """One worker position: the process now in it and what the supervisor knows of it."""

    index: int
    process: WorkerProcess | None = None
    link: Link | None = None
    pid: int = 0
    started_at_s: float = 0.0
    started: bool = False  # the process now in the slot listens
    ever_started: bool = False
    ready: bool = False
    restarts: int = 0
    last_text: str = ""
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    reading: asyncio.Task[None] | None = None  # the link's reader

    @property
    def linked(self) -> bool:
        return self.link is not None and not self.link.closed


class Supervisor:
    """Runs ``settings.workers`` serving processes; see the module docstring."""

    def __init__(self, settings: ServeSettings, mounts: MountFactory | None = None) -> None:
        self.settings = settings
        self.mounts = mounts
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self.unloaded: set[str] = set()
        self.retired = Retired()
        self.exit_code = 0
        self._worker_settings = settings
        self._placeholders: list[socket.socket] = []
        self._stop = asyncio.Event()  # loop-free until first awaited (Python 3.10+)
        self._changes = asyncio.Lock()  # one model change at a time, in every worker
        self._stopping = False
        self._fleet_ready = False
        self._repository: ModelRepository | None = None
        self.failure: str | None = None  # why the server stopped other than by a signal

    @property
    def repository(self) -> ModelRepository:
        """The repository the watcher polls."""
        from sluice.models.repository import ModelRepository

        if self._repository is None:
            self._repository = ModelRepository(self.settings.repository)
        return self._repository

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code (0: every worker drained and exited 0)."""
        self._bind()
        try:
            asyncio.run(self._main())
        finally:
            for sock in self._placeholders:
                sock.close()
        return self.exit_code

    # -- start-up ------------------------------------------------------------------------------

    def _bind(self) -> None:
        host, settings = self.settings.host, self.settings
        try:
            http = listening_socket(host, settings.port, listen=False)
        except OSError:
            raise ConfigError(
                f"could not serve on {host}:{settings.port} (is the port in use?): choose another `port`",
                params=("port",),
            ) from None
        self._placeholders.append(http)
        update = {"port": http.getsockname()[1]}
        if settings.grpc_port is not None:
            try:
                grpc = listening_socket(host, settings.grpc_port, listen=False)
            except OSError:
                raise ConfigError(
                    f"could not serve gRPC on {host}:{settings.grpc_port} (is the port in use?)"
                ) from None
            self._placeholders.append(grpc)
            update["grpc_port"] = grpc.getsockname()[1]
        self._worker_settings = settings.model_copy(update=update)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        watcher = self._watcher()
        keepers = []
        for slot in self.slots:
            process = await self._spawn(slot)
            keeper = loop.create_task(self._keep(slot, process), name=f"sluice-worker-{slot.index}")
            keeper.add_done_callback(self._keeper_done)
            keepers.append(keeper)
        settings = self._worker_settings
        grpc = f", gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port is not None else ""
        log.info("serving with %d workers: HTTP on %s:%d%s", len(self.slots), settings.host, settings.port, grpc)
        if watcher is not None:
            watcher.start()
        await self._stop.wait()
        if watcher is not None:
            await watcher.stop()
        await self._drain(keepers)

    def _watcher(self) -> RepositoryWatcher | None:
        if not self.settings.watch:
            return None
        from sluice.serve.watch import RepositoryWatcher

        watcher = RepositoryWatcher(_EveryWorker(self), interval_s=self.settings.watch_interval_s)
        watcher.prime()  # before the workers load: a change made meanwhile is seen on the first poll
        return watcher

    async def _spawn(self, slot: _Slot) -> WorkerProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = WorkerSpec(slot.index, self._worker_settings, self.mounts, frozenset(self.unloaded), tuple(sys.path))
        write_spec(ours, spec)
        slot.process = start_worker(theirs, asyncio.get_running_loop())
        slot.pid, slot.started, slot.ready = slot.process.popen.pid, False, False
        slot.started_at_s = time.monotonic()
        slot.link = await Link.open(ours, lambda message: self._handle(slot, message), name=f"worker {slot.index}")
        slot.reading = asyncio.get_running_loop().create_task(slot.link.serve())
        return slot.process

    # -- keeping workers alive -----------------------------------------------------------------

    async def _keep(self, slot: _Slot, process: WorkerProcess) -> None:
        while True:
            returncode = await process.exited
            if slot.reading is not None:  # what it said before it died (that it started, say) counts first
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(slot.reading), COLLECT_TIMEOUT_S)
            self._lost(slot)
            if self._stopping:
                return
            what = describe_exit(returncode)
            if not slot.ever_started:
                self.failure = f"worker {slot.index} (pid {slot.pid}) {what} before it started (its error is above)"
                log.error("%s; stopping the server", self.failure)
                self.exit_code = returncode if returncode > 0 else 1
                self._request_stop()
                return
            delay_s = slot.backoff.next_delay_s(time.monotonic() - slot.started_at_s)
            slot.restarts += 1
            self._report_exit(slot, what, delay_s)
            if await self._stopped_within(delay_s):
                return
            process = await self._spawn(slot)

    def _keeper_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed; stopping the server", task.get_name(), exc_info=task.exception())
            self.failure = f"{task.get_name()} failed: {task.exception()}"
            self.exit_code = 1
            self._request_stop()

    def _lost(self, slot: _Slot) -> None:
        if slot.link is not None:
            slot.link.close()
        slot.started = slot.ready = False
        if slot.last_text:
            self.retired.add(slot.last_text)  # its counts so far stay in the fleet's counters
            slot.last_text = ""
        self._update_ready()

    def _report_exit(self, slot: _Slot, what: str, delay_s: float) -> None:
        if slot.backoff.crash_looping:
            log.error(
                "worker %d (pid %d) %s: %d exits in a row within %.0f s of starting (a crash loop); "
                "restarting it in %.1f s",
                slot.index,
                slot.pid,
                what,
                slot.backoff.quick_exits,
                slot.backoff.stable_after_s,
                delay_s,
            )
        else:
            pause = f" in {delay_s:.1f} s" if delay_s else ""
            log.warning("worker %d (pid %d) %s; restarting it%s", slot.index, slot.pid, what, pause)

    async def _stopped_within(self, delay_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay_s)
        return self._stop.is_set()

    def _request_stop(self) -> None:
        self._stop.set()

    # -- messages from workers -----------------------------------------------------------------

    async def _handle(self, slot: _Slot, message: object) -> object:
        if isinstance(message, Started):
            slot.started = slot.ever_started = True
            log.info("worker %d started (pid %d)", slot.index, message.pid)
            if slot.link is not None:
                slot.link.tell(FleetReady(self._fleet_ready))
            return None
        if isinstance(message, ReadyChanged):
            slot.ready = message.ready
            self._update_ready()
            return None
        if isinstance(message, ModelChange):
            await self.apply_everywhere(message)
            return None
        if isinstance(message, GatherMetrics):
            return await self.metrics_text()
        raise SluiceError(f"the supervisor got an unknown message {type(message).__name__} from worker {slot.index}")

    def _update_ready(self) -> None:
        ready = not self._stopping and all(s.linked and s.started and s.ready for s in self.slots)
        if ready == self._fleet_ready:
            return
        self._fleet_ready = ready
        if self._stopping:
            pass  # the drain says so
        elif ready:
            log.info("ready: all %d workers are", len(self.slots))
        else:
            count = sum(1 for s in self.slots if s.linked and s.started and s.ready)
            log.info("not ready: %d of %d workers are", count, len(self.slots))
        for slot in self.slots:
            if slot.linked and slot.link is not None:
                slot.link.tell(FleetReady(ready))

    async def apply_everywhere(self, change: ModelChange) -> None:
        """Apply ``change`` in every running worker, one change at a time; the first failure is raised."""
        async with self._changes:
            targets = [s for s in self.slots if s.linked and s.link is not None]
            results = await asyncio.gather(*(s.link.call(change) for s in targets if s.link), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, LinkClosed)]
            if len(failures) < len(targets):  # a worker started later must start as the others now are
                if change.action == "unload":
                    self.unloaded.add(change.model)
                else:
                    self.unloaded.discard(change.model)
            if failures:
                raise failures[0]

    async def metrics_text(self) -> str:
        """The fleet's /metrics: every worker's figures merged, and the supervisor's own."""
        targets = [s for s in self.slots if s.linked and s.started and s.link is not None]
        texts = await asyncio.gather(
            *(s.link.call(Collect(), timeout_s=COLLECT_TIMEOUT_S) for s in targets if s.link), return_exceptions=True
        )
        for slot, text in zip(targets, texts, strict=True):
            if isinstance(text, str):
                slot.last_text = text
        figures = [
            WorkerFigures(s.index, s.pid, s.linked and s.started, s.ready, s.restarts, s.last_text) for s in self.slots
        ]
        return fleet_metrics_text(figures, self.retired)

    # -- stopping ------------------------------------------------------------------------------

    async def _drain(self, keepers: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self._update_ready()
        log.info("shutting down: not ready; every worker drains its in-flight requests")
        running = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        for process in running:
            process.popen.send_signal(signal.SIGTERM)
        limit_s = self.settings.drain_timeout_s + CUT_OFF_GRACE_S + STOP_MARGIN_S
        _, late = await asyncio.wait(keepers, timeout=limit_s)
        for slot in self.slots:
            child = slot.process
            if child is not None and child.returncode is None:
                log.error("worker %d (pid %d) did not stop within %.0f s; killing it", slot.index, slot.pid, limit_s)
                child.popen.kill()
                await child.exited
        for task in late:
            task.cancel()
        codes = [process.returncode for process in running]  # a worker that crashed before was reported then
        # SIGTERM itself ends a worker only before it could serve (its handler drains and exits 0)
        if self.exit_code == 0 and any(code not in (0, -signal.SIGTERM) for code in codes):
            self.failure = "the workers did not stop cleanly: " + ", ".join(
                describe_exit(c) for c in codes if c is not None
            )
            self.exit_code = 1


class _EveryWorker:
    """What the repository watcher drives in the supervisor: each change applied in every worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    @property
    def repository(self) -> ModelRepository:
        return self._supervisor.repository

    async def load(self, name: str) -> None:
        await self._supervisor.apply_everywhere(ModelChange("load", name))

    async def unload(self, name: str) -> None:
        await self._supervisor.apply_everywhere(ModelChange("unload", name))


def run_workers(settings: ServeSettings, mounts: MountFactory | None = None) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT (see the module docstring).

    Raises :class:`~sluice.errors.ConfigError` when a port is in use, and a
    :class:`~sluice.errors.SluiceError` with the workers' exit code when they did not stop cleanly.
    """
    prepare_process(settings)
    if not settings.repository.is_dir():
        raise ConfigError(f"model repository {settings.repository} is not a directory")
    supervisor = Supervisor(settings, mounts)
    code = supervisor.run()
    if code:
        error = SluiceError(supervisor.failure or f"the workers stopped with exit code {code}")
        error.exit_code = code
        raise error
