"""The records the job store takes and hands out (beside the states and statuses of
:mod:`sluice.jobs.model`): a job to queue, a job to run, a worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.jobs.model import JobRequest, JobState

__all__ = ["JobRecord", "NewJob", "NewShard", "WorkerInfo"]


@dataclass(frozen=True)
class NewShard:
    index: int
    source: str
    rows_estimate: int | None


@dataclass(frozen=True)
class NewJob:
    """A validated, planned job, ready to be queued."""

    id: str
    request: JobRequest
    fingerprint: Mapping[str, Any]
    model: str
    shards: Sequence[NewShard]


@dataclass(frozen=True)
class JobRecord:
    """What a worker needs to run a job."""

    id: str
    request: JobRequest
    fingerprint: dict[str, Any]
    state: JobState
    batch_size: int | None
    prepared: bool


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    process_started_at: float
