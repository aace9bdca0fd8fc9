"""ONNX export of a trained MLP (standardisation in the graph) and publishing it as a model version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from sluice.batch import predict
from sluice.models.repository import ModelRepository
from sluice.train import export
from sluice.train.config import TrainConfig
from sluice.train.export import export_onnx, publish

N_FEATURES = 3
MEAN = np.array([10.0, -2.0, 0.5])
STD = np.array([4.0, 0.5, 2.0])


def _mlp(n_out: int, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(N_FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(8, n_out))


def _rows(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(MEAN, STD * 1.5, size=(n, N_FEATURES)).astype(np.float32)


def _torch_logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = torch.from_numpy(((x - MEAN) / STD).astype(np.float32))
        return np.asarray(net(z).numpy())


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _run(path: Path, x: np.ndarray) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def _signature(path: Path) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    describe = lambda args: [(a.name, a.type, [d if isinstance(d, int) else "N" for d in a.shape]) for a in args]  # noqa: E731
    return describe(session.get_inputs()), describe(session.get_outputs())


@pytest.fixture(params=["dynamo", "torchscript"])
def exporter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both export paths: the dynamo exporter (with onnxscript) and the legacy one (without)."""
    if request.param == "torchscript":
        monkeypatch.setattr(export, "_has_onnxscript", lambda: False)
    else:
        pytest.importorskip("onnxscript")
    return str(request.param)


@pytest.mark.parametrize("classes", [[3, 7, 11], ["cat", "dog", "emu"], [False, True]])
def test_classifier_parity(tmp_path: Path, exporter: str, classes: list[Any]) -> None:
    net = _mlp(len(classes))
    path = tmp_path / "clf.onnx"
    export_onnx(net, N_FEATURES, MEAN, STD, "classification", classes, path)
    label_type = {int: "tensor(int64)", str: "tensor(string)", bool: "tensor(bool)"}[type(classes[0])]
    assert _signature(path) == (
        [("input", "tensor(float)", ["N", N_FEATURES])],
        [("label", label_type, ["N"]), ("probabilities", "tensor(float)", ["N", len(classes)])],
    )
    for n in (1, 33):  # the batch dimension is dynamic
        x = _rows(n, seed=n)
        logits = _torch_logits(net, x)
        got = _run(path, x)
        np.testing.assert_allclose(got["probabilities"], _softmax(logits), rtol=1e-5, atol=1e-6)
        assert got["label"].tolist() == [classes[i] for i in logits.argmax(axis=1)]


def test_regressor_parity(tmp_path: Path, exporter: str) -> None:
    net = _mlp(1)
    path = tmp_path / "reg.onnx"
    export_onnx(net, N_FEATURES, MEAN, STD, "regression", None, path)
    assert _signature(path)[1] == [("prediction", "tensor(float)", ["N"])]
    x = _rows(50)
    np.testing.assert_allclose(_run(path, x)["prediction"], _torch_logits(net, x)[:, 0], rtol=1e-5, atol=1e-5)


def test_export_leaves_the_module_alone(tmp_path: Path) -> None:
    net = _mlp(2).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_onnx(net, N_FEATURES, MEAN, STD, "classification", [0, 1], tmp_path / "m.onnx")
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


MIXED = "class labels must be all integers, all strings or all bools, found "
ZERO_STD = "mean must be finite and std finite and > 0 (replace a constant feature's 0 std by 1)"


@pytest.mark.parametrize(
    ("task", "classes", "std", "message"),
    [
        ("ranking", None, STD, "task must be 'classification' or 'regression', found 'ranking'"),
        ("classification", None, STD, "a classifier needs its class labels, in the order of the output units"),
        ("classification", [1, "a"], STD, MIXED + "[1, 'a']"),
        ("classification", [0.5, 1.5], STD, MIXED + "[0.5, 1.5]"),
        ("regression", None, np.array([1.0, 0.0, 1.0]), ZERO_STD),
        ("regression", None, np.ones(2), "mean and std must hold 3 values, found 3 and 2"),
    ],
)  # fmt: skip
def test_export_rejects(tmp_path: Path, task: str, classes: list[Any] | None, std: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        export_onnx(_mlp(2), N_FEATURES, MEAN, std, task, classes, tmp_path / "m.onnx")
    assert str(exc.value) == message
    assert not (tmp_path / "m.onnx").exists()


# -- publish, then sluice predict ----------------------------------------------------------------


def _write_input(path: Path, x: np.ndarray) -> None:
    columns = {"id": pa.array(np.arange(len(x), dtype=np.int64))}
    columns |= {f"x{i}": pa.array(x[:, i].astype(np.float64)) for i in range(N_FEATURES)}
    columns["note"] = pa.array(["n"] * len(x))
    pq.write_table(pa.table(columns), path)


def _metadata() -> dict[str, Any]:
    config = TrainConfig.build(data="train.parquet", target="y", model_name="mlp", nproc=2, strategy="powersgd")
    return {
        "config": config,
        "metrics": {"val_accuracy": np.float32(0.75), "epochs": np.int64(5)},
        "data_fingerprint": "abc123",
        "strategy": "powersgd",
        "mean": MEAN,
        "source": Path("train.parquet"),
    }


def test_publish_then_predict_classifier(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models")
    features = [f"x{i}" for i in range(N_FEATURES)]
    net = _mlp(3, seed=1)
    classes = ["low", "mid", "high"]
    assert publish(net, features, MEAN, STD, "classification", classes, repo, "mlp", _metadata()) == 1

    config = yaml.safe_load((tmp_path / "models" / "mlp" / "model.yaml").read_text())
    assert config["format"] == "onnx"
    assert config["artifact"] == "model.onnx"
    assert config["features"] == features
    training = config["training"]
    assert training["config"]["strategy"] == "powersgd"
    assert training["metrics"] == {"val_accuracy": 0.75, "epochs": 5}
    assert training["data_fingerprint"] == "abc123"
    assert training["mean"] == MEAN.tolist()
    assert training["source"] == "train.parquet"
    assert training["task"] == "classification"
    assert training["classes"] == classes

    x = _rows(40)
    _write_input(tmp_path / "in.parquet", x)
    predict("mlp@1", str(tmp_path / "in.parquet"), str(tmp_path / "out"), repository=str(repo.root), key_column="id")
    out = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    logits = _torch_logits(net, x)
    assert out.column("id").to_pylist() == list(range(40))
    assert out.column("label").to_pylist() == [classes[i] for i in logits.argmax(axis=1)]
    probabilities = np.array(out.column("probabilities").to_pylist())
    np.testing.assert_allclose(probabilities, _softmax(logits), rtol=1e-5, atol=1e-6)


def test_publish_regressor_next_version_keeps_labels(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models")
    features = [f"x{i}" for i in range(N_FEATURES)]
    first, second = _mlp(1, seed=1), _mlp(1, seed=2)
    assert publish(first, features, MEAN, STD, "regression", None, repo, "reg", {"strategy": "ddp"}) == 1
    config_path = tmp_path / "models" / "reg" / "model.yaml"
    config = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump({**config, "labels": {"stable": 1}}))
    assert publish(second, features, MEAN, STD, "regression", None, repo, "reg", {"strategy": "fp16"}) == 2
    assert repo.versions("reg") == [1, 2]
    config = repo.config("reg")
    assert config.labels == {"stable": 1}
    assert config.training == {"strategy": "fp16", "task": "regression"}

    x = _rows(25)
    _write_input(tmp_path / "in.parquet", x)
    for ref, net in (("reg@2", second), ("reg", first)):  # "reg" follows the stable label to version 1
        out_dir = tmp_path / f"out-{ref}"
        predict(ref, str(tmp_path / "in.parquet"), str(out_dir), repository=str(repo.root))
        got = pq.read_table(out_dir / "part-00000.parquet").column("prediction").to_numpy()
        np.testing.assert_allclose(got, _torch_logits(net, x)[:, 0], rtol=1e-5, atol=1e-5)
