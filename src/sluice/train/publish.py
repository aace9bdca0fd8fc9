"""Publishing a training run: its model as the next repository version, with how it was made."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from sluice.data.shards import plan_shards
from sluice.models.loader import default_repository

if TYPE_CHECKING:
    import torch

    from sluice.train.launch import TrainResult

__all__ = ["data_fingerprint", "publish_result"]


def data_fingerprint(uri: str) -> str:
    """A hash of the input's files, slices and sizes: the same data gives the same fingerprint."""
    identities = [s.identity() for s in plan_shards(uri)]
    return hashlib.sha256(json.dumps(identities, sort_keys=True).encode()).hexdigest()[:16]


def _scoring_module(result: TrainResult) -> torch.nn.Module:
    """The trained MLP in target units: logits for classification, un-scaled values for regression."""
    import torch

    from sluice.train.model import build_mlp

    mlp = build_mlp(len(result.feature_names), result.hidden, result.output_width, result.config.seed)
    mlp.load_state_dict(result.state_dict)
    if result.task == "classification":
        return mlp.eval()

    class _Unscale(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * result.target_std + result.target_mean

    return torch.nn.Sequential(mlp, _Unscale()).eval()


def publish_result(result: TrainResult, repository: str | None = None) -> int:
    """Export ``result`` to ONNX and publish it as the next version of its model; returns the version."""
    from sluice.train.export import publish

    config = result.config
    last = result.history.epochs[-1] if result.history.epochs else None
    metadata: dict[str, Any] = {
        "strategy": config.strategy,
        "world_size": result.world_size,
        "config": config,
        "data_fingerprint": data_fingerprint(config.data),
        "train_rows": result.train_rows,
        "validation_rows": result.validation_rows,
        "dropped_rows": result.dropped_rows,
        "metrics": {
            result.metric_name: result.validation_metric,
            "validation_loss": result.validation_loss,
            "epochs": len(result.history.epochs),
            "samples_per_s": None if last is None else last.samples_per_s,
            "grad_bytes_per_step": None if last is None else last.grad_bytes_per_step,
        },
    }
    return publish(
        _scoring_module(result),
        result.feature_names,
        result.feature_mean,
        result.feature_std,
        result.task,
        list(result.class_labels) if result.task == "classification" else None,
        repository or config.repository or default_repository(),
        config.model_name,
        metadata,
        description=(
            f"MLP {list(result.hidden)} trained with sluice train ({config.strategy}, {result.world_size} "
            f"ranks): validation {result.metric_name} {result.validation_metric:.4f}"
        ),
    )
