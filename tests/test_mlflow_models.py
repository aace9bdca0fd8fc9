"""MLflow model directories (an MLmodel file) as MLflow itself writes them: the flavor Sluice runs,
the python_function fallback with the MLflow signature, and the trust flag for what unpickles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from mlflow_support import import_mlflow
from sluice.errors import ModelLoadError, UnsafeModelError
from sluice.models import LoadOptions, load_model, resolve_model
from sluice.models.gbm import LightGBMModel, XGBoostModel
from sluice.models.mlflow_format import mlflow_signature
from sluice.models.mlflow_pyfunc import PyfuncModel
from sluice.models.onnx import OnnxModel
from sluice.models.sklearn import SklearnModel
from support import FEATURES, invoke, make_table, write_table

mlflow = import_mlflow()
xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")

TRUSTED = LoadOptions(trust_pickle=True)


class Doubler(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A custom pyfunc model: 2*f0 + f1 per row."""

    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        return 2 * model_input["f0"] + model_input["f1"]


def _data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(300, 4)), columns=FEATURES)
    y = (x["f0"] + 0.5 * x["f1"] - x["f3"] > 0).to_numpy().astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, models: Any) -> dict[str, Any]:
    """MLflow model directories written by MLflow's own save_model, and the objects they hold."""
    import onnx
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("mlflow-models")
    x, y = _data()
    none: dict[str, Any] = {"pip_requirements": []}  # no pip inference: it imports and times every package
    clf = xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(x.astype(np.float32), y)
    mlflow.xgboost.save_model(clf, root / "xgb", **none)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), 8)
    mlflow.lightgbm.save_model(booster, root / "lgb", **none)
    mlflow.onnx.save_model(onnx.load(models.onnx), root / "onnx", **none)
    lr = LogisticRegression().fit(x, y)
    mlflow.sklearn.save_model(lr, root / "skops", serialization_format="skops", **none)
    mlflow.sklearn.save_model(lr, root / "pickled", serialization_format="cloudpickle", **none)
    doubled = Doubler().predict(None, x[["f0", "f1"]])
    mlflow.pyfunc.save_model(
        root / "pyfunc",
        python_model=Doubler(),
        signature=infer_signature(x[["f0", "f1"]], doubled),
        input_example=x[["f0", "f1"]].head(2),
        **none,
    )
    return {"root": root, "xgb": clf, "lgb": booster, "lr": lr, "x": x}


def _flavors(directory: Path) -> list[str]:
    return sorted(yaml.safe_load((directory / "MLmodel").read_text())["flavors"])


def test_xgboost_flavor_runs_natively_with_the_library_predictions(saved: dict[str, Any]) -> None:
    directory = saved["root"] / "xgb"
    assert _flavors(directory) == ["python_function", "xgboost"]
    model = load_model(str(directory))
    assert isinstance(model, XGBoostModel)
    assert model.default_features == FEATURES
    table = make_table(50, seed=2)
    outputs = model.predict_checked(model.signature.bind(table.to_batches()[0], model.default_features))
    frame = table.select(FEATURES).to_pandas()
    assert np.array_equal(outputs["probabilities"], saved["xgb"].predict_proba(frame))
    assert np.array_equal(outputs["label"], saved["xgb"].predict(frame))


def test_lightgbm_booster_flavor_runs_natively(saved: dict[str, Any]) -> None:
    model = load_model(str(saved["root"] / "lgb"))
    assert isinstance(model, LightGBMModel)
    x = make_table(40, seed=4).select(FEATURES).to_pandas().to_numpy(np.float64)
    assert np.array_equal(model.predict_checked({"input": x})["probabilities"][:, 1], saved["lgb"].predict(x))


def test_onnx_flavor_runs_in_onnx_runtime(saved: dict[str, Any], models: Any) -> None:
    model = load_model(str(saved["root"] / "onnx"))
    assert isinstance(model, OnnxModel)
    assert Path(model.source.location).name == "model.onnx"
    direct = load_model(str(models.onnx))
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    assert np.array_equal(model.predict({"X": x})["probabilities"], direct.predict({"X": x})["probabilities"])


def test_onnx_flavor_with_external_data(tmp_path: Path) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    weights = rng.normal(size=(300, 2)).astype(np.float32)
    graph = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "wide",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 300])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
            [numpy_helper.from_array(weights, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    inline = graph.SerializeToString()  # before MLflow moves the weights out of the graph it is given
    mlflow.onnx.save_model(graph, tmp_path / "wide", pip_requirements=[])  # weights over 1 KiB go to a .data file
    assert [p.suffix for p in (tmp_path / "wide").iterdir() if p.suffix == ".data"] == [".data"]
    model = load_model(str(tmp_path / "wide"))
    x = rng.normal(size=(5, 300)).astype(np.float32)
    want = ort.InferenceSession(inline).run(None, {"x": x})[0]
    assert np.array_equal(model.predict({"x": x})["y"], want)


def test_sklearn_skops_flavor_loads_without_trust(saved: dict[str, Any]) -> None:
    model = load_model(str(saved["root"] / "skops"))
    assert isinstance(model, SklearnModel)
    assert model.source.format == "sklearn"
    x = saved["x"].to_numpy()[:30]
    assert np.array_equal(model.predict({"input": x})["label"], saved["lr"].predict(saved["x"][:30]))


def test_pickled_sklearn_flavor_is_refused_without_the_trust_flag(saved: dict[str, Any]) -> None:
    directory = saved["root"] / "pickled"
    with pytest.raises(UnsafeModelError) as info:
        load_model(str(directory))
    assert str(info.value) == (
        f"MLflow model {directory}: its 'sklearn' flavor is loaded by unpickling, which runs whatever code the "
        "files contain. Pass `trust_pickle=True` if you trust where the model comes from, or log it in a flavor "
        "that loads without code (onnx, xgboost, lightgbm, or sklearn with serialization_format='skops')"
    )
    model = load_model(str(directory), options=TRUSTED)
    assert model.source.format == "pickle"
    x = saved["x"].to_numpy()[:30]
    assert np.array_equal(model.predict({"input": x})["probabilities"], saved["lr"].predict_proba(saved["x"][:30]))


def test_pyfunc_fallback_takes_the_mlflow_signature(saved: dict[str, Any]) -> None:
    directory = saved["root"] / "pyfunc"
    assert _flavors(directory) == ["python_function"]
    with pytest.raises(UnsafeModelError, match="its 'python_function' flavor is loaded by unpickling"):
        load_model(str(directory))
    model = load_model(str(directory), options=TRUSTED)
    assert isinstance(model, PyfuncModel)
    assert model.signature.describe() == "inputs: f0: float64[?]; f1: float64[?] -> outputs: prediction: float64[?]"
    x = saved["x"]
    outputs = model.predict_checked({"f0": x["f0"].to_numpy(), "f1": x["f1"].to_numpy()})
    assert np.array_equal(outputs["prediction"], (2 * x["f0"] + x["f1"]).to_numpy())


def test_cli_predict_on_an_mlflow_model_directory(tmp_path: Path, saved: dict[str, Any]) -> None:
    table = make_table(60, seed=8)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke("predict", "-m", saved["root"] / "xgb", "-i", tmp_path / "in.parquet", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column("label").to_pylist() == saved["xgb"].predict(table.select(FEATURES).to_pandas()).tolist()
    assert json.loads((out / "_summary.json").read_text())["rows"] == 60


def test_cli_pyfunc_refusal_names_the_flag(tmp_path: Path, saved: dict[str, Any]) -> None:
    write_table(make_table(5), tmp_path / "in.parquet")
    args = ("predict", "-m", saved["root"] / "pyfunc", "-i", tmp_path / "in.parquet", "-q")
    result = invoke(*args, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "its 'python_function' flavor is loaded by unpickling" in result.output
    assert "Pass --trust-pickle if you trust where the model comes from" in result.output
    result = invoke(*args, "-o", tmp_path / "out2", "--trust-pickle")
    assert result.exit_code == 0, result.output
    part = pq.read_table(tmp_path / "out2" / "part-00000.parquet")
    table = make_table(5)
    f0, f1 = (table.column(c).to_numpy().astype(np.float64) for c in ("f0", "f1"))
    want = 2 * f0 + f1
    assert np.array_equal(part.column("prediction").to_numpy(), want)


def test_a_repository_version_may_be_an_mlflow_model(tmp_path: Path, saved: dict[str, Any]) -> None:
    shutil.copytree(saved["root"] / "lgb", tmp_path / "models" / "churn" / "1")
    source = resolve_model("churn@1", tmp_path / "models")
    assert (source.format, source.name, source.version) == ("lightgbm", "churn", 1)
    assert source.location == str((tmp_path / "models" / "churn" / "1" / "model.lgb").resolve())


def test_a_model_with_no_flavor_sluice_runs(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("flavors:\n  keras:\n    data: model.keras\n")
    with pytest.raises(ModelLoadError) as info:
        resolve_model(str(tmp_path / "m"))
    assert str(info.value) == (
        f"{tmp_path / 'm' / 'MLmodel'}: none of its flavors (keras) is one Sluice runs; "
        "it runs onnx, xgboost, lightgbm, sklearn and python_function"
    )


def test_mlflow_signatures_become_sluice_signatures() -> None:
    columns = {
        "inputs": '[{"type": "double", "name": "age", "required": true}, {"type": "string", "name": "city"}]',
        "outputs": '[{"type": "long", "required": true}]',
    }
    assert mlflow_signature(columns).describe() == (
        "inputs: age: float64[?]; city: object[?] -> outputs: prediction: int64[?]"
    )
    tensors = {"inputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]'}
    assert mlflow_signature(tensors).describe() == "inputs: input: float32[?, 4] -> outputs: prediction: float64[?]"
    with pytest.raises(ModelLoadError) as info:
        mlflow_signature({"inputs": '[{"type": "array", "name": "tags"}]'}, "m/MLmodel")
    assert str(info.value) == (
        "m/MLmodel: signature column 'tags' has MLflow type 'array', which Sluice cannot bind; supported types: "
        "boolean, integer, long, float, double, string, binary, datetime, tensor"
    )
