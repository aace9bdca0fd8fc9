"""How many requests of one model version the server works on at once.

The batcher sheds a request whose *model* queue cannot meet the latency target, but when the
HTTP layer itself is the bottleneck (a fast model behind a busy event loop) every request
waits on the loop, and a 503 from the batcher comes too late: the request was already read
and decoded. :class:`ConcurrencyLimit` bounds the requests in progress instead, and refuses
the excess before its body is read, which is the cheapest answer the server can give.

The limit adapts by AIMD on measured latency (TCP Vegas and Netflix's concurrency limits are
the anchors): after every ``window`` answered requests, if the window's ``quantile`` latency
is over the budget, the limit shrinks by ``decrease``; if it met the budget and the limit was
reached during the window, it grows by up to an eighth, and no further than the tail, scaled
by the same factor, would still meet the budget. By Little's law it settles near
throughput × budget, so admitted requests wait about one budget at most. At light load the
limit is never reached and never matters. Pure: times are passed in.
"""

from __future__ import annotations

import math

__all__ = ["ConcurrencyLimit"]


class ConcurrencyLimit:
    """AIMD limit on requests in progress; see the module docstring."""

    def __init__(
        self,
        budget_s: float | None,
        *,
        initial: int = 256,
        minimum: int = 4,
        maximum: int = 4096,
        window: int = 100,
        quantile: float = 0.95,
        decrease: float = 0.75,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        if budget_s is not None and budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {budget_s}")
        self.budget_s = budget_s
        self.limit = min(max(initial, minimum), maximum) if budget_s is not None else maximum
        self.minimum = minimum
        self.maximum = maximum
        self.in_progress = 0
        self.refused = 0
        self._window = window
        self._quantile = quantile
        self._decrease = decrease
        self._latencies: list[float] = []
        self._reached = False

    def try_acquire(self) -> bool:
        """Take a slot for a new request; False (refuse it) when the limit is reached."""
        if self.in_progress >= self.limit:
            self.refused += 1
            self._reached = True
            return False
        self.in_progress += 1
        return True

    def release(self, latency_s: float | None) -> None:
        """Give the slot back; ``latency_s`` of an answered request teaches the limit (None:
        the request failed or was refused later, which says nothing about the load)."""
        self.in_progress -= 1
        if latency_s is None or self.budget_s is None:
            return
        self._latencies.append(latency_s)
        if len(self._latencies) >= self._window:
            self._adapt(self.budget_s)

    def _adapt(self, budget_s: float) -> None:
        ordered = sorted(self._latencies)
        tail_s = ordered[min(len(ordered) - 1, int(self._quantile * len(ordered)))]
        if tail_s > budget_s:
            self.limit = max(self.minimum, math.floor(self.limit * self._decrease))
        elif self._reached:
            # latency grows with the work in progress, so grow only as far as the tail,
            # scaled by the same factor, would still meet the budget
            room = math.floor(self.limit * (budget_s / max(tail_s, 1e-9) - 1.0))
            self.limit = min(self.maximum, self.limit + min(max(1, self.limit // 8), room))
        self._latencies.clear()
        self._reached = False
