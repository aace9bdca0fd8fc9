"""Training curves: loss and validation metric against steps and against wall time."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from sluice.train.launch import TrainHistory

__all__ = ["write_curves"]


def write_curves(histories: Mapping[str, TrainHistory], path: Path, metric_name: str = "accuracy") -> None:
    """A PNG with four panels, one line per run (e.g. per strategy): training loss and validation
    ``metric_name`` against optimizer steps and against wall time."""
    if path.suffix.lower() != ".png":
        raise ConfigError(f"cannot write training curves to {path}: the file name must end in .png")
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        raise MissingDependency("matplotlib", "plot", "Writing training curves") from None
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for label, history in histories.items():
        steps = [s.step for s in history.steps]
        wall = list(accumulate(s.step_s for s in history.steps))
        axes[0][0].plot(steps, [s.loss for s in history.steps], label=label, linewidth=1)
        axes[0][1].plot(wall, [s.loss for s in history.steps], label=label, linewidth=1)
        epoch_steps = list(accumulate(e.steps for e in history.epochs))
        epoch_wall = list(accumulate(e.wall_s for e in history.epochs))
        metric = [e.val_metric for e in history.epochs]
        axes[1][0].plot(epoch_steps, metric, marker="o", label=label)
        axes[1][1].plot(epoch_wall, metric, marker="o", label=label)
    titles = (
        ("training loss", "optimizer step"),
        ("training loss", "wall time (s)"),
        (f"validation {metric_name}", "optimizer step"),
        (f"validation {metric_name}", "wall time (s)"),
    )
    for ax, (title, xlabel) in zip([a for row in axes for a in row], titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
