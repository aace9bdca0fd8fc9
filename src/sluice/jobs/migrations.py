"""The SQLite schema of the job store, as numbered migrations.

``PRAGMA user_version`` holds the version a database is at; opening a store applies the
migrations above it, each in its own transaction, so a database from an older Sluice is
upgraded in place and one from a newer Sluice is refused rather than misread.
"""

from __future__ import annotations

import sqlite3

from sluice.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: jobs, their shards, every attempt at a shard, and the event log
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            name TEXT,
            request TEXT NOT NULL,          -- the JobRequest, JSON
            fingerprint TEXT NOT NULL,      -- what the output manifest records, JSON
            model TEXT NOT NULL,
            input TEXT NOT NULL,
            output TEXT NOT NULL,
            state TEXT NOT NULL,
            message TEXT,
            batch_size INTEGER,             -- fixed when the job starts, so every attempt writes the same bytes
            prepared INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,               -- START and FINISH work is leased like a shard
            lease_expires_at REAL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
        """CREATE TABLE shards (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            idx INTEGER NOT NULL,
            source TEXT NOT NULL,
            rows_estimate INTEGER,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires_at REAL,
            attempt_id INTEGER,
            rows INTEGER NOT NULL DEFAULT 0,
            rows_failed INTEGER NOT NULL DEFAULT 0,
            error_file TEXT,
            last_error TEXT,
            PRIMARY KEY (job_id, idx)
        )""",
        """CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            worker TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            outcome TEXT NOT NULL,          -- RUNNING, DONE, FAILED, LOST, CANCELLED
            error TEXT
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            at REAL NOT NULL,
            level TEXT NOT NULL,
            shard INTEGER,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX events_job ON events(job_id, id)",
        "CREATE INDEX attempts_shard ON attempts(job_id, idx)",
    ),
    # 2: live workers, so that a dead local worker's leases are taken over without waiting them out
    (
        """CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            process_started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL
        )""",
        "CREATE INDEX shards_state ON shards(state, job_id)",
        "CREATE INDEX jobs_state ON jobs(state, created_at)",
    ),
    # 3: failed attempts at starting a job (its model would not load, its output was refused),
    # which count among the job's attempts like a shard's
    ("ALTER TABLE jobs ADD COLUMN start_attempts INTEGER NOT NULL DEFAULT 0",),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the database at ``path`` to schema ``target``; returns the version it was at."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"job database {path} has schema version {found}, newer than this Sluice supports "
            f"({SCHEMA_VERSION}); upgrade Sluice or point SLUICE_HOME elsewhere"
        )
    for version in range(found + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have migrated while this one waited for the write lock
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= version:
                conn.execute("COMMIT")
                continue
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
