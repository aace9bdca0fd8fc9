"""The jobs REST API on a real `sluice serve` server (127.0.0.1), behind its bearer token."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_support import write_inputs
from sluice.jobs.http import PREFIX, JobsApi
from sluice.jobs.policy import SubmitPolicy
from sluice.jobs.sqlite import SqliteJobStore
from sluice.jobs.worker import Worker
from sluice.serve.server import ServerThread, ServeSettings

TOKEN = "s3cret-token"


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "home" / "jobs.db")


@pytest.fixture
def server(tmp_path: Path, store: SqliteJobStore, models) -> Iterator[ServerThread]:
    (tmp_path / "repo").mkdir()
    settings = ServeSettings(repository=tmp_path / "repo", port=0, auth_token=TOKEN, log_level="warning")
    # the operator offers this test's directory and allows the test model's file
    policy = SubmitPolicy(str(tmp_path / "repo"), data_roots=(str(tmp_path),), allowed_models=(str(models.onnx),))
    with ServerThread(settings, mounts={PREFIX: JobsApi(store, policy=policy)}) as running:
        yield running


def _call(
    server: ServerThread, method: str, path: str, body: object = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    document = json.loads(response.read())
    conn.close()
    return response.status, document


def test_job_lifecycle_over_rest(tmp_path: Path, models, server: ServerThread, store: SqliteJobStore) -> None:
    write_inputs(tmp_path / "in", 2, 30)
    spec = {"model": str(models.onnx), "input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    spec["key_column"] = "id"
    status, created = _call(server, "POST", "/v1/jobs", spec)
    assert status == 201, created
    job_id = created["id"]
    assert (created["state"], created["shards_total"], created["rows_estimate"]) == ("QUEUED", 2, 60)

    status, listed = _call(server, "GET", "/v1/jobs?state=QUEUED")
    assert (status, [j["id"] for j in listed["jobs"]]) == (200, [job_id])

    Worker(store, slots=1, poll_s=0.05).run(until_idle=True)
    status, done = _call(server, "GET", f"/v1/jobs/{job_id}")
    assert status == 200
    assert (done["state"], done["rows"], done["shards_done"], done["output"]) == (
        "SUCCEEDED",
        60,
        2,
        str(tmp_path / "out"),
    )
    status, events = _call(server, "GET", f"/v1/jobs/{job_id}/events?after=1")
    assert status == 200
    assert [e["message"].split(" by ")[0] for e in events["events"]] == [
        "started",
        "shard 0 done",
        "shard 1 done",
        "SUCCEEDED",
    ]
    assert _call(server, "POST", f"/v1/jobs/{job_id}:cancel") == (
        409,
        {"error": f"job {job_id} already ended SUCCEEDED; there is nothing to cancel"},
    )


def test_cancel_a_queued_job_over_rest(tmp_path: Path, models, server: ServerThread) -> None:
    write_inputs(tmp_path / "in", 1, 5)
    spec = {"model": str(models.onnx), "input": str(tmp_path / "in"), "output": str(tmp_path / "o"), "key_column": "id"}
    job_id = _call(server, "POST", "/v1/jobs", spec)[1]["id"]
    status, cancelled = _call(server, "POST", f"/v1/jobs/{job_id}:cancel")
    assert (status, cancelled["state"]) == (200, "CANCELLED")
    status, resumed = _call(server, "POST", f"/v1/jobs/{job_id}:resume")
    assert (status, resumed["state"]) == (200, "QUEUED")


def test_errors_over_rest(tmp_path: Path, models, server: ServerThread) -> None:
    assert _call(server, "GET", "/v1/jobs", token=None) == (
        401,
        {"error": "missing bearer token: send 'Authorization: Bearer <token>'"},
    )
    assert _call(server, "GET", "/v1/jobs", token="wrong") == (401, {"error": "invalid bearer token"})
    assert _call(server, "POST", "/v1/jobs", {"model": "m", "input": "i", "output": "o", "colour": "red"}) == (
        400,
        {"error": "job spec: colour: Extra inputs are not permitted"},
    )
    assert _call(server, "POST", "/v1/jobs", b"{not json") == (
        400,
        {"error": "the request body is not valid JSON: Expecting property name enclosed in double quotes: "
         "line 1 column 2 (char 1)"},
    )  # fmt: skip
    assert _call(server, "POST", "/v1/jobs", [1, 2]) == (
        400,
        {"error": "job spec must be a JSON object of job fields, found list"},
    )
    missing = str(tmp_path / "missing")
    spec = {"model": str(models.onnx), "input": missing, "output": str(tmp_path / "o")}
    assert _call(server, "POST", "/v1/jobs", spec) == (
        400,
        {"error": f"input {missing} does not exist"},
    )
    status, unknown = _call(server, "GET", "/v1/jobs/feedface")
    assert status == 404
    assert unknown["error"].startswith("no job 'feedface' in ")
    assert _call(server, "DELETE", "/v1/jobs/feedface") == (
        405,
        {"error": "method DELETE not allowed on /v1/jobs/feedface; use GET"},
    )
    assert _call(server, "POST", "/v1/jobs/feedface:explode") == (
        404,
        {"error": "unknown action 'explode' on a job; use :cancel or :resume"},
    )
    assert _call(server, "GET", "/v1/jobs?state=SLEEPING") == (
        400,
        {"error": "unknown job state 'SLEEPING'; expected one of QUEUED, RUNNING, SUCCEEDED, PARTIALLY_SUCCEEDED, "
         "FAILED, CANCELLING, CANCELLED"},
    )  # fmt: skip
