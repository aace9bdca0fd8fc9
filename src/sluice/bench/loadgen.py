"""An HTTP load generator fast enough not to be the bottleneck of what it measures.

Each virtual client holds one keep-alive HTTP/1.1 connection and writes pre-built request
bytes on a raw asyncio stream (no client library per request: httpx caps at ~400 req/s on
this machine). Two ways to offer load:

- closed loop (``concurrency``): N clients each send, wait for the answer, send again;
- open loop (``rate``): requests start at Poisson arrival times whatever the answers do, and
  latency counts from the scheduled start, so a slow server cannot hide its queueing
  (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sluice.errors import ConfigError
from sluice.metrics import LatencyHistogram

__all__ = ["NO_ANSWER", "HttpRequest", "LevelResult", "closed_loop", "open_loop"]

NO_ANSWER = 599
"""The status counted for a request that got no HTTP answer at all (connection refused or reset,
a malformed response): a client-side failure, as other load generators count it; never a 200."""
_REASON_CHARS = 300


@dataclass(frozen=True)
class HttpRequest:
    """One request to repeat: where to connect and the exact bytes to send."""

    host: str
    port: int
    payload: bytes

    @classmethod
    def post(cls, url: str, body: bytes, headers: dict[str, str] | None = None) -> HttpRequest:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"load target {url!r} must be an http:// URL with a host")
        lines = [
            f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port or 80}",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return cls(parts.hostname, parts.port or 80, head + body)


@dataclass
class LevelResult:
    """What one load level measured."""

    label: str
    seconds: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    statuses: Counter[int] = field(default_factory=Counter)
    dropped: int = 0  # open loop: arrivals with no free connection left
    reasons: dict[int, str] = field(default_factory=dict)  # per status but 200: the first answer's body, or error

    def note(self, status: int, reason: str) -> None:
        """Keep the first reason given for ``status``."""
        if status != 200 and status not in self.reasons:
            self.reasons[status] = reason.strip()[:_REASON_CHARS]

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "level": self.label,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "ok": self.ok,
            "throughput_per_s": round(self.throughput_per_s, 1),
            "latency_ms": self.latency.percentiles_ms((50, 90, 99, 999)),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "reasons": {str(k): v for k, v in sorted(self.reasons.items())},
            "dropped": self.dropped,
        }


class _Connection:
    """One keep-alive connection that sends a request and reads one response at a time."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.request.host, self.request.port)
        return self.reader, self.writer

    async def send(self) -> tuple[int, bytes]:
        """Send the request once; the answer's status and body."""
        reader, writer = await self._streams()
        writer.write(self.request.payload)
        status_line = await reader.readline()
        if not status_line:
            self.close()
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _timed(conn: _Connection, result: LevelResult, started: float) -> None:
    try:
        status, body = await conn.send()
        if status != 200 and status not in result.reasons:
            result.note(status, _reason(body))
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        status = NO_ANSWER
        result.note(status, f"{type(exc).__name__}: {exc}")
    result.statuses[status] += 1
    if status == 200:
        result.latency.record(time.perf_counter() - started)


def _reason(body: bytes) -> str:
    """An error answer's message: the OIP ``{"error": …}`` text, else the body as text."""
    import json

    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        return text
    return str(document.get("error", text)) if isinstance(document, dict) else text


async def closed_loop(request: HttpRequest, concurrency: int, duration_s: float) -> LevelResult:
    """``concurrency`` clients, each sending its next request as soon as the last is answered."""
    result = LevelResult(f"concurrency {concurrency}")
    connections = [_Connection(request) for _ in range(concurrency)]
    start = time.perf_counter()
    deadline = start + duration_s

    async def client(conn: _Connection) -> None:
        while time.perf_counter() < deadline:
            await _timed(conn, result, time.perf_counter())

    await asyncio.gather(*(client(c) for c in connections))
    result.seconds = time.perf_counter() - start
    for conn in connections:
        conn.close()
    return result


async def open_loop(
    request: HttpRequest, rate_per_s: float, duration_s: float, *, max_connections: int = 512, seed: int = 0
) -> LevelResult:
    """Poisson arrivals at ``rate_per_s``; latency counts from each arrival's scheduled time."""
    result = LevelResult(f"rate {rate_per_s:g}/s")
    rng = random.Random(seed)  # noqa: S311 - reproducible arrival times, nothing secret
    idle: list[_Connection] = []
    opened = 0
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    scheduled = start

    async def fire(conn: _Connection, at: float) -> None:
        await _timed(conn, result, at)
        idle.append(conn)

    while scheduled < start + duration_s:
        scheduled += rng.expovariate(rate_per_s)
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            conn = idle.pop()
        elif opened < max_connections:
            conn, opened = _Connection(request), opened + 1
        else:
            result.dropped += 1
            continue
        task = asyncio.create_task(fire(conn, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return result
