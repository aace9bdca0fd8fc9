"""Sluice: batch and real-time model inference over Arrow data.

Importing ``sluice`` is cheap: the public names below load their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports
from sluice._version import __version__ as __version__

_EXPORTS = {
    "JobSpec": "sluice.batch",
    "RunSummary": "sluice.batch",
    "predict": "sluice.backends",
    "predict_batches": "sluice.batch",
    "run_job": "sluice.backends",
    "Model": "sluice.models",
    "ModelConfig": "sluice.models",
    "ModelRepository": "sluice.models",
    "LoadOptions": "sluice.models",
    "Signature": "sluice.models",
    "TensorSpec": "sluice.models",
    "load_model": "sluice.models",
    "SluiceError": "sluice.errors",
    "jobs": "sluice.jobs",
    "stream": "sluice.stream",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # names for type checkers; at run time __getattr__ imports them lazily
    from sluice import jobs as jobs
    from sluice import stream as stream
    from sluice.backends import predict as predict
    from sluice.backends import run_job as run_job
    from sluice.batch import JobSpec as JobSpec
    from sluice.batch import RunSummary as RunSummary
    from sluice.batch import predict_batches as predict_batches
    from sluice.errors import SluiceError as SluiceError
    from sluice.models import LoadOptions as LoadOptions
    from sluice.models import Model as Model
    from sluice.models import ModelConfig as ModelConfig
    from sluice.models import ModelRepository as ModelRepository
    from sluice.models import Signature as Signature
    from sluice.models import TensorSpec as TensorSpec
    from sluice.models import load_model as load_model


__getattr__ = lazy_exports(__name__, _EXPORTS)
