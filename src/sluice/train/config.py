"""The training configuration: every option of ``sluice train``, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sluice.configfile import format_validation_error, read_yaml_model
from sluice.errors import ConfigError

__all__ = ["Strategy", "TrainConfig"]

Strategy = Literal["ddp", "fp16", "powersgd", "localsgd"]


class TrainConfig(BaseModel):
    """Data-parallel training of a tabular MLP; load from YAML with :meth:`from_file`."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="Training data: file, directory, glob or URI (Parquet, CSV, JSON Lines).")
    target: str = Field(description="The column to predict; integer/string/bool = classification, float = regression.")
    model_name: str = Field(description="Name of the model in the repository; the result is its next version.")
    repository: str | None = Field(
        default=None, description="Model repository (default $SLUICE_REPOSITORY or ./models)."
    )
    features: list[str] | None = Field(
        default=None, description="Feature columns (default: every numeric column but the target)."
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features (ids, keys).")
    nproc: int = Field(default=2, ge=1, le=256, description="Processes (ranks) on this machine.")
    strategy: Strategy = "ddp"
    epochs: int = Field(default=5, ge=1)
    global_batch_size: int = Field(default=512, ge=1, description="Rows per optimizer step across all ranks.")
    grad_accumulation: int = Field(default=1, ge=1, description="Micro-batches per optimizer step (no_sync between).")
    lr: float = Field(default=1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(default=0.0, ge=0, lt=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64], description="Hidden layer widths of the MLP.")
    seed: int = 0
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    bucket_cap_mb: float = Field(default=25.0, gt=0, description="DDP gradient bucket size.")
    powersgd_rank: int = Field(default=1, ge=1)
    powersgd_start_iter: int = Field(
        default=10, ge=2, description="PowerSGD is exact all-reduce before this step (PyTorch needs ≥ 2)."
    )
    localsgd_period: int = Field(default=4, ge=1, description="Local SGD: average models every H steps.")
    localsgd_start_iter: int = Field(default=10, ge=0, description="Local SGD: plain DDP before this step.")
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    checkpoint_dir: str | None = Field(
        default=None, description="Where epoch checkpoints go (default: under $SLUICE_HOME)."
    )
    resume: bool = Field(default=False, description="Continue from the last checkpoint of the same run.")
    plot: str | None = Field(default=None, description="Write loss/metric curves to this .html or .png file.")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.target in (self.features or []):
            raise ValueError(f"the target '{self.target}' cannot also be a feature")
        per_rank_steps = self.nproc * self.grad_accumulation
        if self.global_batch_size % per_rank_steps:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} must be divisible by nproc × grad_accumulation "
                f"= {per_rank_steps}"
            )
        return self

    @property
    def micro_batch_size(self) -> int:
        """Rows per forward/backward on one rank."""
        return self.global_batch_size // (self.nproc * self.grad_accumulation)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: object) -> TrainConfig:
        base = read_yaml_model(Path(path), _PartialTrainConfig).model_dump(exclude_unset=True)
        return cls.build(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def build(cls, **fields: object) -> TrainConfig:
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(f"invalid training config: {format_validation_error(exc)}") from exc


class _PartialTrainConfig(TrainConfig):
    """A config file may leave out what the command line supplies."""

    data: str = ""
    target: str = ""
    model_name: str = ""
