"""The pure batcher of one model version: queue, admission, and when a batch closes.

A driver (:mod:`sluice.serve.dispatch`) owns the clock and the threads; this module only
takes times as arguments, so every rule here is tested with a fake clock::

    req = batcher.add(payload, rows=3, now=clock(), timeout_s=0.5, key=shape)   # may raise Overloaded
    batch = batcher.next_batch(clock())      # a Batch, or None: sleep until next_deadline()
    ...run predict on batch...
    batcher.batch_done(batch, compute_s)

Rules:

* Each request carries a ``key``: requests batch together only when their keys are equal
  (the driver keys them by their tensors' shapes past the batch dimension and dtypes, which is
  what it takes to concatenate them). Requests of one key form a group; every rule below is
  per group, and a batch holds one group's requests only.
* Within a group, requests are served first in, first out and counted by rows. A batch takes
  the group's requests from its head while they fit in the policy's ``batch_limit()`` rows; a
  request is never split. One larger than the limit runs alone as its own batch (splitting
  would make its rows succeed or fail separately); ``max_batch_size`` is a batching target,
  not a model limit. Of the groups whose batch should close now, the one whose oldest request
  came first closes first.
* One batch is in flight at a time (one worker per version): :meth:`Batcher.next_batch`
  returns None until :meth:`Batcher.batch_done`. That is the backpressure — the queue grows
  while the model works, so the next batch is naturally bigger under load.
* Admission sheds with :class:`Overloaded` (HTTP 503, with ``retry_after_s``) when the queue
  (all groups) would exceed ``max_queue_rows``, or when the latency model says the request would
  finish after its timeout or the policy's latency budget, every other group's batches queued
  ahead of it. Both budgets count from the request's arrival at the server: the ``waited_s`` it
  spent before reaching the queue (its body arriving, decoding) is spent already, and a request
  whose timeout passed meanwhile is refused with :class:`RequestTimeout` (HTTP 504). Queued
  requests whose timeout passes are handed back by :meth:`Batcher.pop_expired` for the driver
  to answer with :class:`RequestTimeout`.
* The policy sees every admitted arrival; each group also keeps its own arrival rate, which is
  what the policy is asked about when it decides whether waiting would grow that group's batch.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from sluice.errors import Overloaded, RequestTimeout
from sluice.serve.policy import ArrivalRate, BatchPolicy

__all__ = ["Batch", "Batcher", "PendingRequest", "retry_after_header"]

P = TypeVar("P")

_EPSILON_S = 1e-6  # a deadline within a microsecond of now counts as reached
_TRACKED_KEYS = 64  # arrival rates kept for this many keys, the most recently seen
_ANY_KEY = object()  # a request whose key is not known yet: it may join whichever group


@dataclass(frozen=True, slots=True)
class PendingRequest(Generic[P]):
    """One admitted request waiting in the queue: ``arrival_s`` is when it reached the server,
    ``queued_s`` when it joined the queue (later, by the time its body took to arrive and decode)."""

    request_id: int
    rows: int
    arrival_s: float
    deadline_s: float | None
    payload: P
    key: Hashable = ()
    queued_s: float = -math.inf


@dataclass(frozen=True, slots=True)
class Batch(Generic[P]):
    """Requests of one key closed into one batch, in arrival order; ``rows`` is their total."""

    requests: tuple[PendingRequest[P], ...]
    rows: int
    closed_s: float
    reason: Literal["full", "policy", "drain"]
    key: Hashable = ()


@dataclass(slots=True)
class _Group(Generic[P]):
    """The queued requests of one key, oldest first."""

    requests: deque[PendingRequest[P]] = field(default_factory=deque)
    rows: int = 0

    def head(self, limit: int) -> tuple[int, int, bool]:
        """(requests, rows) the group's next batch would take, and whether it is full."""
        count = rows = 0
        for request in self.requests:
            if count and rows + request.rows > limit:
                return count, rows, True
            count += 1
            rows += request.rows
        return count, rows, rows >= limit


class Batcher(Generic[P]):
    """Queue of one model version; see the module docstring for the rules."""

    def __init__(self, policy: BatchPolicy, *, max_queue_rows: int | None = None) -> None:
        self.policy = policy
        self.max_queue_rows = max_queue_rows if max_queue_rows is not None else 16 * policy.max_batch_size
        if self.max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be at least 1, got {self.max_queue_rows}")
        self._groups: dict[Hashable, _Group[P]] = {}
        self._arrivals: OrderedDict[Hashable, ArrivalRate] = OrderedDict()
        self._last_key: Hashable = _ANY_KEY  # the key of the last admitted request, and its rate
        self._last_arrivals = ArrivalRate()
        self._queued = 0
        self._queued_rows = 0
        self._timed = 0  # queued requests with a timeout: without any, there is nothing to expire
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
        return self._queued

    def add(
        self,
        payload: P,
        rows: int,
        now: float,
        timeout_s: float | None = None,
        *,
        key: Hashable = (),
        waited_s: float = 0,
    ) -> PendingRequest[P]:
        """Admit a request of ``rows`` rows that batches with requests of the same ``key``, or
        raise :class:`Overloaded` (or :class:`RequestTimeout`) at once; the request reached the
        server ``waited_s`` seconds before ``now``."""
        if rows < 1:
            raise ValueError(f"a request needs at least one row, got {rows}")
        self.check_admission(rows, now, timeout_s, key=key, waited_s=waited_s)
        arrival_s = now - max(0.0, waited_s)
        request = PendingRequest(
            request_id=self._next_id,
            rows=rows,
            arrival_s=arrival_s,
            deadline_s=None if timeout_s is None else arrival_s + timeout_s,
            payload=payload,
            key=key,
            queued_s=now,
        )
        self._next_id += 1
        # only admitted rows fill batches; a closed-loop client that was refused comes back at
        # once, and counting its retries would make the queue look busier and shed even more
        self.policy.observe_arrival(now, rows)
        self._key_arrivals(key).observe(now, rows)
        group = self._groups.get(key)
        if group is None:  # not setdefault: that would build a group for every request
            group = self._groups[key] = _Group()
        group.requests.append(request)
        group.rows += rows
        self._queued += 1
        self._queued_rows += rows
        if timeout_s is not None:
            self._timed += 1
        return request

    def cancel(self, request: PendingRequest[P]) -> bool:
        """Take ``request`` out of the queue (its client gave up); False when it is not queued
        any more (it is in a batch already, done, or expired)."""
        group = self._groups.get(request.key)
        if group is None:
            return False
        # by identity: requests compare their payloads otherwise
        index = next((i for i, queued in enumerate(group.requests) if queued is request), None)
        if index is None:
            return False
        del group.requests[index]
        group.rows -= request.rows
        if not group.requests:
            del self._groups[request.key]
        self._queued -= 1
        self._queued_rows -= request.rows
        if request.deadline_s is not None:
            self._timed -= 1
        return True

    def _key_arrivals(self, key: Hashable) -> ArrivalRate:
        if key == self._last_key:  # the same shape as the last request, as most are: already last
            return self._last_arrivals
        arrivals = self._arrivals.get(key)
        if arrivals is None:
            arrivals = self._arrivals[key] = ArrivalRate()
            if len(self._arrivals) > _TRACKED_KEYS:
                self._arrivals.popitem(last=False)
        self._arrivals.move_to_end(key)
        self._last_key, self._last_arrivals = key, arrivals
        return arrivals

    def check_admission(
        self, rows: int, now: float, timeout_s: float | None = None, *, key: Hashable = _ANY_KEY, waited_s: float = 0
    ) -> None:
        """Raise :class:`Overloaded` if a request of ``rows`` rows and ``key`` would be refused now.

        The driver may call it with one row and no key before it reads a request's body: if
        even one row cannot be admitted into whichever group suits it best, the refusal costs
        nothing to decode. ``waited_s`` is how long ago the request reached the server: what
        is left of its budgets is what the estimate must fit in, and a request whose timeout
        has passed already raises :class:`RequestTimeout`.
        """
        if self._queued and self._queued_rows + rows > self.max_queue_rows:
            raise Overloaded(
                f"queue full: {self._queued_rows} rows queued, limit {self.max_queue_rows}, request has {rows}",
                self._retry_after_s(now, key),
            )
        waited_s = max(0.0, waited_s)
        if timeout_s is not None and waited_s >= timeout_s:
            raise RequestTimeout(
                f"the request's timeout of {timeout_s * 1000:.0f} ms passed before it could be queued "
                f"({waited_s * 1000:.0f} ms after it arrived)"
            )
        # An idle server runs the request whatever the latency target says (shedding it would
        # help nobody); the request's own timeout still applies.
        idle = not self._queued and self._in_flight is None
        target = None if idle else self.policy.latency_budget_s()
        budgets = [b for b in (timeout_s, target) if b is not None]
        if budgets and self.policy.latency.fitted:
            estimate_s = self.estimate_completion_s(now, rows, key=key)
            if waited_s + estimate_s > min(budgets):
                raise Overloaded(self._late_message(estimate_s, waited_s, min(budgets)), self._retry_after_s(now, key))

    def _late_message(self, estimate_s: float, waited_s: float, budget_s: float) -> str:
        waited = f" after {waited_s * 1000:.1f} ms waited" if waited_s > 0 else ""
        queued = f"{self._queued_rows} rows queued{waited}, budget {budget_s * 1000:.1f} ms"
        return f"cannot meet the deadline: estimated {estimate_s * 1000:.1f} ms with {queued}"

    def estimate_completion_s(self, now: float, extra_rows: int = 0, *, key: Hashable = _ANY_KEY) -> float:
        """Seconds until the queue plus ``extra_rows`` more rows of ``key`` are answered (without
        a key: of whichever group, or a new one, would answer them first).

        Only what shedding can save is counted: the model's compute. Every other group's
        batches count as ahead, at their mean; so do the full batches of the request's own
        group (the sum of several batches varies far less than each one), and its last batch
        at its upper quantile. The per-batch overhead (thread hand-over, a busy event loop) is
        left out: when the HTTP loop is the bottleneck, a 503 costs it nearly as much as an
        answer, and closed-loop clients that are refused come straight back, so shedding on
        loop lag would only feed itself. That last, partial batch is assumed to fill with the
        rows of its key expected to arrive before it starts (its latency is that of the batch
        it will be, not of the rows queued now).
        """
        busy_s = max(0.0, self._busy_until_s - now) if self._in_flight is not None else 0.0
        if not self.policy.latency.fitted or self._queued_rows + extra_rows == 0:
            return busy_s
        limit = self.policy.batch_limit()
        if key is not _ANY_KEY:
            return busy_s + self._own_group_s(now, extra_rows, key, limit)
        return busy_s + min(self._own_group_s(now, extra_rows, k, limit) for k in [*self._groups, _ANY_KEY])

    def _own_group_s(self, now: float, extra_rows: int, key: Hashable, limit: int) -> float:
        latency = self.policy.latency
        groups = self._groups
        own = groups.get(key)
        rows = extra_rows if own is None else extra_rows + own.rows
        ahead_s = 0.0
        if len(groups) > (own is not None):  # other shapes are queued: their batches count as ahead
            ahead_s = sum(_drain_s(latency.mean_s, g.rows, limit) for k, g in groups.items() if k != key)
        if rows == 0:
            return ahead_s
        full, rest = divmod(rows, limit)
        if not rest:
            full, rest = full - 1, limit
        start_s = ahead_s + full * latency.mean_s(limit)
        arrivals = self._arrivals.get(key)
        rate = arrivals.rows_per_s(now) if arrivals is not None else 0.0
        expected = rest + math.ceil(rate * start_s)
        return start_s + latency.upper_s(min(limit, expected))

    def _retry_after_s(self, now: float, key: Hashable = _ANY_KEY) -> float:
        return max(0.001, self.estimate_completion_s(now, key=key))

    def _close_at(self, now: float, key: Hashable, group: _Group[P], rows: int) -> float:
        return self.policy.dispatch_at(now, group.requests[0].arrival_s, rows, self._arrivals.get(key))

    def next_deadline(self, now: float) -> float | None:
        """When the driver should next call :meth:`next_batch` or :meth:`pop_expired` if no
        request arrives first; None when there is nothing to wait for (empty, or in flight)."""
        if not self._queued or self._in_flight is not None:
            return None
        limit = self.policy.batch_limit()
        closes = []
        for key, group in self._groups.items():
            _, rows, full = group.head(limit)
            closes.append(now if full else self._close_at(now, key, group, rows))
        deadlines = [r.deadline_s for r in self._requests() if r.deadline_s is not None] if self._timed else []
        return min(closes + deadlines)

    def next_batch(self, now: float, *, drain: bool = False) -> Batch[P] | None:
        """Close and return the next batch if one should close at ``now``; else None.

        ``drain`` closes whatever is queued (shutdown) regardless of the policy, a group at a time.
        """
        if not self._queued or self._in_flight is not None:
            return None
        limit = self.policy.batch_limit()
        chosen: tuple[Hashable, int, int, Literal["full", "policy", "drain"]] | None = None
        oldest_id = -1
        for key, group in self._groups.items():
            count, rows, full = group.head(limit)
            reason = self._close_reason(now, key, group, rows, full=full, drain=drain)
            if reason is not None and (chosen is None or group.requests[0].request_id < oldest_id):
                chosen, oldest_id = (key, count, rows, reason), group.requests[0].request_id
        if chosen is None:
            return None
        key, count, rows, reason = chosen
        batch = Batch(self._take(key, count, rows), rows=rows, closed_s=now, reason=reason, key=key)
        self._in_flight = batch
        self._busy_until_s = now + (self.policy.latency.upper_s(rows) if self.policy.latency.fitted else 0.0)
        return batch

    def _close_reason(
        self, now: float, key: Hashable, group: _Group[P], rows: int, *, full: bool, drain: bool
    ) -> Literal["full", "policy", "drain"] | None:
        if full:
            return "full"
        if drain:
            return "drain"
        return "policy" if self._close_at(now, key, group, rows) <= now + _EPSILON_S else None

    def _take(self, key: Hashable, count: int, rows: int) -> tuple[PendingRequest[P], ...]:
        group = self._groups[key]
        requests = tuple(group.requests.popleft() for _ in range(count))
        group.rows -= rows
        if not group.requests:
            del self._groups[key]
        self._queued -= count
        self._queued_rows -= rows
        if self._timed:
            self._timed -= sum(1 for r in requests if r.deadline_s is not None)
        return requests

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
        """Remove and return queued requests whose timeout has passed, in arrival order."""
        if not self._timed:
            return []

        def passed(request: PendingRequest[P]) -> bool:
            return request.deadline_s is not None and request.deadline_s <= now

        expired: list[PendingRequest[P]] = []
        for key, group in list(self._groups.items()):
            gone = [r for r in group.requests if passed(r)]
            if not gone:
                continue
            group.requests = deque(r for r in group.requests if not passed(r))
            group.rows -= sum(r.rows for r in gone)
            if not group.requests:
                del self._groups[key]
            expired += gone
        self._queued -= len(expired)
        self._queued_rows -= sum(r.rows for r in expired)
        self._timed -= len(expired)
        return sorted(expired, key=lambda r: r.request_id)

    def remove_all(self) -> list[PendingRequest[P]]:
        """Empty the queue and return what it held, in arrival order (for a driver that stops)."""
        removed = sorted(self._requests(), key=lambda r: r.request_id)
        self._groups.clear()
        self._queued = self._queued_rows = self._timed = 0
        return removed

    def _requests(self) -> Iterator[PendingRequest[P]]:
        for group in self._groups.values():
            yield from group.requests


def _drain_s(mean_s: Callable[[int], float], rows: int, limit: int) -> float:
    """Mean compute seconds of the batches that ``rows`` queued rows make."""
    full, rest = divmod(rows, limit)
    return full * mean_s(limit) + (mean_s(rest) if rest else 0.0)


def retry_after_header(error: Overloaded) -> str:
    """The ``Retry-After`` header value (whole seconds, at least 1) for an :class:`Overloaded`."""
    return str(max(1, math.ceil(error.retry_after_s)))
