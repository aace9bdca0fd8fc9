"""Prometheus text exposition of the server's counters and the dispatchers' histograms."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from sluice.metrics import BucketedHistogram

if TYPE_CHECKING:
    from sluice.serve.host import ServedVersion

__all__ = ["histogram_lines", "label_set", "render_metrics"]

_HISTOGRAMS = (
    ("sluice_queue_seconds", "queue", "Seconds a request waited for its batch to start."),
    ("sluice_compute_seconds", "compute", "Seconds of predict per batch."),
    ("sluice_request_seconds", "total", "Seconds from a request's arrival to its result."),
    ("sluice_batch_size", "batch_rows", "Rows per batch."),
)


def render_metrics(
    served: dict[str, list[ServedVersion]],
    requests: Counter[tuple[str, str]],
    failures: Counter[tuple[str, str, int]],
) -> str:
    """Prometheus text exposition of request counts, failures by code and the dispatchers' figures."""
    lines = [
        "# HELP sluice_requests_total Inference requests per model version.",
        "# TYPE sluice_requests_total counter",
    ]
    lines += [f"sluice_requests_total{_labels(m, v)} {n}" for (m, v), n in sorted(requests.items())]
    lines += [
        "# HELP sluice_request_failures_total Failed inference requests by HTTP status.",
        "# TYPE sluice_request_failures_total counter",
    ]
    lines += [
        f"sluice_request_failures_total{_labels(m, v, code=str(c))} {n}" for (m, v, c), n in sorted(failures.items())
    ]
    versions = [s for group in served.values() for s in group]
    gauges = (
        (
            "sluice_queue_depth_requests",
            "gauge",
            "Requests waiting in the batch queue.",
            lambda s: len(s.dispatcher.batcher),
        ),
        (
            "sluice_shed_total",
            "counter",
            "Requests refused with 503 by admission control.",
            lambda s: s.dispatcher.metrics.shed,
        ),
        ("sluice_timeouts_total", "counter", "Requests answered 504.", lambda s: s.dispatcher.metrics.timed_out),
        (
            "sluice_cancelled_total",
            "counter",
            "Requests taken out of the queue unrun because their client cancelled or hung up.",
            lambda s: s.dispatcher.metrics.cancelled,
        ),
    )
    for name, kind, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{_labels(s.name, str(s.version))} {value(s)}" for s in versions]
    for name, attr, help_text in _HISTOGRAMS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for s in versions:
            lines += _histogram(name, getattr(s.dispatcher.metrics, attr), s.name, str(s.version))
    return "\n".join(lines) + "\n"


def _histogram(name: str, histogram: BucketedHistogram, model: str, version: str) -> list[str]:
    lines = [f"{name}_bucket{_labels(model, version, le=f'{b:g}')} {n}" for b, n in histogram.cumulative()]
    lines.append(f"{name}_bucket{_labels(model, version, le='+Inf')} {histogram.count}")
    lines.append(f"{name}_sum{_labels(model, version)} {histogram.total_s:.9g}")
    lines.append(f"{name}_count{_labels(model, version)} {histogram.count}")
    return lines


def _labels(model: str, version: str, **extra: str) -> str:
    pairs = {"model": model, "version": version, **extra}
    escaped = (f'{k}="{_escape(v)}"' for k, v in pairs.items())
    return "{" + ",".join(escaped) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


histogram_lines = _histogram
"""Prometheus lines of one histogram: ``_bucket`` per bound and ``+Inf``, ``_sum``, ``_count``."""
label_set = _labels
"""``{model="…",version="…",…}`` with values escaped."""
