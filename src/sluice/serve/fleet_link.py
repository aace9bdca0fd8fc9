"""The control channel between ``sluice serve --workers N``'s supervisor and each worker process.

One Unix socket pair per worker carries typed messages (frozen dataclasses, pickled, each frame
a 4-byte length and the pickle: both ends are the same program, so pickle carries exceptions and
settings whole). The first frame, read before the worker's event loop starts, is the worker's
:class:`WorkerSpec`. After it, either side may :meth:`Link.call` the other (a numbered request
that awaits its reply; a :class:`~sluice.errors.SluiceError` raised by the handler is raised
again at the caller) or :meth:`Link.tell` it (no reply; told messages are handled in order, as
they are read, so a worker's last words are handled before the end of its stream). When the
other end goes away, calls in flight fail with :class:`LinkClosed`: a worker that dies cannot
hang a fan-out, and a worker whose supervisor died learns it from the end of its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sluice.errors import SluiceError

__all__ = [
    "Collect",
    "FleetReady",
    "GatherMetrics",
    "Link",
    "LinkClosed",
    "ModelChange",
    "ReadyChanged",
    "Started",
    "WorkerSpec",
    "read_spec",
    "write_spec",
]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker needs to start: its slot, the settings (ports resolved), and the fleet's state."""

    slot: int
    settings: Any  # ServeSettings, with the ports the supervisor bound
    mounts: Callable[[], Mapping[str, Any]] | None = None  # builds the mounted ASGI apps in the worker
    unloaded: frozenset[str] = frozenset()  # models a client unloaded: not loaded at start
    sys_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelChange:
    """Load or unload ``model`` in every worker (worker → supervisor, then supervisor → each worker)."""

    action: Literal["load", "unload"]
    model: str


@dataclass(frozen=True)
class GatherMetrics:
    """Worker → supervisor: the /metrics text of the whole fleet."""


@dataclass(frozen=True)
class Collect:
    """Supervisor → worker: this worker's own /metrics text."""


@dataclass(frozen=True)
class Started:
    """Worker → supervisor: the worker's sockets are bound and it answers requests."""

    pid: int


@dataclass(frozen=True)
class ReadyChanged:
    """Worker → supervisor: this worker's own readiness changed."""

    ready: bool


@dataclass(frozen=True)
class FleetReady:
    """Supervisor → worker: whether every worker is ready."""

    ready: bool


@dataclass(frozen=True)
class _Call:
    ticket: int
    message: object


@dataclass(frozen=True)
class _Reply:
    ticket: int
    value: object = None
    error: SluiceError | None = None


@dataclass(frozen=True)
class _Note:
    message: object


class LinkClosed(SluiceError):
    """The process at the other end of the link has gone."""

    exit_code = 1
    http_status = 503


Handler = Callable[[object], Awaitable[object]]


def write_spec(sock: socket.socket, spec: WorkerSpec) -> None:
    """Send ``spec`` as the link's first frame (blocking; before either event loop reads it)."""
    data = pickle.dumps(spec)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def read_spec(sock: socket.socket) -> WorkerSpec:
    """Read the first frame: the worker's :class:`WorkerSpec` (blocking)."""
    (size,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    spec = pickle.loads(_read_exactly(sock, size))  # noqa: S301 — our own supervisor wrote it
    if not isinstance(spec, WorkerSpec):
        raise SluiceError(f"the worker's control socket sent {type(spec).__name__}, expected its WorkerSpec")
    return spec


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise LinkClosed("the supervisor closed the control socket before sending the worker's settings")
        chunks += chunk
    return bytes(chunks)


@dataclass
class Link:
    """Both directions of one control socket, on the running event loop; see the module docstring."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    handler: Handler
    name: str = "link"
    _pending: dict[int, asyncio.Future[object]] = field(default_factory=dict)
    _tickets: itertools.count[int] = field(default_factory=itertools.count)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler, *, name: str = "link") -> Link:
        """A link over the connected ``sock``, answering the other side's messages with ``handler``."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer, handler, name)

    async def call(self, message: object, *, timeout_s: float | None = None) -> object:
        """Send ``message`` and wait for the handler's answer at the other end."""
        if self.closed:
            raise LinkClosed(f"{self.name} is closed")
        ticket = next(self._tickets)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[ticket] = future
        try:
            self._send(_Call(ticket, message))
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(ticket, None)

    def tell(self, message: object) -> None:
        """Send ``message``; nothing answers it (a closed link drops it)."""
        if not self.closed:
            self._send(_Note(message))

    async def serve(self) -> None:
        """Read and dispatch frames until the other end closes; then fail the calls in flight."""
        try:
            while True:
                header = await self.reader.readexactly(_LENGTH.size)
                frame = pickle.loads(await self.reader.readexactly(_LENGTH.unpack(header)[0]))  # noqa: S301
                if isinstance(frame, _Note):  # a state change: applied in order, before what follows it
                    await self._answer(frame)
                else:
                    self._dispatch(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._close_pending()

    def close(self) -> None:
        """Close the socket; the other end sees the end of its stream."""
        self._close_pending()
        self.writer.close()

    def _send(self, frame: object) -> None:
        data = pickle.dumps(frame)
        self.writer.write(_LENGTH.pack(len(data)) + data)

    def _dispatch(self, frame: object) -> None:
        if isinstance(frame, _Reply):
            future = self._pending.get(frame.ticket)
            if future is not None and not future.done():
                if frame.error is not None:
                    future.set_exception(frame.error)
                else:
                    future.set_result(frame.value)
        elif isinstance(frame, _Call):
            task = asyncio.get_running_loop().create_task(self._answer(frame))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, frame: _Call | _Note) -> None:
        value: object = None
        error: SluiceError | None = None
        try:
            value = await self.handler(frame.message)
        except SluiceError as exc:
            value, error = None, exc
        except Exception as exc:  # the link is an edge: the peer gets an error instead of hanging
            log.exception("%s: handling %s failed", self.name, type(frame.message).__name__)
            value, error = None, SluiceError(f"{type(exc).__name__}: {exc}")
            error.http_status = 500
        if isinstance(frame, _Call) and not self.closed:
            with contextlib.suppress(ConnectionError):
                self._send(_Reply(frame.ticket, value, error))

    def _close_pending(self) -> None:
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkClosed(f"{self.name} closed before it answered"))
        self._pending.clear()
