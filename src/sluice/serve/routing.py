"""Traffic routing as pure logic: which variant answers a request, and which shadows get a copy.

:class:`RouteTable` is immutable and knows nothing of HTTP or models. A request with a sticky
key goes where weighted rendezvous hashing sends it: every variant scores the key
(``-ln(u) / weight`` with ``u`` uniform from a hash of key and variant) and the lowest wins, so
the same key reaches the same variant while the weights stand, and when weights change only the
keys whose winner lost weight relative to another variant move (about the share that must move).
A request without a key is split by weight with the injected random generator.

:class:`ThompsonAllocator` turns outcomes per variant into weights: the probability that each
variant is the best (Beta posteriors for 0/1 rewards, normal ones for continuous rewards),
estimated by Monte Carlo draws from an injected generator, with a floor so no variant starves.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["OutcomeTally", "RouteTable", "ThompsonAllocator", "sticky_score"]

_UNIT = float(1 << 64)


def sticky_score(key: str, variant: str, weight: float) -> float:
    """Weighted rendezvous score of ``key`` for ``variant``: the lowest score wins."""
    digest = hashlib.blake2b(f"{variant}\x00{key}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / _UNIT  # in (0, 1)
    return -math.log(u) / weight


@dataclass(frozen=True)
class RouteTable:
    """Variants with weights (the first is the primary) and shadow variants with fractions."""

    weights: Mapping[str, float]
    shadow: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.weights or sum(self.weights.values()) <= 0 or min(self.weights.values()) < 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {dict(self.weights)}")

    @property
    def primary(self) -> str:
        """The control variant (listed first)."""
        return next(iter(self.weights))

    def shares(self) -> dict[str, float]:
        """Each variant's expected share of the traffic (weights normalised to sum to 1)."""
        total = sum(self.weights.values())
        return {variant: weight / total for variant, weight in self.weights.items()}

    def choose(self, key: str | None, rng: np.random.Generator) -> str:
        """The variant that answers: by sticky ``key`` when given, else by weight with ``rng``."""
        if key is not None:
            live = ((variant, weight) for variant, weight in self.weights.items() if weight > 0)
            return min(live, key=lambda vw: sticky_score(key, vw[0], vw[1]))[0]
        point = rng.random() * sum(self.weights.values())
        for variant, weight in self.weights.items():
            point -= weight
            if point < 0 and weight > 0:
                return variant
        return max(self.weights, key=lambda v: self.weights[v])  # rounding at the very top

    def shadows(self, rng: np.random.Generator) -> list[str]:
        """The shadow variants that get a copy of this request (each with its own fraction)."""
        return [variant for variant, fraction in self.shadow.items() if fraction > 0 and rng.random() < fraction]

    def with_weights(self, weights: Mapping[str, float]) -> RouteTable:
        """The same table with new weights (shadows kept)."""
        return RouteTable(dict(weights), dict(self.shadow))


@dataclass
class OutcomeTally:
    """Running sums of one variant's outcomes: enough for means, variances and posteriors."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.total_sq += value * value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (n − 1 in the denominator); NaN below two outcomes."""
        if self.count < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.total / self.count) / (self.count - 1))


@dataclass(frozen=True)
class ThompsonAllocator:
    """Weights from outcomes by Thompson sampling; see the module docstring."""

    outcome: Literal["binary", "continuous"] = "binary"
    floor_weight: float = 0.05
    draws: int = 2000

    def weights(self, tallies: Mapping[str, OutcomeTally], rng: np.random.Generator) -> dict[str, float]:
        """Probability that each variant is best, mixed with the floor; sums to 1."""
        names = list(tallies)
        samples = np.column_stack([self._posterior(tallies[n], rng) for n in names])
        wins = np.bincount(samples.argmax(axis=1), minlength=len(names)) / self.draws
        floor = min(self.floor_weight, 1.0 / len(names))
        return {n: floor + (1.0 - floor * len(names)) * float(w) for n, w in zip(names, wins, strict=True)}

    def _posterior(self, tally: OutcomeTally, rng: np.random.Generator) -> np.ndarray:
        if self.outcome == "binary":  # Beta(1 + successes, 1 + failures)
            return rng.beta(1.0 + tally.total, 1.0 + tally.count - tally.total, self.draws)
        if tally.count < 2:  # nothing known yet: a wide prior around zero
            return rng.normal(0.0, 1e6, self.draws)
        return rng.normal(tally.mean, math.sqrt(tally.variance / tally.count) + 1e-12, self.draws)
