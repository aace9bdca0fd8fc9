"""Models: the :class:`Model` contract, signatures, adapters and the model repository."""

from sluice.arrowcast import RowFailures
from sluice.models.base import Model, ModelSource, Prepared
from sluice.models.config import LoadOptions, ModelConfig, TensorConfig
from sluice.models.loader import default_repository, load_model, load_source, resolve_model
from sluice.models.repository import ModelRepository
from sluice.models.signature import BindPlan, BoundBatch, Signature, TensorSpec

__all__ = [
    "BindPlan",
    "BoundBatch",
    "LoadOptions",
    "Model",
    "ModelConfig",
    "ModelRepository",
    "ModelSource",
    "Prepared",
    "RowFailures",
    "Signature",
    "TensorConfig",
    "TensorSpec",
    "default_repository",
    "load_model",
    "load_source",
    "resolve_model",
]
