"""The same job on Spark ``local[2]`` and Ray (2 CPUs) as on the local engine: same rows, keys,
predictions, error records and summary keys. Each engine starts once for the session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sluice
from s3_support import S3Server, expected_rows, moto_s3, read_back, upload_inputs
from sluice.backends import ray as ray_backend
from sluice.backends.environment import ScopedEnviron
from sluice.errors import EngineError, PredictError
from support import make_table, read_jsonl, read_output, write_module, write_table

# Ray Data warns about its own deprecated settings when it copies its context to workers.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]

ROWS = 100_000
FILES = 4
ENGINES = ("spark", "ray")
# What the engines set for the local sessions Sluice starts, as the environment had it before any.
ENGINE_VARIABLES = ("SPARK_LOCAL_IP", "PYSPARK_PYTHON", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")
ENVIRONMENT_BEFORE = {name: os.environ.get(name) for name in ENGINE_VARIABLES}


spark_environment: dict[str, str | None] = {}  # the engine variables once the session has started


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """One Spark ``local[2]`` session for every test; backend=spark picks up the active session."""
    pytest.importorskip("pyspark")
    from sluice.backends.spark import start_session, stop_session

    session = start_session("local[2]")
    spark_environment.update({name: os.environ.get(name) for name in ENGINE_VARIABLES})
    yield session
    stop_session(session)


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """One local Ray instance with 2 CPUs; backend=ray uses the instance already initialised."""
    pytest.importorskip("ray")
    import ray

    with ScopedEnviron(ray_backend.local_environment(None)):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        yield
        ray.shutdown()


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """Parametrized by engine name; starts (once) the engine it names."""
    name: str = request.param
    request.getfixturevalue("spark_session" if name == "spark" else "ray_instance")
    return name


# -- data with bad records, in each format --------------------------------------------------


def _bad_text(fmt: str) -> str:
    """Records that fail: one that does not parse, one with a value that is no number."""
    if fmt == "csv":
        return "999001,row-999001,1.0,2.0\n999002,row-999002,abc,0.5,0.5,0.5\n"
    return '{"id": 999001, "name": "row-999001", "f0": 1.0\n{"id": 999002, "name": "x", "f0": "abc", "f1": 0.5}\n'


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """100k rows in 4 files per format; file 0 of each holds a few records that fail."""
    root = tmp_path_factory.mktemp("backend-inputs")
    per_file = ROWS // FILES
    out = {}
    for fmt in ("parquet", "csv", "jsonl"):
        for i in range(FILES):
            table = make_table(per_file, start=i * per_file, seed=3)
            path = root / fmt / f"in-{i}.{fmt}"
            if fmt == "parquet" and i == 0:  # missing feature values fail at bind time
                f1 = table.column("f1").to_pylist()
                f1[10] = f1[20_000] = None
                table = table.set_column(3, "f1", pa.array(f1, pa.float32()))
            write_table(table, path)
            if fmt != "parquet" and i == 0:
                with path.open("a") as fh:
                    fh.write(_bad_text(fmt))
        out[fmt] = root / fmt
    return out


@pytest.fixture(scope="session")
def local_runs(inputs: dict[str, Path], models: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The local engine's output per format: the reference the engines must match."""
    root = tmp_path_factory.mktemp("local-out")
    for fmt, directory in inputs.items():
        _predict(models.onnx, directory, root / fmt, "local")
    return {fmt: root / fmt for fmt in inputs}


def _predict(model: Path | str, input_dir: Path, out: Path, backend: str, **options: Any) -> sluice.RunSummary:
    options = {"key_column": "id", "batch_size": 1000, "max_error_fraction": 0.01, "shard_rows": 10_000, **options}
    return sluice.predict(str(model), str(input_dir), str(out), backend=backend, **options)


def _by_key(out: Path) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for part in sorted(out.glob("part-*")):
        for row in read_output(part).to_pylist():
            rows[row["id"]] = row
    return rows


def _errors(out: Path) -> list[dict[str, Any]]:
    records = [r for path in sorted(out.glob("_errors/errors-*.jsonl")) for r in read_jsonl(path)]
    return sorted(records, key=lambda r: json.dumps(r, sort_keys=True))


# -- equivalence ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_same_rows_predictions_and_errors_as_local(
    engine: str, fmt: str, inputs: dict[str, Path], local_runs: dict[str, Path], models: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = _predict(models.onnx, inputs[fmt], out, engine)
    local = json.loads((local_runs[fmt] / "_summary.json").read_text())
    remote = json.loads((out / "_summary.json").read_text())
    assert list(remote) == list(local)
    assert (remote["backend"], local["backend"]) == (engine, "local")
    good = ROWS - 2 if fmt == "parquet" else ROWS  # text inputs have 2 bad records beyond the 100k
    assert (summary.rows, summary.rows_failed) == (good, 2)
    assert [remote[k] for k in ("rows", "rows_failed", "shards")] == [
        local[k] for k in ("rows", "rows_failed", "shards")
    ]
    assert _by_key(out) == _by_key(local_runs[fmt])
    assert _errors(out) == _errors(local_runs[fmt])
    assert sorted(p.name for p in out.glob("part-*")) == sorted(p.name for p in local_runs[fmt].glob("part-*"))
    assert (out / "_SUCCESS").exists()


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_resumed_run_counts_the_whole_job_as_local(
    engine: str, inputs: dict[str, Path], local_runs: dict[str, Path], models: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _predict(models.onnx, inputs["parquet"], out, engine)
    parts = sorted(out.glob("part-*"))
    for path in (parts[0], out / "_errors" / "errors-00000.jsonl", parts[-1], out / "_summary.json"):
        path.unlink()  # as a run stopped before the first and last parts committed leaves it
    summary = _predict(models.onnx, inputs["parquet"], out, engine)
    local = json.loads((local_runs["parquet"] / "_summary.json").read_text())
    assert (summary.rows, summary.rows_failed) == (local["rows"], local["rows_failed"]) == (ROWS - 2, 2)
    assert summary.shards_skipped == len(parts) - 2
    assert [Path(f).relative_to(out) for f in summary.error_files] == [
        Path(f).relative_to(local_runs["parquet"]) for f in local["error_files"]
    ]
    assert (out / "_SUCCESS").exists()


# -- batch size and model reuse -------------------------------------------------------------

BATCH_ROWS_MODEL = """
import os
import numpy as np

class BatchRows:
    def setup(self):
        with open({loads!r}, "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")

    def predict(self, x):
        return np.full(len(x), float(len(x)))
"""


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_batch_size_honoured_and_model_loaded_once_per_worker(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = tmp_path / "loads.txt"
    write_module(tmp_path, f"batch_rows_{engine}", BATCH_ROWS_MODEL.format(loads=str(loads)))
    monkeypatch.chdir(tmp_path)  # 'module:Class' resolves against the current directory
    for i in range(8):
        write_table(make_table(2_000, start=i * 2_000), tmp_path / "in" / f"in-{i}.parquet")
    summary = _predict(f"batch_rows_{engine}:BatchRows", tmp_path / "in", tmp_path / "out", engine, batch_size=300)
    assert (summary.rows, summary.batch_size, summary.shards) == (16_000, 300, 8)
    for i in range(8):
        sizes = pq.read_table(tmp_path / "out" / f"part-{i:05d}.parquet").column("prediction").to_pylist()
        assert sizes == [300.0] * 1_800 + [200.0] * 200  # 6 batches of 300, then the 200 left
    loaded_by = loads.read_text().split()
    assert len(loaded_by) == len(set(loaded_by)) < 8  # once per worker process, not per shard


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_failing_model_raises_the_same_error_as_local(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module(tmp_path, "broken_backend_model", "def predict(x):\n    raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        write_table(make_table(5_000, start=i * 5_000), tmp_path / "in" / f"in-{i}.parquet")
    messages = []
    for backend in ("local", engine):
        with pytest.raises(PredictError) as info:
            _predict("broken_backend_model:predict", tmp_path / "in", tmp_path / backend, backend)
        messages.append(str(info.value))
    expected = "the model failed on every one of 1000 records of a batch: "
    assert messages[0] == messages[1] == expected + "broken_backend_model:predict raised RuntimeError: boom"
    assert not list((tmp_path / engine).glob("part-*"))


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_a_worker_that_dies_is_one_clean_engine_error(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module(tmp_path, "dying_backend_model", "import os\n\ndef predict(x):\n    os._exit(3)\n")
    monkeypatch.chdir(tmp_path)
    write_table(make_table(100), tmp_path / "in" / "in-0.parquet")
    with pytest.raises(EngineError) as info:
        _predict("dying_backend_model:predict", tmp_path / "in", tmp_path / "out", engine)
    name = {"spark": "Spark", "ray": "Ray"}[engine]
    message = str(info.value)
    assert message.startswith(f"the {name} job failed after {name}'s retries: ")
    assert "\n" not in message
    assert not list((tmp_path / "out").glob("part-*"))


# -- S3 through storage options only ------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with moto_s3(monkeypatch) as server:
        yield server


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_s3_input_and_output_reach_the_workers_through_storage_options(
    engine: str, tmp_path: Path, models: Any, s3: S3Server
) -> None:
    bucket = f"{engine}-bucket"
    table = upload_inputs(s3, tmp_path, bucket, files=3, rows=400)
    summary = _predict(models.onnx, f"s3://{bucket}/in/", f"s3://{bucket}/out", engine, batch_size=128,
                       storage_options=s3.options)  # fmt: skip
    assert (summary.rows, summary.rows_failed, summary.shards, summary.backend) == (1200, 0, 3, engine)
    rows, written = read_back(s3, f"s3://{bucket}/out", shards=3)
    assert rows == expected_rows(models.onnx, table)
    assert (written["rows"], written["backend"], written["output"]) == (1200, engine, f"s3://{bucket}/out")


# -- the environment ------------------------------------------------------------------------


def test_a_local_spark_session_leaves_the_environment_as_it_was(spark_session: Any) -> None:
    assert spark_environment == ENVIRONMENT_BEFORE


def test_joining_a_running_ray_instance_changes_no_environment_variable(ray_instance: None) -> None:
    before = dict(os.environ)
    with sluice.backends.RayEngine() as engine:
        assert engine.slots() == 2
    assert dict(os.environ) == before
