"""Reaching Redis: ``redis://[USER:PASSWORD@]HOST:PORT/STREAM`` addresses, the client, entry IDs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sluice.errors import ConfigError, DataError, MissingDependency

__all__ = ["RedisAddress", "connect", "entry_ms", "id_after"]


@dataclass(frozen=True)
class RedisAddress:
    """A Redis server and one stream on it."""

    host: str
    port: int
    stream: str
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, uri: str, param: str) -> RedisAddress:
        """``redis://HOST:PORT/STREAM`` (``rediss://`` for TLS); ``param`` (source, sink) names it in errors."""
        parts = urlsplit(uri)
        stream = unquote(parts.path.lstrip("/"))
        try:
            port = parts.port or 6379
        except ValueError as exc:
            raise ConfigError(f"{param} {uri}: {exc}") from exc
        if not parts.hostname or not stream:
            raise ConfigError(f"{param} {uri}: expected redis://HOST:PORT/STREAM, e.g. redis://127.0.0.1:6379/events")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, stream, user, password, parts.scheme == "rediss")

    @property
    def url(self) -> str:
        """The address without credentials."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.stream}"


def connect(address: RedisAddress) -> Any:
    """A connected client (redis-py), checked with a PING."""
    try:
        import redis
    except ImportError as exc:
        raise MissingDependency("redis", "stream", "Redis streams") from exc
    client = redis.Redis(
        host=address.host,
        port=address.port,
        username=address.username,
        password=address.password,
        ssl=address.tls,
        decode_responses=True,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise DataError(f"cannot reach Redis at {address.url}: {exc}") from exc
    return client


def _parts(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_ms(entry_id: str) -> int:
    """When Redis added the entry: the milliseconds part of its ID."""
    return _parts(entry_id)[0]


def id_after(entry_id: str, other: str) -> bool:
    """Whether ``entry_id`` comes after ``other`` in the stream."""
    return _parts(entry_id) > _parts(other)
