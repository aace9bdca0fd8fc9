"""Jobs submitted over the REST API get only what the operator offers: repository models by name
(or allow-listed references), no trust flags, inputs and outputs under the data roots. Each refusal
is decided before the model is loaded or the input listed, and nothing is queued."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs_support import worker_env, write_inputs
from sluice.jobs import JobState, SqliteJobStore, SubmitPolicy, Worker
from sluice.jobs.http import PREFIX, JobsApi
from sluice.serve.server import ServerThread, ServeSettings
from support import SRC_ROOT, write_module

TOKEN = "s3cret-token"
SIDE_EFFECT = """
import pathlib
pathlib.Path(__file__).with_name("imported").touch()  # importing this module is running its code

def predict(x):
    return x.sum(axis=1)
"""
ROOT_HINT = "the server's operator names the roots with `sluice serve --jobs-data-root DIR`"
MODEL_HINT = "the server's operator may allow it with `sluice serve --jobs-allow-model REF`"


@pytest.fixture
def layout(tmp_path: Path, models, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with model lr@1, a data root with an input, and a module beside the server."""
    (tmp_path / "repo" / "lr" / "1").mkdir(parents=True)
    shutil.copy(models.onnx, tmp_path / "repo" / "lr" / "1" / "lr.onnx")
    write_inputs(tmp_path / "data" / "in", 1, 20)
    write_module(tmp_path / "code", "sideeffect", SIDE_EFFECT)
    monkeypatch.chdir(tmp_path / "code")  # the server's working directory
    return tmp_path


def _server(layout: Path, store: SqliteJobStore, policy: SubmitPolicy) -> ServerThread:
    settings = ServeSettings(repository=layout / "repo", port=0, auth_token=TOKEN, log_level="warning")
    return ServerThread(settings, mounts={PREFIX: JobsApi(store, policy=policy)})


@pytest.fixture
def store(layout: Path) -> SqliteJobStore:
    return SqliteJobStore(layout / "home" / "jobs.db")


@pytest.fixture
def server(layout: Path, store: SqliteJobStore) -> Iterator[ServerThread]:
    policy = SubmitPolicy(str(layout / "repo"), data_roots=(str(layout / "data"),))
    with _server(layout, store, policy) as running:
        yield running


def _post(port: int, body: object) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    conn.request("POST", "/v1/jobs", body=json.dumps(body).encode(), headers=headers)
    response = conn.getresponse()
    document = json.loads(response.read())
    conn.close()
    return response.status, document


def _spec(layout: Path, **fields: object) -> dict[str, object]:
    base = {"model": "lr@1", "input": str(layout / "data" / "in"), "output": str(layout / "data" / "out")}
    return {**base, "key_column": "id", **fields}


def _refusals(layout: Path, models) -> list[tuple[dict[str, object], int, str]]:
    data, outside = layout / "data", layout / "private"
    (outside / "in").mkdir(parents=True)
    (data / "link").symlink_to(outside)
    return [
        (_spec(layout, model="os:system"), 403, f"`model` 'os:system': a job submitted over the REST API names a "
         f"model of the server's repository (NAME, NAME@VERSION or NAME@LABEL), not a file or a Python callable; "
         f"{MODEL_HINT}"),
        (_spec(layout, model="sideeffect:predict"), 403, "`model` 'sideeffect:predict': a job submitted over the "
         "REST API names a model of the server's repository (NAME, NAME@VERSION or NAME@LABEL), not a file or a "
         f"Python callable; {MODEL_HINT}"),
        (_spec(layout, model=str(models.onnx)), 403, f"`model` '{models.onnx}': a job submitted over the REST API "
         "names a model of the server's repository (NAME, NAME@VERSION or NAME@LABEL), not a file or a Python "
         f"callable; {MODEL_HINT}"),
        (_spec(layout, trust_pickle=True), 403, "`trust_pickle`: a job submitted over the REST API cannot trust "
         "pickled or unlisted types; the repository's sluice-repository.yaml decides what its models may load"),
        (_spec(layout, trusted_types=["os.system"]), 403, "`trusted_types`: a job submitted over the REST API "
         "cannot trust pickled or unlisted types; the repository's sluice-repository.yaml decides what its models "
         "may load"),
        (_spec(layout, model_search_path=str(layout / "code")), 403, "`model_search_path`: a job submitted over "
         "the REST API cannot choose where code is imported from"),
        (_spec(layout, repository=str(layout / "code")), 403, f"`repository` '{layout / 'code'}': jobs submitted "
         f"over the REST API use the server's repository ({layout / 'repo'}); leave `repository` out"),
        (_spec(layout, input=str(outside / "in")), 403, f"`input` '{outside / 'in'}' is outside the server's data "
         f"roots ({data}); {ROOT_HINT}"),
        (_spec(layout, output=str(outside / "out"), overwrite=True), 403, f"`output` '{outside / 'out'}' is "
         f"outside the server's data roots ({data}); {ROOT_HINT}"),
        (_spec(layout, output=f"{data}/../private/out"), 403, f"`output` '{data}/../private/out' is outside the "
         f"server's data roots ({data}); {ROOT_HINT}"),
        (_spec(layout, input=str(data / "link" / "in")), 403, f"`input` '{data / 'link' / 'in'}' is outside the "
         f"server's data roots ({data}); {ROOT_HINT}"),
        (_spec(layout, output="s3://bucket/out"), 403, f"`output` 's3://bucket/out' is outside the server's data "
         f"roots ({data}); {ROOT_HINT}"),
        (_spec(layout, input="in"), 400, "`input` 'in': paths in a job submitted over the REST API must be "
         "absolute (or URIs)"),
    ]  # fmt: skip


def test_every_refusal_is_decided_before_anything_runs(
    layout: Path, models, server: ServerThread, store: SqliteJobStore
) -> None:
    for spec, status, message in _refusals(layout, models):
        assert _post(server.port, spec) == (status, {"error": message}), spec
    assert store.list_jobs() == []
    assert not (layout / "code" / "imported").exists()  # the module was never imported
    assert not (layout / "data" / "out").exists() and not (layout / "private" / "out").exists()


def test_a_server_without_data_roots_takes_no_jobs(layout: Path, store: SqliteJobStore) -> None:
    with _server(layout, store, SubmitPolicy(str(layout / "repo"))) as running:
        assert _post(running.port, _spec(layout)) == (
            403,
            {"error": f"`input` '{layout / 'data' / 'in'}': this server accepts no jobs over the REST API until it "
             f"has data roots; {ROOT_HINT}"},
        )  # fmt: skip
    assert store.list_jobs() == []


def test_repository_models_and_allow_listed_references_run(layout: Path, store: SqliteJobStore) -> None:
    roots = (str(layout / "data"),)
    policy = SubmitPolicy(str(layout / "repo"), data_roots=roots, allowed_models=("sideeffect:predict",))
    with _server(layout, store, policy) as running:
        status, by_name = _post(running.port, _spec(layout))
        assert (status, by_name["model"], by_name["state"]) == (201, "lr@1", "QUEUED")
        spec = _spec(layout, model="sideeffect:predict", output=str(layout / "data" / "sums"))
        status, allowed = _post(running.port, spec)
        assert (status, allowed["model"]) == (201, "sideeffect:predict")
    assert store.job(by_name["id"]).request.repository == str(layout / "repo")
    Worker(store, slots=1, poll_s=0.05).run(until_idle=True)
    assert [(s.model, s.state, s.rows) for s in sorted(store.list_jobs(), key=lambda s: s.model)] == [
        ("lr@1", JobState.SUCCEEDED, 20),
        ("sideeffect:predict", JobState.SUCCEEDED, 20),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sluice_serve_jobs_takes_the_policy_from_its_flags(layout: Path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "sluice", "serve", "--jobs", "--repository", str(layout / "repo")]
    command += ["--port", str(port), "--jobs-data-root", str(layout / "data"), "--auth-token", TOKEN]
    env = {**worker_env(layout / "home"), "PYTHONPATH": str(SRC_ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, refused = _post(port, _spec(layout, model="os:system"))
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        assert (status, refused["error"].split(":")[0]) == (403, "`model` 'os")
        status, created = _post(port, _spec(layout))
        assert (status, created["state"]) == (201, "QUEUED")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert os.path.exists(layout / "home" / "jobs.db")
