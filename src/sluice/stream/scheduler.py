"""Group scheduling: how many micro-batches run back to back before one commit.

A record that lands just after a group starts waits for that group to commit and is then
read, predicted and committed by the next one, so its end-to-end latency is about two group
durations. A group therefore has half the latency target as its budget. Within that budget,
larger groups pay the commit (fsync, rename, manifest; or one MULTI/EXEC) over more records,
which is the throughput Drizzle's group scheduling buys.

:class:`GroupScheduler` measures, with an injected clock, what one micro-batch and one commit
cost (moving averages), and sizes the next group as the most micro-batches whose predicted
duration fits the budget. A group also closes on time: once its elapsed time reaches the
budget it commits whatever it holds. The size moves at most by a factor of two per group so
that one slow outlier does not swing it. Nothing here sleeps or reads the time itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Clock", "GroupPlan", "GroupScheduler"]

Clock = Callable[[], float]
"""Seconds from a monotonic origin, e.g. :func:`time.monotonic`."""

_SMOOTHING = 0.5  # weight of the newest measurement in the moving averages


@dataclass(frozen=True)
class GroupPlan:
    """The next group: at most ``batches`` micro-batches, closing by ``deadline`` (clock seconds)."""

    batches: int
    deadline: float


class GroupScheduler:
    """Chooses each group's size in micro-batches to keep end-to-end latency within the target.

    The driver calls :meth:`start_group`, then :meth:`batch_done` after each micro-batch
    (true: the group's time is up), :meth:`commit_started` before committing and
    :meth:`group_committed` after. ``size`` is the size the next group gets.
    """

    def __init__(
        self,
        target_latency_ms: float,
        *,
        min_batches: int = 1,
        max_batches: int = 256,
        clock: Clock = time.monotonic,
    ) -> None:
        self.budget_s = target_latency_ms / 2000.0
        self.min_batches = min_batches
        self.max_batches = max_batches
        self.clock = clock
        self.size = min_batches
        self.batch_s: float | None = None  # moving average of one micro-batch: read, predict, write
        self.commit_s: float | None = None  # moving average of one commit
        self._started = 0.0
        self._last = 0.0
        self._batches = 0
        self._commit_began = 0.0

    def start_group(self) -> GroupPlan:
        """Open a group now: its size bound and its deadline."""
        self._started = self._last = self.clock()
        self._batches = 0
        return GroupPlan(self.size, self._started + self.budget_s)

    def batch_done(self) -> bool:
        """Count a finished micro-batch; true when the group has used its time and should commit."""
        now = self.clock()
        self.batch_s = _average(self.batch_s, now - self._last)
        self._last = now
        self._batches += 1
        return now - self._started >= self.budget_s

    def commit_started(self) -> None:
        """The group's micro-batches are done; its commit begins."""
        self._commit_began = self.clock()

    def group_committed(self, *, full: bool) -> int:
        """The group is durable. ``full``: it stopped at its size bound while the source had more.

        Returns the size for the next group. A group that was not full says nothing about a
        larger one, so only full groups may grow the size; any group may shrink it.
        """
        self.commit_s = _average(self.commit_s, self.clock() - self._commit_began)
        fitting = self.fitting_batches()
        if not full:
            fitting = min(fitting, self.size)
        lowest = max(self.min_batches, self.size // 2)
        highest = min(self.max_batches, 2 * self.size)
        self.size = max(lowest, min(highest, fitting))
        return self.size

    def fitting_batches(self) -> int:
        """The most micro-batches whose predicted duration (batches, then one commit) fits the budget."""
        if self.batch_s is None or self.commit_s is None:
            return self.size
        room = self.budget_s - self.commit_s
        if self.batch_s <= 0:
            return self.max_batches
        # the epsilon keeps a fit that is exact but for rounding (20 ms / 2 ms) from losing a batch
        return max(self.min_batches, math.floor(room / self.batch_s + 1e-9))


def _average(previous: float | None, sample: float) -> float:
    if previous is None:
        return sample
    return (1 - _SMOOTHING) * previous + _SMOOTHING * sample
