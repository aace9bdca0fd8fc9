"""Statistics of an A/B test, pure and dependency-free (checked against scipy in the tests).

Confidence intervals of a mean outcome (Wilson's for 0/1 outcomes, Student's t otherwise), the
two-proportion z-test (pooled) and Welch's unequal-variance t-test, the sample size per variant
needed to detect a given effect with a given power, and :func:`compare` which puts them together
with a recommendation: promote, keep collecting, or roll back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

from sluice.serve.routing import OutcomeTally

__all__ = [
    "Comparison",
    "Interval",
    "TestResult",
    "compare",
    "mean_interval",
    "sample_size_means",
    "sample_size_proportions",
    "student_t_cdf",
    "student_t_ppf",
    "two_proportion_ztest",
    "welch_ttest",
]

Outcome = Literal["binary", "continuous"]
Recommendation = Literal["promote", "keep collecting", "roll back"]
_NORMAL = NormalDist()


@dataclass(frozen=True)
class TestResult:
    """A two-sided test of candidate − control: the statistic, its p-value and degrees of freedom."""

    __test__ = False  # not a pytest class

    statistic: float
    p_value: float
    df: float | None = None


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


# -- distributions -----------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    # the continued fraction of the incomplete beta function, evaluated by Lentz's method
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
            -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on the CDF; 0 < q < 1)."""
    low, high = -1e3, 1e3
    for _ in range(200):
        mid = (low + high) / 2.0
        if student_t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


# -- intervals and tests -----------------------------------------------------------------------


def mean_interval(tally: OutcomeTally, outcome: Outcome, confidence: float = 0.95) -> Interval | None:
    """Confidence interval of the mean outcome: Wilson's score interval for 0/1, t otherwise."""
    n = tally.count
    if outcome == "binary":
        if n == 0:
            return None
        z = _NORMAL.inv_cdf(0.5 + confidence / 2.0)
        p = tally.total / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return Interval(centre - half, centre + half)
    if n < 2:
        return None
    half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * math.sqrt(tally.variance / n)
    return Interval(tally.mean - half, tally.mean + half)


def two_proportion_ztest(control: OutcomeTally, candidate: OutcomeTally) -> TestResult | None:
    """Pooled two-proportion z-test of candidate − control (None when it is undefined)."""
    n1, n2 = control.count, candidate.count
    if not n1 or not n2:
        return None
    pooled = (control.total + candidate.total) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    z = (candidate.total / n2 - control.total / n1) / se
    return TestResult(z, 2 * _NORMAL.cdf(-abs(z)))


def welch_ttest(control: OutcomeTally, candidate: OutcomeTally) -> TestResult | None:
    """Welch's t-test of candidate − control (None below two outcomes a side or with no variance)."""
    if control.count < 2 or candidate.count < 2:
        return None
    v1, v2 = control.variance / control.count, candidate.variance / candidate.count
    if v1 + v2 == 0:
        return None
    t = (candidate.mean - control.mean) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (control.count - 1) + v2 * v2 / (candidate.count - 1))
    return TestResult(t, 2 * student_t_cdf(-abs(t), df), df)


def sample_size_proportions(base_rate: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Outcomes per variant to detect ``base_rate`` → ``base_rate + effect`` (two-sided)."""
    p1 = min(max(base_rate, 1e-6), 1 - 1e-6)
    p2 = min(max(p1 + effect, 1e-6), 1 - 1e-6)
    z_a, z_b = _NORMAL.inv_cdf(1 - alpha / 2), _NORMAL.inv_cdf(power)
    mean_p = (p1 + p2) / 2
    root = z_a * math.sqrt(2 * mean_p * (1 - mean_p)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / ((p2 - p1) ** 2))


def sample_size_means(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Outcomes per variant to detect a difference ``effect`` in means with standard deviation ``sd``."""
    z = _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)
    return math.ceil(2 * (z * sd / effect) ** 2)


# -- the comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A candidate against the control: the difference, its test, the samples still needed, advice."""

    difference: float | None
    test: str
    statistic: float | None
    p_value: float | None
    required_per_variant: int | None
    still_needed: int | None
    recommendation: Recommendation
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    control: OutcomeTally,
    candidate: OutcomeTally,
    outcome: Outcome,
    *,
    min_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> Comparison:
    """Test candidate against control and recommend what to do with the candidate."""
    binary = outcome == "binary"
    result = two_proportion_ztest(control, candidate) if binary else welch_ttest(control, candidate)
    test = "two-proportion z-test" if binary else "Welch's t-test"
    required = _required(control, candidate, outcome, min_effect, alpha, power)
    have = min(control.count, candidate.count)
    still = None if required is None else max(0, required - have)
    diff = candidate.mean - control.mean if control.count and candidate.count else None
    stat, p = (result.statistic, result.p_value) if result is not None else (None, None)
    if result is not None and result.p_value < alpha:
        better = result.statistic > 0
        verdict: Recommendation = "promote" if better else "roll back"
        reason = f"candidate is significantly {'better' if better else 'worse'} (p = {result.p_value:.3g} < {alpha:g})"
    elif still is not None and still == 0:
        verdict, reason = "roll back", f"no significant difference after {have} outcomes per variant"
    else:
        verdict = "keep collecting"
        reason = "not enough outcomes yet" if still is None else f"{still} more outcomes per variant needed"
    return Comparison(diff, test, stat, p, required, still, verdict, reason)


def _required(
    control: OutcomeTally, candidate: OutcomeTally, outcome: Outcome, effect: float, alpha: float, power: float
) -> int | None:
    if outcome == "binary":
        return sample_size_proportions(control.mean, effect, alpha, power) if control.count else None
    variances = [t.variance for t in (control, candidate) if t.count >= 2]
    if not variances:
        return None
    return sample_size_means(math.sqrt(sum(variances) / len(variances)), effect, alpha, power)
