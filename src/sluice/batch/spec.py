"""The job spec: everything one batch prediction run needs, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sluice.configfile import format_validation_error, read_yaml_model
from sluice.data.location import InputFormat
from sluice.data.shards import DEFAULT_SHARD_ROWS
from sluice.data.writers import OutputFormat
from sluice.errors import ConfigError
from sluice.models.config import DeviceName, LoadOptions, ModelConfig, Precision

__all__ = ["DEFAULT_BATCH_SIZE", "JobSpec"]

# Measured with bench/batch_throughput.py: ONNX Runtime's per-call overhead is ~5 µs, so
# 4,096 rows keeps it far below 1% while a batch of 32 float features stays ~0.5 MB.
DEFAULT_BATCH_SIZE = 4096


class JobSpec(BaseModel):
    """A batch prediction job. Load it from YAML/JSON with :meth:`from_file`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model file, 'module:function', or NAME[@VERSION|@LABEL].")
    input: str = Field(description="File, directory, glob or URI of the input data.")
    output: str = Field(description="Directory or URI prefix for the output parts.")
    repository: str | None = Field(default=None, description="Model repository (default ./models).")
    model_search_path: str | None = Field(
        default=None,
        description="Directory a 'module:function' model is imported from (default: the working directory).",
    )
    input_format: InputFormat | None = Field(
        default=None,
        description="parquet, csv, jsonl, or image (one record per image file: key, image); "
        "detected from the file extensions when omitted.",
    )
    output_format: OutputFormat = "parquet"
    features: list[str] | None = None
    key_column: str | None = None
    image_column: str | None = Field(
        default=None,
        description="Column that feeds an image model: binary (encoded images) or string (paths or URIs "
        "of image files; a relative path is read from the directory of the input file that holds it).",
    )
    key_type: Literal["string", "int64"] | None = Field(
        default=None,
        description="Read the key column as text or as int64 (default: int64 while every key is a plain "
        "integer that fits, else text; never a float).",
    )
    include: list[str] | None = None
    exclude: list[str] | None = None
    text_column: str | None = Field(
        default=None,
        description="The string column a text model reads (default: the only string column not passed through).",
    )
    task: str | None = Field(
        default=None,
        description="Hugging Face task: feature-extraction, text-classification or image-classification "
        "(default: model.yaml's task, else from config.json).",
    )
    pooling: Literal["mean", "cls"] | None = Field(
        default=None, description="feature-extraction pooling (default: model.yaml's, else mean)."
    )
    normalize: bool | None = Field(default=None, description="feature-extraction: unit-length embeddings.")
    max_length: int | None = Field(
        default=None, ge=2, description="Tokens per record; longer records are truncated and counted."
    )
    bucketing: bool | None = Field(
        default=None, description="Order each batch's records by length for the forward passes (default: on)."
    )
    forward_batch_size: int | None = Field(
        default=None, ge=1, le=1 << 16, description="Records per forward pass of a text model (default 64)."
    )
    batch_size: int | Literal["auto"] = Field(
        default="auto", description="Rows per model call, or 'auto' to tune it on the first rows."
    )
    memory_limit: int | None = Field(
        default=None,
        description="Peak memory one batch may take (bytes, or e.g. 2GiB, 512MiB): the batch size is cut to the "
        "largest batch whose memory, measured per record on the first rows (on the GPU when the model runs "
        "there), fits with a margin.",
    )
    tune_min_rows: int = Field(default=1 << 18, ge=0, description="Smaller inputs skip auto-tuning.")
    workers: int | None = Field(default=None, ge=1, le=256, description="Predict workers (default: measured).")
    readers: int | None = Field(default=None, ge=1, le=64, description="Shards read at once.")
    intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    device: DeviceName = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")
    precision: Precision = Field(default="fp32", description="fp32 (as saved), fp16 or bf16, for PyTorch models.")
    shard_rows: int = Field(default=DEFAULT_SHARD_ROWS, ge=1)
    max_error_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    price_per_hour: float | None = Field(default=None, ge=0.0)
    overwrite: bool = False
    trust_pickle: bool = False
    trusted_types: list[str] = Field(default_factory=list)
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for s3:// and other URIs (endpoint_url, key, secret, anon, client_kwargs, …).",
    )
    backend: Literal["local", "spark", "ray"] = Field(
        default="local", description="Engine that runs the job: local threads, Apache Spark or Ray Data."
    )
    spark_master: str | None = Field(
        default=None,
        description="Spark master URL when backend is 'spark' (default: an active session, else local[*]).",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster address when backend is 'ray' (default: a local instance Sluice starts)."
    )

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1 << 24:
            raise ValueError(f"must be between 1 and {1 << 24}, or 'auto'; found {value}")
        return value

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_limit(cls, value: object) -> object:
        if isinstance(value, str):
            from sluice.tune.api import parse_bytes

            try:
                value = parse_bytes(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError(f"must be more than 0 bytes, e.g. 2GiB or 512MiB; found {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.include is not None and self.exclude is not None:
            raise ValueError("include and exclude are mutually exclusive: pass one or the other")
        return self

    @classmethod
    def from_file(cls, path: str | Path, **overrides: object) -> JobSpec:
        """A spec from a YAML or JSON file, with ``overrides`` (e.g. CLI flags) on top."""
        base = read_yaml_model(Path(path), _PartialSpec).model_dump(exclude_unset=True)
        return cls.build(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def build(cls, **fields: object) -> JobSpec:
        """Validate ``fields`` into a spec, raising :class:`ConfigError` with every problem named."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(f"invalid job: {format_validation_error(exc)}") from exc

    def model_settings(self, config: ModelConfig) -> ModelConfig:
        """``config`` with the model settings this job gives (task, text options) over it."""
        text = {name: getattr(self, name) for name in _TEXT_SETTINGS if getattr(self, name) is not None}
        update: dict[str, Any] = {"task": self.task} if self.task is not None else {}
        if text:
            update["text"] = config.text.model_copy(update=text)
        return config.model_copy(update=update) if update else config

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            intra_op_threads=self.intra_op_threads,
            device=self.device,
            precision=self.precision,
            trust_pickle=self.trust_pickle,
            trusted_types=tuple(self.trusted_types),
        )


_TEXT_SETTINGS = ("pooling", "normalize", "max_length", "bucketing", "forward_batch_size")


class _PartialSpec(JobSpec):
    """A spec file may leave out fields that the command line supplies."""

    model: str = ""
    input: str = ""
    output: str = ""
