"""The job store's logic on a real SQLite file with an injected clock: leases, retries, cancel, resume, schema."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sluice.errors import JobNotFound, JobStateError, StoreError
from sluice.jobs.migrations import MIGRATIONS, SCHEMA_VERSION, migrate
from sluice.jobs.model import Claim, ClaimKind, JobRequest, JobState, ShardState
from sluice.jobs.sqlite import SqliteJobStore
from sluice.jobs.store import NewJob, NewShard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _job(job_id: str = "j1", shards: int = 2, **fields: object) -> NewJob:
    request = JobRequest(model="m.onnx", input="/in", output="/out", **fields)  # type: ignore[arg-type]
    return NewJob(
        job_id, request, {"model": "m.onnx"}, "m.onnx", [NewShard(i, f"/in/{i}.csv", 10) for i in range(shards)]
    )


def _store(tmp_path: Path, clock: Clock) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "jobs.db", clock=clock)


def _started(store: SqliteJobStore, job: NewJob, worker: str = "w1") -> None:
    store.create_job(job)
    claim = store.claim(worker, 10)
    assert claim is not None and claim.kind is ClaimKind.START
    assert store.job_started(claim, 100, "batch size 100")


def _shard_claim(store: SqliteJobStore, worker: str) -> Claim:
    claim = store.claim(worker, 10)
    assert claim is not None and claim.kind is ClaimKind.SHARD, claim
    return claim


def test_work_goes_start_then_shards_in_order_then_finish(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    _started(store, _job())
    first, second = _shard_claim(store, "w1"), _shard_claim(store, "w2")
    assert (first.shard, second.shard, first.attempt, second.attempt) == (0, 1, 1, 1)
    assert store.claim("w3", 10) is None  # both shards leased
    assert store.shard_done(first, 10, 0, None)
    assert store.shard_done(second, 9, 1, "/out/_errors/errors-00001.jsonl")
    finish = store.claim("w3", 10)
    assert finish is not None and finish.kind is ClaimKind.FINISH
    assert store.claim("w1", 10) is None  # the finish is leased too
    assert store.job_finished(finish, JobState.PARTIALLY_SUCCEEDED, "1 records went to the error files")
    status = store.status("j1")
    assert (status.state, status.rows, status.rows_failed, status.shards_done, status.attempts) == (
        JobState.PARTIALLY_SUCCEEDED,
        19,
        1,
        2,
        2,
    )
    assert status.error_files == ["/out/_errors/errors-00001.jsonl"]
    assert not store.has_open_jobs()


def test_a_lapsed_lease_is_taken_over_and_the_old_holder_is_fenced_off(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    _started(store, _job(shards=1))
    stale = _shard_claim(store, "w1")
    clock.now += 5
    assert store.heartbeat("w1", 10, {stale.attempt_id or 0: 4}) == set()  # renewed until 1015
    assert store.status("j1").rows == 4  # live progress
    clock.now += 9
    assert store.claim("w2", 10) is None  # the renewed lease holds at 1014
    clock.now += 2
    fresh = _shard_claim(store, "w2")
    assert fresh.attempt == 2
    assert store.heartbeat("w1", 10, {stale.attempt_id or 0: 8}) == {stale.attempt_id}  # w1 must stop
    assert not store.shard_done(stale, 10, 0, None)  # the old attempt can no longer record anything
    assert store.shard_done(fresh, 10, 0, None)
    outcomes = [a["outcome"] for a in store.attempts("j1")]
    assert outcomes == ["LOST", "DONE"]
    messages = [e.message for _, e in store.events("j1")]
    assert "worker w1 lost shard 0: its lease lapsed; it will be redone" in messages


def test_failed_attempts_back_off_then_fail_the_job_naming_the_shard(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    _started(store, _job(shards=1, max_attempts=3, retry_backoff_s=2.0))
    store.attempt_failed(_shard_claim(store, "w1"), "boom 1")
    assert store.claim("w1", 10) is None  # backing off 2 s
    clock.now += 2
    store.attempt_failed(_shard_claim(store, "w1"), "boom 2")
    clock.now += 3.9
    assert store.claim("w1", 10) is None  # the second wait is 4 s
    clock.now += 0.1
    store.attempt_failed(_shard_claim(store, "w1"), "boom 3")
    status = store.status("j1")
    assert status.state is JobState.FAILED
    assert status.message == "shard 0 (/in/0.csv) failed after 3 attempts: boom 3"
    assert status.errors == ["shard 0: boom 3", "shard 0: boom 2", "shard 0: boom 1"]
    levels = [(e.level, e.message) for _, e in store.events("j1")]
    assert ("WARNING", "shard 0 attempt 1 of 3 failed, retrying in 2 s: boom 1") in levels
    assert ("WARNING", "shard 0 attempt 2 of 3 failed, retrying in 4 s: boom 2") in levels


def test_a_retry_that_succeeds_ends_the_job_normally(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    _started(store, _job(shards=1, retry_backoff_s=0.0))
    store.attempt_failed(_shard_claim(store, "w1"), "flaky network")
    assert store.shard_done(_shard_claim(store, "w1"), 10, 0, None)
    finish = store.claim("w1", 10)
    assert finish is not None and store.job_finished(finish, JobState.SUCCEEDED, None)
    status = store.status("j1")
    assert (status.state, status.attempts, status.rows) == (JobState.SUCCEEDED, 2, 10)


def test_cancel_waits_for_running_shards_then_resume_keeps_finished_ones(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    _started(store, _job(shards=3))
    done, running = _shard_claim(store, "w1"), _shard_claim(store, "w1")
    assert store.shard_done(done, 10, 0, None)
    assert store.cancel("j1").state is JobState.CANCELLING
    assert store.claim("w2", 10) is None  # no new work for a cancelling job
    assert store.heartbeat("w1", 10, {running.attempt_id or 0: 3}) == {running.attempt_id}
    store.release(running, "job j1 is CANCELLING")
    assert store.status("j1").state is JobState.CANCELLED
    with pytest.raises(JobStateError, match=r"^job j1 already ended CANCELLED; there is nothing to cancel$"):
        store.cancel("j1")
    resumed = store.resume("j1")
    assert (resumed.state, resumed.shards_done) == (JobState.RUNNING, 1)
    claims = [_shard_claim(store, "w2"), _shard_claim(store, "w2")]
    assert [c.shard for c in claims] == [1, 2]
    assert claims[0].attempt == 1  # a cancelled attempt does not count


def test_a_queued_job_cancels_at_once_and_a_running_one_cannot_be_resumed(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path, clock)
    store.create_job(_job("q1"))
    assert store.cancel("q1").state is JobState.CANCELLED
    _started(store, _job("r1"))
    with pytest.raises(JobStateError, match=r"^job r1 is RUNNING; only FAILED or CANCELLED jobs can be resumed"):
        store.resume("r1")
    with pytest.raises(JobNotFound, match=r"^no job 'nope' in .*jobs.db; `sluice jobs list` shows the jobs$"):
        store.status("nope")


def test_two_connections_claiming_at_once_never_share_a_shard(tmp_path: Path) -> None:
    SqliteJobStore(tmp_path / "jobs.db").create_job(_job(shards=40))
    setup = SqliteJobStore(tmp_path / "jobs.db")
    start = setup.claim("w0", 60)
    assert start is not None and setup.job_started(start, 100, "")
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    def claim_all(name: str) -> None:
        store = SqliteJobStore(tmp_path / "jobs.db")
        while (claim := store.claim(name, 60)) is not None and claim.kind is ClaimKind.SHARD:
            claimed[name].append(claim.shard or 0)
            store.shard_done(claim, 1, 0, None)

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed["a"] + claimed["b"]) == list(range(40))
    assert [s.state for s in setup.shards("j1")] == [ShardState.DONE] * 40


def test_an_old_database_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, str(path), target=1) == 0
    conn.execute(
        "INSERT INTO jobs (id, request, fingerprint, model, input, output, state, created_at) "
        "VALUES ('old', ?, '{}', 'm', '/in', '/out', 'SUCCEEDED', 1.0)",
        (JobRequest(model="m", input="/in", output="/out").model_dump_json(),),
    )
    conn.close()
    store = SqliteJobStore(path)
    assert store.status("old").state is JobState.SUCCEEDED
    assert store.workers() == []  # the table migration 2 added
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this Sluice supports"):
        SqliteJobStore(path)


def test_storage_options_parse_into_nested_values() -> None:
    from sluice.cli.options import parse_key_values
    from sluice.errors import ConfigError

    parsed = parse_key_values(
        ["endpoint_url=http://127.0.0.1:9000", "client_kwargs.region_name=eu-west-1", "anon=false", "key=a=b"],
        "--storage-option",
    )
    assert parsed == {
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "eu-west-1"},
        "anon": False,
        "key": "a=b",
    }
    with pytest.raises(ConfigError, match=r"^--storage-option expects KEY=VALUE, found 'endpoint_url'$"):
        parse_key_values(["endpoint_url"], "--storage-option")


def test_jobs_is_a_lazy_public_package() -> None:
    import sluice

    assert sluice.jobs.__name__ == "sluice.jobs"
    assert sluice.jobs.__all__ == sorted(sluice.jobs.__all__)
    for name in sluice.jobs.__all__:
        assert getattr(sluice.jobs, name) is not None


def test_the_store_interface_does_not_import_its_implementation() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import sluice.jobs.protocol, sluice.jobs.records; "
        "print(sorted(m for m in sys.modules if m.startswith('sluice.jobs.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['sluice.jobs.model', 'sluice.jobs.protocol', 'sluice.jobs.records']"


def test_old_import_paths_of_the_store_still_work(tmp_path: Path) -> None:
    import sluice.jobs
    from sluice.jobs import protocol, records, store

    assert (store.JobStore, store.NewJob, store.NewShard) == (protocol.JobStore, records.NewJob, records.NewShard)
    assert (store.JobRecord, store.WorkerInfo) == (records.JobRecord, records.WorkerInfo)
    assert sluice.jobs.JobStore is protocol.JobStore and sluice.jobs.open_store is store.open_store
    opened = store.open_store(tmp_path / "home")
    assert isinstance(opened, SqliteJobStore) and opened.path == tmp_path / "home" / "jobs.db"
    opened.close()
