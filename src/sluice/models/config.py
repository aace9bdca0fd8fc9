"""Model configuration: what ``<repository>/<name>/model.yaml`` and load options hold.

``read_yaml_model`` and ``format_validation_error`` live in :mod:`sluice.configfile`; they are
re-exported here for existing imports.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.configfile import format_validation_error, read_yaml_model
from sluice.models.policy_config import LatestVersions, RoutingConfig, VersionPolicy

__all__ = [
    "BatchingConfig",
    "Concurrency",
    "LoadOptions",
    "ModelConfig",
    "ModelFormat",
    "TensorConfig",
    "format_validation_error",
    "read_yaml_model",
]

ModelFormat = Literal["onnx", "sklearn", "pickle", "python", "xgboost", "lightgbm", "mlflow", "hf"]
"""``mlflow``: an MLflow model run through its ``python_function`` flavor; ``hf``: a Hugging Face
model directory (``config.json`` beside its weights)."""
Concurrency = Literal["threads", "processes", "serial"]


class TensorConfig(BaseModel):
    """A declared tensor of a python model's signature."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str = "float64"
    shape: list[int] = Field(default_factory=lambda: [-1])


class BatchingConfig(BaseModel):
    """How the server batches requests for a model (``batching:`` in model.yaml)."""

    model_config = ConfigDict(extra="forbid")

    target_p99_ms: float | None = Field(
        default=None, gt=0, description="Latency target the adaptive batcher keeps (default: the server's)."
    )
    max_batch_size: int = Field(default=64, ge=1, description="Most rows one batch (and one request) may hold.")
    max_queue_rows: int | None = Field(
        default=None, ge=1, description="Rows queued before requests are shed with 503 (default: 16 batches)."
    )
    policy: Literal["adaptive", "fixed"] | None = Field(
        default=None,
        description="'adaptive' (the default) sizes batches and sheds load to hold target_p99_ms; 'fixed' "
        "closes a batch when it holds max_batch_size rows or its oldest request has waited "
        "max_queue_delay_us (the default when max_queue_delay_us is set), and sheds only when the queue is full.",
    )
    max_queue_delay_us: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="For policy 'fixed': longest wait of a batch's first request (default 1000).",
    )

    @model_validator(mode="after")
    def _policy(self) -> BatchingConfig:
        if self.policy == "adaptive" and self.max_queue_delay_us is not None:
            raise ValueError("max_queue_delay_us applies to policy 'fixed'; remove it or set policy: fixed")
        if self.policy == "fixed" and self.target_p99_ms is not None:
            raise ValueError("target_p99_ms applies to policy 'adaptive'; a fixed policy takes max_queue_delay_us")
        return self

    @property
    def fixed(self) -> bool:
        """Whether this is the fixed-window policy."""
        return self.policy == "fixed" or (self.policy is None and self.max_queue_delay_us is not None)

    @property
    def queue_delay_us(self) -> int:
        """The fixed policy's window."""
        return 1000 if self.max_queue_delay_us is None else self.max_queue_delay_us


class ModelConfig(BaseModel):
    """The per-model settings kept in ``model.yaml``, shared by every version."""

    model_config = ConfigDict(extra="forbid")

    format: ModelFormat | None = Field(
        default=None, description="Artifact format; detected from the file extension when omitted."
    )
    artifact: str | None = Field(
        default=None, description="File name inside each version directory (detected when omitted)."
    )
    callable: str | None = Field(default=None, description="For format 'python': 'module:function' or 'module:Class'.")
    source: str | None = Field(
        default=None,
        description="An MLflow registry model served as this model, e.g. models:/NAME@champion or models:/NAME/3 "
        "(its version directories are then the registry's; `sluice serve --watch` follows a moving alias).",
    )
    features: list[str] | dict[str, list[str]] | None = Field(
        default=None, description="Feature columns: a list for a one-input model, or per input."
    )
    inputs: list[TensorConfig] | None = Field(
        default=None, description="For format 'python': the inputs (default: one 2-D float64 'input')."
    )
    outputs: list[TensorConfig] | None = Field(
        default=None, description="For format 'python': the outputs (default: one float64 'prediction')."
    )
    allow_nan: bool = Field(default=False, description="Whether NaN feature values are valid input.")
    concurrency: Concurrency | None = Field(
        default=None, description="Override how predict may run in parallel (threads/processes/serial)."
    )
    labels: dict[str, int] = Field(default_factory=dict, description="Named versions, e.g. {stable: 1, canary: 2}.")
    trusted_types: list[str] = Field(
        default_factory=list,
        description="Types the skops artifacts may contain that you reviewed and trust.",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="How `sluice serve` batches requests for this model."
    )
    versions: VersionPolicy = Field(
        default_factory=lambda: LatestVersions(latest=1),
        description="Versions `sluice serve` loads: {latest: N}, all, or {specific: [..]} (labelled ones too).",
    )
    routing: RoutingConfig | None = Field(
        default=None, description="How requests that name no version are split between variants."
    )
    description: str | None = None
    training: dict[str, Any] | None = Field(
        default=None, description="How a trained version was made: config, metrics, data fingerprint, strategy."
    )

    @field_validator("source")
    @classmethod
    def _source_is_registry_uri(cls, source: str | None) -> str | None:
        if source is not None and not source.startswith("models:/"):
            raise ValueError(
                f"source {source!r} must be an MLflow registry URI: models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return source

    @field_validator("labels")
    @classmethod
    def _labels_are_names(cls, labels: dict[str, int]) -> dict[str, int]:
        for label in labels:
            if not label or label.isdigit():
                raise ValueError(f"label {label!r} must be a name, not a number")
        return labels


class LoadOptions(BaseModel):
    """How to load a model on this machine (not stored with the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    intra_op_threads: int | None = Field(default=None, ge=1, description="Threads inside one predict call.")
    inter_op_threads: int | None = Field(default=None, ge=1, description="Threads across graph branches.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_pickle: bool = Field(
        default=False, description="Allow pickle/joblib artifacts, which can run arbitrary code."
    )
    trusted_types: tuple[str, ...] = Field(
        default=(), description="Types a skops file may contain beyond skops' default trusted set."
    )
