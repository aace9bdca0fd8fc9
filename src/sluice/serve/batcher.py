"""The pure batcher of one model version: queue, admission, and when a batch closes.

A driver (:mod:`sluice.serve.dispatch`) owns the clock and the threads; this module only
takes times as arguments, so every rule here is tested with a fake clock::

    req = batcher.add(payload, rows=3, now=clock(), timeout_s=0.5)   # may raise Overloaded
    batch = batcher.next_batch(clock())      # a Batch, or None: sleep until next_deadline()
    ...run predict on batch...
    batcher.batch_done(batch, compute_s)

Rules:

* Requests are served first in, first out and counted by rows. A batch takes queued requests
  from the head while they fit in the policy's ``batch_limit()`` rows; a request is never
  split. One larger than the limit runs alone as its own batch (splitting would make its
  rows succeed or fail separately); ``max_batch_size`` is a batching target, not a model limit.
* One batch is in flight at a time (one worker per version): :meth:`Batcher.next_batch`
  returns None until :meth:`Batcher.batch_done`. That is the backpressure — the queue grows
  while the model works, so the next batch is naturally bigger under load.
* Admission sheds with :class:`Overloaded` (HTTP 503, with ``retry_after_s``) when the queue
  would exceed ``max_queue_rows``, or when the latency model says the request would finish
  after its timeout or the policy's latency budget. Queued requests whose timeout passes are
  handed back by :meth:`Batcher.pop_expired` for the driver to answer with
  :class:`RequestTimeout` (HTTP 504).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from sluice.errors import Overloaded
from sluice.serve.policy import BatchPolicy

__all__ = ["Batch", "Batcher", "PendingRequest", "retry_after_header"]

P = TypeVar("P")

_EPSILON_S = 1e-6  # a deadline within a microsecond of now counts as reached


@dataclass(frozen=True, slots=True)
class PendingRequest(Generic[P]):
    """One admitted request waiting in the queue."""

    request_id: int
    rows: int
    arrival_s: float
    deadline_s: float | None
    payload: P


@dataclass(frozen=True, slots=True)
class Batch(Generic[P]):
    """Requests closed into one batch, in arrival order; ``rows`` is their total."""

    requests: tuple[PendingRequest[P], ...]
    rows: int
    closed_s: float
    reason: Literal["full", "policy", "drain"]


class Batcher(Generic[P]):
    """Queue of one model version; see the module docstring for the rules."""

    def __init__(self, policy: BatchPolicy, *, max_queue_rows: int | None = None) -> None:
        self.policy = policy
        self.max_queue_rows = max_queue_rows if max_queue_rows is not None else 16 * policy.max_batch_size
        if self.max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be at least 1, got {self.max_queue_rows}")
        self._queue: deque[PendingRequest[P]] = deque()
        self._queued_rows = 0
        self._next_id = 0
        self._in_flight: Batch[P] | None = None
        self._busy_until_s = 0.0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def in_flight(self) -> Batch[P] | None:
        return self._in_flight

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, payload: P, rows: int, now: float, timeout_s: float | None = None) -> PendingRequest[P]:
        """Admit a request of ``rows`` rows or raise :class:`Overloaded` at once."""
        if rows < 1:
            raise ValueError(f"a request needs at least one row, got {rows}")
        self.check_admission(rows, now, timeout_s)
        request = PendingRequest(
            request_id=self._next_id,
            rows=rows,
            arrival_s=now,
            deadline_s=None if timeout_s is None else now + timeout_s,
            payload=payload,
        )
        self._next_id += 1
        # only admitted rows fill batches; a closed-loop client that was refused comes back at
        # once, and counting its retries would make the queue look busier and shed even more
        self.policy.observe_arrival(now, rows)
        self._queue.append(request)
        self._queued_rows += rows
        return request

    def check_admission(self, rows: int, now: float, timeout_s: float | None = None) -> None:
        """Raise :class:`Overloaded` if a request of ``rows`` rows would be refused now.

        The driver may call it with one row before it reads a request's body: if even one
        row cannot be admitted, the refusal costs nothing to decode.
        """
        if self._queue and self._queued_rows + rows > self.max_queue_rows:
            raise Overloaded(
                f"queue full: {self._queued_rows} rows queued, limit {self.max_queue_rows}, request has {rows}",
                self._retry_after_s(now),
            )
        # An idle server runs the request whatever the latency target says (shedding it would
        # help nobody); the request's own timeout still applies.
        idle = not self._queue and self._in_flight is None
        target = None if idle else self.policy.latency_budget_s()
        budgets = [b for b in (timeout_s, target) if b is not None]
        if budgets and self.policy.latency.fitted:
            estimate_s = self.estimate_completion_s(now, rows)
            if estimate_s > min(budgets):
                raise Overloaded(
                    f"cannot meet the deadline: estimated {estimate_s * 1000:.1f} ms with "
                    f"{self._queued_rows} rows queued, budget {min(budgets) * 1000:.1f} ms",
                    self._retry_after_s(now),
                )

    def estimate_completion_s(self, now: float, extra_rows: int = 0) -> float:
        """Seconds until the queue plus ``extra_rows`` more rows are answered.

        Only what shedding can save is counted: the model's compute. Full batches ahead count
        at their mean (the sum of several batches varies far less than each one), the last at
        its upper quantile. The per-batch overhead (thread hand-over, a busy event loop) is
        left out: when the HTTP loop is the bottleneck, a 503 costs it nearly as much as an
        answer, and closed-loop clients that are refused come straight back, so shedding on
        loop lag would only feed itself. That last, partial
        batch is assumed to fill with the rows expected to arrive before it starts (its
        latency is that of the batch it will be, not of the rows queued now).
        """
        policy = self.policy
        busy_s = max(0.0, self._busy_until_s - now) if self._in_flight is not None else 0.0
        rows = self._queued_rows + extra_rows
        if not policy.latency.fitted or rows == 0:
            return busy_s
        limit = policy.batch_limit()
        full, rest = divmod(rows, limit)
        if not rest:
            full, rest = full - 1, limit
        start_s = busy_s + full * policy.latency.mean_s(limit)
        expected = rest + math.ceil(policy.arrivals.rows_per_s(now) * start_s)
        return start_s + policy.latency.upper_s(min(limit, expected))

    def _retry_after_s(self, now: float) -> float:
        return max(0.001, self.estimate_completion_s(now))

    def _head(self) -> tuple[int, int, bool]:
        """(requests, rows) the next batch would take, and whether it is full."""
        limit = self.policy.batch_limit()
        count = rows = 0
        for request in self._queue:
            if count and rows + request.rows > limit:
                return count, rows, True
            count += 1
            rows += request.rows
        return count, rows, rows >= limit

    def next_deadline(self, now: float) -> float | None:
        """When the driver should next call :meth:`next_batch` or :meth:`pop_expired` if no
        request arrives first; None when there is nothing to wait for (empty, or in flight)."""
        if not self._queue or self._in_flight is not None:
            return None
        _, rows, full = self._head()
        close_s = now if full else self.policy.dispatch_at(now, self._queue[0].arrival_s, rows)
        deadlines = [r.deadline_s for r in self._queue if r.deadline_s is not None]
        return min([close_s, *deadlines])

    def next_batch(self, now: float, *, drain: bool = False) -> Batch[P] | None:
        """Close and return the next batch if it should close at ``now``; else None.

        ``drain`` closes whatever is queued (shutdown) regardless of the policy.
        """
        if not self._queue or self._in_flight is not None:
            return None
        count, rows, full = self._head()
        reason: Literal["full", "policy", "drain"]
        if full:
            reason = "full"
        elif drain:
            reason = "drain"
        elif self.policy.dispatch_at(now, self._queue[0].arrival_s, rows) <= now + _EPSILON_S:
            reason = "policy"
        else:
            return None
        requests = tuple(self._queue.popleft() for _ in range(count))
        self._queued_rows -= rows
        batch = Batch(requests=requests, rows=rows, closed_s=now, reason=reason)
        self._in_flight = batch
        self._busy_until_s = now + (self.policy.latency.upper_s(rows) if self.policy.latency.fitted else 0.0)
        return batch

    def batch_done(
        self,
        batch: Batch[P],
        compute_s: float | None,
        overhead_s: float = 0.0,
        cpu_s: float | None = None,
        *,
        inline: bool = False,
    ) -> None:
        """The in-flight batch finished after ``compute_s`` seconds in ``predict`` (``cpu_s`` of
        CPU; on the event loop if ``inline``) and ``overhead_s`` around it; ``compute_s`` None
        (a failed batch) teaches nothing."""
        if batch is not self._in_flight:
            raise ValueError("batch_done() got a batch that is not the one in flight")
        self._in_flight = None
        if compute_s is not None:
            self.policy.observe_batch(batch.rows, compute_s, overhead_s, cpu_s, inline=inline)

    def pop_expired(self, now: float) -> list[PendingRequest[P]]:
        """Remove and return queued requests whose timeout has passed."""
        if not any(r.deadline_s is not None and r.deadline_s <= now for r in self._queue):
            return []
        expired = [r for r in self._queue if r.deadline_s is not None and r.deadline_s <= now]
        self._queue = deque(r for r in self._queue if r.deadline_s is None or r.deadline_s > now)
        self._queued_rows -= sum(r.rows for r in expired)
        return expired

    def remove_all(self) -> list[PendingRequest[P]]:
        """Empty the queue and return what it held (for a driver that stops)."""
        removed = list(self._queue)
        self._queue.clear()
        self._queued_rows = 0
        return removed


def retry_after_header(error: Overloaded) -> str:
    """The ``Retry-After`` header value (whole seconds, at least 1) for an :class:`Overloaded`."""
    return str(max(1, math.ceil(error.retry_after_s)))
