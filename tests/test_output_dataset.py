"""The output directory is a dataset: pandas, pyarrow.dataset, Polars and Spark read exactly the
predicted rows of a real ``sluice predict`` run that also wrote error files and a summary."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import sluice.jobs
from jobs_support import run_worker, worker_command, worker_env
from sluice.batch.layout import OutputLayout, current_name, summary_file
from sluice.data.location import list_inputs
from sluice.jobs.model import JobState
from support import approx_equal, invoke, listing, make_table, onnx_predict, read_jsonl, write_table
from test_jobs_s3 import BUCKET, s3, s3_endpoint  # noqa: F401  # moto's S3 server on 127.0.0.1

FORMATS = ["parquet", "csv", "jsonl"]
BAD_ROWS = [[2, 5], [3]]  # per input file: rows whose f1 is NaN, which the model refuses
SIZES = [10, 8]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    """Two Parquet files with some bad records; returns their folder and the good rows."""
    directory = tmp_path_factory.mktemp("in")
    good = []
    for i, (size, bad) in enumerate(zip(SIZES, BAD_ROWS, strict=True)):
        table = make_table(size, start=100 * i)
        f1 = table.column("f1").to_numpy().copy()
        f1[bad] = np.nan
        write_table(table.set_column(3, "f1", pa.array(f1)), directory / f"in-{i}.parquet")
        good.append(table.take([r for r in range(size) if r not in bad]))
    return directory, pa.concat_tables(good)


@pytest.fixture(scope="module")
def expected(inputs: tuple[Path, pa.Table], models: Any) -> list[dict[str, Any]]:
    """The predicted rows, computed by onnxruntime directly, in key order."""
    good = inputs[1]
    predicted = onnx_predict(models.onnx, good)
    return [
        {"id": i, "label": int(label), "probabilities": [float(p) for p in probabilities]}
        for i, label, probabilities in zip(
            good.column("id").to_pylist(), predicted["label"], predicted["probabilities"], strict=True
        )
    ]


def _predict(models: Any, src: Path, out: Path | str, fmt: str, *extra: str) -> None:
    result = invoke(
        "predict", "-m", models.onnx, "-i", src, "-o", out, "--key-column", "id", "--output-format", fmt,
        "--batch-size", "4", "--max-error-fraction", "0.5", "-q", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def outputs(inputs: tuple[Path, pa.Table], models: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real ``sluice predict`` output per format."""
    runs = {}
    for fmt in FORMATS:
        out = tmp_path_factory.mktemp("out") / fmt
        _predict(models, inputs[0], out, fmt)
        runs[fmt] = out
    return runs


def _as_expected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in key order, CSV's flattened ``probabilities_0``, ``probabilities_1`` as one list."""
    shaped = []
    for row in rows:
        probabilities = row.get("probabilities")
        if probabilities is None:
            probabilities = [row["probabilities_0"], row["probabilities_1"]]
        shaped.append({"id": int(row["id"]), "label": int(row["label"]), "probabilities": list(probabilities)})
    return sorted(shaped, key=lambda r: r["id"])


def _assert_rows(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    got = _as_expected(rows)
    assert [(r["id"], r["label"]) for r in got] == [(r["id"], r["label"]) for r in expected]
    for row, want in zip(got, expected, strict=True):
        assert approx_equal(row["probabilities"], want["probabilities"]), (row, want)


# -- what the directory holds ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_data_files_start_with_an_underscore(outputs: dict[str, Path], fmt: str) -> None:
    out = outputs[fmt]
    assert listing(out) == ["_SUCCESS", "_errors", "_sluice_job.json", "_summary.json"] + [
        f"part-0000{i}.{fmt}" for i in range(2)
    ]
    assert listing(out / "_errors") == ["errors-00000.jsonl", "errors-00001.jsonl"]
    assert [[e["row"] for e in read_jsonl(out / "_errors" / f"errors-0000{i}.jsonl")] for i in range(2)] == BAD_ROWS
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_failed"]) == (sum(SIZES) - 3, 3)
    assert summary["error_files"] == [str(out / "_errors" / f"errors-0000{i}.jsonl") for i in range(2)]


# -- readers -------------------------------------------------------------------------------


def test_pandas_read_parquet_of_the_directory(outputs: dict[str, Path], expected: list[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.read_parquet(outputs["parquet"])
    assert list(frame.columns) == ["id", "label", "probabilities"]
    assert len(frame) == len(expected)
    _assert_rows(frame.to_dict("records"), expected)


@pytest.mark.parametrize(("fmt", "dataset_format"), [("parquet", "parquet"), ("csv", "csv"), ("jsonl", "json")])
def test_pyarrow_dataset_of_the_directory(
    outputs: dict[str, Path], expected: list[dict[str, Any]], fmt: str, dataset_format: str
) -> None:
    dataset = ds.dataset(outputs[fmt], format=dataset_format)
    assert sorted(Path(f).name for f in dataset.files) == [f"part-00000.{fmt}", f"part-00001.{fmt}"]
    table = dataset.to_table()
    assert table.num_rows == len(expected)
    _assert_rows(table.to_pylist(), expected)


@pytest.mark.parametrize(
    ("fmt", "read"),
    [
        ("parquet", lambda pl, out: pl.read_parquet(f"{out}/*.parquet")),
        # Polars reads every file of a directory, _SUCCESS too: it is given the parts' glob, as its own
        # error message on a directory suggests
        ("parquet", lambda pl, out: pl.scan_parquet(f"{out}/*.parquet").collect()),
        ("csv", lambda pl, out: pl.read_csv(f"{out}/*.csv")),
        ("jsonl", lambda pl, out: pl.read_ndjson(f"{out}/*.jsonl")),
    ],
    ids=["read_parquet", "scan_parquet", "read_csv", "read_ndjson"],
)
def test_polars(outputs: dict[str, Path], expected: list[dict[str, Any]], fmt: str, read: Any) -> None:
    pl = pytest.importorskip("polars")
    frame = read(pl, outputs[fmt])
    assert frame.height == len(expected)
    _assert_rows(frame.to_dicts(), expected)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """The Spark session tests/test_backends.py started (run before this module), else our own ``local[2]``.

    Only the one who started it stops it: a session stopped twice fails, its JVM gone.
    """
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    from sluice.backends.spark import start_session, stop_session

    active = SparkSession.getActiveSession()
    session = active or start_session("local[2]")
    yield session
    if active is None:
        stop_session(session)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_spark_reads_the_directory(
    outputs: dict[str, Path], expected: list[dict[str, Any]], spark: Any, fmt: str
) -> None:
    reader = spark.read
    path = str(outputs[fmt])
    frame = {
        "parquet": lambda: reader.parquet(path),
        "csv": lambda: reader.csv(path, header=True, inferSchema=True),
        "jsonl": lambda: reader.json(path),
    }[fmt]()
    rows = [r.asDict() for r in frame.collect()]
    assert len(rows) == len(expected)
    _assert_rows(rows, expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sluice_lists_only_the_parts_as_input(outputs: dict[str, Path], fmt: str) -> None:
    assert [Path(loc.path).name for loc in list_inputs(outputs[fmt])] == [f"part-00000.{fmt}", f"part-00001.{fmt}"]


# -- the summary by its old name ------------------------------------------------------------------


def test_summary_file_takes_the_directory_or_the_earlier_name(outputs: dict[str, Path], tmp_path: Path) -> None:
    out = outputs["parquet"]
    assert summary_file(out) == str(out / "_summary.json")
    assert summary_file(out / "summary.json") == str(out / "_summary.json")
    assert summary_file(out / "_summary.json") == str(out / "_summary.json")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text("{}")
    assert summary_file(legacy) == str(legacy / "summary.json")
    assert summary_file(legacy / "summary.json") == str(legacy / "summary.json")
    assert summary_file(tmp_path / "missing.json") == str(tmp_path / "missing.json")


@pytest.mark.parametrize("given", ["summary.json", "_summary.json", ""])
def test_cost_reads_the_summary_by_either_name_or_by_directory(outputs: dict[str, Path], given: str) -> None:
    out = outputs["parquet"]
    rate = json.loads((out / "_summary.json").read_text())["rows_per_second"]
    result = invoke(
        "cost", "--rows", "1M", "--deadline", "1h", "--summary", out / given if given else out,
        "--cores", "2", "--instance", "c7i.large", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["measured"]["rows_per_second"] == rate


def test_current_name_of_each_earlier_name() -> None:
    assert current_name("/out/errors-00003.jsonl") == "/out/_errors/errors-00003.jsonl"
    assert current_name("s3://b/out/summary.json") == "s3://b/out/_summary.json"
    assert current_name("/out/_errors/errors-00003.jsonl") == "/out/_errors/errors-00003.jsonl"
    assert current_name("/out/part-00003.parquet") == "/out/part-00003.parquet"


# -- crashed runs and overwriting under _errors/ --------------------------------------------------


def test_leftovers_in_errors_folder_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    (out / "_errors" / ".errors-00001.jsonl.tmp-0badf00d").write_text("{}\n")
    (out / "_errors" / ".errors-00002.jsonl.tmp-0badf00d").write_text("{}\n")
    (out / ".errors-00001.jsonl.tmp-0badf00d").write_text("{}\n")  # the earlier layout's
    layout = OutputLayout(str(out), "parquet")
    assert layout.remove_leftovers(1) == [
        ".errors-00001.jsonl.tmp-0badf00d",
        "_errors/.errors-00001.jsonl.tmp-0badf00d",
    ]
    assert listing(out / "_errors") == [".errors-00002.jsonl.tmp-0badf00d"]
    layout.prepare({"job": 1}, overwrite=False)
    assert listing(out / "_errors") == []


def test_overwrite_removes_the_error_files_and_their_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_errors").mkdir(parents=True)
    (out / "_errors" / "errors-00000.jsonl").write_text("{}\n")
    (out / "part-00000.parquet").write_bytes(b"PAR1")
    (out / "keep.txt").write_text("not Sluice's")
    OutputLayout(str(out), "parquet").prepare({"job": 1}, overwrite=True)
    assert listing(out) == ["_sluice_job.json", "keep.txt"]


# -- a job an earlier Sluice started ----------------------------------------------------------------


def _to_earlier_layout(out: Path) -> None:
    """What an earlier Sluice wrote: summary.json and errors-NNNNN.jsonl beside the parts."""
    for path in sorted((out / "_errors").iterdir()):
        path.rename(out / path.name)
    (out / "_errors").rmdir()
    if (out / "_summary.json").exists():
        (out / "_summary.json").rename(out / "summary.json")


@pytest.fixture
def stopped_job(inputs: tuple[Path, pa.Table], models: Any, tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """A job whose worker was killed just after writing the summary, before recording the end."""
    home, out = tmp_path / "home", tmp_path / "out"
    spec = {"model": str(models.onnx), "input": str(inputs[0]), "output": str(out), "key_column": "id"}
    job = sluice.jobs.submit({**spec, "max_error_fraction": 0.5}, store=home)
    assert run_worker(home, failpoints="job.summary=1") == -9
    yield home, out, job.id


def test_a_job_an_earlier_sluice_recorded_finishes_in_the_current_layout(
    stopped_job: tuple[Path, Path, str], expected: list[dict[str, Any]]
) -> None:
    home, out, job_id = stopped_job
    _to_earlier_layout(out)
    [database] = home.glob("*.db")
    with sqlite3.connect(database) as db:  # the shards as an earlier Sluice recorded them
        db.execute("UPDATE shards SET error_file = replace(error_file, '/_errors/errors-', '/errors-')")
    assert sorted(p.name for p in out.glob("errors-*")) == ["errors-00000.jsonl", "errors-00001.jsonl"]

    done = subprocess.run(worker_command(), env=worker_env(home), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    status = sluice.jobs.get(job_id, store=home).status()
    assert status.state is JobState.PARTIALLY_SUCCEEDED
    current = [str(out / "_errors" / f"errors-0000{i}.jsonl") for i in range(2)]
    assert status.error_files == current
    assert json.loads((out / "_summary.json").read_text())["error_files"] == current
    assert listing(out) == ["_SUCCESS", "_errors", "_sluice_job.json", "_summary.json", "part-00000.parquet",
                            "part-00001.parquet"]  # fmt: skip
    assert [[e["row"] for e in read_jsonl(Path(f))] for f in current] == BAD_ROWS
    _assert_rows(ds.dataset(out).to_table().to_pylist(), expected)


def test_a_new_job_over_an_earlier_output_moves_its_files(
    inputs: tuple[Path, pa.Table], models: Any, expected: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _predict(models, inputs[0], out, "parquet")
    _to_earlier_layout(out)
    spec = {"model": str(models.onnx), "input": str(inputs[0]), "output": str(out), "key_column": "id"}
    job = sluice.jobs.submit({**spec, "max_error_fraction": 0.5, "batch_size": 4}, store=tmp_path / "home")
    assert job.wait().state is JobState.PARTIALLY_SUCCEEDED
    assert listing(out) == ["_SUCCESS", "_errors", "_sluice_job.json", "_summary.json", "part-00000.parquet",
                            "part-00001.parquet"]  # fmt: skip
    assert listing(out / "_errors") == ["errors-00000.jsonl", "errors-00001.jsonl"]
    _assert_rows(ds.dataset(out).to_table().to_pylist(), expected)


# -- on an object store ------------------------------------------------------------------------------


@pytest.fixture
def bucket(request: pytest.FixtureRequest) -> tuple[Any, str]:
    """An empty bucket on moto's S3 server (tests/test_jobs_s3.py's), its filesystem and endpoint."""
    return request.getfixturevalue("s3"), request.getfixturevalue("s3_endpoint")


def _keys(fs: Any, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p[len(prefix) + 1 :] for p in fs.find(prefix))


def test_s3_output_reads_as_a_dataset_and_a_resume_moves_the_earlier_layout(
    inputs: tuple[Path, pa.Table], models: Any, expected: list[dict[str, Any]], bucket: tuple[Any, str]
) -> None:
    fs, endpoint = bucket
    prefix = f"{BUCKET}/out"
    run = ("parquet", "--storage-option", f"endpoint_url={endpoint}")
    _predict(models, inputs[0], f"s3://{prefix}", *run)
    current = [
        "_SUCCESS", "_errors/errors-00000.jsonl", "_errors/errors-00001.jsonl", "_sluice_job.json", "_summary.json",
        "part-00000.parquet", "part-00001.parquet",
    ]  # fmt: skip
    assert _keys(fs, prefix) == current
    _assert_rows(ds.dataset(prefix, filesystem=fs).to_table().to_pylist(), expected)

    for i in range(2):
        fs.mv(f"{prefix}/_errors/errors-0000{i}.jsonl", f"{prefix}/errors-0000{i}.jsonl")
    fs.mv(f"{prefix}/_summary.json", f"{prefix}/summary.json")
    fs.rm(f"{prefix}/part-00001.parquet")
    _predict(models, inputs[0], f"s3://{prefix}", *run)
    assert _keys(fs, prefix) == current
    records = fs.cat(f"{prefix}/_errors/errors-00000.jsonl").decode().splitlines()
    assert [json.loads(line)["row"] for line in records] == BAD_ROWS[0]
    _assert_rows(ds.dataset(prefix, filesystem=fs).to_table().to_pylist(), expected)
