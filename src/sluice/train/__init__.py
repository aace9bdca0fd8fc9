"""Data-parallel training with torch.distributed; torch is imported only when training starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports

_EXPORTS = {
    "Strategy": "sluice.train.config",
    "TrainConfig": "sluice.train.config",
    "EpochMetrics": "sluice.train.values",
    "Progress": "sluice.train.values",
    "StepMetrics": "sluice.train.values",
    "TrainHistory": "sluice.train.values",
    "TrainResult": "sluice.train.values",
    "TrainStart": "sluice.train.values",
    "train": "sluice.train.launch",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from sluice.train.config import Strategy as Strategy
    from sluice.train.config import TrainConfig as TrainConfig
    from sluice.train.launch import train as train
    from sluice.train.values import EpochMetrics as EpochMetrics
    from sluice.train.values import Progress as Progress
    from sluice.train.values import StepMetrics as StepMetrics
    from sluice.train.values import TrainHistory as TrainHistory
    from sluice.train.values import TrainResult as TrainResult
    from sluice.train.values import TrainStart as TrainStart


__getattr__ = lazy_exports(__name__, _EXPORTS)
