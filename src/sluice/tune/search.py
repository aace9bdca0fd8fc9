"""The tuner's search and choice: pure logic over an injected ``measure`` function.

The search measures a handful of set-ups instead of the whole grid:

1. a ladder of batch sizes growing fourfold from ``start_batch`` with the first thread
   set-up, stopping after two steps that do not improve throughput by ``min_gain`` (so one
   dip does not end it) or at the first set-up that breaks a constraint or fails;
2. a hill climb over powers of two around the best batch size (halve, double, repeat while
   it improves), which also walks down below the ladder when a latency budget requires;
3. every other thread set-up at the best batch size, and a hill climb for any that wins; when
   the latency budget binds, also for one that loses there but fits, since a set-up with a
   lower latency floor may fit much larger batches within the budget.

Larger batches never lower latency or memory, so a set-up over a budget or out of memory
ends growth in that direction. :func:`choose` then takes the highest throughput within the
budgets and says which budget, if any, bound the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sluice.tune.profile import Choice, Measurement, Setup

__all__ = ["Constraints", "SearchSpace", "choose", "exhaustive", "search"]

Measure = Callable[[Setup], Measurement]


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None
    memory_limit_bytes: int | None = None

    def violation(self, m: Measurement) -> str | None:
        """Why ``m`` cannot be chosen, or None when it can."""
        if not m.ok:
            return m.status
        if self.max_latency_ms is not None and (m.latency_p99_ms or 0.0) > self.max_latency_ms:
            return "latency"
        if self.memory_limit_bytes is not None and (m.peak_memory_bytes or 0) > self.memory_limit_bytes:
            return "memory"
        return None


@dataclass(frozen=True)
class SearchSpace:
    """Thread set-ups as (workers, intra-op threads), the first being the default."""

    thread_setups: tuple[tuple[int, int], ...] = ((1, 1),)
    min_batch: int = 1
    max_batch: int = 1 << 16
    start_batch: int = 64
    ladder_factor: int = 4
    min_gain: float = 0.03

    def grid(self) -> list[int]:
        """Powers of two from ``min_batch`` to ``max_batch``: the exhaustive sweep's batch sizes."""
        sizes, b = [], 1
        while b <= self.max_batch:
            if b >= self.min_batch:
                sizes.append(b)
            b *= 2
        return sizes


class _Search:
    def __init__(self, measure: Measure, space: SearchSpace, constraints: Constraints) -> None:
        self.measure = measure
        self.space = space
        self.constraints = constraints
        self.done: dict[Setup, Measurement] = {}

    def at(self, setup: Setup) -> Measurement:
        if setup not in self.done:
            self.done[setup] = self.measure(setup)
        return self.done[setup]

    def feasible(self, m: Measurement) -> bool:
        return self.constraints.violation(m) is None

    def better(self, a: Measurement | None, b: Measurement | None, gain: float = 0.0) -> bool:
        """Whether ``a`` beats ``b`` by more than ``gain`` (infeasible never beats feasible)."""
        if a is None or not self.feasible(a):
            return False
        return b is None or not self.feasible(b) or a.rows_per_second > b.rows_per_second * (1 + gain)

    def setup(self, batch: int, threads: tuple[int, int]) -> Setup:
        return Setup(batch, threads[0], threads[1])

    def ladder(self, threads: tuple[int, int]) -> Measurement | None:
        best: Measurement | None = None
        stale = 0
        batch = max(self.space.min_batch, min(self.space.start_batch, self.space.max_batch))
        while batch <= self.space.max_batch and stale < 2:
            m = self.at(self.setup(batch, threads))
            if not self.feasible(m):
                break
            stale = 0 if self.better(m, best, self.space.min_gain) else stale + 1
            if self.better(m, best):
                best = m
            batch *= self.space.ladder_factor
        return best

    def climb(self, best: Measurement | None, threads: tuple[int, int]) -> Measurement | None:
        """Hill-climb over powers of two; with nothing feasible yet, walk down from the start."""
        batch = best.setup.batch_size if best else self.space.start_batch
        while True:
            moved = False
            for candidate in (batch // 2, batch * 2):
                if not self.space.min_batch <= candidate <= self.space.max_batch:
                    continue
                m = self.at(self.setup(candidate, threads))
                if self.better(m, best):
                    best, batch, moved = m, candidate, True
                    break
                if best is None and candidate < batch:
                    batch, moved = candidate, True  # nothing fits yet: keep shrinking
                    break
            if not moved:
                return best

    def latency_bound(self) -> bool:
        """Whether some measured set-up ran but broke the latency budget."""
        return any(self.constraints.violation(m) == "latency" for m in self.done.values())

    def run(self) -> list[Measurement]:
        best: Measurement | None = None
        for threads in self.space.thread_setups:
            if best is None:  # nothing fits yet: search this thread set-up from scratch
                best = self.climb(self.ladder(threads), threads)
                continue
            m = self.at(self.setup(best.setup.batch_size, threads))
            if self.better(m, best):
                best = self.climb(m, threads)
            elif self.latency_bound() and self.feasible(m):
                # A set-up with a lower latency floor may fit larger batches within the budget
                # although it loses at this one: let it climb on its own.
                found = self.climb(m, threads)
                best = found if self.better(found, best) else best
        return list(self.done.values())


def search(measure: Measure, space: SearchSpace, constraints: Constraints | None = None) -> list[Measurement]:
    """Measure the set-ups the search visits, in the order visited."""
    return _Search(measure, space, constraints or Constraints()).run()


def exhaustive(measure: Measure, space: SearchSpace) -> list[Measurement]:
    """Every thread set-up at every grid batch size: the reference a search is judged against."""
    return [measure(Setup(b, w, t)) for w, t in space.thread_setups for b in space.grid()]


def choose(measurements: list[Measurement], constraints: Constraints | None = None) -> Choice:
    """The highest-throughput measurement within the budgets, and which budget bound it."""
    constraints = constraints or Constraints()
    ran = [m for m in measurements if m.ok]
    fits = [m for m in ran if constraints.violation(m) is None]
    if not fits:
        return Choice(None, _nothing_fits(measurements))
    chosen = max(fits, key=lambda m: m.rows_per_second)
    faster = [m for m in ran if m.rows_per_second > chosen.rows_per_second and m not in fits]
    if not faster:
        return Choice(chosen, f"highest throughput measured ({chosen.setup.describe()}); no budget bound the choice")
    top = max(faster, key=lambda m: m.rows_per_second)
    gain = top.rows_per_second / chosen.rows_per_second - 1
    if constraints.violation(top) == "latency":
        why = f"p99 {top.latency_p99_ms:.2f} ms > `max_latency_ms` {constraints.max_latency_ms:g}"
    else:
        why = f"peak memory {_mib(top.peak_memory_bytes)} > `memory_limit` {_mib(constraints.memory_limit_bytes)}"
    return Choice(
        chosen,
        f"bound by {'latency' if 'p99' in why else 'memory'}: {top.setup.describe()} would be "
        f"{gain:.0%} faster but its {why}",
    )


def _mib(n: int | None) -> str:
    return f"{(n or 0) / (1 << 20):,.0f} MiB"


def _nothing_fits(measurements: list[Measurement]) -> str:
    ran = [m for m in measurements if m.ok]
    if not ran:
        statuses = sorted({m.status for m in measurements})
        return f"no set-up ran successfully ({', '.join(statuses) or 'nothing measured'})"
    quickest = min(ran, key=lambda m: m.latency_p99_ms or 0.0)
    smallest = min(ran, key=lambda m: m.peak_memory_bytes or 0)
    return (
        f"no set-up met the budgets: the lowest p99 was {quickest.latency_p99_ms:.2f} ms "
        f"({quickest.setup.describe()}), the lowest peak memory {_mib(smallest.peak_memory_bytes)}"
    )
