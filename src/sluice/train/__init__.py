"""Data-parallel training with torch.distributed; torch is imported only when training starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports

_LAZY = {
    "Strategy": "sluice.train.config",
    "TrainConfig": "sluice.train.config",
    "EpochMetrics": "sluice.train.launch",
    "Progress": "sluice.train.launch",
    "StepMetrics": "sluice.train.launch",
    "TrainHistory": "sluice.train.launch",
    "TrainResult": "sluice.train.launch",
    "TrainStart": "sluice.train.launch",
    "train": "sluice.train.launch",
}

__all__ = [
    "EpochMetrics",
    "Progress",
    "StepMetrics",
    "Strategy",
    "TrainConfig",
    "TrainHistory",
    "TrainResult",
    "TrainStart",
    "train",
]

if TYPE_CHECKING:
    from sluice.train.config import Strategy as Strategy
    from sluice.train.config import TrainConfig as TrainConfig
    from sluice.train.launch import EpochMetrics as EpochMetrics
    from sluice.train.launch import Progress as Progress
    from sluice.train.launch import StepMetrics as StepMetrics
    from sluice.train.launch import TrainHistory as TrainHistory
    from sluice.train.launch import TrainResult as TrainResult
    from sluice.train.launch import TrainStart as TrainStart
    from sluice.train.launch import train as train


__getattr__ = lazy_exports(__name__, _LAZY)
