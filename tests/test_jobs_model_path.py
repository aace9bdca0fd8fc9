"""A ``module:function`` job runs on a worker started in any directory: the job records where its
module was imported from at submission, and a module that cannot be imported is a failed attempt
that names the module and the directory tried."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jobs_support import worker_command, worker_env
from sluice.jobs import JobState, SqliteJobStore
from support import make_table, read_output, write_module, write_table

pytestmark = pytest.mark.slow

ROW_SUM = """
def predict(x):
    return x.sum(axis=1)
"""


def _submit(code: Path, model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import sluice.jobs

    write_table(make_table(50), tmp_path / "in.parquet")
    monkeypatch.chdir(code)  # the submitter's directory holds the model's code
    spec = {"model": model, "input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "out")}
    return sluice.jobs.submit({**spec, "key_column": "id", "max_attempts": 3}, store=tmp_path / "home").id


def _worker_elsewhere(tmp_path: Path, job_id: str) -> subprocess.CompletedProcess[str]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    command = worker_command("--slots", "1", "--job", job_id)
    return subprocess.run(
        command,
        check=False,
        cwd=elsewhere,
        env=worker_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("files", "model"),
    [
        ({"rowsum.py": ROW_SUM}, "rowsum:predict"),
        ({"pkg/__init__.py": "", "pkg/scoring.py": ROW_SUM}, "pkg.scoring:predict"),
    ],
)
def test_a_worker_in_another_directory_runs_the_submitted_callable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], model: str
) -> None:
    code = tmp_path / "code"
    for name, source in files.items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_text(source)
    job_id = _submit(code, model, tmp_path, monkeypatch)
    store = SqliteJobStore(tmp_path / "home" / "jobs.db")
    assert store.job(job_id).request.model_search_path == str(code)

    done = _worker_elsewhere(tmp_path, job_id)
    assert done.returncode == 0, done.stderr
    status = store.status(job_id)
    assert (status.state, status.rows, status.rows_failed, status.attempts) == (JobState.SUCCEEDED, 50, 0, 1)
    table = make_table(50)
    expected = [sum(table.column(f)[i].as_py() for f in ("f0", "f1", "f2", "f3")) for i in range(50)]
    out = read_output(tmp_path / "out" / "part-00000.parquet")
    assert out.column("id").to_pylist() == list(range(50))
    assert out.column("prediction").to_pylist() == pytest.approx(expected)


def test_a_module_the_worker_cannot_import_fails_one_attempt_naming_module_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    write_module(code, "vanishing", ROW_SUM)
    job_id = _submit(code, "vanishing:predict", tmp_path, monkeypatch)
    (code / "vanishing.py").unlink()  # gone before any worker runs the job

    done = _worker_elsewhere(tmp_path, job_id)
    assert done.returncode == 0, done.stderr
    status = SqliteJobStore(tmp_path / "home" / "jobs.db").status(job_id)
    assert (status.state, status.attempts) == (JobState.FAILED, 1)
    assert status.message == (
        f"cannot import module 'vanishing' for model vanishing:predict from {code} (or the Python path): "
        "No module named 'vanishing'"
    )
