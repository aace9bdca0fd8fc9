"""`sluice jobs` end to end: lifecycle, partial success, retries, cancel and resume, two workers, bad specs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sluice.jobs
from jobs_support import output_files, worker_command, worker_env, write_inputs, write_spec
from sluice.jobs.model import JobState
from sluice.jobs.sqlite import SqliteJobStore
from support import hidden_files, invoke, listing, make_table, read_jsonl, write_table

NAN_MESSAGE = "value is NaN and the model does not accept NaN (allow_nan: false)"


def _status(home: Path, job_id: str) -> dict[str, object]:
    result = invoke("jobs", "status", job_id, "--home", home, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _error(result) -> str:
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.output
    return " ".join(result.stderr.split())


def test_submit_worker_status_list_logs(tmp_path: Path, models) -> None:
    write_inputs(tmp_path / "in", 3, 50)
    spec = write_spec(
        tmp_path / "job.json",
        model=str(models.onnx),
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        key_column="id",
    )
    home = tmp_path / "home"
    submitted = invoke("jobs", "submit", spec, "--home", home, "--name", "nightly")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.splitlines()[0]
    queued = _status(home, job_id)
    assert (queued["state"], queued["shards_total"], queued["rows_estimate"], queued["name"]) == (
        "QUEUED",
        3,
        150,
        "nightly",
    )
    worked = invoke("jobs", "worker", "--until-idle", "--home", home, "--poll", "0.05", "--slots", "1")
    assert worked.exit_code == 0, worked.output
    done = _status(home, job_id)
    assert (done["state"], done["rows"], done["rows_failed"], done["shards_done"], done["attempts"]) == (
        "SUCCEEDED",
        150,
        0,
        3,
        3,
    )
    assert done["output"] == str(tmp_path / "out")
    assert listing(tmp_path / "out") == [
        "_SUCCESS",
        "_sluice_job.json",
        "_summary.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert (summary["job"], summary["state"], summary["rows"], summary["shards"]) == (job_id, "SUCCEEDED", 150, 3)

    listed = invoke("jobs", "list", "--home", home, "--json", "--state", "succeeded")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job_id]
    table = invoke("jobs", "list", "--home", home)
    assert job_id in table.stdout and "SUCCEEDED" in table.stdout
    logs = invoke("jobs", "logs", job_id[:6], "--home", home).stdout.splitlines()
    assert [line.split("  ", 1)[1].split(" by ")[0] for line in logs] == [
        f"INFO     submitted: 3 shards of {tmp_path / 'in'} with {models.onnx.name}",
        "INFO     started",
        "INFO     shard 0 done",
        "INFO     shard 1 done",
        "INFO     shard 2 done",
        "INFO     SUCCEEDED",
    ]
    cancelled = invoke("jobs", "cancel", job_id, "--home", home)
    assert cancelled.exit_code == 2
    assert _error(cancelled) == f"error: job {job_id} already ended SUCCEEDED; there is nothing to cancel"


def test_records_within_the_allowed_fraction_partially_succeed(tmp_path: Path, models) -> None:
    table = make_table(20)
    f1 = table.column("f1").to_numpy().copy()
    f1[[4, 9]] = np.nan
    write_table(table.set_column(3, "f1", pa.array(f1)), tmp_path / "in" / "a.parquet")
    fields = {"model": str(models.onnx), "input": str(tmp_path / "in"), "key_column": "id", "batch_size": 8}
    home = tmp_path / "home"
    ok = invoke("jobs", "submit", write_spec(tmp_path / "ok.json", **fields, output=str(tmp_path / "ok"),
                max_error_fraction=0.2), "--wait", "-q", "--json", "--home", home)  # fmt: skip
    assert ok.exit_code == 0, ok.output
    status = json.loads(ok.stdout.split("\n", 1)[1])
    assert (status["state"], status["rows"], status["rows_failed"]) == ("PARTIALLY_SUCCEEDED", 18, 2)
    assert status["error_files"] == [str(tmp_path / "ok" / "_errors" / "errors-00000.jsonl")]
    assert [r["key"] for r in read_jsonl(tmp_path / "ok" / "_errors" / "errors-00000.jsonl")] == [4, 9]
    assert (tmp_path / "ok" / "_SUCCESS").exists()

    strict = invoke("jobs", "submit", write_spec(tmp_path / "strict.json", **fields, output=str(tmp_path / "strict")),
                    "--wait", "-q", "--json", "--home", home)  # fmt: skip
    assert strict.exit_code == 3
    status = json.loads(strict.stdout.split("\n", 1)[1])
    assert status["state"] == "FAILED"
    assert status["message"] == (
        f"2 of 20 records failed (10.00%), more than max_error_fraction 0.0; "
        f"see the _errors/errors-*.jsonl files in {tmp_path / 'strict'}"
    )
    assert not (tmp_path / "strict" / "_SUCCESS").exists()


def test_a_job_submitted_again_over_its_finished_output_ends_as_it_did(tmp_path: Path, models) -> None:
    table = make_table(20)
    f1 = table.column("f1").to_numpy().copy()
    f1[[4, 9]] = np.nan
    write_table(table.set_column(3, "f1", pa.array(f1)), tmp_path / "in" / "a.parquet")
    spec = write_spec(tmp_path / "strict.json", model=str(models.onnx), input=str(tmp_path / "in"), key_column="id",
                      batch_size=8, output=str(tmp_path / "out"))  # fmt: skip
    home = tmp_path / "home"
    ends = []
    for _ in range(2):
        result = invoke("jobs", "submit", spec, "--wait", "-q", "--json", "--home", home)
        assert result.exit_code == 3, result.output
        status = json.loads(result.stdout.split("\n", 1)[1])
        summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
        ends.append((status["state"], status["rows"], status["rows_failed"], status["error_files"]))
        assert (summary["state"], summary["rows"], summary["rows_failed"]) == ("FAILED", 18, 2)
        assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert ends == [("FAILED", 18, 2, [str(tmp_path / "out" / "_errors" / "errors-00000.jsonl")])] * 2


def test_a_shard_that_keeps_failing_is_retried_then_fails_the_job_naming_it(tmp_path: Path, models) -> None:
    import gzip

    write_table(make_table(5), tmp_path / "in" / "a.csv")
    # every file's header is checked before any work, so the read fails later: the stream is cut short
    whole = gzip.compress(write_table(make_table(20_000, start=5), tmp_path / "b.csv").read_bytes())
    (tmp_path / "in" / "b.csv.gz").write_bytes(whole[: len(whole) // 2])
    spec = write_spec(tmp_path / "job.yaml", model=str(models.onnx), input=str(tmp_path / "in"),
                      output=str(tmp_path / "out"), key_column="id", max_attempts=2, retry_backoff_s=0.05,
                      batch_size=64)  # fmt: skip
    result = invoke("jobs", "submit", spec, "--wait", "-q", "--json", "--home", tmp_path / "home")
    assert result.exit_code == 1, result.output
    status = json.loads(result.stdout.split("\n", 1)[1])
    b = tmp_path / "in" / "b.csv.gz"
    cause = f"{b} is truncated or corrupt and cannot be read as gzip-compressed csv: Truncated compressed stream"
    assert status["state"] == "FAILED"
    assert status["message"] == f"shard 1 ({b}) failed after 2 attempts: {cause}"
    assert (status["shards_done"], status["attempts"]) == (1, 3)
    logs = [e.message for _, e in sluice.jobs.get(status["id"], store=tmp_path / "home").logs()]
    assert f"shard 1 attempt 1 of 2 failed, retrying in 0.05 s: {cause}" in logs
    assert listing(tmp_path / "out") == ["_sluice_job.json", "part-00000.parquet"]


def test_cancel_a_running_job_then_resume_it(tmp_path: Path, models) -> None:
    ids = write_inputs(tmp_path / "in", 16, 400)
    home = tmp_path / "home"
    out = tmp_path / "out"
    job = sluice.jobs.submit(
        {
            "model": str(models.onnx),
            "input": str(tmp_path / "in"),
            "output": str(out),
            "batch_size": 1,
            "key_column": "id",
        },
        store=home,
    )
    worker = subprocess.Popen(worker_command("--slots", "1", "--lease", "3"), env=worker_env(home))
    try:
        while job.status().shards_done < 1:
            time.sleep(0.02)
        cancelled = invoke("jobs", "cancel", job.id, "--home", home)
        assert cancelled.stdout.split() in ([job.id, "CANCELLING"], [job.id, "CANCELLED"])
        assert worker.wait(timeout=60) == 0  # it lets go within a heartbeat and, idle, exits
    finally:
        worker.kill()
    status = job.status()
    assert status.state is JobState.CANCELLED
    assert 1 <= status.shards_done < 16
    done = [s.index for s in job.shards() if s.state.value == "DONE"]
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:05d}.parquet" for i in done]  # store == disk
    assert hidden_files(out) == []

    resumed = invoke("jobs", "resume", job.id, "--wait", "-q", "--home", home)
    assert resumed.exit_code == 0, resumed.output
    assert job.status().state is JobState.SUCCEEDED
    got = [i for p in sorted(out.glob("part-*")) for i in pq.read_table(p)["id"].to_pylist()]
    assert got == ids


def test_two_workers_on_one_database_never_share_a_shard(tmp_path: Path, models) -> None:
    write_inputs(tmp_path / "in", 16, 200)
    home = tmp_path / "home"
    fields = {"model": str(models.onnx), "input": str(tmp_path / "in"), "batch_size": 50, "key_column": "id"}
    reference = sluice.jobs.submit({**fields, "output": str(tmp_path / "ref")}, store=tmp_path / "home-ref")
    assert reference.wait().state is JobState.SUCCEEDED
    job = sluice.jobs.submit({**fields, "output": str(tmp_path / "out")}, store=home)
    workers = [
        subprocess.Popen(worker_command("--slots", "2", "--lease", "10"), env=worker_env(home)) for _ in range(2)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    assert job.status().state is JobState.SUCCEEDED
    attempts = SqliteJobStore(home / "jobs.db").attempts(job.id)
    assert sorted(a["idx"] for a in attempts) == list(range(16))  # one attempt per shard, none lost or repeated
    assert {a["outcome"] for a in attempts} == {"DONE"}
    assert output_files(tmp_path / "out") == output_files(tmp_path / "ref")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"bogus": 1}, "{spec}: bogus: Extra inputs are not permitted"),
        ({"max_attempts": 0}, "{spec}: max_attempts: Input should be greater than or equal to 1"),
        ({"retry_backoff_s": -1}, "{spec}: retry_backoff_s: Input should be greater than or equal to 0"),
        (
            {"backend": "spark"},
            "{spec}: backend: 'spark' is for `sluice predict`: the job service runs shards on its own workers "
            "(`sluice jobs worker`); submit with backend: local, or run the spec with sluice predict",
        ),
        ({"input": "/nowhere/at/all"}, "input /nowhere/at/all does not exist"),
        ({"model": "/nowhere/model.onnx"}, "model file /nowhere/model.onnx does not exist"),
        (
            {"key_column": "nope"},
            "--key-column 'nope' is not a column of the input; columns: ['id', 'name', 'f0', 'f1', 'f2', 'f3']",
        ),
    ],
)
def test_bad_specs_are_refused_at_submit(tmp_path: Path, models, fields: dict[str, object], expected: str) -> None:
    write_inputs(tmp_path / "in", 1, 5)
    base = {
        "model": str(models.onnx),
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "key_column": "id",
    }
    spec = write_spec(tmp_path / "job.json", **{**base, **fields})
    result = invoke("jobs", "submit", spec, "--home", tmp_path / "home")
    assert result.exit_code == 2
    assert result.stdout == ""  # no job id: nothing was queued
    assert _error(result) == "error: " + expected.format(spec=spec)
    assert sluice.jobs.list_jobs(store=tmp_path / "home") == []


def test_sigterm_stops_a_worker_cleanly_and_gives_its_shard_back(tmp_path: Path, models) -> None:
    write_inputs(tmp_path / "in", 8, 400)
    home = tmp_path / "home"
    out = tmp_path / "out"
    job = sluice.jobs.submit(
        {"model": str(models.onnx), "input": str(tmp_path / "in"), "output": str(out), "batch_size": 1}
        | {"key_column": "id"},
        store=home,
    )
    worker = subprocess.Popen(worker_command("--slots", "1"), env=worker_env(home))
    try:
        while job.status().shards_done < 1:
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    status = job.status()
    assert (status.state, status.shards_running) == (JobState.RUNNING, 0)
    given_back = [a for a in SqliteJobStore(home / "jobs.db").attempts(job.id) if a["outcome"] == "CANCELLED"]
    assert len(given_back) == 1
    assert given_back[0]["error"].startswith("worker ") and given_back[0]["error"].endswith(" is stopping")
    assert hidden_files(out) == []
    assert job.wait().state is JobState.SUCCEEDED
