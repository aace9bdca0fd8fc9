"""Slow clients: deadlines for a request's head and body to arrive, and a cap on such connections.

uvicorn waits as long as a client likes for a request to arrive: a connection that sends its
headers a byte every few seconds holds a file descriptor for ever, and enough of them leave none
for real clients. :class:`IncompleteRequests` is the pure bookkeeping (which connections are
still sending a request head or body, since when, and which have run out of time or must make
room); :class:`SlowClientGuard` drives it on the event loop, answering 408 to a connection whose
head (``header_timeout_s``, counted from the connection or from the request's first byte) or
body (``body_timeout_s``, from the end of the head) is late, and 503 to the connection waiting
longest when more than ``max_connections`` are incomplete. :func:`guarded_protocol` is uvicorn's
HTTP protocol (httptools or h11) reporting to a guard; uvicorn is imported only when it is called.

The cost on a request is a few dictionary updates; the deadlines are checked by one timer that
runs only while some request is incomplete.
"""

from __future__ import annotations

import asyncio
import http
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sluice.http import RepeatedNotices

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_HEADER_TIMEOUT_S",
    "IncompleteRequests",
    "Refusal",
    "SlowClient",
    "SlowClientGuard",
    "default_max_incomplete",
    "guarded_protocol",
]

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0
_MAX_DEFAULT_INCOMPLETE = 1024

Phase = Literal["head", "body"]


class SlowClient(Protocol):
    """A connection the guard can refuse: answer ``status`` with ``message`` and close; ``phase``
    says whether its request was still sending its head or its body."""

    def refuse(self, status: int, message: str, phase: Phase) -> None: ...


@dataclass(frozen=True)
class Refusal:
    """A connection to refuse, and why."""

    client: SlowClient
    status: int  # 408: out of time; 503: made room for a newer connection
    kind: str
    message: str
    phase: Phase


class IncompleteRequests:
    """The connections whose request has not fully arrived, oldest first per phase.

    Times are passed in (``now_s``), so this is tested without a clock or sockets. Entries of a
    phase share one timeout, so the oldest entry is always the first to expire.
    """

    def __init__(self, header_timeout_s: float, body_timeout_s: float, max_connections: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self._heads: dict[SlowClient, float] = {}
        self._bodies: dict[SlowClient, float] = {}

    def __len__(self) -> int:
        return len(self._heads) + len(self._bodies)

    def head_started(self, client: SlowClient, now_s: float) -> Refusal | None:
        """``client`` connected, or sent the first byte of a request; returns the connection to
        refuse when that makes one too many (the one sending its head longest, else its body)."""
        if client in self._heads:
            return None
        self._bodies.pop(client, None)
        self._heads[client] = now_s
        if len(self._heads) + len(self._bodies) <= self.max_connections:
            return None
        phase: Phase = "head" if len(self._heads) > 1 else "body"
        waiting = self._heads if phase == "head" else self._bodies
        oldest = next(iter(waiting))
        del waiting[oldest]
        message = (
            f"{self.max_connections} connections are still sending their requests, the server's limit; "
            "this one had waited longest"
        )
        return Refusal(oldest, 503, "too many incomplete requests", message, phase)

    def head_done(self, client: SlowClient) -> None:
        """``client``'s request head is complete."""
        self._heads.pop(client, None)

    def body_started(self, client: SlowClient, now_s: float) -> None:
        """``client``'s request head is complete and its body is still arriving."""
        self._heads.pop(client, None)
        if client not in self._bodies:
            self._bodies[client] = now_s

    def phase(self, client: SlowClient) -> Phase | None:
        """What ``client`` is still sending (None: nothing the guard waits for)."""
        if client in self._heads:
            return "head"
        return "body" if client in self._bodies else None

    def finished(self, client: SlowClient) -> None:
        """``client``'s request has fully arrived, or the connection closed."""
        self._heads.pop(client, None)
        self._bodies.pop(client, None)

    def expired(self, now_s: float) -> list[Refusal]:
        """Remove and return the connections whose head or body is overdue at ``now_s``."""
        head = f"no complete request head within {self.header_timeout_s:g} s"
        body = f"no complete request body within {self.body_timeout_s:g} s"
        late = [
            Refusal(client, 408, "request head too slow", head, "head")
            for client in _pop_older(self._heads, now_s - self.header_timeout_s)
        ]
        late += [
            Refusal(client, 408, "request body too slow", body, "body")
            for client in _pop_older(self._bodies, now_s - self.body_timeout_s)
        ]
        return late

    def next_check_s(self) -> float:
        """Seconds between checks: a quarter of the shorter timeout, within 50 ms and 1 s."""
        return min(1.0, max(0.05, min(self.header_timeout_s, self.body_timeout_s) / 4))


def _pop_older(entries: dict[SlowClient, float], started_before_s: float) -> list[SlowClient]:
    popped = []
    for client, started_s in entries.items():
        if started_s > started_before_s:
            break
        popped.append(client)
    for client in popped:
        del entries[client]
    return popped


class SlowClientGuard:
    """Drives :class:`IncompleteRequests` on the running event loop; protocols report to it."""

    def __init__(self, requests: IncompleteRequests, notices: RepeatedNotices) -> None:
        self.requests = requests
        self.notices = notices
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check: asyncio.TimerHandle | None = None
        self._clock = time.monotonic  # not loop.time(): one Python call less, and the same clock
        # called once or twice per request: bound straight to the bookkeeping, one call less
        self.head_done: Callable[[SlowClient], None] = requests.head_done
        """A request's head is complete."""
        self.finished: Callable[[SlowClient], None] = requests.finished
        """A request arrived whole, or its connection closed."""

    def head_started(self, client: SlowClient) -> None:
        """A connection opened, or a request's first byte arrived (called on the loop)."""
        refusal = self.requests.head_started(client, self._clock())
        if refusal is not None:
            self._refuse(refusal)
        if self._check is None:  # at most one timer, and none while every request has arrived
            self._check = (self._loop or self._bind()).call_later(self.requests.next_check_s(), self._sweep)

    def body_started(self, client: SlowClient) -> None:
        """A request's head is complete, and its body has not all arrived with it."""
        self.requests.body_started(client, self._clock())

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _sweep(self) -> None:
        loop = self._loop or self._bind()
        self._check = None
        for refusal in self.requests.expired(self._clock()):
            self._refuse(refusal)
        if len(self.requests):
            self._check = loop.call_later(self.requests.next_check_s(), self._sweep)

    def _refuse(self, refusal: Refusal) -> None:
        refusal.client.refuse(refusal.status, refusal.message, refusal.phase)
        self.notices.note(refusal.kind, f"closed a slow client's connection ({refusal.status}): {refusal.message}")


def default_max_incomplete() -> int:
    """Half the process's open-file limit (``ulimit -n``), at most 1024: the cap on connections
    still sending a request, leaving descriptors for the clients being served."""
    if sys.platform == "win32":
        return _MAX_DEFAULT_INCOMPLETE
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _MAX_DEFAULT_INCOMPLETE
    return max(1, min(_MAX_DEFAULT_INCOMPLETE, soft // 2))


def refusal_bytes(status: int, message: str) -> bytes:
    """A whole ``Connection: close`` response with ``{"error": message}``."""
    body = json.dumps({"error": message}).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def guarded_protocol(http_parser: Literal["httptools", "h11"], guard: SlowClientGuard) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class for ``http_parser``, reporting each request's progress to ``guard``."""
    if http_parser == "httptools":
        return _httptools_protocol(guard)
    return _h11_protocol(guard)


def _refuse(protocol: Any, status: int, message: str, phase: Phase) -> None:
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return
    cycle = protocol.cycle  # while a head arrives: the previous request's, if any
    if cycle is None or (cycle.response_complete if phase == "head" else not cycle.response_started):
        transport.write(refusal_bytes(status, message))
    if cycle is not None and not cycle.response_complete:
        # the app reading the body sees the client gone, and what it sends is dropped
        cycle.disconnected = True
        cycle.message_event.set()
    transport.close()


def _httptools_protocol(guard: SlowClientGuard) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpTools(HttpToolsProtocol):
        # the body is reported only when it did not arrive with the head, which most requests do
        _body_open = False
        _body_reported = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            guard.head_started(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.finished(self)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            guard.head_started(self)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._body_open and not self._body_reported:
                self._body_reported = True
                guard.body_started(self)

        def on_headers_complete(self) -> None:
            guard.head_done(self)
            self._body_open = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_open = False
            if self._body_reported:
                self._body_reported = False
                guard.finished(self)
            super().on_message_complete()

        def refuse(self, status: int, message: str, phase: Phase) -> None:
            _refuse(self, status, message, phase)

    return GuardedHttpTools


def _h11_protocol(guard: SlowClientGuard) -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            guard.head_started(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.finished(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # h11 reports no parsing steps: read where the request stands from its state
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if guard.requests.phase(self) == "head":  # the head just completed
                    guard.body_started(self)
            elif state is h11.IDLE:
                guard.head_started(self)
            else:
                guard.finished(self)

        def refuse(self, status: int, message: str, phase: Phase) -> None:
            _refuse(self, status, message, phase)

    return GuardedH11
