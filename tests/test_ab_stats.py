"""The A/B statistics match scipy's on fixed data (scipy is a test dependency only)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

from sluice.serve.abtest import (
    compare,
    mean_interval,
    sample_size_means,
    sample_size_proportions,
    student_t_cdf,
    student_t_ppf,
    two_proportion_ztest,
    welch_ttest,
)
from sluice.serve.routing import OutcomeTally

REL = 1e-9


def _tally(values) -> OutcomeTally:
    tally = OutcomeTally()
    for value in values:
        tally.add(float(value))
    return tally


def test_welch_ttest_matches_scipy() -> None:
    rng = np.random.default_rng(11)
    control, candidate = rng.normal(1.0, 2.0, 57), rng.normal(1.6, 3.5, 83)
    ours = welch_ttest(_tally(control), _tally(candidate))
    theirs = st.ttest_ind(candidate, control, equal_var=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=REL)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=REL)
    assert ours.df == pytest.approx(theirs.df, rel=REL)


def test_two_proportion_ztest_matches_scipy() -> None:
    control, candidate = _tally([1] * 130 + [0] * 870), _tally([1] * 171 + [0] * 829)
    ours = two_proportion_ztest(control, candidate)
    chi2, p, _, _ = st.chi2_contingency([[130, 870], [171, 829]], correction=False)
    assert ours.statistic**2 == pytest.approx(chi2, rel=REL)
    assert ours.p_value == pytest.approx(p, rel=REL)
    assert ours.statistic > 0


def test_intervals_match_scipy() -> None:
    binary = mean_interval(_tally([1] * 37 + [0] * 63), "binary")
    wilson = st.binomtest(37, 100).proportion_ci(method="wilson")
    assert (binary.low, binary.high) == (pytest.approx(wilson.low, rel=REL), pytest.approx(wilson.high, rel=REL))
    values = np.random.default_rng(3).exponential(2.0, 40)
    t = mean_interval(_tally(values), "continuous")
    low, high = st.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=st.sem(values))
    assert (t.low, t.high) == (pytest.approx(low, rel=REL), pytest.approx(high, rel=REL))


@pytest.mark.parametrize(("t", "df"), [(0.3, 1.0), (-2.1, 4.5), (2.5, 30.0), (-6.0, 200.0)])
def test_student_t_matches_scipy(t: float, df: float) -> None:
    assert student_t_cdf(t, df) == pytest.approx(st.t.cdf(t, df), rel=1e-9)
    assert student_t_ppf(0.975, df) == pytest.approx(st.t.ppf(0.975, df), rel=1e-9)


def test_sample_sizes() -> None:
    # the textbook formulas with scipy's normal quantiles
    z_a, z_b = st.norm.ppf(0.975), st.norm.ppf(0.8)
    p1, p2 = 0.10, 0.12
    root = z_a * np.sqrt(2 * 0.11 * 0.89) + z_b * np.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    assert sample_size_proportions(0.10, 0.02) == int(np.ceil(root**2 / 0.02**2)) == 3841
    assert sample_size_means(2.0, 0.5) == int(np.ceil(2 * ((z_a + z_b) * 2.0 / 0.5) ** 2)) == 252


def test_recommendations() -> None:
    control = _tally([1] * 100 + [0] * 900)
    better = compare(control, _tally([1] * 160 + [0] * 840), "binary", min_effect=0.02)
    assert better.recommendation == "promote" and better.difference == pytest.approx(0.06)
    assert better.reason.startswith("candidate is significantly better (always-valid p = ")
    worse = compare(control, _tally([1] * 50 + [0] * 950), "binary", min_effect=0.02)
    assert worse.recommendation == "roll back" and worse.reason.startswith("candidate is significantly worse")
    early = compare(_tally([1, 0, 0]), _tally([1, 1, 0]), "binary", min_effect=0.02)
    assert early.recommendation == "keep collecting"
    assert early.reason.startswith("no significant difference yet after 3 outcomes per variant (difference in [")
    assert early.reason.endswith(f"; the fixed-horizon plan needs {early.still_needed} more outcomes per variant")
    same = compare(_tally([1] * 5000 + [0] * 5000), _tally([1] * 5000 + [0] * 5000), "binary", min_effect=0.05)
    low, high = same.confidence_sequence
    assert same.recommendation == "roll back" and 0 < high < 0.05 and low == -high
    assert same.reason == (
        f"no improvement of 0.05 possible after 10000 outcomes per variant (difference in [{low:+.3g}, {high:+.3g}])"
    )
    none = compare(OutcomeTally(), OutcomeTally(), "continuous", min_effect=1.0)
    assert none.recommendation == "keep collecting" and none.reason == "not enough outcomes yet"
