"""A job's status, computed from its rows (the caller holds one read snapshot)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from sluice.batch.layout import current_name
from sluice.jobs.model import JobState, JobStatus, ShardState

__all__ = ["job_snapshot"]


def _rows(db: sqlite3.Connection, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
    return list(db.execute(sql, args))


def job_snapshot(db: sqlite3.Connection, job: sqlite3.Row, now: float) -> JobStatus:
    """State, progress in rows and shards, throughput, latest errors and error files of ``job``."""
    shards = _rows(
        db,
        "SELECT state, COUNT(*) AS n, SUM(rows) AS rows, SUM(rows_failed) AS failed, "
        "SUM(rows_estimate) AS est, COUNT(rows_estimate) AS known, SUM(attempts) AS attempts "
        "FROM shards WHERE job_id = ? GROUP BY state",
        (job["id"],),
    )
    by_state = {r["state"]: r for r in shards}
    total = sum(r["n"] for r in shards)
    rows = sum(r["rows"] or 0 for r in shards)
    failed = sum(r["failed"] or 0 for r in shards)
    known = sum(r["known"] for r in shards)
    errors = _rows(
        db,
        "SELECT idx, error FROM attempts WHERE job_id = ? AND error IS NOT NULL ORDER BY id DESC LIMIT 5",
        (job["id"],),
    )
    error_files = _rows(
        db, "SELECT error_file FROM shards WHERE job_id = ? AND error_file IS NOT NULL ORDER BY idx", (job["id"],)
    )
    started, finished = job["started_at"], job["finished_at"]
    elapsed = ((finished or now) - started) if started else 0.0
    return JobStatus(
        id=job["id"],
        name=job["name"],
        state=JobState(job["state"]),
        model=job["model"],
        input=job["input"],
        output=job["output"],
        shards_total=total,
        shards_done=_count(by_state, ShardState.DONE),
        shards_running=_count(by_state, ShardState.RUNNING),
        shards_failed=_count(by_state, ShardState.FAILED),
        rows=rows,
        rows_failed=failed,
        rows_estimate=sum(r["est"] or 0 for r in shards) if known == total else None,
        rows_per_second=round((rows + failed) / elapsed, 1) if elapsed > 0 else 0.0,
        created_at=job["created_at"],
        started_at=started,
        finished_at=finished,
        attempts=sum(r["attempts"] or 0 for r in shards) + job["start_attempts"],
        message=job["message"],
        errors=[f"shard {e['idx']}: {e['error']}" for e in errors],
        # shards an earlier Sluice recorded name their file as it was before FINISH renamed it
        error_files=[current_name(r["error_file"]) for r in error_files],
        batch_size=job["batch_size"],
    )


def _count(by_state: Mapping[str, sqlite3.Row], state: ShardState) -> int:
    row = by_state.get(state.value)
    return int(row["n"]) if row is not None else 0
