"""Prometheus lines of the experiments: per variant, per shadow, and the live weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sluice.serve.prometheus import histogram_lines, label_set

if TYPE_CHECKING:
    from sluice.serve.experiment import Experiment

__all__ = ["render_experiment_metrics"]

_VARIANT_COUNTERS: tuple[tuple[str, str, str, Callable[[Any], float]], ...] = (
    ("sluice_variant_requests_total", "counter", "Routed requests per answering version.", lambda s: s.requests),
    ("sluice_variant_errors_total", "counter", "Routed requests that failed.", lambda s: s.errors),
    ("sluice_variant_outcomes_total", "counter", "Feedback outcomes attributed.", lambda s: s.outcomes.count),
    ("sluice_variant_outcome_sum", "counter", "Sum of the attributed outcomes.", lambda s: s.outcomes.total),
)
_SHADOW_COUNTERS: tuple[tuple[str, str, str, Callable[[Any], float]], ...] = (
    ("sluice_shadow_copies_total", "counter", "Requests copied to the shadow and run.", lambda s: s.copies),
    ("sluice_shadow_dropped_total", "counter", "Shadow copies dropped under load.", lambda s: s.dropped),
    ("sluice_shadow_errors_total", "counter", "Shadow copies that failed.", lambda s: s.errors),
    ("sluice_shadow_compared_rows_total", "counter", "Rows whose class was compared.", lambda s: s.compared_rows),
    ("sluice_shadow_agreed_rows_total", "counter", "Compared rows of the same class.", lambda s: s.agreed_rows),
)


def render_experiment_metrics(experiments: Mapping[str, Experiment]) -> str:
    """Prometheus text for every model with a routing section (empty without any)."""
    if not experiments:
        return ""
    lines = ["# HELP sluice_route_weight Current weight of each routed variant.", "# TYPE sluice_route_weight gauge"]
    for model, exp in sorted(experiments.items()):
        lines += [f"sluice_route_weight{label_set(model, v)} {w:g}" for v, w in exp.table.weights.items()]
    for name, kind, help_text, value in _VARIANT_COUNTERS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for model, exp in sorted(experiments.items()):
            lines += [f"{name}{label_set(model, v)} {value(s):g}" for v, s in sorted(exp.variants.items())]
    lines += _predictions(experiments)
    lines += ["# HELP sluice_variant_seconds Latency of routed requests.", "# TYPE sluice_variant_seconds histogram"]
    for model, exp in sorted(experiments.items()):
        for version, stats in sorted(exp.variants.items()):
            lines += histogram_lines("sluice_variant_seconds", stats.latency, model, version)
    return "\n".join([*lines, *_shadows(experiments)]) + "\n"


def _shadows(experiments: Mapping[str, Experiment]) -> list[str]:
    lines: list[str] = []
    for name, kind, help_text, value in _SHADOW_COUNTERS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for model, exp in sorted(experiments.items()):
            lines += [f"{name}{label_set(model, v)} {value(s):g}" for v, s in sorted(exp.shadows.items())]
    lines += ["# HELP sluice_shadow_seconds Latency of shadow copies.", "# TYPE sluice_shadow_seconds histogram"]
    for model, exp in sorted(experiments.items()):
        for variant, shadow in sorted(exp.shadows.items()):
            lines += histogram_lines("sluice_shadow_seconds", shadow.latency, model, variant)
    return lines


def _predictions(experiments: Mapping[str, Experiment]) -> list[str]:
    lines = [
        "# HELP sluice_variant_predictions_total Predicted rows per class.",
        "# TYPE sluice_variant_predictions_total counter",
    ]
    for model, exp in sorted(experiments.items()):
        for version, stats in sorted(exp.variants.items()):
            lines += [
                f"sluice_variant_predictions_total{label_set(model, version, **{'class': c})} {n}"
                for c, n in sorted(stats.classes.items())
            ]
    lines += [
        "# HELP sluice_variant_score Quantiles of the predicted score (recent rows).",
        "# TYPE sluice_variant_score gauge",
    ]
    for model, exp in sorted(experiments.items()):
        for version, stats in sorted(exp.variants.items()):
            quantiles = stats.to_dict()["predictions"].get("score_quantiles") or {}
            lines += [
                f"sluice_variant_score{label_set(model, version, quantile=q)} {v:.9g}" for q, v in quantiles.items()
            ]
    return lines
