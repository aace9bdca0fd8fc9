"""`sluice train` end to end: train with 2 ranks, publish, then `sluice predict` the new version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from support import invoke


def _labelled(directory: Path, rows: int = 4000) -> pa.Table:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = np.where(x @ np.array([1.0, -2.0, 0.5, 1.5]) > 0, "yes", "no")
    table = pa.table({"id": np.arange(rows), **{f"f{i}": x[:, i] for i in range(4)}, "churned": y})
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.slice(0, rows // 2), directory / "a.parquet")
    pq.write_table(table.slice(rows // 2), directory / "b.parquet")
    return table


@pytest.mark.slow
def test_train_publishes_a_version_that_predict_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    table = _labelled(tmp_path / "data")
    repo = tmp_path / "models"
    result = invoke(
        "train", "--data", tmp_path / "data", "--target", "churned", "--model-name", "churn",
        "--repository", repo, "--exclude", "id", "--nproc", "2", "--epochs", "3",
        "--global-batch-size", "128", "--seed", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "sluice train: ddp, 2 rank(s), 3,600 training / 400 validation rows" in " ".join(result.stdout.split())
    assert "published churn@1 (validation accuracy" in result.stdout
    config = yaml.safe_load((repo / "churn" / "model.yaml").read_text())
    assert config["features"] == ["f0", "f1", "f2", "f3"]
    assert config["training"]["strategy"] == "ddp"
    assert config["training"]["world_size"] == 2
    assert config["training"]["classes"] == ["no", "yes"]
    assert config["training"]["config"]["target"] == "churned"
    assert len(config["training"]["data_fingerprint"]) == 16
    accuracy = config["training"]["metrics"]["accuracy"]
    assert accuracy > 0.9

    out = tmp_path / "out"
    predicted = invoke("predict", "-m", "churn@1", "-r", repo, "-i", tmp_path / "data", "-o", out, "--key-column", "id")
    assert predicted.exit_code == 0, predicted.output
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_failed"]) == (4000, 0)
    parts = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    assert parts.column("id").to_pylist() == table.column("id").to_pylist()
    assert set(parts.column("label").to_pylist()) <= {"no", "yes"}
    agree = np.mean(np.array(parts.column("label").to_pylist()) == np.array(table.column("churned").to_pylist()))
    assert agree > 0.9

    # the same version, served over the Open Inference Protocol, answers as sluice predict did
    import tritonclient.http as httpclient

    from sluice.serve.server import ServerThread, ServeSettings

    first = table.slice(0, 5)
    x = np.column_stack([first.column(f"f{i}").to_numpy() for i in range(4)]).astype(np.float32)
    with ServerThread(ServeSettings(repository=repo, port=0, log_level="warning")) as server:
        server.wait_ready(timeout_s=30)
        client = httpclient.InferenceServerClient(url=server.url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        served = client.infer("churn", [inp]).as_numpy("label")
        client.close()
    assert [v.decode() if isinstance(v, bytes) else v for v in served] == parts.column("label").to_pylist()[:5]


def test_train_without_required_options_says_which(tmp_path: Path) -> None:
    result = invoke("train", "--data", tmp_path)
    assert result.exit_code == 2
    assert "--target, --model required (or give them in a --config file)" in result.stderr
    assert "Traceback" not in result.output


def test_train_rejects_an_unknown_strategy(tmp_path: Path) -> None:
    result = invoke("train", "--data", tmp_path, "--target", "y", "--model-name", "m", "--strategy", "allgather")
    assert result.exit_code == 2
    assert "invalid training config: strategy: Input should be 'ddp', 'fp16', 'powersgd' or 'localsgd'" in result.stderr


def test_train_plan_is_a_subcommand() -> None:
    result = invoke("train", "plan", "--params", "350M", "--workers", "64", "--bandwidth", "100Gbit", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["workers"] == 64
