"""``sluice train --mlflow``: the published version is registered in a real MLflow registry with its
parameters and metrics, and ``sluice predict --model models:/NAME/N`` gives what the repository version gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mlflow_support import import_mlflow
from sluice.models import load_model
from sluice.models.onnx import OnnxModel
from support import invoke

mlflow = import_mlflow()
pytest.importorskip("torch")


def _labelled(directory: Path, rows: int = 2000) -> pa.Table:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = np.where(x @ np.array([1.0, -1.5, 0.5]) > 0, "yes", "no")
    table = pa.table({"id": np.arange(rows), **{f"f{i}": x[:, i] for i in range(3)}, "churned": y})
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "a.parquet")
    return table


def _train(tmp_path: Path, *extra: str) -> tuple[int, str]:
    result = invoke(
        "train", "--data", tmp_path / "data", "--target", "churned", "--model-name", "trained",
        "--repository", tmp_path / "models", "--exclude", "id", "--nproc", "2", "--epochs", "2",
        "--global-batch-size", "128", "--seed", "1", *extra,
    )  # fmt: skip
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.slow
def test_train_registers_the_published_version(tmp_path: Path, mlflow_server: str) -> None:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    try:
        _labelled(tmp_path / "data")
        code, output = _train(tmp_path, "--mlflow")
    finally:
        monkeypatch.undo()
    assert code == 0, output
    assert "published trained@1" in output
    client = mlflow.MlflowClient()
    version = client.get_model_version("trained", "1")
    assert f"registered models:/trained/1 in MLflow at {mlflow_server} (run {version.run_id})" in output
    assert version.description == f"sluice train: trained@1 in {(tmp_path / 'models').resolve()}"
    run = client.get_run(version.run_id)
    params = run.data.params
    assert (params["target"], params["strategy"], params["epochs"], params["world_size"]) == (
        "churned",
        "ddp",
        "2",
        "2",
    )
    assert params["exclude"] == "['id']"
    training = yaml.safe_load((tmp_path / "models" / "trained" / "model.yaml").read_text())["training"]
    assert run.data.metrics["accuracy"] == training["metrics"]["accuracy"]
    assert run.data.metrics["validation_loss"] == training["metrics"]["validation_loss"]
    assert run.data.metrics["epochs"] == 2.0
    assert [m.step for m in client.get_metric_history(version.run_id, "train_loss")] == [1, 2]
    assert run.data.tags["sluice.version"] == "1"

    registered = load_model("models:/trained/1")
    assert isinstance(registered, OnnxModel)
    assert registered.source.config.features == ["f0", "f1", "f2"]  # from the MLflow signature
    for model in ("models:/trained/1", "trained@1"):
        out = tmp_path / model.replace(":", "").replace("/", "-")
        args = ("predict", "-m", model, "-r", tmp_path / "models", "-i", tmp_path / "data", "-o", out, "-q")
        assert invoke(*args).exit_code == 0
    same = [pq.read_table(tmp_path / d / "part-00000.parquet") for d in ("models-trained-1", "trained@1")]
    assert same[0].column("label").to_pylist() == same[1].column("label").to_pylist()
    assert same[0].num_rows == 2000


def test_mlflow_needs_a_published_version(tmp_path: Path) -> None:
    code, output = _train(tmp_path, "--mlflow", "--no-publish")
    assert code == 2
    assert "error: --mlflow registers the version a run publishes; it cannot go with --no-publish" in output
