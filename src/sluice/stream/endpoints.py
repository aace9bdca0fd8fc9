"""Sources and sinks by URI: a directory (or object-store prefix) or ``redis://HOST:PORT/STREAM``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import pyarrow as pa

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


def open_sink(spec: StreamSpec, failpoints: StreamFailpoints) -> StreamSink:
    """The sink ``spec.sink`` names."""
    if is_redis(spec.sink):
        from sluice.stream.redis_sink import RedisSink

        return RedisSink(spec, failpoints)
    return DirectorySink(spec.sink, spec.sink_format, failpoints)
