"""The state of one model's experiment: what each variant served, how it fared, what shadows said.

Pure bookkeeping with an injected clock and random generator (no sockets, no tasks):
:class:`Experiment` routes (through its :class:`~sluice.serve.routing.RouteTable`), records each
answered request per version (count, errors, latency, prediction distribution, a sliding window
for the guardrail), remembers which version served which request id and routing key so that
feedback reaches the right variant, compares shadow answers with the primary's, and judges a
canary against the primary with :func:`judge_canary`.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sluice.metrics import BucketedHistogram
from sluice.models.policy_config import GuardrailConfig, RoutingConfig
from sluice.serve.routing import OutcomeTally, RouteTable, ThompsonAllocator

__all__ = ["Experiment", "ShadowStats", "VariantStats", "WindowSummary", "judge_canary", "prediction_summary"]

LATENCY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REMEMBERED = 100_000  # request ids and routing keys kept for feedback
_SAMPLES = 10_000  # scores and shadow differences kept for quantiles
_QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Prediction:
    """What a response predicted, reduced for the distribution: classes, or scores."""

    classes: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()


def prediction_summary(outputs: Mapping[str, np.ndarray]) -> Prediction:
    """The first integer (or text) output with one value per row as classes, else the first float
    output's first column as scores."""
    for array in outputs.values():
        if array.dtype.kind in "iubUSO" and (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
            return Prediction(classes=tuple(map(_text, array.ravel().tolist())))
    for array in outputs.values():
        if array.dtype.kind == "f" and array.ndim >= 1:
            return Prediction(scores=tuple(array.reshape(len(array), -1)[:, 0].tolist()))
    return Prediction()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class WindowSummary:
    """A variant's requests in the guardrail window."""

    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def judge_canary(primary: WindowSummary, canary: WindowSummary, config: GuardrailConfig) -> str | None:
    """Why the canary must be rolled back (the evidence), or None while it is within the margins."""
    if primary.requests < config.min_requests or canary.requests < config.min_requests:
        return None
    excess = canary.error_rate - primary.error_rate
    if excess > config.max_error_rate_increase:
        return (
            f"error rate {canary.error_rate:.1%} ({canary.errors}/{canary.requests}) vs primary "
            f"{primary.error_rate:.1%} ({primary.errors}/{primary.requests}): +{excess:.1%} exceeds "
            f"the margin of {config.max_error_rate_increase:.1%} over {config.window_s:g} s"
        )
    margin = config.max_p99_increase_ms
    if margin is None or canary.p99_ms is None or primary.p99_ms is None:
        return None
    if canary.p99_ms - primary.p99_ms > margin:
        return (
            f"p99 latency {canary.p99_ms:.1f} ms vs primary {primary.p99_ms:.1f} ms: "
            f"+{canary.p99_ms - primary.p99_ms:.1f} ms exceeds the margin of {margin:g} ms "
            f"over {config.window_s:g} s ({canary.requests} and {primary.requests} requests)"
        )
    return None


@dataclass
class VariantStats:
    """Everything recorded about one served version of the experiment."""

    requests: int = 0
    errors: int = 0
    latency: BucketedHistogram = field(default_factory=lambda: BucketedHistogram(LATENCY_BOUNDS_S))
    classes: Counter[str] = field(default_factory=Counter)
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    outcomes: OutcomeTally = field(default_factory=OutcomeTally)
    window: deque[tuple[float, float, bool]] = field(default_factory=deque)  # (at, latency, failed)
    window_errors: int = 0

    def remember(self, at_s: float, latency_s: float, failed: bool) -> None:
        """Add a request to the guardrail window (the oldest goes beyond its bounded length)."""
        if len(self.window) >= _SAMPLES:
            self.window_errors -= self.window.popleft()[2]
        self.window.append((at_s, latency_s, failed))
        self.window_errors += failed

    def summary(self, now_s: float, window_s: float, *, with_p99: bool = True) -> WindowSummary:
        """The window's requests, errors and (sorting them, so only when asked) p99 latency."""
        while self.window and self.window[0][0] < now_s - window_s:
            self.window_errors -= self.window.popleft()[2]
        p99 = None
        if with_p99:
            latencies = sorted(latency for _, latency, failed in self.window if not failed)
            if latencies:
                p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1000
        return WindowSummary(len(self.window), self.window_errors, p99)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms": self.latency.percentiles_ms((50, 90, 99)),
            "predictions": _distribution(self.classes, self.scores),
            "outcomes": {"count": self.outcomes.count, "sum": self.outcomes.total, "sum_sq": self.outcomes.total_sq},
        }


@dataclass
class ShadowStats:
    """A shadow version's copies: run, dropped under load, failed, and how they agreed."""

    copies: int = 0
    dropped: int = 0
    errors: int = 0
    latency: BucketedHistogram = field(default_factory=lambda: BucketedHistogram(LATENCY_BOUNDS_S))
    compared_rows: int = 0
    agreed_rows: int = 0
    differences: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))

    def compare(self, primary: Prediction, shadow: Prediction) -> None:
        if primary.classes and len(primary.classes) == len(shadow.classes):
            self.compared_rows += len(primary.classes)
            self.agreed_rows += sum(a == b for a, b in zip(primary.classes, shadow.classes, strict=True))
        elif primary.scores and len(primary.scores) == len(shadow.scores):
            self.differences.extend(abs(a - b) for a, b in zip(primary.scores, shadow.scores, strict=True))

    def to_dict(self) -> dict[str, Any]:
        agreement = self.agreed_rows / self.compared_rows if self.compared_rows else None
        return {
            "copies": self.copies,
            "dropped": self.dropped,
            "errors": self.errors,
            "latency_ms": self.latency.percentiles_ms((50, 90, 99)),
            "agreement": agreement,
            "compared_rows": self.compared_rows,
            "abs_difference": _quantiles(self.differences),
        }


@dataclass(frozen=True)
class Served:
    """What feedback needs to know about an answered request."""

    version: str
    predicted: str | None


class Experiment:
    """One model's routing and measurements; see the module docstring."""

    def __init__(
        self,
        routing: RoutingConfig,
        *,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routing = routing
        self.table = RouteTable(dict(routing.weights), dict(routing.shadow))
        self.rng = rng or np.random.default_rng()
        self.clock = clock
        self.variants: dict[str, VariantStats] = {}
        self.shadows: dict[str, ShadowStats] = {}
        self.rollbacks: list[dict[str, Any]] = []
        self.shadow_in_flight = 0
        self._by_id: OrderedDict[str, Served] = OrderedDict()
        self._by_key: OrderedDict[str, Served] = OrderedDict()

    def reconfigure(self, routing: RoutingConfig) -> None:
        """New weights, shadows or settings; what was measured so far is kept."""
        self.routing = routing
        self.table = RouteTable(dict(routing.weights), dict(routing.shadow))

    def route(self, key: str | None) -> str:
        """The variant (as written in the routing table) that answers this request."""
        return self.table.choose(key, self.rng)

    def pick_shadows(self) -> list[str]:
        """Shadow variants that get a copy; those over the in-flight limit are counted as dropped."""
        chosen = self.table.shadows(self.rng)
        room = self.routing.max_shadow_in_flight - self.shadow_in_flight
        for variant in chosen[max(0, room) :]:
            self.shadow_stats(variant).dropped += 1
        return chosen[: max(0, room)]

    def shadow_stats(self, variant: str) -> ShadowStats:
        stats = self.shadows.get(variant)
        if stats is None:  # not setdefault: that would build a ShadowStats on every call
            stats = self.shadows[variant] = ShadowStats()
        return stats

    def record(
        self,
        version: str,
        latency_s: float,
        prediction: Prediction | None,
        *,
        request_id: str | None = None,
        routing_key: str | None = None,
    ) -> None:
        """One answered (``prediction`` given) or failed (None) request of ``version``."""
        stats = self._variant(version)
        stats.requests += 1
        if self.routing.guardrail is not None:  # the window exists for the guardrail only
            stats.remember(self.clock(), latency_s, prediction is None)
        if prediction is None:
            stats.errors += 1
            return
        stats.latency.record(latency_s)
        if prediction.classes:
            stats.classes.update(prediction.classes)
        else:
            stats.scores.extend(prediction.scores)
        if request_id is None and routing_key is None:
            return
        served = Served(version, prediction.classes[0] if len(prediction.classes) == 1 else None)
        for remembered, key in ((self._by_id, request_id), (self._by_key, routing_key)):
            if key is not None:
                remembered[key] = served
                remembered.move_to_end(key)
                if len(remembered) > _REMEMBERED:
                    remembered.popitem(last=False)

    def _variant(self, version: str) -> VariantStats:
        stats = self.variants.get(version)
        if stats is None:  # not setdefault: that would build a VariantStats on every request
            stats = self.variants[version] = VariantStats()
        return stats

    def served(self, request_id: str | None, routing_key: str | None) -> Served | None:
        """The version that answered ``request_id`` (or last answered ``routing_key``)."""
        if request_id is not None:
            return self._by_id.get(request_id)
        return self._by_key.get(routing_key) if routing_key is not None else None

    def add_outcome(self, version: str, reward: float) -> None:
        """Attribute an outcome to ``version``; in thompson mode, re-weigh the variants."""
        self._variant(version).outcomes.add(reward)

    def thompson_weights(self, version_of: Mapping[str, str]) -> dict[str, float]:
        """New weights per variant from the outcomes so far (``version_of``: variant → version)."""
        allocator = ThompsonAllocator(self.routing.experiment.outcome, self.routing.floor_weight)
        tallies = {
            variant: self.variants[version_of[variant]].outcomes
            if version_of.get(variant) in self.variants
            else OutcomeTally()
            for variant in self.table.weights
        }
        return allocator.weights(tallies, self.rng)

    def judge(self, primary_version: str, canary_version: str) -> str | None:
        """Evidence against the canary under the configured guardrail, or None."""
        guard = self.routing.guardrail
        if guard is None or primary_version not in self.variants or canary_version not in self.variants:
            return None
        now = self.clock()
        p99 = guard.max_p99_increase_ms is not None
        primary = self.variants[primary_version].summary(now, guard.window_s, with_p99=p99)
        canary = self.variants[canary_version].summary(now, guard.window_s, with_p99=p99)
        return judge_canary(primary, canary, guard)

    def to_dict(self, version_of: Mapping[str, str]) -> dict[str, Any]:
        """The JSON document of ``GET /v2/models/{m}/experiment``."""
        return {
            "routing": self.routing.model_dump(mode="json"),
            "weights": dict(self.table.weights),
            "variants": {v: version_of.get(v) for v in [*self.table.weights, *self.table.shadow]},
            "versions": {version: stats.to_dict() for version, stats in sorted(self.variants.items())},
            "shadows": {variant: stats.to_dict() for variant, stats in sorted(self.shadows.items())},
            "shadow_in_flight": self.shadow_in_flight,
            "rollbacks": list(self.rollbacks),
        }


def _distribution(classes: Counter[str], scores: deque[float]) -> dict[str, Any]:
    total = sum(classes.values())
    if total:
        return {"class_shares": {k: n / total for k, n in sorted(classes.items())}, "rows": total}
    return {"score_quantiles": _quantiles(scores), "rows": len(scores)}


def _quantiles(values: deque[float]) -> dict[str, float] | None:
    if not values:
        return None
    found = np.quantile(np.fromiter(values, dtype=np.float64), _QUANTILES)
    return {f"p{round(q * 100)}": float(v) for q, v in zip(_QUANTILES, found, strict=True)}
