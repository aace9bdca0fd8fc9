"""A Redis stream as a sink: one entry per record, committed with the progress in one MULTI/EXEC.

``redis://HOST:PORT/STREAM`` names the output stream. Each predicted record becomes one entry
whose fields are the pass-through columns (the key first) and the model's outputs (numbers as
text, lists as JSON). Records that failed go to ``STREAM:errors``, one entry per record with the
fields of a batch run's error records. The group's entries, its error entries and the stream's
progress (``STREAM:sluice-progress``: committed groups, the source position, the counts) are
written in one transaction, so after a crash either all of a group is there or none of it, and
the restarted stream resumes at the committed position. ``STREAM:sluice-metrics`` holds the
figures of the running stream.

When the source is a Redis stream on the same server, the commit is instead one Lua script,
atomic as a transaction is, that also acknowledges the group's source entries and first checks
that this consumer still owns every one of them (``XPENDING``). The totals in the progress are
added up inside the script, so several consumers of one group can commit into the one output
stream, and an entry another consumer claimed is committed by that consumer only: the commit of
a group that lost an entry is refused whole (:class:`~sluice.stream.sources.GroupLost`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from sluice.errors import OutputConflict
from sluice.stream.config import StreamSpec
from sluice.stream.failpoints import StreamFailpoints
from sluice.stream.redis_client import RedisAddress, connect
from sluice.stream.redis_source import Delivery
from sluice.stream.sinks import Committed, SinkGroup
from sluice.stream.sources import GroupLost

__all__ = ["COMMIT_SCRIPT", "RedisGroup", "RedisSink"]

# KEYS: source stream, output stream, error stream, progress key. ARGV: group, consumer,
# fingerprint JSON, progress JSON, records, failed records, the number of entry IDs, the IDs,
# then per output entry: 2 (output stream) or 3 (error stream), the number of field arguments,
# the fields. Returns 0 when an entry is no longer this consumer's, else {groups, records, failed}.
COMMIT_SCRIPT = """
local group, consumer = ARGV[1], ARGV[2]
local first, n = 8, tonumber(ARGV[7])
for i = first, first + n - 1 do
  local owner = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
  if #owner == 0 or owner[1][2] ~= consumer then return 0 end
end
local i = first + n
while i <= #ARGV do
  local count = tonumber(ARGV[i + 1])
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', unpack(ARGV, i + 2, i + 1 + count))
  i = i + 2 + count
end
for j = first, first + n - 1, 1000 do
  redis.call('XACK', KEYS[1], group, unpack(ARGV, j, math.min(j + 999, first + n - 1)))
end
local groups, records, failed = 0, 0, 0
local stored = redis.call('GET', KEYS[4])
if stored then
  local state = cjson.decode(stored)
  groups, records, failed = state.groups, state.records, state.records_failed
end
groups, records, failed = groups + 1, records + tonumber(ARGV[5]), failed + tonumber(ARGV[6])
redis.call('SET', KEYS[4], string.format(
  '{"fingerprint": %s, "groups": %d, "records": %d, "records_failed": %d, "progress": %s}',
  ARGV[3], groups, records, failed, ARGV[4]))
return {groups, records, failed}
"""


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

    def __init__(
        self, spec: StreamSpec, failpoints: StreamFailpoints, deliveries: Callable[[], Delivery] | None = None
    ) -> None:
        """``deliveries``: the source's unacknowledged entries, when the commit acknowledges them (same server)."""
        self.deliveries = deliveries
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
        """One transaction: the group's entries, its error entries and the progress (and the source's XACK)."""
        assert isinstance(output, RedisGroup)
        if self.deliveries is not None:
            return self._commit_acknowledging(output, progress, failed, self.deliveries())
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

    def _commit_acknowledging(self, output: RedisGroup, progress: Any, failed: int, delivery: Delivery) -> Committed:
        """The commit script: outputs, XACK of the source entries and the totals, if this consumer still owns them."""
        keys = [delivery.stream, self.address.stream, self.error_stream, self.progress_key]
        position = json.dumps({**(progress or {}), "consumer": delivery.consumer})
        head = [delivery.group, delivery.consumer, json.dumps(self.fingerprint), position, output.rows, failed]
        args = [*head, len(delivery.entry_ids), *delivery.entry_ids, *_entry_args(output)]
        script = self.client.register_script(COMMIT_SCRIPT)
        self.failpoints.hit("group.written")
        reply = script(keys=keys, args=args)
        if not reply:
            raise GroupLost(f"{delivery.stream}: another consumer of '{delivery.group}' claimed entries of the group")
        self.failpoints.hit("group.committed")
        groups, records, records_failed = (int(v) for v in reply)
        self.committed = Committed(groups, progress, records, records_failed)
        self.failpoints.hit("group.published")
        return self.committed

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


def _entry_args(output: RedisGroup) -> Iterator[Any]:
    """The script's arguments for the group's entries: 2 (output) or 3 (errors), a count, the fields."""
    rows = (row for table in output.tables for row in table.to_pylist())
    for key, records in ((2, rows), (3, iter(output.errors))):
        for record in records:
            fields = _fields(record)
            yield key
            yield 2 * len(fields)
            for name, value in fields.items():
                yield name
                yield value


def _fields(row: Mapping[str, Any]) -> dict[str, str]:
    """An entry's fields: text as is, other values as JSON; missing values left out."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items() if v is not None}
