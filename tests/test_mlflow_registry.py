"""MLflow registry URIs against a real ``mlflow server`` (SQLite backend store, local artifact root):
models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID/PATH and model.yaml's
``source:``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlflow_support import import_mlflow, register, run_of
from sluice.errors import ModelNotFound, UnsafeModelError
from sluice.models import LoadOptions, ModelRepository, load_model, resolve_model
from sluice.models.gbm import XGBoostModel
from sluice.models.mlflow_registry import MlflowRegistry, parse_mlflow_uri
from support import FEATURES, invoke, make_table, write_table

mlflow = import_mlflow()
xgb = pytest.importorskip("xgboost")


def _regressor(scale: float) -> Any:
    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(200, 4)).astype(np.float32), columns=FEATURES)
    return xgb.XGBRegressor(n_estimators=6, max_depth=3, n_jobs=1).fit(x, scale * x["f0"] + x["f1"])


@pytest.fixture(scope="module")
def churn(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Registered model 'churn': version 1 and 2 (different regressors), alias 'champion' on 1."""
    root = tmp_path_factory.mktemp("registry-models")
    estimators = {1: _regressor(1.0), 2: _regressor(-3.0)}
    for version, estimator in estimators.items():
        mlflow.xgboost.save_model(estimator, root / f"v{version}", pip_requirements=[])
        assert register("churn", root / f"v{version}", alias="champion" if version == 1 else None) == version
    return {"url": mlflow_server, "estimators": estimators, "root": root}


def _predict(model: Any, table: Any) -> np.ndarray:
    return model.predict_checked(model.signature.bind(table.to_batches()[0], model.default_features))["prediction"]


def _library(estimator: Any, table: Any) -> np.ndarray:
    return np.asarray(estimator.predict(table.select(FEATURES).to_pandas()))


def test_a_registered_version_loads_with_its_native_flavor(churn: dict[str, Any], tmp_path: Path) -> None:
    model = load_model("models:/churn/2")
    assert isinstance(model, XGBoostModel)
    assert (model.source.name, model.source.version) == ("churn", 2)
    table = make_table(40, seed=6)
    assert np.array_equal(_predict(model, table), _library(churn["estimators"][2], table))
    cache = MlflowRegistry().cache_root / "models" / "churn" / "2"
    assert model.source.location == str((cache / "model.ubj").resolve())


def test_an_alias_resolves_to_the_version_it_names_now(churn: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    registry = MlflowRegistry()
    assert registry.version_of(parse_mlflow_uri("models:/churn@champion")) == 1
    assert resolve_model("models:/churn@champion").version == 1
    client.set_registered_model_alias("churn", "champion", "2")
    try:
        assert resolve_model("models:/churn@champion").version == 2
    finally:
        client.set_registered_model_alias("churn", "champion", "1")
    assert resolve_model("models:/churn/latest").version == 2


def test_a_runs_uri_loads_the_runs_files(churn: dict[str, Any]) -> None:
    run_id = run_of("churn", 1)
    model = load_model(f"runs:/{run_id}/model")
    assert (model.source.name, model.source.version) == (None, None)
    table = make_table(20, seed=1)
    assert np.array_equal(_predict(model, table), _library(churn["estimators"][1], table))


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("models:/nosuch/1", "RESOURCE_DOES_NOT_EXIST: Model Version (name=nosuch, version=1) not found"),
        ("models:/churn/99", "RESOURCE_DOES_NOT_EXIST: Model Version (name=churn, version=99) not found"),
        ("models:/churn@nosuch", "INVALID_PARAMETER_VALUE: Registered model alias nosuch not found."),
    ],
)
def test_what_the_registry_lacks_is_named(churn: dict[str, Any], uri: str, reason: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model(uri)
    assert str(info.value) == f"{uri} is not in the MLflow registry at {churn['url']}: {reason}"


def test_a_malformed_uri_shows_the_forms() -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("models:/churn")
    assert str(info.value) == (
        "MLflow model URI 'models:/churn' is not one Sluice reads: use models:/NAME/VERSION, models:/NAME@ALIAS, "
        "models:/NAME/latest or runs:/RUN_ID/PATH"
    )


class Tenfold(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A custom pyfunc model: 10 * f0."""

    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        return (10 * model_input["f0"]).rename("score")


def test_a_pyfunc_registry_model_needs_the_trust_flag(churn: dict[str, Any], tmp_path: Path) -> None:
    from mlflow.models import infer_signature

    x = pd.DataFrame({"f0": [1.0, 2.5, -1.0]})
    mlflow.pyfunc.save_model(
        tmp_path / "tenfold",
        python_model=Tenfold(),
        signature=infer_signature(x, (10 * x["f0"]).rename("score")),
        input_example=x,
        pip_requirements=[],
    )
    version = register("tenfold", tmp_path / "tenfold")
    with pytest.raises(UnsafeModelError) as info:
        load_model(f"models:/tenfold/{version}")
    assert "its 'python_function' flavor is loaded by unpickling" in str(info.value)
    model = load_model(f"models:/tenfold/{version}", options=LoadOptions(trust_pickle=True))
    assert model.source.format == "mlflow"
    assert model.signature.describe() == "inputs: f0: float64[?] -> outputs: score: float64[?]"
    assert model.predict_checked({"f0": np.array([0.5, -2.0])})["score"].tolist() == [5.0, -20.0]


def test_cli_predict_with_a_registry_alias(churn: dict[str, Any], tmp_path: Path) -> None:
    table = make_table(30, seed=4)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke("predict", "-m", "models:/churn@champion", "-i", tmp_path / "in.parquet", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert np.array_equal(part.column("prediction").to_numpy(), _library(churn["estimators"][1], table))
    assert json.loads((out / "_summary.json").read_text())["rows"] == 30


def test_cli_names_a_missing_registry_model(churn: dict[str, Any], tmp_path: Path) -> None:
    write_table(make_table(3), tmp_path / "in.parquet")
    result = invoke("predict", "-m", "models:/nosuch@champion", "-i", tmp_path / "in.parquet", "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert f"models:/nosuch@champion is not in the MLflow registry at {churn['url']}" in result.output
    assert "Traceback" not in result.output


def test_a_repository_model_with_a_registry_source(churn: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "models" / "scorer").mkdir(parents=True)
    (tmp_path / "models" / "scorer" / "model.yaml").write_text("source: models:/churn@champion\nlabels: {old: 1}\n")
    repo = ModelRepository(tmp_path / "models")
    assert repo.versions("scorer") == [1]
    source = repo.resolve("scorer")
    assert (source.format, source.name, source.version) == ("xgboost", "scorer", 1)
    assert repo.resolve("scorer@2").version == 2
    assert repo.resolve("scorer@old").version == 1
    assert repo.resolve("scorer@latest").version == 2
    table = make_table(10, seed=5)
    model = load_model("scorer@2", repository=tmp_path / "models")
    assert np.array_equal(_predict(model, table), _library(churn["estimators"][2], table))
