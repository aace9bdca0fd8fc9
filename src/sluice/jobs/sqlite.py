"""The job store on SQLite in WAL mode: several worker processes on one machine share it.

Writes run in ``BEGIN IMMEDIATE`` transactions, so two workers claiming at once are
serialised by the database, never by luck. Reads (status, list, logs) go through the
snapshot WAL gives them and never block the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sluice.errors import JobNotFound, JobStateError, StoreError
from sluice.jobs.leases import add_event, dead_local_workers, reclaim, take_work
from sluice.jobs.migrations import migrate
from sluice.jobs.model import (
    TERMINAL_STATES,
    Claim,
    JobEvent,
    JobRequest,
    JobState,
    JobStatus,
    ShardState,
    ShardStatus,
)
from sluice.jobs.records import JobRecord, NewJob, WorkerInfo
from sluice.jobs.snapshot import job_snapshot
from sluice.jobs.transitions import (
    fail_attempt,
    fail_job,
    finish_job,
    finish_shard,
    release_claim,
    request_cancel,
    requeue_job,
    start_job,
)

__all__ = ["SqliteJobStore"]

_OPEN = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.CANCELLING.value)


class SqliteJobStore:
    """:class:`~sluice.jobs.store.JobStore` on one SQLite file; ``clock`` is injectable for tests."""

    def __init__(
        self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _create_if_missing(self.path)
            _refuse_empty(self.path)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a recorded shard survives a power cut
            self._conn.execute("PRAGMA foreign_keys=ON")
            migrate(self._conn, str(self.path))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the job database {self.path}: {exc}; if it is damaged, move it aside "
                "(a new one is created where there is none) or point SLUICE_HOME elsewhere"
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"job database {self.path}: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:  # e.g. a damaged page met half-way: a message, not a traceback
                self._rollback()
                raise StoreError(f"job database {self.path}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # nothing to roll back (the failed statement ended the transaction), or the file is unreadable
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, args))
            except sqlite3.Error as exc:
                raise StoreError(f"job database {self.path}: {exc}") from exc

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, job: NewJob) -> None:
        now = self.clock()
        request = job.request
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, name, request, fingerprint, model, input, output, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    request.name,
                    request.model_dump_json(),
                    json.dumps(job.fingerprint),
                    job.model,
                    request.input,
                    request.output,
                    JobState.QUEUED.value,
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO shards (job_id, idx, source, rows_estimate, state) VALUES (?, ?, ?, ?, ?)",
                [(job.id, s.index, s.source, s.rows_estimate, ShardState.PENDING.value) for s in job.shards],
            )
            add_event(
                db,
                job.id,
                now,
                f"submitted: {len(job.shards)} shards of {request.input} with {job.model}",
                None,
                "INFO",
            )

    def job(self, job_id: str) -> JobRecord:
        row = self._job_row(job_id)
        return JobRecord(
            id=row["id"],
            request=JobRequest.model_validate_json(row["request"]),
            fingerprint=json.loads(row["fingerprint"]),
            state=JobState(row["state"]),
            batch_size=row["batch_size"],
            prepared=bool(row["prepared"]),
        )

    def _job_row(self, job_id: str) -> sqlite3.Row:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id!r} in {self.path}; `sluice jobs list` shows the jobs")
        return rows[0]

    def status(self, job_id: str) -> JobStatus:
        return self._status(self._job_row(job_id))

    def list_jobs(self, states: Sequence[JobState] | None = None, limit: int = 100) -> list[JobStatus]:
        if states:
            marks = ",".join("?" * len(states))
            sql = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at DESC, id LIMIT ?"  # noqa: S608
            rows = self._read(sql, [s.value for s in states] + [limit])
        else:
            rows = self._read("SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?", (limit,))
        return [self._status(r) for r in rows]

    def _status(self, job: sqlite3.Row) -> JobStatus:
        with self._lock:
            try:
                self._conn.execute("BEGIN")  # one snapshot for all the figures
                try:
                    return job_snapshot(self._conn, job, self.clock())
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"job database {self.path}: {exc}") from exc

    def shards(self, job_id: str) -> list[ShardStatus]:
        self._job_row(job_id)
        rows = self._read("SELECT * FROM shards WHERE job_id = ? ORDER BY idx", (job_id,))
        return [
            ShardStatus(
                index=r["idx"],
                source=r["source"],
                state=ShardState(r["state"]),
                attempts=r["attempts"],
                rows=r["rows"],
                rows_failed=r["rows_failed"],
                worker=r["lease_owner"],
                error=r["last_error"],
            )
            for r in rows
        ]

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, JobEvent]]:
        self._job_row(job_id)
        rows = self._read(
            "SELECT id, at, level, shard, message FROM events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after)
        )
        return [(r["id"], JobEvent(r["at"], r["level"], r["message"], r["shard"])) for r in rows]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """Every attempt at the job's shards, oldest first (for audits and tests)."""
        rows = self._read("SELECT * FROM attempts WHERE job_id = ? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    def has_open_jobs(self, job_id: str | None = None) -> bool:
        if job_id is None:
            return bool(self._read("SELECT 1 FROM jobs WHERE state IN (?, ?, ?) LIMIT 1", _OPEN))
        return bool(self._read("SELECT 1 FROM jobs WHERE state IN (?, ?, ?) AND id = ?", (*_OPEN, job_id)))

    # -- workers and leases ----------------------------------------------------------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers (id, host, pid, process_started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (worker.id, worker.host, worker.pid, worker.process_started_at, now),
            )

    def unregister_worker(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        rows = self._read("SELECT * FROM workers ORDER BY id")
        return [WorkerInfo(r["id"], r["host"], r["pid"], r["process_started_at"]) for r in rows]

    def claim(self, worker_id: str, lease_s: float, job_id: str | None = None) -> Claim | None:
        dead = dead_local_workers(self.workers())
        with self._tx() as db:
            now = self.clock()
            reclaim(db, now, dead)
            return take_work(db, now, worker_id, lease_s, job_id)

    def heartbeat(self, worker_id: str, lease_s: float, progress: Mapping[int, int]) -> set[int]:
        with self._tx() as db:
            now = self.clock()
            until = now + lease_s
            db.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ?", (now, worker_id))
            db.execute("UPDATE jobs SET lease_expires_at = ? WHERE lease_owner = ?", (until, worker_id))
            keep = {
                r["attempt_id"]
                for r in db.execute(
                    "SELECT s.attempt_id FROM shards s JOIN jobs j ON j.id = s.job_id "
                    "WHERE s.lease_owner = ? AND s.state = ? AND j.state = ?",
                    (worker_id, ShardState.RUNNING.value, JobState.RUNNING.value),
                )
            }
            for attempt_id, rows in progress.items():
                if attempt_id in keep:
                    db.execute(
                        "UPDATE shards SET lease_expires_at = ?, rows = ? WHERE attempt_id = ?",
                        (until, rows, attempt_id),
                    )
        return set(progress) - keep

    # -- finishing work (the row changes live in sluice.jobs.transitions) -------------------------

    def job_started(self, claim: Claim, batch_size: int, note: str) -> bool:
        with self._tx() as db:
            return start_job(db, claim, self.clock(), batch_size, note)

    def shard_done(self, claim: Claim, rows: int, rows_failed: int, error_file: str | None) -> bool:
        with self._tx() as db:
            return finish_shard(db, claim, self.clock(), rows, rows_failed, error_file)

    def attempt_failed(self, claim: Claim, error: str) -> None:
        with self._tx() as db:
            fail_attempt(db, claim, self.clock(), error)

    def release(self, claim: Claim, reason: str) -> None:
        with self._tx() as db:
            release_claim(db, claim, self.clock(), reason)

    def job_finished(self, claim: Claim, state: JobState, message: str | None) -> bool:
        with self._tx() as db:
            return finish_job(db, claim, self.clock(), state, message)

    def fail_job(self, claim: Claim, message: str) -> None:
        with self._tx() as db:
            fail_job(db, claim, self.clock(), message)

    # -- user requests --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobStatus:
        state = JobState(self._job_row(job_id)["state"])
        if state in TERMINAL_STATES:
            raise JobStateError(f"job {job_id} already ended {state.value}; there is nothing to cancel")
        with self._tx() as db:
            request_cancel(db, job_id, self.clock())
        return self.status(job_id)

    def resume(self, job_id: str) -> JobStatus:
        state = JobState(self._job_row(job_id)["state"])
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise JobStateError(
                f"job {job_id} is {state.value}; only FAILED or CANCELLED jobs can be resumed "
                "(a job whose worker died is taken over by any running `sluice jobs worker`)"
            )
        with self._tx() as db:
            requeue_job(db, job_id, self.clock())
        return self.status(job_id)


def _create_if_missing(path: Path) -> None:
    """A new database appears whole: built under another name, then linked into place.

    SQLite would take an empty file for an empty database; as this store never leaves one, an
    empty ``jobs.db`` can only be a truncated one, and is refused instead of silently replaced.
    """
    if path.exists():
        return
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.new")
    try:
        conn = sqlite3.connect(staging, isolation_level=None)
        try:
            migrate(conn, str(path))
        finally:
            conn.close()
        try:
            os.link(staging, path)
        except FileExistsError:
            pass  # another process created it meanwhile: use theirs
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def _refuse_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise StoreError(
            f"job database {path} is empty (0 bytes): it was truncated, and its jobs are lost; "
            "move it aside (a new one is created where there is none) or point SLUICE_HOME elsewhere"
        )
