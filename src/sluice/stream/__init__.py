"""Streaming prediction: micro-batches from a live source, committed exactly once, in groups.

``sluice.stream`` is this package, and calling it runs a stream::

    import sluice
    sluice.stream("demo", "incoming/", "predictions/", key_column="id", once=True)

is :func:`run_stream`. See docs/streaming.md.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from sluice.stream.config import StreamSpec
from sluice.stream.metrics import StreamMetrics, StreamSummary
from sluice.stream.runner import StreamRunner, run_stream
from sluice.stream.scheduler import GroupPlan, GroupScheduler

__all__ = [
    "GroupPlan",
    "GroupScheduler",
    "StreamMetrics",
    "StreamRunner",
    "StreamSpec",
    "StreamSummary",
    "run_stream",
]


class _CallablePackage(types.ModuleType):
    """The package, callable: ``sluice.stream(model, source, sink, **options)`` is :func:`run_stream`."""

    def __call__(self, model: str, source: str, sink: str, **options: Any) -> StreamSummary:
        return run_stream(model, source, sink, **options)


sys.modules[__name__].__class__ = _CallablePackage
