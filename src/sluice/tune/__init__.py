"""Tuning: profiling a model over batch sizes and worker set-ups, and the cost model."""

from sluice.tune.api import load_sample, parse_bytes, thread_setups, tune
from sluice.tune.profile import Choice, Measurement, Profile, Setup
from sluice.tune.search import Constraints, SearchSpace, choose, exhaustive, search

__all__ = [
    "Choice",
    "Constraints",
    "Measurement",
    "Profile",
    "SearchSpace",
    "Setup",
    "choose",
    "exhaustive",
    "load_sample",
    "parse_bytes",
    "search",
    "thread_setups",
    "tune",
]
