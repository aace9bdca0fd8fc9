"""The job model: states, the submitted request, and the records the store hands out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from sluice.batch.spec import JobSpec
from sluice.configfile import format_validation_error, read_yaml_model
from sluice.errors import ConfigError

__all__ = [
    "TERMINAL_STATES",
    "Claim",
    "ClaimKind",
    "JobEvent",
    "JobRequest",
    "JobState",
    "JobStatus",
    "ShardState",
    "ShardStatus",
]


class JobState(StrEnum):
    """Where a job is in its life. Terminal: SUCCEEDED, PARTIALLY_SUCCEEDED, FAILED, CANCELLED."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_SUCCEEDED = "PARTIALLY_SUCCEEDED"  # some records went to error files, within the allowed fraction
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class ShardState(StrEnum):
    PENDING = "PENDING"  # waiting for a worker (possibly until a retry's backoff has passed)
    RUNNING = "RUNNING"  # leased by a worker
    DONE = "DONE"  # its part is durable and recorded
    FAILED = "FAILED"  # out of attempts


class JobRequest(JobSpec):
    """A job spec for the job service: every option of ``sluice predict``, plus retry settings.

    Unknown keys are errors. Load one from YAML or JSON with :meth:`from_file`.
    """

    name: str | None = Field(default=None, max_length=200, description="A label shown by `sluice jobs list`.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts per shard before the job fails.")
    retry_backoff_s: float = Field(
        default=2.0, ge=0.0, le=3600.0, description="Wait before the first retry; doubles with each attempt."
    )
    max_retry_backoff_s: float = Field(default=300.0, ge=0.0, description="The longest wait between attempts.")

    @field_validator("backend")
    @classmethod
    def _local_only(cls, backend: str) -> str:
        if backend != "local":
            raise ValueError(
                f"'{backend}' is for `sluice predict`: the job service runs shards on its own workers "
                "(`sluice jobs worker`); submit with backend: local, or run the spec with sluice predict"
            )
        return backend

    @classmethod
    def from_file(cls, path: str | Path, **overrides: object) -> JobRequest:
        """A request from a YAML or JSON file (JSON is YAML), with ``overrides`` on top."""
        base = read_yaml_model(Path(path), _PartialRequest).model_dump(exclude_unset=True)
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls.model_validate({**base, **given})
        except ValidationError as exc:
            raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc

    @classmethod
    def parse(cls, document: object, where: str = "job spec") -> JobRequest:
        """Validate a decoded JSON document (the REST API's request body)."""
        if not isinstance(document, dict):
            raise ConfigError(f"{where} must be a JSON object of job fields, found {type(document).__name__}")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {format_validation_error(exc)}") from exc

    def job_spec(self) -> JobSpec:
        """The batch part of the request, as ``sluice predict`` would run it."""
        service = set(JobRequest.model_fields) - set(JobSpec.model_fields)
        return JobSpec.model_validate(self.model_dump(exclude=service))

    def retry_delay_s(self, attempts: int) -> float:
        """The wait before attempt ``attempts + 1``: exponential, capped."""
        return float(min(self.max_retry_backoff_s, self.retry_backoff_s * 2 ** max(0, attempts - 1)))


class _PartialRequest(JobRequest):
    """A file may leave out model, input or output when the command line gives them."""

    model: str = ""
    input: str = ""
    output: str = ""


class ClaimKind(StrEnum):
    START = "START"  # prepare the output and fix the batch size, once per job
    SHARD = "SHARD"  # run one shard
    FINISH = "FINISH"  # write _summary.json and _SUCCESS, set the final state


@dataclass(frozen=True)
class Claim:
    """A piece of work leased to one worker until ``lease_expires_at`` (renewed by heartbeats)."""

    kind: ClaimKind
    job_id: str
    worker_id: str
    lease_expires_at: float
    shard: int | None = None  # for SHARD claims
    attempt_id: int | None = None  # fencing token: only this attempt may complete the shard
    attempt: int = 0  # 1 for the first attempt at the shard


@dataclass(frozen=True)
class ShardStatus:
    index: int
    source: str
    state: ShardState
    attempts: int
    rows: int
    rows_failed: int
    worker: str | None
    error: str | None


@dataclass(frozen=True)
class JobEvent:
    """One line of a job's log."""

    at: float
    level: str
    message: str
    shard: int | None = None


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job: state, progress in rows and shards, throughput, errors, output."""

    id: str
    name: str | None
    state: JobState
    model: str
    input: str
    output: str
    shards_total: int
    shards_done: int
    shards_running: int
    shards_failed: int
    rows: int  # rows written, including those of shards still running
    rows_failed: int
    rows_estimate: int | None
    rows_per_second: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    message: str | None  # why it failed, or what it is waiting for
    errors: list[str] = field(default_factory=list)  # latest attempt errors, newest first
    error_files: list[str] = field(default_factory=list)
    batch_size: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def error_fraction(self) -> float:
        total = self.rows + self.rows_failed
        return self.rows_failed / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with stable keys (the REST API and ``--json`` print this)."""
        data = asdict(self)
        data["state"] = self.state.value
        return data
