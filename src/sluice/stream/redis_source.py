"""A Redis stream as a source: entries read through a consumer group, acknowledged with or after commit.

``redis://HOST:PORT/STREAM`` names the stream; the consumer group (``group``, created at the
stream's start if missing) and the consumer name (``consumer``) say whose reads these are. A
record's columns are the entry's fields, or, with ``value_field``, the keys of the JSON object
in that one field. Redis values are text: the features are parsed by the model's input type
(a value that is not a number becomes a per-record error), the other columns are copied as text.

Exactly once, two ways, chosen by the sink (:func:`~sluice.stream.endpoints.open_sink`):

- **Acknowledged in the commit** (a Redis sink on the source's server): the sink's one atomic
  script checks that this consumer still owns every entry of the group, writes the outputs,
  acknowledges (``XACK``) the entries and records the progress. A pending entry is therefore
  never committed, so every pending entry is predicted, and several consumers of one group may
  share the stream: one that dies has its pending entries claimed (``XAUTOCLAIM``, once they
  have been idle for ``claim_idle_ms``) by another. A consumer that was only slow finds some
  of its group's entries claimed away at its commit; the commit is refused
  (:class:`~sluice.stream.sources.GroupLost`), and it reads its own pending entries again
  (:meth:`RedisSource.rewind`).
- **Acknowledged after the commit** (any other sink): the sink commits the ID of the last entry
  of each group with its outputs. On start, this consumer's pending entries (delivered before a
  crash, never acknowledged) are read first; those at or before the committed ID are
  acknowledged and skipped, the rest are predicted. Entries are acknowledged (``XACK``) only
  after their group is committed. The committed ID says nothing of another consumer's entries,
  so nothing is claimed: a consumer resumes its own entries under its own name.

Either way, two processes must not share a consumer name: they would share its pending entries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sluice.data.readers import RecordFailure, SourceBatch
from sluice.errors import DataError
from sluice.stream.config import StreamSpec
from sluice.stream.redis_client import RedisAddress, connect, entry_ms, id_after
from sluice.stream.sources import ColumnPlanner, MicroBatch

__all__ = ["Delivery", "RedisSource"]

Entry = tuple[str, dict[str, str]]
NUMERIC_SHARE = 0.9  # as for CSV: a column is numeric when this share of its first values are numbers
CLAIM_IDLE_MS = 30_000.0  # claims' default idle time, where claims are safe
_CLAIM_EVERY_S = 1.0  # a claim scan is a round trip: at most this often while the stream has new entries


@dataclass(frozen=True)
class Delivery:
    """Entries delivered to one consumer of a group and not acknowledged: what a commit acknowledges."""

    stream: str
    group: str
    consumer: str
    entry_ids: tuple[str, ...]


class RedisSource:
    """Micro-batches of the entries of one Redis stream, read with ``XREADGROUP``."""

    blocks = True

    def __init__(self, spec: StreamSpec, planner: ColumnPlanner) -> None:
        self.address = RedisAddress.parse(spec.source, "source")
        self.url = self.address.url
        self.planner = planner
        self.batch_size = spec.batch_size
        self.fill_s = spec.batch_delay_ms / 1000
        self.group = spec.group
        self.consumer = spec.consumer
        self.value_field = spec.value_field
        self.claim_idle_ms = spec.claim_idle_ms
        self.acks_in_commit = False  # set by a sink that acknowledges the entries in its commit
        self.text_columns = {c for c in (spec.key_column, *(spec.include or [])) if c is not None}
        self.client: Any = None
        self.committed_id = "0-0"
        self.last_id = "0-0"
        self._cursor: str | None = "0"  # reading this consumer's pending entries; None: new entries
        self._unacked: list[str] = []
        self._schema: pa.Schema | None = None
        self._claim_cursor = "0-0"
        self._claimed_at = float("-inf")

    def open(self, committed: Any) -> None:
        """Join the consumer group (creating it) and resume after ``committed``."""
        self.client = connect(self.address)
        import redis  # connect() has checked it is installed

        try:
            self.client.xgroup_create(self.address.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise DataError(f"{self.url}: cannot create consumer group '{self.group}': {exc}") from exc
        position = committed or {}
        self.last_id = position.get("last_id", "0-0")
        # acknowledged in the commit, a pending entry was never committed, and none is skipped;
        # but a position without its consumer was committed by a Sluice that acknowledged after
        # the commit, and this consumer's first pending entries may still be committed ones
        before = not self.acks_in_commit or "consumer" not in position
        self.committed_id = self.last_id if before else "0-0"
        if self.acks_in_commit and self.claim_idle_ms is None:
            self.claim_idle_ms = CLAIM_IDLE_MS

    def poll(self, wait_s: float) -> MicroBatch | None:
        """Up to ``batch_size`` entries: waits ``wait_s`` for the first, then up to ``batch_delay_ms`` to fill."""
        entries = self._read(self.batch_size, wait_s)
        if not entries:
            return None
        deadline = time.monotonic() + self.fill_s
        while len(entries) < self.batch_size and (left := deadline - time.monotonic()) > 0:
            more = self._read(self.batch_size - len(entries), left)
            if not more:
                break
            entries += more
        self.last_id = entries[-1][0]
        self._unacked += [entry_id for entry_id, _ in entries]
        return self._micro_batch(entries)

    def progress(self) -> dict[str, Any]:
        return {"last_id": self.last_id}

    def delivered(self) -> Delivery:
        """The entries handed out since the last commit, for a sink that acknowledges them in its commit."""
        return Delivery(self.address.stream, self.group, self.consumer, tuple(self._unacked))

    def acknowledge(self, progress: Any) -> None:
        """XACK the entries the committed group read (unless the commit did)."""
        if self._unacked and not self.acks_in_commit:
            self.client.xack(self.address.stream, self.group, *self._unacked)
        self._unacked = []

    def rewind(self) -> None:
        """The group was lost (another consumer claimed some of its entries): read our pending entries again."""
        self._unacked = []
        self._cursor = "0"

    def lag(self) -> int | None:
        import redis

        try:
            groups = self.client.xinfo_groups(self.address.stream)
        except redis.RedisError:  # a figure for the metrics, never a reason to stop
            return None
        mine = [g for g in groups if _text(g.get("name")) == self.group]
        lag = mine[0].get("lag") if mine else None
        return int(lag) if lag is not None else None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # -- reading ---------------------------------------------------------------------------

    def _read(self, count: int, wait_s: float) -> list[Entry]:
        """This consumer's pending entries first (skipping the committed ones), then new ones."""
        while self._cursor is not None:
            entries = self._xreadgroup(self._cursor, count, None)
            if not entries:
                self._cursor = None
                if self.acks_in_commit:
                    self.committed_id = "0-0"  # from here on, commits acknowledge
                break
            self._cursor = entries[-1][0]
            done = [e for e, _ in entries if not id_after(e, self.committed_id)]
            if done:  # committed before a crash that came before their XACK
                self.client.xack(self.address.stream, self.group, *done)
            fresh = [e for e in entries if id_after(e[0], self.committed_id)]
            if fresh:
                return fresh
        claimed = self._claim(count)
        if claimed:
            return claimed
        block_ms = max(1, round(wait_s * 1000)) if wait_s > 0 else None
        return self._xreadgroup(">", count, block_ms)

    def _claim(self, count: int) -> list[Entry]:
        """Entries another consumer left pending longer than ``claim_idle_ms`` (it died), now this consumer's.

        One ``XAUTOCLAIM`` step per call, resuming the scan where the last one stopped; a full
        scan at most once a second unless it finds entries.
        """
        if self.claim_idle_ms is None:
            return []
        now = time.monotonic()
        if self._claim_cursor == "0-0" and now - self._claimed_at < _CLAIM_EVERY_S:
            return []
        if self._claim_cursor == "0-0":
            self._claimed_at = now
        reply = self.client.xautoclaim(
            self.address.stream, self.group, self.consumer, round(self.claim_idle_ms), self._claim_cursor, count=count
        )
        self._claim_cursor = _text(reply[0])
        mine = set(self._unacked)  # an entry of the group in flight that idled, claimed from ourselves
        entries = [(_text(i), _fields(fields)) for i, fields in reply[1] if fields is not None and _text(i) not in mine]
        return entries

    def _xreadgroup(self, cursor: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.address.stream: cursor}, count=count, block=block_ms
        )
        if not reply:
            return []
        return [(_text(entry_id), _fields(fields)) for entry_id, fields in reply[0][1] if fields is not None]

    def _micro_batch(self, entries: list[Entry]) -> MicroBatch:
        good, failures = self._records(entries)
        records = [record for _, record in good]
        if self._schema is None:
            self._schema = self._infer(records)
        names = self._schema.names
        text = pa.schema([(name, pa.string()) for name in names])
        batch = pa.RecordBatch.from_pydict({n: [r.get(n) for r in records] for n in names}, schema=text)
        rows = np.asarray([row for row, _ in good], dtype=np.int64)
        arrived = np.asarray([entry_ms(entries[row][0]) / 1000 for row in rows], dtype=np.float64)
        plan = self.planner(self._schema, True)
        return MicroBatch(SourceBatch(batch, rows, failures), self.url, arrived, plan, tuple(e for e, _ in entries))

    def _records(self, entries: list[Entry]) -> tuple[list[tuple[int, dict[str, str | None]]], list[RecordFailure]]:
        """The entries as text records, by position; with ``value_field``, entries whose JSON is unusable fail."""
        if self.value_field is None:
            return [(row, dict(fields)) for row, (_, fields) in enumerate(entries)], []
        good: list[tuple[int, dict[str, str | None]]] = []
        failures: list[RecordFailure] = []
        for row, (_, fields) in enumerate(entries):
            record, problem = _json_record(fields, self.value_field)
            if problem is not None:
                failures.append(RecordFailure(row, problem, self.value_field))
            else:
                good.append((row, record))
        return good, failures

    def _infer(self, records: list[dict[str, str | None]]) -> pa.Schema:
        """The columns of the first micro-batch: numeric where its values are numbers, else text."""
        names = list(dict.fromkeys(name for r in records for name in r))
        fields = []
        for name in names:
            values = pa.array([r.get(name) for r in records], pa.string())
            numeric = name not in self.text_columns and _numeric_share(values) >= NUMERIC_SHARE
            fields.append(pa.field(name, pa.float64() if numeric else pa.string()))
        return pa.schema(fields)


def _json_record(fields: dict[str, str], value_field: str) -> tuple[dict[str, str | None], str | None]:
    text = fields.get(value_field)
    if text is None:
        return {}, f"the entry has no field '{value_field}'; its fields are {sorted(fields)}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return {}, f"not valid JSON: {exc}"
    if not isinstance(value, dict):
        return {}, f"expected a JSON object, found {type(value).__name__}"
    return {k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in value.items()}, None


def _numeric_share(values: pa.Array) -> float:
    present = values.drop_null()
    if not len(present):
        return 0.0
    matches = pc.match_substring_regex(present, r"^\s*[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf)\s*$")
    return float(pc.sum(matches).as_py() or 0) / len(present)


def _fields(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
