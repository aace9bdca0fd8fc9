"""Small seeded PyTorch programs, saved as TorchScript, torch.export programs and torch.save pickles."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """4 features → 8 hidden (tanh) → 3 classes: returns (logits, probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(torch.tanh(self.hidden(x)))
        return logits, torch.softmax(logits, dim=-1)


def tiny_net(seed: int = 0) -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet().eval()


def save_torchscript(net: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still written by many
        torch.jit.save(torch.jit.script(net), str(path))
    return path


def save_export(net: nn.Module, path: Path) -> Path:
    example = (torch.zeros(2, 4),)
    program = torch.export.export(net, example, dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(path))
    return path


def direct(net: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The net's outputs computed by torch directly, in float32."""
    with torch.inference_mode():
        logits, probabilities = net(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    return logits.numpy(), probabilities.numpy()


class OomAbove(nn.Module):
    """Returns its input, but raises torch's out-of-memory error for batches above ``limit`` rows."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"a batch of {x.shape[0]} rows does not fit")
        return x


class SequenceNet(nn.Module):
    """Sequences of 4-feature steps ``[rows, steps, 4]`` → their mean ``[rows, 4]`` and a score per step."""

    def forward(self, steps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": steps.mean(dim=1), "scores": steps.sum(dim=-1)}
