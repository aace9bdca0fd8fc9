"""``sluice train --mlflow``: the version a run publishes, registered in the MLflow model registry too.

One MLflow run per published version holds the training parameters (the config, flattened),
the final metrics and each epoch's losses; its ONNX model is logged in MLflow's ``onnx`` flavor
with a column signature of the feature names (so Sluice binds ``models:/NAME/N`` by name) and
registered as the next version of the model's name. The tracking server is MLflow's own
setting (``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice.errors import RemoteError
from sluice.models.loader import default_repository
from sluice.models.mlflow_pyfunc import mlflow_module
from sluice.models.repository import ModelRepository
from sluice.train.export import ARTIFACT_NAME

if TYPE_CHECKING:
    from sluice.train.values import TrainResult

__all__ = ["MlflowVersion", "register_in_mlflow", "training_metrics", "training_params"]

_PARAM_CHARS = 6000  # MLflow's limit on one parameter value


@dataclass(frozen=True)
class MlflowVersion:
    """Where ``register_in_mlflow`` put a version: the registered model, its version, the run."""

    name: str
    version: int
    run_id: str
    tracking_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def training_params(result: TrainResult) -> dict[str, str]:
    """The training config as MLflow parameters: one per field (nested ones dotted), unset ones left out."""
    params: dict[str, str] = {}
    _flatten(result.config.model_dump(mode="json"), "", params)
    params["world_size"] = str(result.world_size)
    return params


def training_metrics(result: TrainResult) -> dict[str, float]:
    """The final metrics of ``result``, as MLflow metrics."""
    last = result.history.epochs[-1] if result.history.epochs else None
    metrics = {
        result.metric_name: result.validation_metric,
        "validation_loss": result.validation_loss,
        "epochs": float(len(result.history.epochs)),
        "train_rows": float(result.train_rows),
        "validation_rows": float(result.validation_rows),
        "dropped_rows": float(result.dropped_rows),
    }
    if last is not None:
        metrics.update(samples_per_s=last.samples_per_s, grad_bytes_per_step=last.grad_bytes_per_step)
    return metrics


def register_in_mlflow(result: TrainResult, version: int, repository: str | None = None) -> MlflowVersion:
    """Log ``result``'s published ``version`` to MLflow and register it; returns where it went."""
    config = result.config
    repo = ModelRepository(repository or config.repository or default_repository())
    artifact = repo.model_dir(config.model_name) / str(version) / ARTIFACT_NAME
    mlflow = mlflow_module("mlflow", "sluice train --mlflow")
    onnx = mlflow_module("onnx", "sluice train --mlflow")
    try:
        return _log_and_register(mlflow, onnx.load(str(artifact)), result, version, repo.root)
    except Exception as exc:  # MLflow raises its own types (and requests' for a server that is down)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RemoteError(
            f"published {config.model_name}@{version}, but registering it in MLflow at {mlflow.get_tracking_uri()} "
            f"failed: {first}"
        ) from exc


def _log_and_register(mlflow: Any, onnx_model: Any, result: TrainResult, version: int, root: Path) -> MlflowVersion:
    types = mlflow_module("mlflow.types", "sluice train --mlflow")
    columns = types.Schema([types.ColSpec("float", feature) for feature in result.feature_names])
    signature = mlflow_module("mlflow.models", "sluice train --mlflow").ModelSignature(inputs=columns)
    name = result.config.model_name
    with mlflow.start_run(run_name=f"{name}@{version}") as run:
        mlflow.log_params(training_params(result))
        mlflow.log_metrics(training_metrics(result))
        for epoch in result.history.epochs:
            mlflow.log_metrics({"train_loss": epoch.train_loss, "val_loss": epoch.val_loss}, step=epoch.epoch)
        mlflow.set_tags({"sluice.repository": str(root.resolve()), "sluice.version": str(version)})
        with warnings.catch_warnings():
            # MLflow asks for an input example; the signature already says what the model takes
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            info = mlflow.onnx.log_model(
                onnx_model,
                name="model",
                signature=signature,
                registered_model_name=name,
                pip_requirements=[],
                await_registration_for=0,
            )
    registered = int(info.registered_model_version)
    mlflow.MlflowClient().update_model_version(
        name, str(registered), description=f"sluice train: {name}@{version} in {root.resolve()}"
    )
    return MlflowVersion(name, registered, str(run.info.run_id), str(mlflow.get_tracking_uri()))


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
        return
    if value is None:
        return
    out[prefix.rstrip(".")] = str(value)[:_PARAM_CHARS]
