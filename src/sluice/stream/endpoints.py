"""Sources and sinks by URI: a directory (or object-store prefix) or ``redis://HOST:PORT/STREAM``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import pyarrow as pa

from sluice.errors import ConfigError
from sluice.stream.config import StreamSpec
from sluice.stream.failpoints import StreamFailpoints
from sluice.stream.sinks import Committed, DirectorySink, SinkGroup
from sluice.stream.sources import ColumnPlanner, DirectorySource, StreamSource

__all__ = ["StreamSink", "is_redis", "open_sink", "open_source"]


class StreamSink(Protocol):
    """Where a stream's outputs go; its commit records the source position with them, atomically."""

    url: str

    def open(self, fingerprint: Mapping[str, Any], overwrite: bool) -> Committed:
        """Prepare the sink and return what it already holds (the source position to resume from)."""

    def begin(self) -> SinkGroup:
        """The output of the next group."""

    def commit(self, output: SinkGroup, progress: Any, failed: int, empty_schema: pa.Schema) -> Committed:
        """Commit ``output`` together with the source's ``progress``."""

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Publish the stream's current figures."""

    def close(self) -> None:
        """Release connections."""


def is_redis(uri: str) -> bool:
    """Whether ``uri`` names a Redis stream."""
    return uri.startswith(("redis://", "rediss://"))


def open_source(spec: StreamSpec, planner: ColumnPlanner) -> StreamSource:
    """The source ``spec.source`` names."""
    if is_redis(spec.source):
        from sluice.stream.redis_source import RedisSource

        return RedisSource(spec, planner)
    return DirectorySource(
        spec.source,
        planner,
        batch_size=spec.batch_size,
        fmt=spec.source_format,
        key_column=spec.key_column,
        storage_options=spec.storage_options,
    )


def open_sink(spec: StreamSpec, failpoints: StreamFailpoints, source: StreamSource) -> StreamSink:
    """The sink ``spec.sink`` names.

    A Redis sink on the server of a Redis source acknowledges the source's entries in its commit,
    which is what lets several consumers share the stream and claim a dead one's entries.
    """
    acknowledging = _redis_source_on_sink_server(spec, source)
    if spec.claim_idle_ms is not None and not acknowledging:
        raise ConfigError(
            f"claiming another consumer's entries (`claim_idle_ms`) needs a Redis sink on the source's server "
            f"(found source {spec.source}, sink {spec.sink}): only there does the commit acknowledge the entries "
            "with their outputs. With another sink, run each consumer under its own name; it resumes its own entries",
            params=("claim_idle_ms",),
        )
    if is_redis(spec.sink):
        from sluice.stream.redis_sink import RedisSink
        from sluice.stream.redis_source import RedisSource

        if acknowledging and isinstance(source, RedisSource):
            source.acks_in_commit = True
            return RedisSink(spec, failpoints, source.delivered)
        return RedisSink(spec, failpoints)
    return DirectorySink(spec.sink, spec.sink_format, failpoints, spec.storage_options)


def _redis_source_on_sink_server(spec: StreamSpec, source: StreamSource) -> bool:
    """Whether source and sink are streams on one Redis server (where one script can touch both)."""
    if not (is_redis(spec.source) and is_redis(spec.sink)):
        return False
    from sluice.stream.redis_client import RedisAddress
    from sluice.stream.redis_source import RedisSource

    if not isinstance(source, RedisSource):
        return False
    a, b = source.address, RedisAddress.parse(spec.sink, "sink")
    return (a.host, a.port, a.username, a.tls) == (b.host, b.port, b.username, b.tls)
