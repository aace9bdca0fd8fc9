"""The tabular MLP, its loss and validation metric per task, and the module that export traces."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from sluice.train.data import Task

__all__ = ["InferenceModule", "build_mlp", "metric_name", "step_loss", "validation_sums"]


def build_mlp(in_features: int, hidden: Sequence[int], out_features: int, seed: int) -> nn.Sequential:
    """Linear + ReLU layers; the initial weights depend only on ``seed`` (not on the rank or world size)."""
    layers: list[nn.Module] = []
    width = in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_features))
        return nn.Sequential(*layers)


def output_width(task: Task, num_classes: int) -> int:
    """Logits per class for classification, one value for regression."""
    return num_classes if task == "classification" else 1


def metric_name(task: Task) -> str:
    """The validation metric: accuracy (higher is better) or RMSE in target units (lower is better)."""
    return "accuracy" if task == "classification" else "rmse"


def step_loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss over a micro-batch: cross-entropy, or squared error on the standardised target."""
    if task == "classification":
        return functional.cross_entropy(output, target)
    return functional.mse_loss(output.squeeze(1), target)


@torch.no_grad()
def validation_sums(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, target_std: float) -> torch.Tensor:
    """``[loss sum, metric sum, rows]`` over a rank's validation rows, to all-reduce and divide.

    The metric sum is the number of correct predictions, or the squared error in target units.
    """
    if not x.shape[0]:
        return torch.zeros(3, dtype=torch.float64, device=x.device)
    out = model(x)
    if task == "classification":
        loss = functional.cross_entropy(out, y, reduction="sum")
        metric = (out.argmax(dim=1) == y).sum()
    else:
        loss = functional.mse_loss(out.squeeze(1), y, reduction="sum")
        metric = loss * target_std**2
    return torch.stack([loss.double(), metric.double(), torch.tensor(float(x.shape[0]), dtype=torch.float64)])


class InferenceModule(nn.Module):
    """Raw features in, predictions out: standardisation, the MLP, then softmax or un-scaling.

    Classification returns class probabilities ``[N, classes]`` (in the order of the class labels);
    regression returns the prediction in target units ``[N, 1]``.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        mlp: nn.Module,
        task: Task,
        mean: np.ndarray,
        std: np.ndarray,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.mlp = mlp
        self.task = task
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("scale", torch.as_tensor(1.0 / np.asarray(std, dtype=np.float32)))
        self.target_mean = float(target_mean)
        self.target_std = float(target_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp((x - self.mean) * self.scale)
        if self.task == "classification":
            return torch.softmax(out, dim=1)
        return out * self.target_std + self.target_mean
