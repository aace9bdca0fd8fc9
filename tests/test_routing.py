"""Routing as pure logic: weights, sticky keys, shadows, Thompson sampling, the guardrail — no sockets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sluice.models.policy_config import GuardrailConfig, RoutingConfig
from sluice.serve.experiment import Experiment, Prediction, WindowSummary, judge_canary, prediction_summary
from sluice.serve.routing import OutcomeTally, RouteTable, ThompsonAllocator


def test_weights_hold_within_three_sigma_over_10000_requests() -> None:
    table = RouteTable({"1": 90, "2": 10})
    rng = np.random.default_rng(5)
    counts = {"1": 0, "2": 0}
    for _ in range(10_000):
        counts[table.choose(None, rng)] += 1
    sigma = math.sqrt(10_000 * 0.9 * 0.1)
    assert abs(counts["2"] - 1_000) < 3 * sigma
    assert counts["1"] + counts["2"] == 10_000


def test_sticky_keys_split_by_weight_and_never_change_while_weights_stand() -> None:
    table = RouteTable({"stable": 90, "canary": 10})
    keys = [f"user-{i}" for i in range(10_000)]
    first = {key: table.choose(key, np.random.default_rng(i)) for i, key in enumerate(keys)}
    again = {key: table.choose(key, np.random.default_rng(0)) for key in reversed(keys)}
    assert first == again
    share = sum(v == "canary" for v in first.values()) / len(keys)
    assert abs(share - 0.1) < 3 * math.sqrt(0.1 * 0.9 / len(keys))


def test_changing_weights_moves_only_the_share_that_must_move() -> None:
    keys = [f"k{i}" for i in range(10_000)]
    before = RouteTable({"1": 90, "2": 10})
    after = before.with_weights({"1": 80, "2": 20})
    rng = np.random.default_rng(0)
    moved = [k for k in keys if before.choose(k, rng) != after.choose(k, rng)]
    # every mover goes from 1 to 2 (nobody leaves the variant that gained), about 10% of keys
    assert all(before.choose(k, rng) == "1" and after.choose(k, rng) == "2" for k in moved)
    assert abs(len(moved) / len(keys) - 0.10) < 3 * math.sqrt(0.1 * 0.9 / len(keys))


def test_adding_a_third_variant_takes_keys_only_from_the_others() -> None:
    keys = [f"k{i}" for i in range(10_000)]
    before = RouteTable({"1": 50, "2": 50})
    after = RouteTable({"1": 50, "2": 50, "3": 25})
    rng = np.random.default_rng(0)
    moved = [k for k in keys if before.choose(k, rng) != after.choose(k, rng)]
    assert {after.choose(k, rng) for k in moved} == {"3"}
    assert abs(len(moved) / len(keys) - 0.2) < 0.02


def test_zero_weight_variants_get_nothing() -> None:
    table = RouteTable({"1": 1, "2": 0})
    rng = np.random.default_rng(1)
    assert {table.choose(None, rng) for _ in range(1000)} == {"1"}
    assert {table.choose(f"k{i}", rng) for i in range(1000)} == {"1"}


def test_shadow_fraction() -> None:
    table = RouteTable({"1": 1}, {"3": 0.2})
    rng = np.random.default_rng(2)
    copies = sum(bool(table.shadows(rng)) for _ in range(10_000))
    assert abs(copies - 2_000) < 3 * math.sqrt(10_000 * 0.2 * 0.8)


def test_thompson_shifts_weight_to_the_better_variant_and_keeps_the_floor() -> None:
    allocator = ThompsonAllocator("binary", floor_weight=0.05)
    good, bad = OutcomeTally(), OutcomeTally()
    for i in range(400):
        good.add(1.0 if i % 10 < 6 else 0.0)  # 60%
        bad.add(1.0 if i % 10 < 4 else 0.0)  # 40%
    weights = allocator.weights({"1": bad, "2": good}, np.random.default_rng(3))
    assert weights == {"1": pytest.approx(0.05), "2": pytest.approx(0.95)}
    even = allocator.weights({"1": OutcomeTally(), "2": OutcomeTally()}, np.random.default_rng(3))
    assert abs(even["1"] - 0.5) < 0.05 and sum(even.values()) == pytest.approx(1.0)


def test_thompson_continuous_outcomes() -> None:
    low, high = OutcomeTally(), OutcomeTally()
    for i in range(100):
        low.add(1.0 + (i % 5) * 0.1)
        high.add(2.0 + (i % 5) * 0.1)
    weights = ThompsonAllocator("continuous", floor_weight=0.1).weights({"a": low, "b": high}, np.random.default_rng(0))
    assert weights == {"a": pytest.approx(0.1), "b": pytest.approx(0.9)}


def test_routing_config_validation() -> None:
    config = RoutingConfig.model_validate({"weights": {1: 90, "canary": 10}, "shadow": {3: 0.2}})
    assert config.weights == {"1": 90, "canary": 10} and config.primary == "1" and config.shadow == {"3": 0.2}
    with pytest.raises(ValueError, match="shadow fraction of '3' must be between 0 and 1, got 2"):
        RoutingConfig.model_validate({"weights": {1: 1}, "shadow": {3: 2}})
    with pytest.raises(ValueError, match="cannot both take traffic and shadow it"):
        RoutingConfig.model_validate({"weights": {1: 1, 2: 1}, "shadow": {2: 0.5}})
    with pytest.raises(ValueError, match=r"must be 'parameters\.NAME' or 'header:NAME'"):
        RoutingConfig.model_validate({"weights": {1: 1}, "sticky_key": "cookie"})


def test_prediction_summary() -> None:
    classes = prediction_summary({"label": np.array([1, 0]), "probabilities": np.zeros((2, 2), np.float32)})
    assert classes == Prediction(classes=("1", "0"))
    scores = prediction_summary({"variable": np.array([[0.5], [1.5]], np.float32)})
    assert scores == Prediction(scores=(0.5, 1.5))


def test_guardrail_judges_error_rate_and_p99() -> None:
    guard = GuardrailConfig(max_error_rate_increase=0.05, max_p99_increase_ms=50, window_s=60, min_requests=50)
    healthy = WindowSummary(100, 1, 10.0)
    assert judge_canary(healthy, WindowSummary(100, 3, 20.0), guard) is None
    assert judge_canary(healthy, WindowSummary(10, 10, 20.0), guard) is None  # too few requests to judge
    assert judge_canary(healthy, WindowSummary(100, 20, 20.0), guard) == (
        "error rate 20.0% (20/100) vs primary 1.0% (1/100): +19.0% exceeds the margin of 5.0% over 60 s"
    )
    assert judge_canary(healthy, WindowSummary(100, 1, 80.0), guard) == (
        "p99 latency 80.0 ms vs primary 10.0 ms: +70.0 ms exceeds the margin of 50 ms over 60 s (100 and 100 requests)"
    )


def test_experiment_window_forgets_old_requests_and_remembers_who_served() -> None:
    now = [0.0]
    routing = RoutingConfig.model_validate(
        {"weights": {1: 50, 2: 50}, "guardrail": {"window_s": 10, "min_requests": 5}}
    )
    exp = Experiment(routing, rng=np.random.default_rng(0), clock=lambda: now[0])
    for i in range(10):
        exp.record("1", 0.001, Prediction(classes=("1",)), request_id=f"a{i}")
        exp.record("2", 0.001, None)
    assert exp.judge("1", "2") is not None
    now[0] = 11.0
    assert exp.judge("1", "2") is None  # both windows are empty again
    assert exp.served("a3", None).version == "1" and exp.served("a3", None).predicted == "1"
    assert exp.served("nope", None) is None
    assert exp.variants["2"].errors == 10 and exp.variants["1"].classes == {"1": 10}


def test_shadow_in_flight_limit_drops_copies() -> None:
    routing = RoutingConfig.model_validate({"weights": {1: 1}, "shadow": {2: 1.0}, "max_shadow_in_flight": 2})
    exp = Experiment(routing, rng=np.random.default_rng(0))
    assert exp.pick_shadows() == ["2"]
    exp.shadow_in_flight = 2
    assert exp.pick_shadows() == []
    assert exp.shadows["2"].dropped == 1


def test_experiment_judges_p99_over_the_window() -> None:
    routing = RoutingConfig.model_validate(
        {"weights": {1: 50, 2: 50}, "guardrail": {"window_s": 10, "min_requests": 100, "max_p99_increase_ms": 20}}
    )
    exp = Experiment(routing, rng=np.random.default_rng(0), clock=lambda: 0.0)
    for i in range(100):
        exp.record("1", 0.010, Prediction(classes=("1",)))
        exp.record("2", 0.100 if i >= 98 else 0.010, Prediction(classes=("1",)))  # 2 slow of 100: p99 is slow
    assert exp.judge("1", "2") == (
        "p99 latency 100.0 ms vs primary 10.0 ms: +90.0 ms exceeds the margin of 20 ms over 10 s (100 and 100 requests)"
    )
    exp.variants["2"].window.clear()
    exp.variants["2"].window_errors = 0
    for _ in range(100):
        exp.record("2", 0.025, Prediction(classes=("1",)))
    assert exp.judge("1", "2") is None  # +15 ms is within the margin
