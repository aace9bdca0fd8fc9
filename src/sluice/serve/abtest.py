"""Statistics of an A/B test, pure and dependency-free (checked against scipy in the tests).

Confidence intervals of a mean outcome (Wilson's for 0/1 outcomes, Student's t otherwise), the
two-proportion z-test (pooled) and Welch's unequal-variance t-test, the sample size per variant
needed to detect a given effect with a given power, the always-valid normal-mixture sequential
test (:func:`msprt`), and :func:`compare` which puts them together with a recommendation:
promote, keep collecting, or roll back. Only the sequential test decides, so a report may be
read as often as one likes without inflating the false-positive rate; the fixed-horizon tests
and the planned sample size are reported for information.
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
    "SequentialResult",
    "TestResult",
    "compare",
    "difference_variance",
    "mean_interval",
    "msprt",
    "sample_size_means",
    "sample_size_proportions",
    "sequential_rule",
    "sequential_test",
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


def sample_size_proportions(base_rate: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Outcomes per variant to detect ``base_rate`` → ``base_rate ± effect`` (two-sided).

    The change is taken upward unless that leaves [0, 1] (a control already at 100% can only get
    worse); None when neither direction stays within [0, 1].
    """
    p1 = min(max(base_rate, 0.0), 1.0)
    p2 = p1 + effect if p1 + effect <= 1.0 else p1 - effect
    if not 0.0 <= p2 <= 1.0 or p2 == p1:
        return None
    z_a, z_b = _NORMAL.inv_cdf(1 - alpha / 2), _NORMAL.inv_cdf(power)
    mean_p = (p1 + p2) / 2
    root = z_a * math.sqrt(2 * mean_p * (1 - mean_p)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return max(1, math.ceil(root * root / ((p2 - p1) ** 2)))


def sample_size_means(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Outcomes per variant to detect a difference ``effect`` in means with standard deviation ``sd``."""
    z = _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)
    return max(2, math.ceil(2 * (z * sd / effect) ** 2))


# -- the always-valid sequential test ----------------------------------------------------------


@dataclass(frozen=True)
class SequentialResult:
    """The mixture SPRT of candidate − control: its always-valid p-value and confidence sequence."""

    p_value: float
    interval: Interval


def difference_variance(control: OutcomeTally, candidate: OutcomeTally, outcome: Outcome) -> float | None:
    """The variance of the estimated difference of means (None while it cannot be estimated).

    0/1 outcomes use the pooled rate, as the pooled z-test does: under "no difference" it is the
    right variance, and it does not collapse to 0 when one arm has seen only failures.
    """
    n1, n2 = control.count, candidate.count
    if outcome == "binary":
        if not n1 or not n2:
            return None
        pooled = min(max((control.total + candidate.total) / (n1 + n2), 0.0), 1.0)
        variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    else:
        if n1 < 2 or n2 < 2:
            return None
        variance = control.variance / n1 + candidate.variance / n2
    return variance if variance > 0 and math.isfinite(variance) else None


def msprt(difference: float, variance: float, mixing_sd: float, alpha: float = 0.05) -> SequentialResult:
    """The normal-mixture SPRT (Johari, Pekelis, Walsh: "Always valid inference", 2017).

    ``difference`` estimates θ = candidate − control with ``variance`` (``s²``). The likelihood
    ratio of θ ~ N(θ₀, τ²) (τ = ``mixing_sd``) against θ = θ₀ is

        Λ(θ₀) = √(s² / (s² + τ²)) · exp(τ² (Δ − θ₀)² / (2 s² (s² + τ²))),

    a martingale under θ₀ (for a known s²; the estimate is plugged in, which the A/A simulations
    of the tests check), so by Ville's inequality P(Λ ever reaches 1/α) ≤ α however often it is
    looked at. The p-value is min(1, 1/Λ(0)); the confidence sequence is every θ₀ with
    Λ(θ₀) < 1/α, so p < α exactly when the interval excludes 0. τ sets where the test is most
    sensitive: near differences of size τ, reached at about the planned sample size.
    """
    s2, t2 = variance, mixing_sd * mixing_sd
    log_ratio = 0.5 * math.log(s2 / (s2 + t2)) + t2 * difference * difference / (2 * s2 * (s2 + t2))
    p_value = 1.0 if log_ratio <= 0 else math.exp(-log_ratio)
    radius = math.sqrt(s2 * (s2 + t2) / t2 * (2 * math.log(1 / alpha) + math.log((s2 + t2) / s2)))
    return SequentialResult(p_value, Interval(difference - radius, difference + radius))


def sequential_test(
    control: OutcomeTally, candidate: OutcomeTally, outcome: Outcome, *, mixing_sd: float, alpha: float = 0.05
) -> SequentialResult | None:
    """:func:`msprt` on the two tallies (None while the variance cannot be estimated)."""
    variance = difference_variance(control, candidate, outcome)
    if variance is None:
        return None
    result = msprt(candidate.mean - control.mean, variance, mixing_sd, alpha)
    if outcome != "binary":
        return result
    # two rates differ by at most 1 either way
    bounded = Interval(max(result.interval.low, -1.0), min(result.interval.high, 1.0))
    return SequentialResult(result.p_value, bounded)


# -- the comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A candidate against the control: the difference, the tests, the planned sample, advice.

    The advice follows the always-valid sequential test only (``rule``, ``p_value``,
    ``confidence_sequence``), so it may be read at any time. ``test``, ``statistic`` and
    ``fixed_p_value`` are the fixed-horizon test, and ``required_per_variant`` its planned sample:
    shown for information, valid only when read once, at that sample.
    """

    difference: float | None
    rule: str
    p_value: float | None
    confidence_sequence: tuple[float, float] | None
    test: str
    statistic: float | None
    fixed_p_value: float | None
    required_per_variant: int | None
    still_needed: int | None
    recommendation: Recommendation
    reason: str

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        if self.confidence_sequence is not None:
            document["confidence_sequence"] = list(self.confidence_sequence)
        return document


def sequential_rule(mixing_sd: float, alpha: float) -> str:
    """How the recommendation is decided, in words."""
    return f"always-valid mSPRT (normal mixture, tau = {mixing_sd:g}, alpha = {alpha:g})"


def compare(
    control: OutcomeTally,
    candidate: OutcomeTally,
    outcome: Outcome,
    *,
    min_effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    mixing_sd: float | None = None,
) -> Comparison:
    """Test candidate against control and recommend what to do with the candidate.

    ``mixing_sd`` (τ of :func:`msprt`) defaults to ``min_effect``: the test is then most
    sensitive to differences of the size the experiment was planned to detect.
    """
    tau = min_effect if mixing_sd is None else mixing_sd
    binary = outcome == "binary"
    fixed = two_proportion_ztest(control, candidate) if binary else welch_ttest(control, candidate)
    test = "two-proportion z-test" if binary else "Welch's t-test"
    required = _required(control, candidate, outcome, min_effect, alpha, power)
    have = min(control.count, candidate.count)
    still = None if required is None else max(0, required - have)
    diff = candidate.mean - control.mean if control.count and candidate.count else None
    stat, fixed_p = (fixed.statistic, fixed.p_value) if fixed is not None else (None, None)
    sequential = sequential_test(control, candidate, outcome, mixing_sd=tau, alpha=alpha)
    verdict, reason = _advice(sequential, min_effect, alpha, have)
    if verdict == "keep collecting" and still:
        reason += f"; the fixed-horizon plan needs {still} more outcomes per variant"
    p, sequence = (None, None) if sequential is None else (sequential.p_value, sequential.interval)
    bounds = None if sequence is None else (sequence.low, sequence.high)
    rule = sequential_rule(tau, alpha)
    return Comparison(diff, rule, p, bounds, test, stat, fixed_p, required, still, verdict, reason)


def _advice(result: SequentialResult | None, min_effect: float, alpha: float, have: int) -> tuple[Recommendation, str]:
    if result is None:
        return "keep collecting", "not enough outcomes yet" if have < 2 else "no variation in the outcomes yet"
    low, high = result.interval.low, result.interval.high
    sequence = f"difference in [{low:+.3g}, {high:+.3g}]"
    if low > 0 or high < 0:
        better = low > 0
        word = "better" if better else "worse"
        reason = f"candidate is significantly {word} (always-valid p = {result.p_value:.3g} < {alpha:g}; {sequence})"
        return ("promote" if better else "roll back"), reason
    if high < min_effect:
        # the confidence sequence is always valid too: an improvement of min_effect is ruled out
        reason = f"no improvement of {min_effect:g} possible after {have} outcomes per variant ({sequence})"
        return "roll back", reason
    return "keep collecting", f"no significant difference yet after {have} outcomes per variant ({sequence})"


def _required(
    control: OutcomeTally, candidate: OutcomeTally, outcome: Outcome, effect: float, alpha: float, power: float
) -> int | None:
    if outcome == "binary":
        return sample_size_proportions(control.mean, effect, alpha, power) if control.count else None
    variances = [t.variance for t in (control, candidate) if t.count >= 2]
    if not variances:
        return None
    return sample_size_means(math.sqrt(sum(variances) / len(variances)), effect, alpha, power)
