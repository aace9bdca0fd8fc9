"""The job store interface: everything the service keeps, behind one small protocol.

:class:`~sluice.jobs.sqlite.SqliteJobStore` (SQLite in WAL mode under ``$SLUICE_HOME``) is the
implementation :func:`~sluice.jobs.store.open_store` opens; a server database can take its place
by implementing :class:`JobStore`. Every state change is one transaction, and every write that
finishes work names the claim it finishes: a worker whose lease was taken over can no longer
record anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sluice.jobs.model import Claim, JobEvent, JobState, JobStatus, ShardStatus
from sluice.jobs.records import JobRecord, NewJob, WorkerInfo

__all__ = ["JobStore"]


class JobStore(Protocol):
    """Persisted jobs, shards, attempts and events."""

    def create_job(self, job: NewJob) -> None:
        """Queue ``job`` with its shards pending."""

    def job(self, job_id: str) -> JobRecord:
        """The job's request and run settings; :class:`~sluice.errors.JobNotFound` if unknown."""

    def status(self, job_id: str) -> JobStatus:
        """A snapshot of the job."""

    def list_jobs(self, states: Sequence[JobState] | None = None, limit: int = 100) -> list[JobStatus]:
        """Jobs, newest first, optionally only those in ``states``."""

    def shards(self, job_id: str) -> list[ShardStatus]:
        """Every shard of the job, in order."""

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, JobEvent]]:
        """The job's log after event number ``after``, oldest first."""

    def register_worker(self, worker: WorkerInfo) -> None:
        """A worker starts; local workers that died are recognised by their process."""

    def unregister_worker(self, worker_id: str) -> None:
        """A worker stops cleanly (its leases must already be released)."""

    def claim(self, worker_id: str, lease_s: float, job_id: str | None = None) -> Claim | None:
        """Lease the next piece of work (of ``job_id`` only, if given), or None if there is none now."""

    def heartbeat(self, worker_id: str, lease_s: float, progress: Mapping[int, int]) -> set[int]:
        """Extend this worker's leases; ``progress`` maps attempt id to rows written so far.

        Returns the attempt ids among ``progress`` that must stop: lease lost, or the job is no
        longer running (cancelled, failed).
        """

    def job_started(self, claim: Claim, batch_size: int, note: str) -> bool:
        """A START claim is done: the output is prepared and the batch size fixed."""

    def shard_done(self, claim: Claim, rows: int, rows_failed: int, error_file: str | None) -> bool:
        """The shard's part is durable; False if the claim was no longer this worker's."""

    def attempt_failed(self, claim: Claim, error: str) -> None:
        """The attempt failed: retry after backoff, or fail the shard and the job when out of attempts."""

    def release(self, claim: Claim, reason: str) -> None:
        """Give the claim back unfinished (the job was cancelled, the worker is stopping)."""

    def job_finished(self, claim: Claim, state: JobState, message: str | None) -> bool:
        """A FINISH claim is done: the job ends in ``state``."""

    def fail_job(self, claim: Claim, message: str) -> None:
        """The job cannot run at all (its model or input changed, or will not load).

        A failed START claim counts as an attempt of the job's.
        """

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel: at once when nothing runs, else CANCELLING until the workers let go."""

    def resume(self, job_id: str) -> JobStatus:
        """Queue a FAILED or CANCELLED job again; finished shards are kept."""

    def has_open_jobs(self, job_id: str | None = None) -> bool:
        """Whether any job (or ``job_id``) is QUEUED, RUNNING or CANCELLING."""

    def close(self) -> None:
        """Close the connection."""
