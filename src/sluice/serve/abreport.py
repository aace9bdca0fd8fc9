"""``sluice ab report``: an experiment's JSON document turned into a verdict per variant.

:func:`experiment_report` is pure: it reads the document of ``GET /v2/models/{m}/experiment``
(weights, per-version counts and outcome sums) and compares every candidate with the primary
using :func:`sluice.serve.abtest.compare` under the model's ``routing.experiment`` settings.
Any document gives a report or a :class:`~sluice.errors.RemoteError` naming what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sluice.errors import RemoteError
from sluice.models.policy_config import ExperimentConfig
from sluice.serve.abtest import Comparison, Interval, compare, mean_interval, sequential_rule
from sluice.serve.routing import OutcomeTally

__all__ = ["ExperimentReport", "VariantReport", "experiment_report"]


@dataclass(frozen=True)
class VariantReport:
    """One variant's traffic and outcomes; ``comparison`` is None for the primary."""

    variant: str
    version: str | None
    weight: float
    requests: int
    traffic_share: float
    errors: int
    outcomes: int
    mean_outcome: float | None
    interval: Interval | None
    comparison: Comparison | None


@dataclass(frozen=True)
class ExperimentReport:
    """Every variant, the test used, and the overall recommendation."""

    model: str
    outcome: str
    variants: tuple[VariantReport, ...]
    recommendation: str
    reason: str
    rule: str
    fixed_test: str

    @property
    def rules(self) -> str:
        """Which rule decides, and the fixed-horizon test reported beside it."""
        return f"{self.rule}; {self.fixed_test} at the planned sample size for information"

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for v in self.variants:
            row = {k: getattr(v, k) for k in ("variant", "version", "weight", "requests", "traffic_share", "errors")}
            row |= {"outcomes": v.outcomes, "mean_outcome": v.mean_outcome}
            row["ci95"] = None if v.interval is None else [v.interval.low, v.interval.high]
            row["comparison"] = None if v.comparison is None else v.comparison.to_dict()
            rows.append(row)
        rules = {"rule": self.rule, "fixed_test": self.fixed_test}
        return {"model": self.model, "outcome": self.outcome, **rules, "variants": rows, **self._verdict()}

    def _verdict(self) -> dict[str, str]:
        return {"recommendation": self.recommendation, "reason": self.reason}


def experiment_report(document: dict[str, Any]) -> ExperimentReport:
    """Judge the experiment in ``document`` (the server's experiment endpoint answer)."""
    try:
        settings = ExperimentConfig.model_validate(document["routing"]["experiment"])
        weights: dict[str, float] = document["weights"]
        versions: dict[str, str | None] = document["variants"]
        figures: dict[str, Any] = document["versions"]
        model = str(document["model_name"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteError(f"the experiment document is not what the server sends: missing {exc}") from None
    total = sum(_figure(figures, versions.get(v), "requests") for v in weights)
    control: OutcomeTally | None = None
    rows = []
    for variant, weight in weights.items():
        version = versions.get(variant)
        tally = _tally(figures, version)
        comparison = None
        if control is None:
            control = tally
        else:
            comparison = compare(
                control,
                tally,
                settings.outcome,
                min_effect=settings.min_effect,
                alpha=settings.alpha,
                power=settings.power,
            )
        requests = _figure(figures, version, "requests")
        rows.append(
            VariantReport(
                variant,
                version,
                float(weight),
                requests,
                requests / total if total else 0.0,
                _figure(figures, version, "errors"),
                tally.count,
                tally.mean if tally.count else None,
                mean_interval(tally, settings.outcome),
                comparison,
            )
        )
    recommendation, reason = _overall(rows)
    rule = sequential_rule(settings.min_effect, settings.alpha)
    fixed = "two-proportion z-test" if settings.outcome == "binary" else "Welch's t-test"
    return ExperimentReport(model, settings.outcome, tuple(rows), recommendation, reason, rule, fixed)


def _stats(figures: dict[str, Any], version: str | None) -> dict[str, Any]:
    stats = figures.get(version or "", {})
    if not isinstance(stats, dict):
        raise _unexpected(f"versions.{version}", stats, "an object")
    return stats


def _figure(figures: dict[str, Any], version: str | None, name: str) -> int:
    return _count(_stats(figures, version).get(name, 0), f"versions.{version}.{name}")


def _tally(figures: dict[str, Any], version: str | None) -> OutcomeTally:
    where = f"versions.{version}.outcomes"
    outcomes = _stats(figures, version).get("outcomes", {})
    if not isinstance(outcomes, dict):
        raise _unexpected(where, outcomes, "an object")
    count = _count(outcomes.get("count", 0), f"{where}.count")
    sums = [outcomes.get(name, 0.0) for name in ("sum", "sum_sq")]
    for name, value in zip(("sum", "sum_sq"), sums, strict=True):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _unexpected(f"{where}.{name}", value, "a finite number")
    return OutcomeTally(count, float(sums[0]), float(sums[1]))


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _unexpected(where, value, "a count >= 0")
    return value


def _unexpected(where: str, value: Any, expected: str) -> RemoteError:
    return RemoteError(f"the experiment document says {where} = {value!r}: expected {expected}")


def _overall(rows: list[VariantReport]) -> tuple[str, str]:
    judged = [(row.variant, row.comparison) for row in rows if row.comparison is not None]
    if not judged:
        return "keep collecting", "only the primary takes traffic: nothing to compare"
    for wanted in ("promote", "roll back"):
        hits = [(variant, c) for variant, c in judged if c.recommendation == wanted]
        if hits:
            variant, comparison = hits[0]
            return f"{wanted} {variant}", comparison.reason
    variant, comparison = judged[0]
    return "keep collecting", f"{variant}: {comparison.reason}"
