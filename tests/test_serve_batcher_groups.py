"""The pure batcher's groups: requests of one key batch together, and only with each other.

Times are plain floats (an injected clock): nothing sleeps.
"""

from __future__ import annotations

import math

import pytest

from serve_support import taught_adaptive, teach
from sluice.errors import Overloaded
from sluice.serve.batcher import Batcher
from sluice.serve.policy import FixedPolicy


def test_requests_of_other_keys_never_share_a_batch() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=8, max_queue_delay_us=1000))
    batcher.add("a1", 1, 0.0, key="A")
    batcher.add("b1", 2, 0.0002, key="B")
    batcher.add("a2", 1, 0.0004, key="A")
    assert len(batcher) == 3 and batcher.queued_rows == 4
    assert batcher.next_batch(0.0009) is None
    assert batcher.next_deadline(0.0009) == pytest.approx(0.001)  # A's oldest came first
    batch = batcher.next_batch(0.001)
    assert batch is not None and batch.key == "A" and batch.reason == "policy"
    assert [r.payload for r in batch.requests] == ["a1", "a2"] and batch.rows == 2
    batcher.batch_done(batch, 0.0001)
    assert batcher.next_batch(0.0011) is None  # B's delay runs from its own oldest request
    assert batcher.next_deadline(0.0011) == pytest.approx(0.0012)
    batch = batcher.next_batch(0.0012)
    assert batch is not None and batch.key == "B" and [r.payload for r in batch.requests] == ["b1"]
    assert len(batcher) == 0 and batcher.queued_rows == 0


def test_a_full_group_closes_while_an_older_one_waits_and_the_oldest_ready_goes_first() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=2, max_queue_delay_us=1000))
    batcher.add("a1", 1, 0.0, key="A")
    batcher.add("b1", 1, 0.0001, key="B")
    batcher.add("c1", 1, 0.0002, key="C")
    batcher.add("c2", 1, 0.0003, key="C")
    batcher.add("b2", 1, 0.0004, key="B")
    assert batcher.next_deadline(0.0004) == 0.0004  # B and C are full
    batch = batcher.next_batch(0.0004)  # of the two full groups, B's oldest came first
    assert batch is not None and batch.reason == "full" and [r.payload for r in batch.requests] == ["b1", "b2"]
    batcher.batch_done(batch, 0.0001)
    batch = batcher.next_batch(0.0005)
    assert batch is not None and [r.payload for r in batch.requests] == ["c1", "c2"]
    batcher.batch_done(batch, 0.0001)
    assert batcher.next_batch(0.0006) is None and batcher.next_deadline(0.0006) == pytest.approx(0.001)


def test_drain_closes_every_group_one_batch_at_a_time() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=8, max_queue_delay_us=10_000_000))
    for i, key in enumerate("ABAB"):
        batcher.add(f"{key}{i}", 1, i * 0.001, key=key)
    closed = []
    while (batch := batcher.next_batch(0.01, drain=True)) is not None:
        closed.append((batch.key, batch.reason, [r.payload for r in batch.requests]))
        batcher.batch_done(batch, 0.001)
    assert closed == [("A", "drain", ["A0", "A2"]), ("B", "drain", ["B1", "B3"])]


def test_expired_and_removed_requests_leave_every_group_consistent() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=8, max_queue_delay_us=50_000))
    batcher.add("a1", 2, 0.0, timeout_s=0.01, key="A")
    batcher.add("b1", 1, 0.001, timeout_s=0.005, key="B")
    batcher.add("a2", 3, 0.002, key="A")
    batcher.add("b2", 1, 0.003, key="B")
    assert batcher.next_deadline(0.003) == pytest.approx(0.006)
    assert [r.payload for r in batcher.pop_expired(0.01)] == ["a1", "b1"]  # in arrival order
    assert len(batcher) == 2 and batcher.queued_rows == 4
    batch = batcher.next_batch(0.052)  # a2's delay: 50 ms from its own arrival
    assert batch is not None and [r.payload for r in batch.requests] == ["a2"] and batch.rows == 3
    batcher.batch_done(batch, 0.001)
    assert [r.payload for r in batcher.remove_all()] == ["b2"] and batcher.queued_rows == 0


def test_admission_counts_every_other_groups_batches_ahead() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(8, 1000))
    start = teach(batcher, [(1, 0.010), (8, 0.024)] * 3)  # latency ≈ 8 ms + 2 ms/row
    latency = batcher.policy.latency
    for i in range(4):  # key A: a row a second
        batcher.add("a", 1, start + i, key="A")
    now = start + 3
    batcher.add("wide", 9, now, key="W")  # larger than a batch: two batches, 8 rows and 1
    w_s = latency.mean_s(8) + latency.mean_s(1)
    # W's batches run ahead, then A's 5 rows, grown by the one more row expected at 1 row/s
    joining = batcher.estimate_completion_s(now, 1, key="A")
    assert math.ceil(1.0 * w_s) == 1
    assert joining == pytest.approx(w_s + latency.upper_s(5 + 1))
    # a row of a new shape waits for both groups, then runs alone (no rate known for it)
    alone = batcher.estimate_completion_s(now, 1, key="N")
    assert alone == pytest.approx(w_s + latency.mean_s(4) + latency.upper_s(1))
    # joining W: A's 4 rows and W's first 8 run ahead; W has no arrival rate yet
    with_w = batcher.estimate_completion_s(now, 1, key="W")
    assert with_w == pytest.approx(latency.mean_s(4) + latency.mean_s(8) + latency.upper_s(2))
    # before its body is read a request's key is unknown: the cheapest group is assumed
    assert batcher.estimate_completion_s(now, 1) == pytest.approx(min(joining, alone, with_w))
    with pytest.raises(Overloaded, match="cannot meet the deadline"):
        batcher.add("tight", 1, now, timeout_s=joining * 0.99, key="A")
    assert batcher.add("loose", 1, now, timeout_s=joining * 1.01, key="A").key == "A"


def test_each_group_is_judged_by_its_own_arrival_rate() -> None:
    """A busy shape is worth waiting for; a rare one beside it is not: it closes at once."""
    policy = taught_adaptive()
    batcher: Batcher[str] = Batcher(policy)
    now = 0.0
    for _ in range(40):  # key A: a row every 0.5 ms
        batcher.add("a", 1, now, key="A")
        batch = batcher.next_batch(now, drain=True)
        assert batch is not None
        batcher.batch_done(batch, policy.latency.mean_s(1))
        now += 0.0005
    batcher.add("a", 1, now, key="A")
    batcher.add("b", 1, now, key="B")  # B's first request: no rate to wait for
    assert policy.dispatch_at(now, now, 1) > now  # judged by every arrival, B would wait too
    batch = batcher.next_batch(now)
    assert batch is not None and batch.key == "B" and batch.reason == "policy"
    assert [r.payload for r in batcher.remove_all()] == ["a"]  # A goes on waiting for more rows


def test_a_cancelled_request_leaves_its_group_and_the_counts() -> None:
    batcher: Batcher[str] = Batcher(FixedPolicy(max_batch_size=8, max_queue_delay_us=1000))
    first = batcher.add("a1", 1, 0.0, key="A")
    doomed = batcher.add("a2", 3, 0.0001, 5.0, key="A")
    lone = batcher.add("b1", 2, 0.0002, key="B")
    assert batcher.cancel(doomed) and not batcher.cancel(doomed)  # once only
    assert len(batcher) == 2 and batcher.queued_rows == 3
    assert batcher.cancel(lone) and len(batcher) == 1  # the last of its group: the group goes
    assert batcher.next_deadline(0.0002) == pytest.approx(0.001)
    batch = batcher.next_batch(0.001)
    assert batch is not None and [r.payload for r in batch.requests] == ["a1"] and batch.rows == 1
    assert not batcher.cancel(first)  # in a batch already: too late
    assert batcher.pop_expired(10.0) == []  # the cancelled request's timeout no longer counts
