"""Model configuration: what ``<repository>/<name>/model.yaml`` and load options hold.

``read_yaml_model`` and ``format_validation_error`` live in :mod:`sluice.configfile`; they are
re-exported here for existing imports.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.configfile import format_validation_error, read_yaml_model
from sluice.models.policy_config import LatestVersions, RoutingConfig, VersionPolicy

__all__ = [
    "BatchingConfig",
    "Concurrency",
    "DeviceName",
    "LoadOptions",
    "ModelConfig",
    "ModelFormat",
    "Precision",
    "TensorConfig",
    "TextConfig",
    "check_device_name",
    "format_validation_error",
    "read_yaml_model",
]

ModelFormat = Literal["onnx", "sklearn", "pickle", "python", "xgboost", "lightgbm", "mlflow", "hf", "torch"]
"""``mlflow``: an MLflow model run through its ``python_function`` flavor; ``hf``: a Hugging Face
model directory (config.json beside safetensors weights and tokenizer or image-processor files);
``torch``: a TorchScript (``.pt``) or ``torch.export`` (``.pt2``) program."""
Concurrency = Literal["threads", "processes", "serial"]
Precision = Literal["fp32", "fp16", "bf16"]
"""Floating-point precision a PyTorch model computes in (``fp32``: as saved)."""

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(value: str) -> str:
    """``value`` when it names a device (see :data:`DeviceName`), else :class:`ValueError` saying what would."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N (N a GPU index); found {value!r}")
    return value


DeviceName = Annotated[str, AfterValidator(check_device_name)]
"""Where a model runs: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""


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


class TextConfig(BaseModel):
    """How a Hugging Face text model tokenizes, batches and pools (``text:`` in model.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pooling: Literal["mean", "cls"] = Field(
        default="mean",
        description="feature-extraction: the mean of the token embeddings over the attention mask, "
        "or the first (CLS) token's.",
    )
    normalize: bool = Field(default=False, description="feature-extraction: scale each embedding to unit length.")
    max_length: int | None = Field(
        default=None,
        ge=2,
        description="Tokens per record, special tokens included; longer records are truncated and counted "
        "(default: the tokenizer's model_max_length, at most the model's max_position_embeddings).",
    )
    bucketing: bool = Field(
        default=True,
        description="Order each batch's records by length before splitting it into forward passes, so that "
        "little padding is computed; outputs keep the input order.",
    )
    forward_batch_size: int = Field(
        default=64, ge=1, description="Records per forward pass, each pass padded to its longest record."
    )


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
        default=None,
        description="For format 'python': the inputs (default: one 2-D float64 'input'); for format 'torch': "
        "what a TorchScript program takes (an export program records them; a declaration must agree).",
    )
    outputs: list[TensorConfig] | None = Field(
        default=None,
        description="For format 'python': the outputs (default: one float64 'prediction'); for format "
        "'torch': names for a program's outputs by position (default: read from a warm-up call), checked on it.",
    )
    task: str | None = Field(
        default=None,
        description="For format 'hf': feature-extraction, text-classification or image-classification "
        "(default: from config.json's architectures).",
    )
    text: TextConfig = Field(default_factory=TextConfig, description="For Hugging Face text models.")
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
    device: DeviceName = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")
    precision: Precision = Field(
        default="fp32", description="fp32 (as saved), fp16 or bf16: what PyTorch and Hugging Face models compute in."
    )
    trust_pickle: bool = Field(
        default=False, description="Allow pickle/joblib artifacts, which can run arbitrary code."
    )
    trusted_types: tuple[str, ...] = Field(
        default=(), description="Types a skops file may contain beyond skops' default trusted set."
    )
