"""The always-valid sequential test: its formulas against scipy, the edges (rates 0 and 1, no
outcomes, one arm empty) and, by simulation, that peeking at every 50 outcomes keeps the
false-positive rate at or below alpha while a real difference is still found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st

from sluice.errors import RemoteError
from sluice.serve.abreport import experiment_report
from sluice.serve.abtest import (
    compare,
    msprt,
    sample_size_proportions,
    sequential_test,
    two_proportion_ztest,
)
from sluice.serve.routing import OutcomeTally

ALPHA = 0.05


def _tally(ones: int, zeros: int) -> OutcomeTally:
    return OutcomeTally(ones + zeros, float(ones), float(ones))


# -- formulas ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("difference", "variance", "tau"), [(0.03, 1e-4, 0.02), (-0.2, 0.01, 0.05), (0.0, 2.0, 1.0)])
def test_msprt_is_the_normal_mixture_likelihood_ratio(difference: float, variance: float, tau: float) -> None:
    # the mixture of N(theta, s2) over theta ~ N(0, tau2) is N(0, s2 + tau2)
    ratio = st.norm.pdf(difference, scale=math.sqrt(variance + tau * tau)) / st.norm.pdf(
        difference, scale=math.sqrt(variance)
    )
    result = msprt(difference, variance, tau, ALPHA)
    assert result.p_value == pytest.approx(min(1.0, 1.0 / ratio), rel=1e-9)
    for edge in (result.interval.low, result.interval.high):  # the sequence ends where the ratio is 1/alpha
        shifted = difference - edge
        at_edge = st.norm.pdf(shifted, scale=math.sqrt(variance + tau * tau)) / st.norm.pdf(
            shifted, scale=math.sqrt(variance)
        )
        assert at_edge == pytest.approx(1 / ALPHA, rel=1e-9)


def test_the_p_value_is_below_alpha_exactly_when_the_sequence_excludes_zero() -> None:
    for ones in range(80, 200, 7):
        result = sequential_test(_tally(100, 900), _tally(ones, 1000 - ones), "binary", mixing_sd=0.02)
        assert result is not None
        assert (result.p_value < ALPHA) == (result.interval.low > 0 or result.interval.high < 0)


def test_a_huge_evidence_gives_p_zero_not_an_overflow() -> None:
    result = msprt(0.5, 1e-9, 0.05)
    assert result.p_value == 0.0 and result.interval.low > 0.49


# -- edges ---------------------------------------------------------------------------------------


def test_planned_sample_at_rates_zero_and_one() -> None:
    # a control at 100% can only get worse: planned as 1.00 -> 0.95, which is 0.95 -> 1.00 mirrored
    assert sample_size_proportions(1.0, 0.05) == sample_size_proportions(0.95, 0.05) == 152
    z_a, z_b = st.norm.ppf(0.975), st.norm.ppf(0.8)
    root = z_a * math.sqrt(2 * 0.025 * 0.975) + z_b * math.sqrt(0.05 * 0.95)
    assert sample_size_proportions(0.0, 0.05) == math.ceil(root**2 / 0.05**2) == 152
    assert sample_size_proportions(0.5, 1.0) is None  # no rate is 1.0 away from 0.5


@pytest.mark.parametrize(
    ("control", "candidate", "advice", "reason"),
    [
        (OutcomeTally(), OutcomeTally(), "keep collecting", "not enough outcomes yet"),
        (_tally(1, 0), OutcomeTally(), "keep collecting", "not enough outcomes yet"),
        (OutcomeTally(), _tally(0, 1), "keep collecting", "not enough outcomes yet"),
        (_tally(1, 0), _tally(1, 0), "keep collecting", "not enough outcomes yet"),
        (_tally(500, 0), _tally(500, 0), "keep collecting", "no variation in the outcomes yet"),
        (_tally(0, 500), _tally(0, 500), "keep collecting", "no variation in the outcomes yet"),
    ],
)
def test_no_evidence_keeps_collecting(control: OutcomeTally, candidate: OutcomeTally, advice: str, reason: str) -> None:
    comparison = compare(control, candidate, "binary", min_effect=0.05)
    assert (comparison.recommendation, comparison.p_value, comparison.confidence_sequence) == (advice, None, None)
    assert comparison.reason.split(";")[0] == reason


def test_rates_zero_and_one_against_each_other_decide() -> None:
    up = compare(_tally(0, 500), _tally(500, 0), "binary", min_effect=0.05)
    down = compare(_tally(500, 0), _tally(0, 500), "binary", min_effect=0.05)
    assert (up.recommendation, down.recommendation) == ("promote", "roll back")
    assert up.p_value == down.p_value < 1e-100
    assert (up.confidence_sequence[1], down.confidence_sequence[0]) == (1.0, -1.0)  # rates differ by 1 at most
    assert down.required_per_variant == up.required_per_variant == 152


def test_continuous_edges() -> None:
    flat = OutcomeTally(10, 30.0, 90.0)  # ten outcomes of 3.0: no variance yet
    assert compare(flat, flat, "continuous", min_effect=1.0).reason == "no variation in the outcomes yet"
    one = OutcomeTally(1, 3.0, 9.0)
    assert compare(one, flat, "continuous", min_effect=1.0).reason.startswith("not enough outcomes yet")


def test_the_report_of_the_docs_state_and_of_a_broken_document() -> None:
    document = {
        "model_name": "demo",
        "routing": {"weights": {"stable": 90, "2": 10}, "experiment": {"outcome": "binary", "min_effect": 0.05}},
        "weights": {"stable": 90.0, "2": 10.0},
        "variants": {"stable": "1", "2": "2"},
        "versions": {"1": {"requests": 1, "errors": 0, "outcomes": {"count": 1, "sum": 1.0, "sum_sq": 1.0}}},
    }
    report = experiment_report(document)
    assert (report.recommendation, report.variants[1].outcomes) == ("keep collecting", 0)
    document["versions"]["1"]["outcomes"]["count"] = "one"
    with pytest.raises(RemoteError) as caught:
        experiment_report(document)
    assert str(caught.value) == (
        "the experiment document says versions.1.outcomes.count = 'one': expected a count >= 0"
    )


# -- peeking, by simulation ----------------------------------------------------------------------

EXPERIMENTS, OUTCOMES, EVERY = 2_000, 2_000, 50
LOOKS = np.arange(EVERY, OUTCOMES + 1, EVERY)
# If the true rate of ever rejecting were alpha, the share seen over 2,000 independent A/A
# experiments would be binomial with sd sqrt(0.05 * 0.95 / 2000) = 0.0049, and it exceeds
# alpha + 3.09 sd only with probability 0.001 (one-sided): a tolerance that a valid test passes
# and that peeking with the fixed-horizon z-test (about 0.3 here) fails by far.
TOLERANCE = ALPHA + 3.09 * math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)


def _binary_sums(rate: float, rng: np.random.Generator, experiments: int = EXPERIMENTS) -> np.ndarray:
    """Successes so far at each look: one row per experiment."""
    return np.cumsum(rng.random((experiments, OUTCOMES)) < rate, axis=1, dtype=np.int64)[:, LOOKS - 1]


def _first_decision(control: np.ndarray, candidate: np.ndarray, decide) -> list[str | None]:
    """The first look at which ``decide`` says something other than None, per experiment."""
    found: list[str | None] = []
    for a_row, b_row in zip(control, candidate, strict=True):
        verdict = None
        for n, a, b in zip(LOOKS.tolist(), a_row.tolist(), b_row.tolist(), strict=True):
            verdict = decide(OutcomeTally(n, float(a), float(a)), OutcomeTally(n, float(b), float(b)))
            if verdict is not None:
                break
        found.append(verdict)
    return found


def _sequential(control: OutcomeTally, candidate: OutcomeTally) -> str | None:
    result = sequential_test(control, candidate, "binary", mixing_sd=0.05, alpha=ALPHA)
    return None if result is None or result.p_value >= ALPHA else "reject"


def test_peeking_at_every_50_outcomes_keeps_aa_false_positives_at_alpha() -> None:
    rng = np.random.default_rng(20261203)
    control, candidate = _binary_sums(0.10, rng), _binary_sums(0.10, rng)
    rejected = _first_decision(control, candidate, _sequential).count("reject") / EXPERIMENTS
    assert rejected <= TOLERANCE
    assert rejected <= ALPHA  # and in fact well below: Ville's bound holds over an unbounded horizon

    def fixed_horizon(a: OutcomeTally, b: OutcomeTally) -> str | None:
        result = two_proportion_ztest(a, b)
        return "reject" if result is not None and result.p_value < ALPHA else None

    peeked = _first_decision(control[:500], candidate[:500], fixed_horizon).count("reject") / 500
    assert peeked > 3 * ALPHA  # why the report no longer decides by the z-test


def test_aa_recommendations_never_promote_or_roll_back_as_significant_beyond_alpha() -> None:
    rng = np.random.default_rng(7)
    experiments = 500
    control, candidate = _binary_sums(0.5, rng, experiments), _binary_sums(0.5, rng, experiments)

    def advice(a: OutcomeTally, b: OutcomeTally) -> str | None:
        comparison = compare(a, b, "binary", min_effect=0.05, alpha=ALPHA)
        return "significant" if comparison.reason.startswith("candidate is significantly") else None

    significant = _first_decision(control, candidate, advice).count("significant") / experiments
    assert significant <= ALPHA + 3.09 * math.sqrt(ALPHA * (1 - ALPHA) / experiments)


def test_continuous_aa_false_positives_at_alpha() -> None:
    rng = np.random.default_rng(99)
    experiments = 1_000
    a, b = rng.normal(5.0, 2.0, (2, experiments, OUTCOMES))
    sums = [np.cumsum(x, axis=1)[:, LOOKS - 1] for x in (a, b)]
    squares = [np.cumsum(x * x, axis=1)[:, LOOKS - 1] for x in (a, b)]
    rejected = 0
    for e in range(experiments):
        for j, n in enumerate(LOOKS.tolist()):
            control = OutcomeTally(n, float(sums[0][e, j]), float(squares[0][e, j]))
            candidate = OutcomeTally(n, float(sums[1][e, j]), float(squares[1][e, j]))
            result = sequential_test(control, candidate, "continuous", mixing_sd=0.2, alpha=ALPHA)
            if result is not None and result.p_value < ALPHA:
                rejected += 1
                break
    assert rejected / experiments <= ALPHA + 3.09 * math.sqrt(ALPHA * (1 - ALPHA) / experiments)


def test_a_real_difference_is_found_and_promoted() -> None:
    rng = np.random.default_rng(42)
    experiments = 500
    control, candidate = _binary_sums(0.10, rng, experiments), _binary_sums(0.15, rng, experiments)

    def advice(a: OutcomeTally, b: OutcomeTally) -> str | None:
        verdict = compare(a, b, "binary", min_effect=0.05, alpha=ALPHA).recommendation
        return None if verdict == "keep collecting" else verdict

    found = _first_decision(control, candidate, advice)
    # the fixed-horizon plan for 0.10 -> 0.15 at power 0.8 is 686 per variant; by 2,000 per
    # variant the sequential test finds nearly every one
    assert found.count("promote") / experiments >= 0.9
    # a roll back here means the confidence sequence excluded the true difference (0.05 =
    # min_effect), which a valid sequence does in at most alpha of the experiments
    assert found.count("roll back") / experiments <= ALPHA
