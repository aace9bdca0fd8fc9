"""A stream's figures: throughput, end-to-end latency, lag and the chosen group size.

End-to-end latency runs from a record's arrival in the source (a Redis entry ID's time, a
file's modification time) to the commit of its group in the sink. The figures are written as
JSON (``_stream_metrics.json`` beside a directory sink's parts, or ``metrics_file``) and can be
rendered as Prometheus text (:meth:`StreamMetrics.prometheus`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sluice.metrics import LatencyHistogram

__all__ = ["StreamMetrics", "StreamSummary"]


@dataclass(frozen=True)
class StreamSummary:
    """A stream's figures at one moment (JSON-able with :meth:`to_dict`)."""

    records: int
    records_failed: int
    groups: int
    seconds: float
    records_per_second: float
    latency_ms: dict[str, float | None]
    group_size: int
    batch_ms: float | None
    commit_ms: float | None
    lag: int | None
    source: str
    sink: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamMetrics:
    """Counts and latencies of one streaming run (this run only; the sink keeps the totals)."""

    def __init__(self, source: str, sink: str, started_s: float) -> None:
        self.source = source
        self.sink = sink
        self.started_s = started_s
        self.records = 0
        self.records_failed = 0
        self.groups = 0
        self.latency = LatencyHistogram()
        self.group_size = 1
        self.batch_ms: float | None = None
        self.commit_ms: float | None = None
        self.lag: int | None = None

    def group_committed(self, arrived_s: np.ndarray, failed: int, committed_s: float) -> None:
        """Count a committed group: the arrival time of each of its predicted records, and its failures."""
        self.groups += 1
        self.records += int(arrived_s.size)
        self.records_failed += failed
        for seconds in np.maximum(committed_s - arrived_s, 0.0).tolist():
            self.latency.record(seconds)

    def summary(self, now_s: float) -> StreamSummary:
        """The figures as of ``now_s`` (clock seconds of the same clock as ``started_s``)."""
        seconds = max(now_s - self.started_s, 0.0)
        done = self.records + self.records_failed
        return StreamSummary(
            records=self.records,
            records_failed=self.records_failed,
            groups=self.groups,
            seconds=round(seconds, 3),
            records_per_second=round(done / seconds, 1) if seconds > 0 else 0.0,
            latency_ms=self.latency.percentiles_ms((50, 99)),
            group_size=self.group_size,
            batch_ms=None if self.batch_ms is None else round(self.batch_ms, 3),
            commit_ms=None if self.commit_ms is None else round(self.commit_ms, 3),
            lag=self.lag,
            source=self.source,
            sink=self.sink,
        )

    def prometheus_now(self, clock: Callable[[], float]) -> str:
        """:meth:`prometheus` as of ``clock()`` (the clock ``started_s`` was read from)."""
        return self.prometheus(clock())

    def prometheus(self, now_s: float) -> str:
        """The figures in the Prometheus text format (gauges and counters named ``sluice_stream_*``)."""
        s = self.summary(now_s)
        lines = [
            ("sluice_stream_records_total", "counter", "Records predicted and committed.", s.records),
            ("sluice_stream_records_failed_total", "counter", "Records sent to the error sink.", s.records_failed),
            ("sluice_stream_groups_total", "counter", "Groups committed.", s.groups),
            ("sluice_stream_group_size", "gauge", "Micro-batches per group, as chosen.", s.group_size),
            ("sluice_stream_lag", "gauge", "Records or files in the source not yet read.", s.lag),
        ]
        out: list[str] = []
        for name, kind, text, value in lines:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            out.append(f"{name} {'NaN' if value is None else value}")
        out += ["# HELP sluice_stream_latency_seconds End-to-end latency, arrival to commit.",
                "# TYPE sluice_stream_latency_seconds summary"]  # fmt: skip
        for q, key in (("0.5", "p50"), ("0.99", "p99")):
            ms = s.latency_ms[key]
            out.append(f'sluice_stream_latency_seconds{{quantile="{q}"}} {"NaN" if ms is None else ms / 1000}')
        return "\n".join(out) + "\n"
