"""The values a training run exchanges: its progress events, its result and the run's switches.

The launcher (:mod:`sluice.train.launch`) and the rank loop (:mod:`sluice.train.loop`) both use
them, so they live below both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sluice.train.config import TrainConfig
from sluice.train.data import ClassLabel, Task

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "EpochMetrics",
    "Progress",
    "RunOptions",
    "StepMetrics",
    "TrainHistory",
    "TrainResult",
    "TrainStart",
]


@dataclass(frozen=True)
class TrainStart:
    """Sent once, before the first step: what the run will do."""

    epochs: int
    start_epoch: int  # epochs already done (a resumed run)
    steps_per_epoch: int
    world_size: int
    train_rows: int
    validation_rows: int
    features: tuple[str, ...]
    task: Task
    strategy: str


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step (numbered from 1 across epochs), as rank 0 measured it."""

    epoch: int
    step: int
    loss: float  # mean loss of rank 0's micro-batches
    samples_per_s: float  # global batch / step time
    step_s: float
    compute_s: float  # step time minus communication not hidden behind backward
    comm_s: float  # time with a collective in flight, hidden or not
    exposed_comm_s: float
    grad_bytes: int  # payload this rank sent into gradient/parameter collectives
    synced: bool  # replicas are identical after this step
    replica_divergence: float | None = None  # max |difference| across ranks (RunOptions.check_replicas)


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch, after the replicas are synchronised and validated."""

    epoch: int
    steps: int
    train_loss: float  # mean over all ranks' rows
    val_loss: float
    val_metric: float
    metric_name: str  # "accuracy" (higher is better) or "rmse" (lower is better)
    samples_per_s: float
    wall_s: float
    compute_s: float
    comm_s: float
    exposed_comm_s: float
    grad_bytes: int
    grad_bytes_per_step: float
    compression_ratio: float | None  # PowerSGD: elements before / after compression so far
    replica_divergence: float | None = None


@dataclass(frozen=True)
class TrainHistory:
    steps: tuple[StepMetrics, ...]
    epochs: tuple[EpochMetrics, ...]


@dataclass(frozen=True)
class TrainResult:
    """A trained model and everything export needs: weights, shapes, scaling, labels, history."""

    config: TrainConfig
    state_dict: dict[str, torch.Tensor]  # of ``build_mlp(len(feature_names), hidden, outputs, seed)``, on CPU
    hidden: tuple[int, ...]
    feature_names: tuple[str, ...]
    task: Task
    class_labels: tuple[ClassLabel, ...]  # classification: label of each output column; () for regression
    feature_mean: np.ndarray  # float32 [features]: the model expects (x - mean) / std
    feature_std: np.ndarray
    target_mean: float  # regression: prediction = output * target_std + target_mean
    target_std: float
    history: TrainHistory
    metric_name: str
    validation_metric: float
    validation_loss: float
    world_size: int
    rank: int  # the rank that returned this (under torchrun every rank returns one)
    train_rows: int
    validation_rows: int
    dropped_rows: int
    resumed_from_epoch: int
    checkpoint_path: str

    @property
    def output_width(self) -> int:
        return len(self.class_labels) if self.task == "classification" else 1

    def build_module(self) -> nn.Module:
        """The inference module: raw features in, probabilities (or target values) out; for export."""
        from sluice.train.model import InferenceModule, build_mlp

        mlp = build_mlp(len(self.feature_names), self.hidden, self.output_width, self.config.seed)
        mlp.load_state_dict(self.state_dict)
        module = InferenceModule(mlp, self.task, self.feature_mean, self.feature_std, self.target_mean, self.target_std)
        return module.eval()


@dataclass(frozen=True)
class RunOptions:
    """Test and diagnostic switches that are not part of a user's configuration."""

    check_replicas: bool = False  # measure parameter divergence across ranks after every step and epoch
    exit_at_step: tuple[int, int] | None = None  # (rank, step): that rank dies abruptly there


Progress = Callable[[TrainStart | StepMetrics | EpochMetrics], None]
