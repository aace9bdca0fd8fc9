"""The pure batcher and its policies, with a fake clock (times are plain floats)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from serve_support import taught_adaptive, teach
from sluice.errors import Overloaded, RequestTimeout, SluiceError
from sluice.serve.batcher import Batch, Batcher, retry_after_header
from sluice.serve.policy import AdaptivePolicy, BatchPolicy, FixedPolicy, LatencyModel

# ---------------------------------------------------------------- fixed policy, queue rules


def test_full_batch_closes_at_once() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=4, max_queue_delay_us=1000))
    for i in range(5):
        batcher.add(f"r{i}", rows=1, now=0.0)
    batch = batcher.next_batch(0.0)
    assert batch is not None and batch.reason == "full"
    assert [r.payload for r in batch.requests] == ["r0", "r1", "r2", "r3"]
    assert batch.rows == 4 and batcher.queued_rows == 1


def test_partial_batch_closes_when_the_oldest_has_waited_the_delay() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=8, max_queue_delay_us=1000))
    assert batcher.next_deadline(0.0) is None  # empty: wait for the first request, no polling
    batcher.add("a", rows=1, now=0.0)
    batcher.add("b", rows=1, now=0.0004)
    assert batcher.next_batch(0.0005) is None
    assert batcher.next_deadline(0.0005) == pytest.approx(0.001)  # measured from the first item
    batch = batcher.next_batch(0.001)
    assert batch is not None and batch.reason == "policy" and batch.rows == 2


def test_one_batch_in_flight_at_a_time() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(2, 0))
    batcher.add("a", 2, 0.0)
    first = batcher.next_batch(0.0)
    assert first is not None
    batcher.add("b", 2, 0.001)
    assert batcher.next_batch(0.002) is None and batcher.next_deadline(0.002) is None
    with pytest.raises(ValueError, match="not the one in flight"):
        batcher.batch_done(Batch(requests=(), rows=0, closed_s=0.0, reason="full"), 0.01)
    batcher.batch_done(first, 0.01)
    second = batcher.next_batch(0.011)
    assert second is not None and second.requests[0].payload == "b"


def test_multi_row_requests_count_by_rows_and_are_never_split() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=8, max_queue_delay_us=10_000))
    for name in "abc":
        batcher.add(name, rows=3, now=0.0)
    assert batcher.queued_rows == 9
    batch = batcher.next_batch(0.0)  # a+b = 6 rows; c would make 9 > 8, so the batch is full
    assert batch is not None and batch.reason == "full"
    assert [r.payload for r in batch.requests] == ["a", "b"] and batch.rows == 6
    batcher.batch_done(batch, 0.001)
    assert batcher.next_batch(0.001) is None  # c alone (3 rows) waits for the delay
    batcher.add("big", rows=20, now=0.002)  # larger than max: runs alone, unsplit
    batch = batcher.next_batch(0.002)
    assert batch is not None and [r.payload for r in batch.requests] == ["c"]
    batcher.batch_done(batch, 0.001)
    batch = batcher.next_batch(0.003)
    assert batch is not None and [r.payload for r in batch.requests] == ["big"] and batch.rows == 20


def test_queue_full_sheds_with_503_and_retry_after() -> None:
    policy = FixedPolicy(4, 1000)
    batcher: Batcher[str] = Batcher(policy, max_queue_rows=4)
    batcher.add("a", rows=4, now=0.0)
    with pytest.raises(Overloaded, match="queue full: 4 rows queued, limit 4") as info:
        batcher.add("b", rows=1, now=0.0)
    assert isinstance(info.value, SluiceError) and info.value.http_status == 503
    assert info.value.retry_after_s > 0 and retry_after_header(info.value) == "1"
    assert RequestTimeout.http_status == 504
    assert len(batcher) == 1  # the shed request left no trace


def test_request_that_cannot_meet_its_deadline_is_shed_at_once() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(8, 1000))
    now = teach(batcher, [(1, 0.010), (8, 0.024)] * 3)  # latency ≈ 8 ms + 2 ms/row
    with pytest.raises(Overloaded, match="cannot meet the deadline"):
        batcher.add("tight", rows=1, now=now, timeout_s=0.005)
    assert batcher.add("loose", rows=1, now=now, timeout_s=1.0).deadline_s == pytest.approx(now + 1.0)


def test_failed_batch_teaches_nothing_and_names_every_waiter() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(3, 0))
    for name in "xyz":
        batcher.add(name, 1, 0.0)
    batch = batcher.next_batch(0.0)
    assert batch is not None and [r.payload for r in batch.requests] == ["x", "y", "z"]
    batcher.batch_done(batch, None)  # the driver fails x, y and z with one error
    assert not batcher.policy.latency.fitted and batcher.in_flight is None


def test_expired_requests_are_handed_back_and_wake_the_driver() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(8, 50_000))
    batcher.add("a", 2, 0.0, timeout_s=0.01)
    batcher.add("b", 1, 0.0)
    assert batcher.next_deadline(0.0) == pytest.approx(0.01)
    assert batcher.pop_expired(0.005) == []
    expired = batcher.pop_expired(0.01)
    assert [r.payload for r in expired] == ["a"] and batcher.queued_rows == 1


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        FixedPolicy(0, 10)
    with pytest.raises(ValueError, match="target_p99_ms"):
        AdaptivePolicy(0)
    with pytest.raises(ValueError, match="at least one row"):
        Batcher[str](FixedPolicy(1, 1)).add("x", 0, 0.0)


# ---------------------------------------------------------------- latency model, adaptive policy


def test_latency_model_converges_and_keeps_its_slope_under_uniform_batches() -> None:
    rng = random.Random(1)
    model = LatencyModel()
    for _ in range(400):
        rows = rng.randint(1, 64)
        model.observe(rows, (0.005 + 0.0002 * rows) * rng.lognormvariate(0, 0.05))
    assert model.a_s == pytest.approx(0.005, rel=0.1)
    assert model.c_s_per_row == pytest.approx(0.0002, rel=0.1)
    assert 1.07 < model.upper_factor() < 1.2  # p99 of a 5% lognormal noise: e^(2.33·0.05) ≈ 1.12
    assert model.upper_s(32) > model.mean_s(32) * 1.05
    for _ in range(1000):  # overload: every batch is full
        model.observe(64, (0.005 + 0.0002 * 64) * rng.lognormvariate(0, 0.05))
    assert model.a_s == pytest.approx(0.005, rel=0.15)
    assert model.mean_s(8) == pytest.approx(0.0066, rel=0.1)


def test_rare_hiccups_do_not_inflate_the_upper_quantile() -> None:
    """A shared CPU stalls a batch now and then: one batch in 300 taking 50× its time is below
    the 1% tail, so the p99 factor stays near the everyday noise (an RMS-based normal bound
    would put it near 7×)."""
    rng = random.Random(2)
    model = LatencyModel()
    for i in range(3000):
        rows = rng.randint(1, 64)
        stall = 50.0 if i % 300 == 299 else 1.0
        model.observe(rows, (0.0001 + 0.00001 * rows) * rng.lognormvariate(0, 0.05) * stall)
    assert 1.05 < model.upper_factor() < 1.3


def test_adaptive_dispatches_at_once_until_it_has_learned() -> None:
    batcher: Batcher[str] = Batcher(AdaptivePolicy(target_p99_ms=50, max_batch_size=64))
    batcher.add("first", 1, 0.0)
    batch = batcher.next_batch(0.0)
    assert batch is not None and batch.reason == "policy"


def test_adaptive_waits_within_budget_under_load_and_not_when_idle() -> None:
    policy = AdaptivePolicy(target_p99_ms=50, max_batch_size=64)
    for rows in (1, 64, 16, 32) * 40:  # early misfits inflate the spread for a while
        policy.observe_batch(rows, 0.005 + 0.0002 * rows)
    for i in range(50):  # 2,000 rows/s
        policy.observe_arrival(i * 0.0005, 1)
    now = 50 * 0.0005
    close_s = policy.dispatch_at(now, oldest_arrival_s=now, queued_rows=1)
    assert now < close_s < now + 0.045  # waits to grow the batch, and the oldest still fits
    assert policy.batch_limit() == 64
    idle = policy.dispatch_at(now + 5.0, oldest_arrival_s=now + 5.0, queued_rows=1)
    assert idle == now + 5.0  # after 5 s of silence no more rows are expected: go now


def test_adaptive_caps_batches_at_half_the_budget() -> None:
    policy = AdaptivePolicy(target_p99_ms=20, max_batch_size=256)
    for rows in (1, 256, 64) * 60:
        policy.observe_batch(rows, 0.002 + 0.0001 * rows)
    assert policy.latency.upper_factor() < 1.01
    assert policy.batch_limit() in (69, 70)  # largest b with 2·(2 ms + 0.1 ms·b) ≤ 0.9·20 ms


@dataclass(frozen=True)
class SimResult:
    p99_ms: float
    goodput_rows_per_s: float  # rows answered within the target
    shed_fraction: float
    utilization: float  # share of time the model computes; lower = headroom


def simulate(
    policy: BatchPolicy, rate_rows_per_s: float, *, rows_choices: tuple[int, ...] = (1,), seed: int = 0
) -> SimResult:
    """Discrete-event run: Poisson arrivals, batch latency 5 ms + 0.2 ms/row (5% lognormal
    noise), one worker; 12 simulated seconds, the first 2 discarded."""
    duration_s, warmup_s, target_s = 12.0, 2.0, 0.05
    rng = random.Random(seed)
    batcher: Batcher[None] = Batcher(policy)
    request_rate = rate_rows_per_s / (sum(rows_choices) / len(rows_choices))
    arrival_s = rng.expovariate(request_rate)
    batch: Batch[None] | None = None
    done_s = math.inf
    compute_s = busy_s = 0.0
    latencies: list[float] = []
    good = offered = shed = 0
    now = 0.0
    while True:
        wake = batcher.next_deadline(now) if batch is None else None
        arrival = arrival_s if arrival_s < duration_s else math.inf
        now = min(arrival, done_s, math.inf if wake is None else max(wake, now))
        if now == math.inf:
            break
        if batch is not None and now == done_s:
            batcher.batch_done(batch, compute_s)
            if now - compute_s >= warmup_s:
                busy_s += compute_s
                latencies += [now - r.arrival_s for r in batch.requests]
                good += sum(r.rows for r in batch.requests if now - r.arrival_s <= target_s)
            batch, done_s = None, math.inf
        elif now == arrival:
            rows = rng.choice(rows_choices)
            offered += rows if now >= warmup_s else 0
            try:
                batcher.add(None, rows, now)
            except Overloaded:
                shed += rows if now >= warmup_s else 0
            arrival_s += rng.expovariate(request_rate)
        if batch is None and (batch := batcher.next_batch(now)) is not None:
            compute_s = (0.005 + 0.0002 * batch.rows) * rng.lognormvariate(0, 0.05)
            done_s = now + compute_s
    latencies.sort()
    span_s = duration_s - warmup_s
    return SimResult(
        p99_ms=latencies[int(0.99 * len(latencies))] * 1000,
        goodput_rows_per_s=good / span_s,
        shed_fraction=shed / offered,
        utilization=busy_s / span_s,
    )


@pytest.mark.parametrize("rate_rows_per_s", [200, 1000, 2500, 3300])
def test_adaptive_holds_p99_with_less_compute_than_fixed(rate_rows_per_s: int) -> None:
    adaptive = simulate(AdaptivePolicy(target_p99_ms=50, max_batch_size=64), rate_rows_per_s)
    fixed = simulate(FixedPolicy(max_batch_size=64, max_queue_delay_us=5000), rate_rows_per_s)
    assert adaptive.p99_ms <= 50 and adaptive.shed_fraction < 0.01
    assert adaptive.goodput_rows_per_s >= 0.95 * rate_rows_per_s
    assert adaptive.utilization <= fixed.utilization  # bigger batches: the same rows for less compute


def test_adaptive_sheds_under_overload_and_keeps_latency_bounded() -> None:
    capacity_rows_per_s = 64 / (0.005 + 0.0002 * 64)  # ≈ 3,600
    adaptive = simulate(AdaptivePolicy(target_p99_ms=50, max_batch_size=64), 5000)
    fixed = simulate(FixedPolicy(max_batch_size=64, max_queue_delay_us=5000), 5000)
    assert adaptive.p99_ms <= 50
    assert adaptive.goodput_rows_per_s >= 0.9 * capacity_rows_per_s
    assert 0.2 < adaptive.shed_fraction < 0.35
    assert fixed.p99_ms > 200  # only the queue bound stops it: every admitted request is late
    assert fixed.goodput_rows_per_s < 0.1 * capacity_rows_per_s


def test_adaptive_with_multi_row_requests() -> None:
    result = simulate(AdaptivePolicy(target_p99_ms=50, max_batch_size=64), 2500, rows_choices=(1, 2, 4, 8))
    assert result.p99_ms <= 50 and result.shed_fraction < 0.01


def test_adaptive_stops_waiting_when_closed_loop_clients_are_all_queued() -> None:
    """Eight clients that each wait for their answer: after two mean gaps without an arrival,
    nobody else is coming, so the batch closes instead of waiting for the latency target."""
    policy = taught_adaptive()
    for i in range(8):
        policy.observe_arrival(i * 0.001, 1)  # arrivals 1 ms apart
    waiting = policy.dispatch_at(0.0075, oldest_arrival_s=0.0, queued_rows=8)
    assert waiting == pytest.approx(0.007 + 2 * 0.001)  # the silence deadline, not the target's
    assert policy.dispatch_at(0.0095, oldest_arrival_s=0.0, queued_rows=8) == 0.0095


def test_an_idle_server_admits_whatever_its_latency_target_says() -> None:
    policy = taught_adaptive(target_ms=1.0)  # every batch takes longer than the target
    batcher: Batcher[str] = Batcher(policy)
    request = batcher.add("first", rows=1, now=0.0)  # idle: shedding would help nobody
    assert request.payload == "first"
    with pytest.raises(Overloaded, match="cannot meet the deadline"):
        batcher.add("second", rows=1, now=0.0)  # one queued ahead: now the target applies


def test_adaptive_does_not_wait_when_under_one_row_arrives_per_fixed_cost() -> None:
    """5 ms fixed cost, a request every 10 ms: a batch could gain half a row by waiting one fixed
    cost, so the request runs at once instead of spending the latency budget."""
    policy = taught_adaptive()
    for i in range(5):
        policy.observe_arrival(i * 0.010, 1)
    assert policy.dispatch_at(0.0401, oldest_arrival_s=0.040, queued_rows=1) == 0.0401
