"""Tuning: profiling a model over batch sizes and worker set-ups, and the cost model.

Names load their modules on first use, so ``sluice cost`` does not pay for the tuner's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports

_EXPORTS = {
    "load_sample": "sluice.tune.api",
    "parse_bytes": "sluice.tune.api",
    "thread_setups": "sluice.tune.api",
    "tune": "sluice.tune.api",
    "Choice": "sluice.tune.profile",
    "Measurement": "sluice.tune.profile",
    "Profile": "sluice.tune.profile",
    "Setup": "sluice.tune.profile",
    "Constraints": "sluice.tune.search",
    "SearchSpace": "sluice.tune.search",
    "choose": "sluice.tune.search",
    "exhaustive": "sluice.tune.search",
    "search": "sluice.tune.search",
    "cost_per_million": "sluice.tune.cost",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # names for type checkers; at run time __getattr__ imports them lazily
    from sluice.tune.api import load_sample as load_sample
    from sluice.tune.api import parse_bytes as parse_bytes
    from sluice.tune.api import thread_setups as thread_setups
    from sluice.tune.api import tune as tune
    from sluice.tune.cost import cost_per_million as cost_per_million
    from sluice.tune.profile import Choice as Choice
    from sluice.tune.profile import Measurement as Measurement
    from sluice.tune.profile import Profile as Profile
    from sluice.tune.profile import Setup as Setup
    from sluice.tune.search import Constraints as Constraints
    from sluice.tune.search import SearchSpace as SearchSpace
    from sluice.tune.search import choose as choose
    from sluice.tune.search import exhaustive as exhaustive
    from sluice.tune.search import search as search


__getattr__ = lazy_exports(__name__, _EXPORTS)
