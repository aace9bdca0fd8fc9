"""A Redis stream as a sink: one entry per record, committed with the progress in one MULTI/EXEC.

``redis://HOST:PORT/STREAM`` names the output stream. Each predicted record becomes one entry
whose fields are the pass-through columns (the key first) and the model's outputs (numbers as
text, lists as JSON). Records that failed go to ``STREAM:errors``, one entry per record with the
fields of a batch run's error records. The group's entries, its error entries and the stream's
progress (``STREAM:sluice-progress``: committed groups, the source position, the counts) are
written in one transaction, so after a crash either all of a group is there or none of it, and
the restarted stream resumes at the committed position. ``STREAM:sluice-metrics`` holds the
figures of the running stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from sluice.errors import OutputConflict
from sluice.stream.config import StreamSpec
from sluice.stream.failpoints import StreamFailpoints
from sluice.stream.redis_client import RedisAddress, connect
from sluice.stream.sinks import Committed, SinkGroup

__all__ = ["RedisGroup", "RedisSink"]


class RedisGroup:
    """A group's output, held in memory until its transaction (a group is bounded by size and time)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.errors: list[Mapping[str, Any]] = []
        self.schema: pa.Schema | None = None
        self.rows = 0

    def write(self, table: pa.Table, errors: Sequence[Mapping[str, Any]]) -> None:
        if self.schema is None:
            self.schema = table.schema
        if table.num_rows:
            self.tables.append(table)
        self.errors += errors
        self.rows += table.num_rows

    def abort(self) -> None:
        self.tables, self.errors = [], []


class RedisSink:
    """Output entries on a Redis stream, exactly once through MULTI/EXEC with the progress."""

    def __init__(self, spec: StreamSpec, failpoints: StreamFailpoints) -> None:
        self.address = RedisAddress.parse(spec.sink, "sink")
        self.url = self.address.url
        stream = self.address.stream
        self.error_stream = f"{stream}:errors"
        self.progress_key = f"{stream}:sluice-progress"
        self.metrics_key = f"{stream}:sluice-metrics"
        self.failpoints = failpoints
        self.client: Any = None
        self.committed = Committed()
        self.fingerprint: dict[str, Any] = {}

    def open(self, fingerprint: Mapping[str, Any], overwrite: bool) -> Committed:
        """Read the committed progress; refuse a stream another stream's progress owns."""
        self.client = connect(self.address)
        self.fingerprint = dict(fingerprint)
        stored = self.client.get(self.progress_key)
        if stored is not None and overwrite:
            self.client.delete(self.address.stream, self.error_stream, self.progress_key, self.metrics_key)
            stored = None
        if stored is None:
            return self.committed
        state = json.loads(stored)
        if state.get("fingerprint") != self.fingerprint:
            raise OutputConflict(
                f"{self.url} holds the output of a different stream (other model, source or columns); "
                "pass `overwrite=True` to replace it, or choose another sink",
                params=("overwrite",),
            )
        self.committed = Committed(
            int(state["groups"]), state.get("progress"), int(state["records"]), int(state["records_failed"])
        )
        return self.committed

    def begin(self) -> RedisGroup:
        return RedisGroup()

    def commit(self, output: SinkGroup, progress: Any, failed: int, empty_schema: pa.Schema) -> Committed:
        """One transaction: the group's entries, its error entries and the progress."""
        assert isinstance(output, RedisGroup)
        committed = Committed(
            self.committed.groups + 1,
            progress,
            self.committed.records + output.rows,
            self.committed.records_failed + failed,
        )
        transaction = self.client.pipeline(transaction=True)
        for table in output.tables:
            for row in table.to_pylist():
                transaction.xadd(self.address.stream, _fields(row))
        for record in output.errors:
            transaction.xadd(self.error_stream, _fields(record))
        transaction.set(self.progress_key, json.dumps(self._state(committed)))
        self.failpoints.hit("group.written")
        transaction.execute()
        self.failpoints.hit("group.committed")
        self.committed = committed
        self.failpoints.hit("group.published")
        return committed

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        self.client.set(self.metrics_key, json.dumps(dict(metrics)))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _state(self, committed: Committed) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "groups": committed.groups,
            "records": committed.records,
            "records_failed": committed.records_failed,
            "progress": committed.progress,
        }


def _fields(row: Mapping[str, Any]) -> dict[str, str]:
    """An entry's fields: text as is, other values as JSON; missing values left out."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items() if v is not None}
