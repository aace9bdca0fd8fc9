"""Backends: the same job spec on this machine, on Apache Spark or on Ray Data, through one driver.

``pyspark`` and ``ray`` are imported only when their backend runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports

_EXPORTS = {
    "BACKENDS": "sluice.backends.api",
    "Engine": "sluice.batch.engine",
    "LocalEngine": "sluice.batch.local",
    "predict": "sluice.backends.api",
    "run_job": "sluice.backends.api",
    "SparkEngine": "sluice.backends.spark",
    "RayEngine": "sluice.backends.ray",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from sluice.backends.api import BACKENDS as BACKENDS
    from sluice.backends.api import predict as predict
    from sluice.backends.api import run_job as run_job
    from sluice.backends.ray import RayEngine as RayEngine
    from sluice.backends.spark import SparkEngine as SparkEngine
    from sluice.batch.engine import Engine as Engine
    from sluice.batch.local import LocalEngine as LocalEngine

__getattr__ = lazy_exports(__name__, _EXPORTS)
