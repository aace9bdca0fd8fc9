"""What finishing, failing, releasing, cancelling and resuming work does to the store's rows.

Each function runs inside the caller's ``BEGIN IMMEDIATE`` transaction (see
:class:`~sluice.jobs.sqlite.SqliteJobStore`) and changes rows only while the claim it names is
still the current one, so a worker whose lease was taken over records nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sluice.jobs.leases import add_event, reclaim
from sluice.jobs.model import Claim, ClaimKind, JobRequest, JobState, ShardState

__all__ = [
    "end_job",
    "fail_attempt",
    "fail_job",
    "finish_job",
    "finish_shard",
    "release_claim",
    "request_cancel",
    "requeue_job",
    "start_job",
]


def start_job(db: sqlite3.Connection, claim: Claim, now: float, batch_size: int, note: str) -> bool:
    """A START claim is done: the job runs with ``batch_size``; False if the claim was lost."""
    done = db.execute(
        "UPDATE jobs SET state = ?, prepared = 1, batch_size = ?, started_at = COALESCE(started_at, ?), "
        "lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ? AND state = ?",
        (JobState.RUNNING.value, batch_size, now, claim.job_id, claim.worker_id, JobState.QUEUED.value),
    ).rowcount
    if done:
        _event(db, claim.job_id, now, f"started by {claim.worker_id}: {note}")
    return bool(done)


def finish_shard(
    db: sqlite3.Connection, claim: Claim, now: float, rows: int, rows_failed: int, error_file: str | None
) -> bool:
    """The shard's part is durable: the shard is DONE; False (attempt LOST) if the claim was lost."""
    done = db.execute(
        "UPDATE shards SET state = ?, rows = ?, rows_failed = ?, error_file = ?, lease_owner = NULL, "
        "lease_expires_at = NULL, last_error = NULL WHERE job_id = ? AND idx = ? AND attempt_id = ? "
        "AND state = ?",
        (
            ShardState.DONE.value,
            rows,
            rows_failed,
            error_file,
            claim.job_id,
            claim.shard,
            claim.attempt_id,
            ShardState.RUNNING.value,
        ),
    ).rowcount
    _end_attempt(db, claim, now, "DONE" if done else "LOST", None)
    if done:
        failed = f", {rows_failed:,} to the error file" if rows_failed else ""
        message = f"shard {claim.shard} done by {claim.worker_id}: {rows:,} rows{failed}"
        _event(db, claim.job_id, now, message, claim.shard)
    return bool(done)


def fail_attempt(db: sqlite3.Connection, claim: Claim, now: float, error: str) -> None:
    """The attempt failed: the shard waits out its backoff, or fails the job when out of attempts."""
    _end_attempt(db, claim, now, "FAILED", error)
    row = db.execute(
        "SELECT s.attempts, s.source, j.request FROM shards s JOIN jobs j ON j.id = s.job_id "
        "WHERE s.job_id = ? AND s.idx = ? AND s.attempt_id = ? AND s.state = ?",
        (claim.job_id, claim.shard, claim.attempt_id, ShardState.RUNNING.value),
    ).fetchone()
    if row is None:
        return  # the lease was lost meanwhile: whoever holds it now decides
    request = JobRequest.model_validate_json(row["request"])
    if row["attempts"] < request.max_attempts:
        delay = request.retry_delay_s(row["attempts"])
        _set_shard(db, claim, ShardState.PENDING, error, not_before=now + delay)
        message = (
            f"shard {claim.shard} attempt {row['attempts']} of {request.max_attempts} failed, "
            f"retrying in {delay:g} s: {error}"
        )
        _event(db, claim.job_id, now, message, claim.shard, "WARNING")
        return
    _set_shard(db, claim, ShardState.FAILED, error)
    message = f"shard {claim.shard} ({row['source']}) failed after {row['attempts']} attempts: {error}"
    end_job(db, claim.job_id, now, JobState.FAILED, message, only_from=(JobState.RUNNING,))


def release_claim(db: sqlite3.Connection, claim: Claim, now: float, reason: str) -> None:
    """Give the claim back unfinished; a released shard attempt does not count against the shard."""
    if claim.kind is ClaimKind.SHARD:
        _end_attempt(db, claim, now, "CANCELLED", reason)
        db.execute(
            "UPDATE shards SET state = ?, lease_owner = NULL, lease_expires_at = NULL, "
            "attempts = MAX(0, attempts - 1) WHERE job_id = ? AND idx = ? AND attempt_id = ? AND state = ?",
            (ShardState.PENDING.value, claim.job_id, claim.shard, claim.attempt_id, ShardState.RUNNING.value),
        )
    else:
        db.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
            (claim.job_id, claim.worker_id),
        )
    reclaim(db, now, set())


def finish_job(db: sqlite3.Connection, claim: Claim, now: float, state: JobState, message: str | None) -> bool:
    """A FINISH claim is done: the job ends in ``state``; False if the claim was lost."""
    owner = db.execute("SELECT lease_owner FROM jobs WHERE id = ?", (claim.job_id,)).fetchone()
    if owner is None or owner["lease_owner"] != claim.worker_id:
        return False
    return end_job(db, claim.job_id, now, state, message, only_from=(JobState.RUNNING,))


def fail_job(db: sqlite3.Connection, claim: Claim, now: float, message: str) -> None:
    """The job cannot run at all; a shard claim's shard goes back to PENDING for a later resume.

    A START claim that fails counts as an attempt of the job's (its model would not load here).
    """
    if claim.kind is ClaimKind.SHARD:
        _end_attempt(db, claim, now, "FAILED", message)
        _set_shard(db, claim, ShardState.PENDING, message)
    elif claim.kind is ClaimKind.START:
        db.execute(
            "UPDATE jobs SET start_attempts = start_attempts + 1 WHERE id = ? AND lease_owner = ?",
            (claim.job_id, claim.worker_id),
        )
    end_job(db, claim.job_id, now, JobState.FAILED, message, only_from=(JobState.QUEUED, JobState.RUNNING))


def request_cancel(db: sqlite3.Connection, job_id: str, now: float) -> None:
    """The job is CANCELLING; its leases go back, and it is CANCELLED once nothing runs."""
    db.execute(
        "UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND state IN (?, ?)",
        (JobState.CANCELLING.value, job_id, JobState.QUEUED.value, JobState.RUNNING.value),
    )
    _event(db, job_id, now, "cancel requested")
    reclaim(db, now, set())


def requeue_job(db: sqlite3.Connection, job_id: str, now: float) -> None:
    """Every unfinished shard is PENDING with fresh attempts; the job runs again (or starts, if
    it never got past preparing its output)."""
    db.execute(
        "UPDATE shards SET state = ?, attempts = 0, not_before = 0 WHERE job_id = ? AND state != ?",
        (ShardState.PENDING.value, job_id, ShardState.DONE.value),
    )
    prepared = db.execute("SELECT prepared FROM jobs WHERE id = ?", (job_id,)).fetchone()["prepared"]
    db.execute(
        "UPDATE jobs SET state = ?, message = NULL, finished_at = NULL, start_attempts = 0 WHERE id = ?",
        ((JobState.RUNNING if prepared else JobState.QUEUED).value, job_id),
    )
    done = db.execute(
        "SELECT COUNT(*) FROM shards WHERE job_id = ? AND state = ?", (job_id, ShardState.DONE.value)
    ).fetchone()[0]
    _event(db, job_id, now, f"resumed: {done} finished shards kept")


def end_job(
    db: sqlite3.Connection,
    job_id: str,
    now: float,
    state: JobState,
    message: str | None,
    *,
    only_from: Sequence[JobState],
) -> bool:
    """The job ends in ``state`` if it is in one of ``only_from``; whether it changed."""
    marks = ",".join("?" * len(only_from))
    changed = db.execute(
        f"UPDATE jobs SET state = ?, message = ?, finished_at = ?, lease_owner = NULL, lease_expires_at = NULL "  # noqa: S608
        f"WHERE id = ? AND state IN ({marks})",
        (state.value, message, now, job_id, *(s.value for s in only_from)),
    ).rowcount
    if changed:
        level = "ERROR" if state is JobState.FAILED else "INFO"
        _event(db, job_id, now, state.value + (f": {message}" if message else ""), level=level)
    return bool(changed)


def _event(
    db: sqlite3.Connection, job_id: str, at: float, message: str, shard: int | None = None, level: str = "INFO"
) -> None:
    add_event(db, job_id, at, message, shard, level)


def _end_attempt(db: sqlite3.Connection, claim: Claim, now: float, outcome: str, error: str | None) -> None:
    db.execute(
        "UPDATE attempts SET ended_at = ?, outcome = ?, error = ? WHERE id = ? AND outcome = 'RUNNING'",
        (now, outcome, error, claim.attempt_id),
    )


def _set_shard(
    db: sqlite3.Connection, claim: Claim, state: ShardState, error: str | None, not_before: float = 0.0
) -> None:
    db.execute(
        "UPDATE shards SET state = ?, last_error = ?, not_before = ?, lease_owner = NULL, lease_expires_at = NULL, "
        "rows = 0 WHERE job_id = ? AND idx = ? AND attempt_id = ?",
        (state.value, error, not_before, claim.job_id, claim.shard, claim.attempt_id),
    )
