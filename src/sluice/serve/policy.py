"""When a model version's batcher should close a batch.

Two policies share one small interface that :class:`~sluice.serve.batcher.Batcher` calls:

* :class:`FixedPolicy` — explicit ``max_batch_size`` and ``max_queue_delay_us``: a batch
  closes when full or when its oldest request has waited the delay (Triton/mosec style).
* :class:`AdaptivePolicy` (the default) — given ``target_p99_ms``, learns the batch latency
  ``latency(rows) ≈ a + c·rows`` and the arrival rate online, and closes a batch at the last
  moment that still lets its oldest request finish within the target (see its docstring).

Both keep a :class:`LatencyModel`, so admission control can tell whether a new request can
still meet its deadline. Everything here is pure: times are passed in, nothing sleeps.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = [
    "INLINE_MAX_S",
    "INLINE_MAX_WALL_S",
    "AdaptivePolicy",
    "ArrivalRate",
    "BatchPolicy",
    "FixedPolicy",
    "LatencyModel",
]

INLINE_MAX_S = 100e-6
"""Batches expected to need at most this much CPU (on average) run on the event loop: a
thread hand-over and the wake-up back cost ~50–100 µs here, more than such a batch itself."""
INLINE_MAX_WALL_S = 500e-6
"""… as long as the batches that did run there took under this much wall time on average."""
_OVERHEAD_ALPHA = 0.1
_STALL_FACTOR = 4.0


class LatencyModel:
    """Online fit of a batch's compute time: ``latency(rows) ≈ a + c·rows``.

    Each batch size seen keeps an EWMA of its latency (``alpha``), so the estimate follows a
    model that warms up or a device that gets busier; ``a, c ≥ 0`` are then fitted by least
    squares over those per-size means, each weighted by its count (capped at ``1/alpha``).
    Unlike decayed RLS, sizes seen long ago keep the slope identified when overload makes
    every batch the same size. With one size only, the fit is proportional (``a = 0``), which
    over- rather than under-estimates larger batches.

    A batch slower than 4× the prediction (a stall of a shared CPU) enters the means as 4×,
    so one stall cannot drag the fit up for dozens of batches; a model that really got slower
    is still learned within a few batches per size.

    The spread is the empirical ``quantile`` of ``observed / predicted`` over the last
    ``window`` batches (each ratio taken before that batch updates the fit): a shared CPU
    gives heavy-tailed hiccups that a normal approximation of the RMS error overstates by
    orders of magnitude, while the empirical quantile counts each hiccup once.
    :meth:`upper_s` multiplies the mean by it.
    """

    def __init__(self, *, alpha: float = 0.05, quantile: float = 0.99, window: int = 256) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        self._alpha = alpha
        self._quantile = quantile
        self._means: dict[int, tuple[float, float]] = {}  # rows -> (latency EWMA, weight)
        self._ratios: deque[float] = deque(maxlen=window)
        self._upper_factor = 1.0
        self.a_s = 0.0
        self.c_s_per_row = 0.0
        self.samples = 0

    @property
    def fitted(self) -> bool:
        return self.samples > 0

    def observe(self, rows: int, seconds: float) -> None:
        """Learn from one finished batch of ``rows`` rows that computed for ``seconds``."""
        if self.samples:
            predicted = self.mean_s(rows)
            self._ratios.append(seconds / predicted if predicted > 0 else 1.0)
            if predicted > 0:  # a stall counts in the tail, but moves the mean by at most α·3×
                seconds = min(seconds, _STALL_FACTOR * predicted)
            if self.samples < 32 or self.samples % 8 == 0:  # sorting 256 floats: ~10 µs
                ordered = sorted(self._ratios)
                index = min(len(ordered) - 1, int(self._quantile * len(ordered)))
                self._upper_factor = max(1.0, ordered[index])
        mean, weight = self._means.get(rows, (seconds, 0.0))
        self._means[rows] = (mean + self._alpha * (seconds - mean), min(weight + 1.0, 1.0 / self._alpha))
        self.samples += 1
        self._solve()

    def _solve(self) -> None:
        w = sb = sbb = sy = sby = 0.0
        for rows, (mean, weight) in self._means.items():
            w += weight
            sb += weight * rows
            sbb += weight * rows * rows
            sy += weight * mean
            sby += weight * rows * mean
        det = w * sbb - sb * sb
        if det > 1e-9 * w * sbb:
            c = (w * sby - sb * sy) / det
            a = (sy - c * sb) / w
        else:
            a, c = 0.0, sby / sbb
        if c < 0:
            a, c = sy / w, 0.0
        elif a < 0:
            a, c = 0.0, sby / sbb
        self.a_s, self.c_s_per_row = a, c

    def mean_s(self, rows: int) -> float:
        """Expected compute seconds of a batch of ``rows`` rows."""
        return self.a_s + self.c_s_per_row * rows

    def upper_factor(self) -> float:
        """Multiplier from the mean to the upper quantile (at least 1)."""
        return self._upper_factor

    def upper_s(self, rows: int) -> float:
        """Conservative (upper-quantile) compute seconds of a batch of ``rows`` rows."""
        return self.mean_s(rows) * self.upper_factor()


class ArrivalRate:
    """EWMA of inter-arrival gaps and of rows per request.

    A silence longer than the mean gap stretches the gap (so the rate decays when traffic
    stops instead of staying at its last value).
    """

    def __init__(self, *, alpha: float = 0.1) -> None:
        self._alpha = alpha
        self._gap_s: float | None = None
        self._last_s: float | None = None
        self.rows_per_request = 1.0

    def observe(self, now: float, rows: int) -> None:
        """Record one request of ``rows`` rows arriving at ``now``."""
        if self._last_s is not None:
            gap = max(0.0, now - self._last_s)
            self._gap_s = gap if self._gap_s is None else self._gap_s + self._alpha * (gap - self._gap_s)
            self.rows_per_request += self._alpha * (rows - self.rows_per_request)
        else:
            self.rows_per_request = float(rows)
        self._last_s = now

    def mean_gap_s(self, now: float) -> float | None:
        """Expected seconds until the next request, or None before two arrivals."""
        if self._gap_s is None or self._last_s is None:
            return None
        return max(self._gap_s, now - self._last_s, 1e-9)

    def silence_ends_s(self, factor: float = 2.0) -> float | None:
        """When a pause in arrivals counts as traffic having stopped: ``factor`` mean gaps after
        the last arrival (None before two arrivals)."""
        if self._gap_s is None or self._last_s is None:
            return None
        return self._last_s + factor * self._gap_s

    def rows_per_s(self, now: float) -> float:
        """Expected rows per second (0 before two arrivals)."""
        gap_s = self.mean_gap_s(now)
        return 0.0 if gap_s is None else self.rows_per_request / gap_s


class BatchPolicy:
    """What a :class:`~sluice.serve.batcher.Batcher` asks of a policy (base class)."""

    def __init__(self, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.latency = LatencyModel()
        self.cpu = LatencyModel()
        """Fit of the CPU seconds the predicting thread itself spends: unlike wall time, it
        leaves out waits for the GIL and the scheduler, so it says how long a batch would
        hold the event loop if it ran there."""
        self.inline = LatencyModel()
        """Fit of the wall time of batches that ran on the event loop."""
        self.arrivals = ArrivalRate()
        self.overhead_s = 0.0
        """EWMA of each batch's time outside ``predict``: the hand-over to the worker thread and
        back to a possibly busy event loop. It does not grow with rows, so it is kept apart
        from the compute fit."""

    def observe_arrival(self, now: float, rows: int) -> None:
        """A request was admitted (refused ones never join a batch)."""
        self.arrivals.observe(now, rows)

    def observe_batch(
        self,
        rows: int,
        compute_s: float,
        overhead_s: float = 0.0,
        cpu_s: float | None = None,
        *,
        inline: bool = False,
    ) -> None:
        """A batch of ``rows`` rows finished after ``compute_s`` seconds inside ``predict``
        (``cpu_s`` of them on the predicting thread's CPU, when measured; ``inline`` when it
        ran on the event loop) and ``overhead_s`` more between closing the batch and
        scattering its results."""
        self.latency.observe(rows, compute_s)
        if inline:
            self.inline.observe(rows, compute_s)
        self.cpu.observe(rows, compute_s if cpu_s is None else cpu_s)
        self.overhead_s += _OVERHEAD_ALPHA * (max(0.0, overhead_s) - self.overhead_s)

    def run_inline(self, rows: int) -> bool:
        """Whether a batch of ``rows`` rows computes so briefly that handing it to a worker
        thread would cost more than running it on the event loop."""
        if not (self.cpu.fitted and self.cpu.mean_s(rows) <= INLINE_MAX_S):
            return False
        # Little CPU is not enough: a model that sleeps or waits for a device spends little
        # CPU but long wall time. Wall time measured in the worker includes waits for the GIL,
        # so only batches that ran on the loop tell: try it, and keep it while it holds.
        return not self.inline.fitted or self.inline.mean_s(rows) <= INLINE_MAX_WALL_S

    def batch_limit(self) -> int:
        """Most rows a batch may hold now."""
        return self.max_batch_size

    def latency_budget_s(self) -> float | None:
        """Latency every admitted request must be expected to meet, or None."""
        return None

    def dispatch_at(
        self, now: float, oldest_arrival_s: float, queued_rows: int, arrivals: ArrivalRate | None = None
    ) -> float:
        """When a not-yet-full batch should close (``<= now``: close it now).

        ``arrivals`` is the arrival rate of the requests that may join this batch (those of its
        shape, when a batcher keeps requests of several shapes apart); None: :attr:`arrivals`.
        """
        raise NotImplementedError


class FixedPolicy(BatchPolicy):
    """Close a batch when it has ``max_batch_size`` rows or its oldest request has waited
    ``max_queue_delay_us`` microseconds, whichever comes first."""

    def __init__(self, max_batch_size: int, max_queue_delay_us: int) -> None:
        super().__init__(max_batch_size)
        if max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
        self.max_queue_delay_us = max_queue_delay_us

    def dispatch_at(
        self, now: float, oldest_arrival_s: float, queued_rows: int, arrivals: ArrivalRate | None = None
    ) -> float:
        return oldest_arrival_s + self.max_queue_delay_us / 1e6


class AdaptivePolicy(BatchPolicy):
    """Grow batches with the latency slack a p99 target leaves, and no further.

    With ``L(b) = a + c·b`` the upper-quantile batch latency and ``T = headroom·target``:

    1. **Batch cap.** Under load a request can wait for the batch in flight and then run in
       the next one, so batches are capped at the largest ``b`` with ``2·L(b) ≤ T`` (Clipper's
       AIMD probes for this bound; we read it off the fitted model). The per-batch overhead
       ``o`` outside ``predict`` is not in the cap: smaller batches would pay it more often.
    2. **Latest safe dispatch.** With ``q`` rows queued and rows arriving at rate ``λ``, the
       batch closed at time ``t`` holds ``min(cap, q + λ·(t-now))`` rows and its oldest request
       (arrived at ``t0``) finishes at ``t + L(rows) + o``; ``t_latest`` solves that equal to
       ``t0 + T``. It is re-evaluated at every arrival, so a burst only brings it forward.
    3. **Dispatch now** when the batch is full, when ``t_latest ≤ now``, when fewer than one
       more request is expected before ``t_latest`` (waiting cannot grow the batch), or when
       the fixed cost ``a`` is already at most ``overhead_fraction`` of ``L(q)`` (a bigger batch
       would barely raise throughput, so waiting only adds latency — BentoML waits anyway), or
       when arrivals have paused for two mean gaps (closed-loop clients wait for their answers:
       waiting for them would only slow every cycle down), or when fewer than one row arrives
       per fixed cost ``a`` (``λ·a < 1``: the load is light enough that batches barely save
       anything, so waiting would be pure latency).
       Before the first batch finishes nothing is known, so it dispatches at once and learns.

    Admission (in the batcher) sheds a request whose estimated completion, queue ahead of it
    included, exceeds ``target``, so admitted latency stays bounded under overload.
    """

    def __init__(
        self,
        target_p99_ms: float,
        max_batch_size: int = 64,
        *,
        headroom: float = 0.9,
        overhead_fraction: float = 0.05,
    ) -> None:
        super().__init__(max_batch_size)
        if target_p99_ms <= 0:
            raise ValueError(f"target_p99_ms must be positive, got {target_p99_ms}")
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        self.target_p99_ms = target_p99_ms
        self.overhead_fraction = overhead_fraction
        self._plan_s = target_p99_ms / 1000 * headroom

    def latency_budget_s(self) -> float:
        # the headroom too: the estimate is of a sum of noisy batches, and p99 is its tail
        return self._plan_s

    def batch_limit(self) -> int:
        model = self.latency
        if not model.fitted:
            return self.max_batch_size
        k = model.upper_factor()
        # the overhead is left out: it does not grow with rows, so a smaller batch cannot win
        # it back, and more, smaller batches would only pay it more often
        room_s = self._plan_s / (2 * k) - model.a_s
        if model.c_s_per_row <= 0:
            return self.max_batch_size if room_s >= 0 else 1
        return max(1, min(self.max_batch_size, math.floor(room_s / model.c_s_per_row)))

    def dispatch_at(
        self, now: float, oldest_arrival_s: float, queued_rows: int, arrivals: ArrivalRate | None = None
    ) -> float:
        model = self.latency
        arrivals = self.arrivals if arrivals is None else arrivals
        gap_s = arrivals.mean_gap_s(now)
        if not model.fitted or gap_s is None:
            return now
        if model.a_s <= self.overhead_fraction * model.mean_s(queued_rows):
            return now
        if arrivals.rows_per_s(now) * model.a_s < 1.0:
            return now  # under one row arrives per fixed cost: batching has nothing to save
        t_latest = self._latest_dispatch_s(now, oldest_arrival_s, queued_rows, arrivals.rows_per_request / gap_s)
        if t_latest <= now or (t_latest - now) < gap_s:
            return now
        # Closed-loop clients only send again once answered: when arrivals pause for two mean
        # gaps, everyone who will come is here, and waiting longer only adds latency.
        silence = arrivals.silence_ends_s()
        return t_latest if silence is None else max(now, min(t_latest, silence))

    def _latest_dispatch_s(self, now: float, oldest_arrival_s: float, queued_rows: int, rate: float) -> float:
        k = self.latency.upper_factor()
        a, c = self.latency.a_s * k, self.latency.c_s_per_row * k
        end_s = oldest_arrival_s + self._plan_s - self.overhead_s
        cap = self.batch_limit()
        t_full_cap = end_s - (a + c * cap)
        if queued_rows + rate * (t_full_cap - now) >= cap:
            return t_full_cap
        return (end_s - a - c * queued_rows + c * rate * now) / (1 + c * rate)
