"""One small recorder for counts and latency distributions.

The batch summary, the server's ``/metrics`` and the benchmarks all use
:class:`LatencyHistogram`: log-spaced buckets (about 2% wide), so memory stays constant
however many samples arrive, and percentiles are within a bucket's width.
"""

from __future__ import annotations

import bisect
import math
import resource
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BucketedHistogram", "LatencyHistogram", "StageTimer", "peak_rss_bytes", "reset_peak_rss"]

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


class LatencyHistogram:
    """Thread-safe histogram of durations in seconds."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        index = math.floor(math.log(seconds) / _LOG_GROWTH) if seconds > 0 else -10_000
        with self._lock:
            self._buckets[index] += 1
            self.count += 1
            self.total_s += seconds
            self.max_s = max(self.max_s, seconds)

    def snapshot(self) -> dict[str, object]:
        """The histogram as plain JSON-able data, to send from a worker process to the driver."""
        with self._lock:
            return {
                "buckets": {str(k): v for k, v in self._buckets.items()},
                "count": self.count,
                "total_s": self.total_s,
                "max_s": self.max_s,
            }

    def merge(self, snapshot: Mapping[str, Any]) -> None:
        """Add the samples of another histogram's :meth:`snapshot`."""
        with self._lock:
            self._buckets.update({int(k): int(v) for k, v in snapshot["buckets"].items()})
            self.count += int(snapshot["count"])
            self.total_s += float(snapshot["total_s"])
            self.max_s = max(self.max_s, float(snapshot["max_s"]))

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) in seconds, or None with no samples."""
        with self._lock:
            if not self.count:
                return None
            rank = q * self.count
            seen = 0
            for index in sorted(self._buckets):
                seen += self._buckets[index]
                if seen >= rank:
                    return min(self.max_s, _GROWTH ** (index + 0.5)) if index > -10_000 else 0.0
            return self.max_s

    def percentiles_ms(self, qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for q in qs:
            value = self.quantile(q / 100)
            out[f"p{q}"] = None if value is None else round(value * 1000, 3)
        return out


class BucketedHistogram(LatencyHistogram):
    """A :class:`LatencyHistogram` that also counts samples into fixed upper bounds (for Prometheus)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        super().__init__()
        self.bounds = tuple(bounds)
        self._bounded = [0] * len(self.bounds)
        self._bounded_lock = threading.Lock()

    def record(self, seconds: float) -> None:
        super().record(seconds)
        index = bisect.bisect_left(self.bounds, seconds)
        if index < len(self.bounds):
            with self._bounded_lock:
                self._bounded[index] += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, samples <= bound)`` for every bound, in order."""
        with self._bounded_lock:
            counts = list(self._bounded)
        out, seen = [], 0
        for bound, count in zip(self.bounds, counts, strict=True):
            seen += count
            out.append((bound, seen))
        return out


class StageTimer:
    """Busy seconds per pipeline stage, summed across threads."""

    def __init__(self, stages: tuple[str, ...]) -> None:
        self.seconds = dict.fromkeys(stages, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds


def reset_peak_rss(pid: int | None = None) -> None:
    """Start the kernel's peak-RSS mark of this process (or ``pid``) afresh (Linux), so a peak
    is a run's, not the process's."""
    try:
        with open(f"/proc/{pid or 'self'}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_bytes(pid: int | None = None) -> int:
    """Peak resident memory of this process (or ``pid``) since the last :func:`reset_peak_rss`;
    0 for a ``pid`` that is gone."""
    return _status_bytes(pid, "VmHWM:")


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of this process (or ``pid``) now; 0 for a ``pid`` that is gone."""
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def _status_bytes(pid: int | None, field: str) -> int:
    try:
        with open(f"/proc/{pid or 'self'}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if pid is not None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
