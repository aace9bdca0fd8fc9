"""Group scheduling with an injected clock: the size follows the measured costs, within the latency budget."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.stream.metrics import StreamMetrics
from sluice.stream.scheduler import GroupScheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000


def run_group(scheduler: GroupScheduler, clock: FakeClock, *, batch_ms: float, commit_ms: float, backlog: int) -> int:
    """One group of up to ``backlog`` micro-batches costing ``batch_ms`` each, then a commit; the next size."""
    plan = scheduler.start_group()
    done = 0
    while done < min(plan.batches, backlog):
        clock.advance_ms(batch_ms)
        done += 1
        if scheduler.batch_done():
            break
    scheduler.commit_started()
    clock.advance_ms(commit_ms)
    return scheduler.group_committed(full=done == plan.batches and backlog > done)


def test_under_backlog_the_size_doubles_up_to_what_fits_half_the_target() -> None:
    clock = FakeClock()
    scheduler = GroupScheduler(60, clock=clock)  # 30 ms per group: 10 ms commit + 10 batches of 2 ms
    sizes = [run_group(scheduler, clock, batch_ms=2, commit_ms=10, backlog=1000) for _ in range(7)]
    assert sizes == [2, 4, 8, 10, 10, 10, 10]
    assert (scheduler.batch_s, scheduler.commit_s) == (pytest.approx(0.002), pytest.approx(0.01))


def test_a_dearer_commit_shrinks_the_group_by_at_most_half_per_group() -> None:
    clock = FakeClock()
    scheduler = GroupScheduler(60, clock=clock)
    for _ in range(5):
        run_group(scheduler, clock, batch_ms=2, commit_ms=10, backlog=1000)
    assert scheduler.size == 10
    # the commit now costs 22 ms: 4 batches fit (30 - 22 = 8 ms); the average moves halfway each group
    sizes = [run_group(scheduler, clock, batch_ms=2, commit_ms=22, backlog=1000) for _ in range(4)]
    assert sizes == [7, 5, 4, 4]


def test_groups_that_are_not_full_never_grow_the_size() -> None:
    clock = FakeClock()
    scheduler = GroupScheduler(60, clock=clock)
    sizes = [run_group(scheduler, clock, batch_ms=2, commit_ms=10, backlog=1) for _ in range(3)]
    assert sizes == [1, 1, 1]  # the source keeps up: a larger group would have nothing to run
    assert run_group(scheduler, clock, batch_ms=2, commit_ms=10, backlog=1000) == 2  # a burst: growth starts


def test_a_group_closes_on_time_whatever_its_size_bound() -> None:
    clock = FakeClock()
    scheduler = GroupScheduler(60, min_batches=8, max_batches=8, clock=clock)
    plan = scheduler.start_group()
    assert (plan.batches, plan.deadline) == (8, 100.03)
    closes = []
    for _ in range(3):
        clock.advance_ms(12)
        closes.append(scheduler.batch_done())
    assert closes == [False, False, True]  # 36 ms is past the 30 ms budget


def test_the_size_stays_within_its_bounds() -> None:
    clock = FakeClock()
    scheduler = GroupScheduler(1000, min_batches=2, max_batches=5, clock=clock)
    assert scheduler.size == 2
    sizes = [run_group(scheduler, clock, batch_ms=1, commit_ms=1, backlog=1000) for _ in range(3)]
    assert sizes == [4, 5, 5]
    sizes = [run_group(scheduler, clock, batch_ms=400, commit_ms=400, backlog=1000) for _ in range(3)]
    assert sizes == [2, 2, 2]  # nothing fits 500 ms, and the floor holds


def test_the_metrics_carry_the_chosen_group_size_and_the_latencies() -> None:
    metrics = StreamMetrics("in/", "out/", started_s=10.0)
    metrics.group_size = 6
    metrics.lag = 3
    metrics.group_committed(np.array([999.95, 999.95, 999.9]), failed=1, committed_s=1000.0)
    summary = metrics.summary(now_s=12.0)
    assert (summary.records, summary.records_failed, summary.groups) == (3, 1, 1)
    assert summary.records_per_second == 2.0  # 4 records in 2 s
    assert summary.group_size == 6
    assert summary.latency_ms["p99"] == pytest.approx(100.0, rel=0.02)  # the histogram's buckets are 2% wide
    text = metrics.prometheus(now_s=12.0)
    assert "sluice_stream_group_size 6\n" in text
    assert "sluice_stream_records_total 3\n" in text
    assert "sluice_stream_records_failed_total 1\n" in text
    assert "sluice_stream_lag 3\n" in text
    assert 'sluice_stream_latency_seconds{quantile="0.99"} ' in text
