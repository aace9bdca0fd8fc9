"""The stream spec: everything one streaming run needs, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sluice.batch.spec import JobSpec
from sluice.configfile import format_validation_error, read_yaml_model
from sluice.data.location import DataFormat
from sluice.errors import ConfigError
from sluice.models.config import DeviceName

__all__ = ["StreamSpec"]


class StreamSpec(BaseModel):
    """A streaming prediction run: a model, a live source, a sink, and how groups are scheduled."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model file, 'module:function', or NAME[@VERSION|@LABEL].")
    source: str = Field(description="Directory new files land in, or redis://HOST:PORT/STREAM.")
    sink: str = Field(description="Output directory (one part per committed group), or redis://HOST:PORT/STREAM.")
    repository: str | None = None
    source_format: DataFormat | None = Field(default=None, description="Format of a directory's files.")
    sink_format: Literal["parquet", "jsonl"] = "parquet"
    features: list[str] | None = None
    key_column: str | None = None
    include: list[str] | None = None
    batch_size: int = Field(default=1024, ge=1, le=1 << 20, description="Most records in one micro-batch.")
    batch_delay_ms: float = Field(
        default=5.0, ge=0.0, description="Longest wait for a micro-batch to fill once its first record is there."
    )
    target_latency_ms: float = Field(
        default=100.0, gt=0.0, description="End-to-end latency (arrival to commit) the group size is chosen for."
    )
    min_group: int = Field(default=1, ge=1, description="Fewest micro-batches in a group under backlog.")
    max_group: int = Field(default=256, ge=1, description="Most micro-batches committed together.")
    poll_interval_ms: float = Field(default=50.0, gt=0.0, description="How often an idle directory is listed.")
    once: bool = Field(default=False, description="Process what the source holds now, then stop.")
    group: str = Field(default="sluice", description="Redis consumer group.")
    consumer: str = Field(default="sluice-1", description="Redis consumer name within the group.")
    claim_idle_ms: float | None = Field(
        default=None,
        ge=0.0,
        description="Claim other consumers' entries pending this long (they died); default 30000 where the "
        "sink allows claims (a Redis sink on the source's server), off otherwise.",
    )
    value_field: str | None = Field(default=None, description="Redis entry field holding a JSON record.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus text at /metrics on this port (0: any free one)."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics port listens on.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for an s3:// (or other) source or sink, as for batch jobs.",
    )
    intra_op_threads: int | None = Field(default=None, ge=1, le=256)
    device: DeviceName = Field(default="auto", description="auto (a GPU when there is one), cpu, cuda or cuda:N.")
    trust_pickle: bool = False
    overwrite: bool = False

    @model_validator(mode="after")
    def _check(self) -> StreamSpec:
        if self.min_group > self.max_group:
            raise ValueError(f"min_group {self.min_group} is more than max_group {self.max_group}")
        return self

    @classmethod
    def build(cls, **fields: object) -> StreamSpec:
        """Validate ``fields`` into a spec, raising :class:`ConfigError` with every problem named."""
        try:
            return cls.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(f"invalid stream: {format_validation_error(exc)}") from exc

    @classmethod
    def from_file(cls, path: str | Path, **overrides: object) -> StreamSpec:
        """A stream from a YAML or JSON file of these fields, with ``overrides`` (e.g. CLI flags) on top."""
        base = read_yaml_model(Path(path), _PartialStreamSpec).model_dump(exclude_unset=True)
        return cls.build(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def job_spec(self) -> JobSpec:
        """The batch job spec with this stream's model and columns, for the batch run's planning steps.

        One predict worker: micro-batches run back to back, each with every core the model may use.
        """
        return JobSpec.build(
            model=self.model,
            input=self.source,
            output=self.sink,
            repository=self.repository,
            features=self.features,
            key_column=self.key_column,
            include=self.include,
            workers=1,
            intra_op_threads=self.intra_op_threads,
            device=self.device,
            trust_pickle=self.trust_pickle,
            batch_size=self.batch_size,
        )


class _PartialStreamSpec(StreamSpec):
    """A stream file may leave out fields that the command line supplies."""

    model: str = ""
    source: str = ""
    sink: str = ""
