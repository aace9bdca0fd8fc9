"""``sluice jobs worker``: ``--job`` takes an id prefix like every jobs command, an unknown or
ambiguous one is an error, and a damaged or truncated job database is refused by name."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobs_support import worker_env, write_inputs
from sluice.jobs import JobRequest, JobState, SqliteJobStore
from sluice.jobs.api import plan_request
from support import invoke

PAGE = 4096  # SQLite's default page size
REFUSED = "; if it is damaged, move it aside (a new one is created where there is none) or point SLUICE_HOME elsewhere"


def _error(result) -> str:
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.output
    return " ".join(result.stderr.split())


@pytest.fixture
def home(tmp_path: Path, models) -> Path:
    """Three queued jobs, two of whose ids share the prefix ``cafe``."""
    write_inputs(tmp_path / "in", 1, 20)
    store = SqliteJobStore(tmp_path / "home" / "jobs.db")
    for job_id in IDS:
        request = JobRequest(model=str(models.onnx), input=str(tmp_path / "in"), output=str(tmp_path / job_id))
        store.create_job(plan_request(request.model_copy(update={"key_column": "id"}), job_id))
    store.close()
    return tmp_path / "home"


IDS = ("cafe0001", "cafe0002", "beef0003")


def _states(home: Path) -> dict[str, JobState]:
    store = SqliteJobStore(home / "jobs.db")
    try:
        return {s.id: s.state for s in store.list_jobs()}
    finally:
        store.close()


def _worker(home: Path, job: str, *extra: str):
    return invoke("jobs", "worker", "--job", job, "--poll", "0.05", "--home", home, *extra)


def test_worker_job_runs_the_job_a_prefix_names(home: Path) -> None:
    result = _worker(home, "beef", "--until-idle")
    assert result.exit_code == 0, result.output
    assert _states(home) == {"cafe0001": JobState.QUEUED, "cafe0002": JobState.QUEUED, "beef0003": JobState.SUCCEEDED}
    result = _worker(home, "cafe0002", "--until-idle")
    assert result.exit_code == 0, result.output
    assert _states(home)["cafe0002"] is JobState.SUCCEEDED
    assert _states(home)["cafe0001"] is JobState.QUEUED


def test_worker_job_with_an_ambiguous_prefix_is_an_error(home: Path) -> None:
    for extra in (["--until-idle"], []):
        result = _worker(home, "cafe", *extra)
        assert result.exit_code == 2
        assert _error(result) == "error: job id prefix 'cafe' matches 2 jobs (cafe0001, cafe0002); give more of the id"
    assert set(_states(home).values()) == {JobState.QUEUED}


def test_worker_job_unknown_id_is_an_error(home: Path) -> None:
    expected = f"error: no job 'feedface' in {home / 'jobs.db'}; `sluice jobs list` shows the jobs"
    result = _worker(home, "feedface", "--until-idle")
    assert (result.exit_code, _error(result)) == (2, expected)
    # without --until-idle it used to wait forever: a real process, bounded
    command = [sys.executable, "-m", "sluice", "jobs", "worker", "--job", "feedface", "--home", str(home)]
    done = subprocess.run(command, check=False, env=worker_env(home), capture_output=True, text=True, timeout=120)
    assert (done.returncode, " ".join(done.stderr.split())) == (2, expected)
    assert set(_states(home).values()) == {JobState.QUEUED}


def test_a_job_database_that_is_not_one_is_refused_by_name(tmp_path: Path) -> None:
    db = tmp_path / "home" / "jobs.db"
    db.parent.mkdir()
    db.write_bytes(b"this is no SQLite database\n" * 400)
    for command in (["worker", "--until-idle"], ["list"]):
        result = invoke("jobs", *command, "--home", db.parent)
        assert result.exit_code == 1
        assert _error(result) == f"error: cannot open the job database {db}: file is not a database{REFUSED}"
    assert db.read_bytes() == b"this is no SQLite database\n" * 400


def test_a_truncated_job_database_is_refused_not_replaced(tmp_path: Path) -> None:
    db = tmp_path / "home" / "jobs.db"
    db.parent.mkdir()
    db.write_bytes(b"")
    for command in (["worker", "--until-idle"], ["list"]):
        result = invoke("jobs", *command, "--home", db.parent)
        assert result.exit_code == 1
        assert _error(result) == (
            f"error: job database {db} is empty (0 bytes): it was truncated, and its jobs are lost; move it aside "
            "(a new one is created where there is none) or point SLUICE_HOME elsewhere"
        )
    assert db.stat().st_size == 0
    assert sorted(p.name for p in db.parent.iterdir()) == ["jobs.db"]


def test_a_new_job_database_is_created_whole(tmp_path: Path) -> None:
    result = invoke("jobs", "list", "--home", tmp_path / "home", "--json")
    assert (result.exit_code, result.stdout.strip()) == (0, "[]")
    db = tmp_path / "home" / "jobs.db"
    assert db.stat().st_size > 0
    assert sorted(p.name for p in db.parent.iterdir() if not p.name.startswith("jobs.db")) == []
    assert SqliteJobStore(db).list_jobs() == []


def test_a_job_database_damaged_inside_stops_the_worker_with_a_message(tmp_path: Path) -> None:
    from sluice.jobs.records import NewJob, NewShard

    db = tmp_path / "home" / "jobs.db"
    store = SqliteJobStore(db)
    request = JobRequest(model="m", input="/in", output="/out")
    store.create_job(NewJob("j1", request, {}, "m", [NewShard(i, f"/in/{i:0200d}", 1) for i in range(400)]))
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    pages = db.stat().st_size // PAGE
    assert pages > 30
    with db.open("r+b") as fh:  # the schema pages stay whole; the rows behind them do not
        fh.seek(15 * PAGE)
        fh.write(b"\xff" * (pages - 15) * PAGE)
    # a process of its own, as a user runs it: whichever slot meets the damage first (claiming, or
    # handling what it claimed), the worker stops with one message and no traceback
    command = [sys.executable, "-m", "sluice", "jobs", "worker", "--until-idle", "--poll", "0.05"]
    done = subprocess.run(command, check=False, env=worker_env(db.parent), capture_output=True, text=True, timeout=120)
    assert (done.returncode, "Traceback" in done.stdout + done.stderr) == (1, False), done.stderr
    assert done.stderr.splitlines()[-1] == f"error: job database {db}: database disk image is malformed"
