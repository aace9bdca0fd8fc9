"""Leases: handing work to workers and taking it back from dead ones, inside a store transaction.

A lease lasts ``lease_s`` seconds and the worker's heartbeat renews it. A lease that lapses
(its worker hung or died) or whose worker is a local process known to be gone goes back to
the queue; the attempt is recorded as LOST and counts against the shard's attempts, so a
shard that kills every worker that touches it fails the job instead of looping forever.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence, Set

from sluice.jobs.model import Claim, ClaimKind, JobRequest, JobState, ShardState
from sluice.jobs.records import WorkerInfo

__all__ = ["add_event", "dead_local_workers", "reclaim", "take_work"]

_RUNNING = JobState.RUNNING.value


def reclaim(db: sqlite3.Connection, now: float, dead_workers: Set[str]) -> None:
    """Return lapsed and dead workers' leases; finish cancellations nothing holds up any more."""
    dead = sorted(dead_workers)
    marks = ",".join("?" * len(dead)) or "NULL"
    lapsed = db.execute(
        f"SELECT s.job_id, s.idx, s.attempt_id, s.attempts, s.lease_owner, s.source, j.request "  # noqa: S608
        f"FROM shards s JOIN jobs j ON j.id = s.job_id WHERE s.state = ? "
        f"AND (s.lease_expires_at < ? OR s.lease_owner IN ({marks}))",
        (ShardState.RUNNING.value, now, *dead),
    ).fetchall()
    for row in lapsed:
        _take_back(db, now, row, row["lease_owner"] in dead_workers)
    db.execute(
        f"UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL "  # noqa: S608
        f"WHERE lease_owner IS NOT NULL AND (lease_expires_at < ? OR lease_owner IN ({marks}))",
        (now, *dead),
    )
    if dead:
        db.execute(f"DELETE FROM workers WHERE id IN ({marks})", dead)  # noqa: S608
    cancelled = db.execute(
        "SELECT id FROM jobs j WHERE state = ? AND NOT EXISTS "
        "(SELECT 1 FROM shards s WHERE s.job_id = j.id AND s.state = ?)",
        (JobState.CANCELLING.value, ShardState.RUNNING.value),
    ).fetchall()
    for row in cancelled:
        db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, lease_owner = NULL WHERE id = ?",
            (JobState.CANCELLED.value, now, row["id"]),
        )
        add_event(db, row["id"], now, "CANCELLED", None, "INFO")


def _take_back(db: sqlite3.Connection, now: float, row: sqlite3.Row, dead: bool) -> None:
    why = "its worker's process is gone" if dead else "its lease lapsed"
    message = f"worker {row['lease_owner']} lost shard {row['idx']}: {why}"
    db.execute(
        "UPDATE attempts SET ended_at = ?, outcome = 'LOST', error = ? WHERE id = ? AND outcome = 'RUNNING'",
        (now, message, row["attempt_id"]),
    )
    request = JobRequest.model_validate_json(row["request"])
    out_of_attempts = row["attempts"] >= request.max_attempts
    state = ShardState.FAILED if out_of_attempts else ShardState.PENDING
    db.execute(
        "UPDATE shards SET state = ?, lease_owner = NULL, lease_expires_at = NULL, rows = 0, last_error = ? "
        "WHERE job_id = ? AND idx = ?",
        (state.value, message, row["job_id"], row["idx"]),
    )
    add_event(
        db, row["job_id"], now, message + ("" if out_of_attempts else "; it will be redone"), row["idx"], "WARNING"
    )
    if out_of_attempts:
        final = f"shard {row['idx']} ({row['source']}) failed after {row['attempts']} attempts: {message}"
        changed = db.execute(
            "UPDATE jobs SET state = ?, message = ?, finished_at = ? WHERE id = ? AND state = ?",
            (JobState.FAILED.value, final, now, row["job_id"], _RUNNING),
        ).rowcount
        if changed:
            add_event(db, row["job_id"], now, f"FAILED: {final}", None, "ERROR")


def take_work(db: sqlite3.Connection, now: float, worker_id: str, lease_s: float, job_id: str | None) -> Claim | None:
    """Lease the next piece of work: finish a complete job, run a shard, or start a queued job."""
    only = " AND j.id = ?" if job_id else ""
    args: tuple[str, ...] = (job_id,) if job_id else ()
    until = now + lease_s
    finish = db.execute(
        "SELECT j.id FROM jobs j WHERE j.state = ? AND j.lease_owner IS NULL AND NOT EXISTS "  # noqa: S608
        f"(SELECT 1 FROM shards s WHERE s.job_id = j.id AND s.state != ?){only} ORDER BY j.created_at LIMIT 1",
        (_RUNNING, ShardState.DONE.value, *args),
    ).fetchone()
    if finish is not None:
        _lease_job(db, finish["id"], worker_id, until)
        return Claim(ClaimKind.FINISH, finish["id"], worker_id, until)
    shard = db.execute(
        "SELECT s.job_id, s.idx, s.attempts FROM shards s JOIN jobs j ON j.id = s.job_id "  # noqa: S608
        f"WHERE j.state = ? AND s.state = ? AND s.not_before <= ?{only} ORDER BY j.created_at, s.idx LIMIT 1",
        (_RUNNING, ShardState.PENDING.value, now, *args),
    ).fetchone()
    if shard is not None:
        return _lease_shard(db, now, shard, worker_id, until)
    start = db.execute(
        f"SELECT j.id FROM jobs j WHERE j.state = ? AND j.lease_owner IS NULL{only} ORDER BY j.created_at LIMIT 1",  # noqa: S608
        (JobState.QUEUED.value, *args),
    ).fetchone()
    if start is not None:
        _lease_job(db, start["id"], worker_id, until)
        return Claim(ClaimKind.START, start["id"], worker_id, until)
    return None


def _lease_job(db: sqlite3.Connection, job_id: str, worker_id: str, until: float) -> None:
    db.execute("UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE id = ?", (worker_id, until, job_id))


def _lease_shard(db: sqlite3.Connection, now: float, shard: sqlite3.Row, worker_id: str, until: float) -> Claim:
    attempt = shard["attempts"] + 1
    cursor = db.execute(
        "INSERT INTO attempts (job_id, idx, worker, started_at, outcome) VALUES (?, ?, ?, ?, 'RUNNING')",
        (shard["job_id"], shard["idx"], worker_id, now),
    )
    attempt_id = int(cursor.lastrowid or 0)
    db.execute(
        "UPDATE shards SET state = ?, attempts = ?, lease_owner = ?, lease_expires_at = ?, attempt_id = ?, rows = 0, "
        "rows_failed = 0 WHERE job_id = ? AND idx = ?",
        (ShardState.RUNNING.value, attempt, worker_id, until, attempt_id, shard["job_id"], shard["idx"]),
    )
    return Claim(ClaimKind.SHARD, shard["job_id"], worker_id, until, shard["idx"], attempt_id, attempt)


def add_event(db: sqlite3.Connection, job_id: str, at: float, message: str, shard: int | None, level: str) -> None:
    """Append a line to the job's log."""
    db.execute(
        "INSERT INTO events (job_id, at, level, shard, message) VALUES (?, ?, ?, ?, ?)",
        (job_id, at, level, shard, message),
    )


def dead_local_workers(workers: Sequence[WorkerInfo]) -> set[str]:
    """Workers on this machine whose process is gone: their leases need not be waited out."""
    import socket

    import psutil

    host = socket.gethostname()
    dead = set()
    for worker in workers:
        if worker.host != host:
            continue
        try:
            alive = abs(psutil.Process(worker.pid).create_time() - worker.process_started_at) < 1.0
        except psutil.Error:
            alive = False
        if not alive:
            dead.add(worker.id)
    return dead
