"""The AIMD limit on requests in progress: pure, no clock needed."""

from __future__ import annotations

import pytest

from sluice.serve.limit import ConcurrencyLimit


def test_refuses_at_the_limit_and_frees_a_slot_on_release() -> None:
    limit = ConcurrencyLimit(0.01, initial=4, minimum=1, window=1000)
    assert [limit.try_acquire() for _ in range(5)] == [True, True, True, True, False]
    assert (limit.in_progress, limit.refused) == (4, 1)
    limit.release(0.001)
    assert limit.try_acquire() and not limit.try_acquire()


def test_a_slow_window_shrinks_the_limit_and_a_fast_full_one_grows_it() -> None:
    limit = ConcurrencyLimit(0.010, initial=64, window=10)
    for _ in range(10):
        assert limit.try_acquire()
        limit.release(0.020)  # over the 10 ms budget
    assert limit.limit == 48
    for _ in range(48):
        assert limit.try_acquire()
    assert not limit.try_acquire()  # reached during this window
    for _ in range(10):
        limit.release(0.002)
    assert limit.limit == 54  # + 48 // 8


def test_the_limit_does_not_grow_when_it_was_never_reached_nor_shrink_below_minimum() -> None:
    limit = ConcurrencyLimit(0.010, initial=8, minimum=4, window=5)
    for _ in range(50):
        limit.try_acquire()
        limit.release(0.001)
    assert limit.limit == 8
    for _ in range(50):
        limit.try_acquire()
        limit.release(1.0)
    assert limit.limit == 4


def test_failed_requests_teach_nothing_and_no_budget_means_the_maximum() -> None:
    limit = ConcurrencyLimit(0.010, initial=8, window=2)
    for _ in range(10):
        limit.try_acquire()
        limit.release(None)
    assert limit.limit == 8 and limit.in_progress == 0
    unbounded = ConcurrencyLimit(None, maximum=100)
    assert unbounded.limit == 100
    for _ in range(300):
        unbounded.try_acquire()
        unbounded.release(5.0)
    assert unbounded.limit == 100


@pytest.mark.parametrize("capacity_per_s", [2_000, 20_000])
def test_under_overload_the_limit_settles_near_throughput_times_budget(capacity_per_s: int) -> None:
    """1,000 closed-loop clients on a server that answers ``capacity_per_s``: a request's latency
    is the work in progress ahead of it (Little's law). The admitted tail must end up within the
    budget, with the limit near capacity × budget."""
    budget_s = 0.010
    limit = ConcurrencyLimit(budget_s, window=50)
    recent: list[float] = []
    for round_ in range(400):
        admitted = sum(limit.try_acquire() for _ in range(1000))
        latencies = [(i + 1) / capacity_per_s for i in range(admitted)]
        for latency_s in latencies:
            limit.release(latency_s)
        if round_ >= 300:
            recent += latencies
    ideal = capacity_per_s * budget_s
    assert 0.6 * ideal <= limit.limit <= 1.15 * ideal
    recent.sort()
    assert recent[int(0.95 * len(recent))] <= budget_s * 1.05  # the admitted p95 meets the budget


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        ConcurrencyLimit(0.01, minimum=8, maximum=4)
    with pytest.raises(ValueError, match="budget_s must be positive"):
        ConcurrencyLimit(0.0)
