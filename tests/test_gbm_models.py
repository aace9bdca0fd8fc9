"""XGBoost and LightGBM boosters as native models: exact predictions, binding, errors, CLI, server."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sluice
from sluice.errors import BindError, MissingDependency, ModelLoadError, ModelNotFound
from sluice.models import LoadOptions, load_model
from sluice.models.gbm import LightGBMModel, XGBoostModel
from sluice.serve.server import ServerThread, ServeSettings
from support import FEATURES, SRC_ROOT, invoke, make_table, write_table

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")


@dataclass(frozen=True)
class Booster:
    """One trained model: its file, the library's own estimator, and what kind of task it is."""

    path: Path
    estimator: Any  # XGBClassifier / XGBRegressor / LGBMClassifier / LGBMRegressor
    kind: str  # binary, multiclass, regressor


def _training_data() -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = pd.DataFrame(rng.normal(size=(400, 4)).astype(np.float32), columns=FEATURES)
    score = x["f0"] + 0.5 * x["f1"] - x["f3"]
    binary = (score > 0).to_numpy().astype(np.int64)
    multiclass = np.digitize(score.to_numpy(), [-0.7, 0.7]).astype(np.int64)
    target = (3 * x["f0"] - x["f2"] ** 2).to_numpy()
    return x, binary, multiclass, target


@pytest.fixture(scope="session")
def boosters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Booster]:
    """Six small models, trained on named columns f0..f3 and saved as the libraries save boosters."""
    root = tmp_path_factory.mktemp("gbm")
    x, binary, multiclass, target = _training_data()
    small = {"n_estimators": 12, "max_depth": 3, "n_jobs": 1}
    fitted = {
        "xgb-binary": (xgb.XGBClassifier(**small).fit(x, binary), "binary", "json"),
        "xgb-multiclass": (xgb.XGBClassifier(**small).fit(x, multiclass), "multiclass", "ubj"),
        "xgb-regressor": (xgb.XGBRegressor(**small).fit(x, target), "regressor", "json"),
        "lgb-binary": (lgb.LGBMClassifier(**small, verbose=-1).fit(x, binary), "binary", "txt"),
        "lgb-multiclass": (lgb.LGBMClassifier(**small, verbose=-1).fit(x, multiclass), "multiclass", "txt"),
        "lgb-regressor": (lgb.LGBMRegressor(**small, verbose=-1).fit(x, target), "regressor", "txt"),
    }
    out = {}
    for name, (estimator, kind, ext) in fitted.items():
        path = root / f"{name}.{ext}"
        booster = estimator.get_booster() if name.startswith("xgb") else estimator.booster_
        booster.save_model(str(path))
        out[name] = Booster(path, estimator, kind)
    return out


def _frame(table: pa.Table) -> pd.DataFrame:
    return table.select(FEATURES).to_pandas()


def _library_outputs(booster: Booster, table: pa.Table) -> dict[str, np.ndarray]:
    """What the library itself predicts for ``table``: its estimator's predict / predict_proba."""
    frame = _frame(table)
    if booster.kind == "regressor":
        return {"prediction": booster.estimator.predict(frame)}
    return {"label": booster.estimator.predict(frame), "probabilities": booster.estimator.predict_proba(frame)}


def _booster_predict(booster: Booster, table: pa.Table) -> np.ndarray:
    """The bare booster's own ``predict`` (a DMatrix for XGBoost, a float64 array for LightGBM)."""
    frame = _frame(table)
    if booster.path.suffix == ".txt":
        return np.asarray(lgb.Booster(model_file=str(booster.path)).predict(frame.to_numpy(np.float64)))
    return np.asarray(xgb.Booster(model_file=str(booster.path)).predict(xgb.DMatrix(frame)))


# -- exact predictions -----------------------------------------------------------------------------

ALL = ["xgb-binary", "xgb-multiclass", "xgb-regressor", "lgb-binary", "lgb-multiclass", "lgb-regressor"]


@pytest.mark.parametrize("name", ALL)
def test_predictions_equal_the_library_exactly(boosters: dict[str, Booster], name: str) -> None:
    booster = boosters[name]
    table = make_table(300, seed=3)
    model = load_model(str(booster.path))
    assert model.default_features == FEATURES  # from the booster: no --features needed
    outputs = model.predict_checked(model.signature.bind(table.to_batches()[0], model.default_features))
    expected = _library_outputs(booster, table)
    assert sorted(outputs) == sorted(expected)
    for key, want in expected.items():
        assert np.array_equal(outputs[key], want), key
    raw = _booster_predict(booster, table)
    if booster.kind == "regressor":
        assert np.array_equal(outputs["prediction"], raw)
    elif booster.kind == "binary":
        assert np.array_equal(outputs["probabilities"][:, 1], raw)
        assert np.array_equal(outputs["probabilities"][:, 0], 1 - raw)
        assert np.array_equal(outputs["label"], (raw > 0.5).astype(np.int64))
    else:
        assert np.array_equal(outputs["probabilities"], raw)
        assert np.array_equal(outputs["label"], raw.argmax(axis=1))


@pytest.mark.parametrize("name", ALL)
def test_an_empty_batch_gives_empty_outputs_of_the_signature_shape(boosters: dict[str, Booster], name: str) -> None:
    model = load_model(str(boosters[name].path))
    outputs = model.predict_checked({"input": np.zeros((0, 4), model.signature.inputs[0].dtype)})
    for spec in model.signature.outputs:
        assert outputs[spec.name].shape == tuple(0 if d < 0 else d for d in spec.shape), spec.name
        assert outputs[spec.name].dtype == spec.dtype, spec.name


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        ("xgb-binary", "input: float32[?, 4] -> outputs: label: int64[?]; probabilities: float32[?, 2]"),
        ("xgb-multiclass", "input: float32[?, 4] -> outputs: label: int64[?]; probabilities: float32[?, 3]"),
        ("xgb-regressor", "input: float32[?, 4] -> outputs: prediction: float32[?]"),
        ("lgb-binary", "input: float64[?, 4] -> outputs: label: int64[?]; probabilities: float64[?, 2]"),
        ("lgb-multiclass", "input: float64[?, 4] -> outputs: label: int64[?]; probabilities: float64[?, 3]"),
        ("lgb-regressor", "input: float64[?, 4] -> outputs: prediction: float64[?]"),
    ],
)
def test_signature_from_the_objective(boosters: dict[str, Booster], name: str, signature: str) -> None:
    model = load_model(str(boosters[name].path))
    assert model.signature.describe() == f"inputs: {signature}"
    assert model.concurrency == "threads"
    assert model.source.format == ("lightgbm" if name.startswith("lgb") else "xgboost")


@pytest.mark.parametrize("name", ["xgb-multiclass", "lgb-binary"])
def test_threads_share_one_model(boosters: dict[str, Booster], name: str) -> None:
    model = load_model(str(boosters[name].path), options=LoadOptions(intra_op_threads=1))
    batches = [model.signature.bind(make_table(64, seed=s).to_batches()[0], FEATURES) for s in range(8)]
    serial = [model.predict(b)["probabilities"] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: model.predict(b)["probabilities"], batches * 4))
    assert all(np.array_equal(p, serial[i % 8]) for i, p in enumerate(parallel))


def test_intra_op_threads_set_the_library_threads(boosters: dict[str, Booster]) -> None:
    xgb_model = load_model(str(boosters["xgb-binary"].path), options=LoadOptions(intra_op_threads=3))
    assert isinstance(xgb_model, XGBoostModel)
    assert json.loads(xgb_model.booster.save_config())["learner"]["generic_param"]["nthread"] == "3"
    lgb_model = load_model(str(boosters["lgb-binary"].path), options=LoadOptions(intra_op_threads=3))
    assert isinstance(lgb_model, LightGBMModel)
    assert lgb_model.predict_params == {"num_threads": 3}
    assert load_model(str(boosters["lgb-binary"].path)).predict_params == {}


def test_nan_takes_the_missing_value_branch(boosters: dict[str, Booster]) -> None:
    table = make_table(20, seed=5)
    f1 = table.column("f1").to_numpy().copy()
    f1[[0, 7]] = np.nan
    table = table.set_column(table.schema.get_field_index("f1"), "f1", pa.array(f1))
    for name in ("xgb-regressor", "lgb-binary"):
        booster = boosters[name]
        model = load_model(str(booster.path))
        assert model.source.config.allow_nan is True  # trees handle missing values natively
        bound = model.signature.plan(table.schema, FEATURES, allow_nan=True).bind(table.to_batches()[0])
        assert not bound.failures
        key = "prediction" if booster.kind == "regressor" else "probabilities"
        assert np.array_equal(model.predict(bound.inputs)[key], _library_outputs(booster, table)[key])


# -- binding and errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "library"), [("xgb-regressor", "XGBoost"), ("lgb-multiclass", "LightGBM")])
def test_missing_feature_is_named(boosters: dict[str, Booster], name: str, library: str) -> None:
    path = boosters[name].path
    model = load_model(str(path))
    schema = make_table(3).drop_columns(["f2"]).schema
    with pytest.raises(BindError) as info:
        model.signature.plan(schema, model.default_features)
    assert str(info.value) == (
        f"{library} model {path} needs feature 'f2', which the data does not have; the model was trained on "
        "4 named features (f0, f1, f2, f3) and the data's columns are ['id', 'name', 'f0', 'f1', 'f3']. "
        "Rename the columns, or give the model's features in its order with `features`"
    )
    assert info.value.params == ("features",)


def test_features_given_explicitly_override_the_stored_names(boosters: dict[str, Booster]) -> None:
    booster = boosters["lgb-regressor"]
    table = make_table(10, seed=2).rename_columns(["id", "name", "a", "b", "c", "d"])
    model = load_model(str(booster.path))
    inputs = model.signature.bind(table.to_batches()[0], ["a", "b", "c", "d"])
    renamed = table.rename_columns(["id", "name", *FEATURES])
    assert np.array_equal(model.predict(inputs)["prediction"], _library_outputs(booster, renamed)["prediction"])


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        (
            "model.json",
            b'{"learner": {"attributes": {}, "feat',
            'XGBoost cannot load {path}: Expecting: """, got: "EOF", around character position: 36',
        ),
        ("model.ubj", b"\x00\x01 not ubjson", "XGBoost cannot load {path}: "),
        ("model.txt", b"tree\nversion=v4\nnum_class=1\nTree=0\n", "LightGBM cannot load {path}: "),
    ],
)
def test_corrupt_model_file(tmp_path: Path, filename: str, content: bytes, message: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    assert str(info.value).startswith(message.format(path=path))
    assert "Stack trace" not in str(info.value)


@pytest.mark.parametrize(
    ("filename", "content", "kind"),
    [
        ("model.json", b'{"weights": [1, 2]}', "an XGBoost JSON model"),
        ("notes.txt", b"hello\n", "a LightGBM text model"),
    ],
)
def test_json_and_txt_that_are_no_models(tmp_path: Path, filename: str, content: bytes, kind: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ModelNotFound) as info:
        load_model(str(path))
    suffix = path.suffix
    assert str(info.value) == (
        f"cannot tell the format of model file {path}: a {suffix} model file must be {kind}; "
        "set 'format' in model.yaml if it is one"
    )


@pytest.mark.parametrize(("module", "name"), [("xgboost", "xgb-binary"), ("lightgbm", "lgb-binary")])
def test_missing_library_names_the_extra(
    boosters: dict[str, Booster], monkeypatch: pytest.MonkeyPatch, module: str, name: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    with pytest.raises(MissingDependency) as info:
        load_model(str(boosters[name].path))
    library = "XGBoost" if module == "xgboost" else "LightGBM"
    assert str(info.value) == (
        f"Loading the {library} model {boosters[name].path.name} needs the Python package '{module}', "
        "which is not installed. Install it from the Sluice checkout with: make install-gbm "
        "(or .venv/bin/pip install -e '.[gbm]')"
    )


def test_import_sluice_imports_neither_library() -> None:
    code = "import sys, sluice, sluice.models; print('xgboost' in sys.modules, 'lightgbm' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(SRC_ROOT)}, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False"]


# -- the repository, the CLI and the server ----------------------------------------------------------


def _repository(root: Path, boosters: dict[str, Booster]) -> Path:
    for name in ("xgb-multiclass", "lgb-binary"):
        version = root / name / "1"
        version.mkdir(parents=True)
        shutil.copy(boosters[name].path, version / f"model{boosters[name].path.suffix}")
        (version / "README.txt").write_text("trained on f0..f3\n")  # a .txt that is no model is ignored
    (root / "lgb-binary" / "model.yaml").write_text("batching: {target_p99_ms: 5000}\n")
    return root


def test_repository_version_directory(tmp_path: Path, boosters: dict[str, Booster]) -> None:
    repo = _repository(tmp_path / "models", boosters)
    for name, cls in (("xgb-multiclass", XGBoostModel), ("lgb-binary", LightGBMModel)):
        model = load_model(f"{name}@1", repository=repo)
        assert isinstance(model, cls)
        assert model.source.location == str(repo / name / "1" / f"model{boosters[name].path.suffix}")


def test_repository_format_and_artifact_name_any_file(tmp_path: Path, boosters: dict[str, Booster]) -> None:
    version = tmp_path / "models" / "ranker" / "1"
    version.mkdir(parents=True)
    shutil.copy(boosters["lgb-regressor"].path, version / "booster.model")
    (tmp_path / "models" / "ranker" / "model.yaml").write_text("format: lightgbm\nartifact: booster.model\n")
    model = load_model("ranker", repository=tmp_path / "models")
    assert isinstance(model, LightGBMModel)
    assert model.signature.describe() == "inputs: input: float64[?, 4] -> outputs: prediction: float64[?]"


@pytest.mark.parametrize("name", ["xgb-binary", "lgb-multiclass"])
def test_cli_predict_on_parquet(tmp_path: Path, boosters: dict[str, Booster], name: str) -> None:
    booster = boosters[name]
    tables = [make_table(40, start=0, seed=1), make_table(25, start=100, seed=2)]
    for i, table in enumerate(tables):
        write_table(table, tmp_path / "in" / f"in-{i}.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", booster.path, "-i", tmp_path / "in", "-o", out, "--key-column", "id", "--workers", "2", "-q"
    )
    assert result.exit_code == 0, result.output
    for i, table in enumerate(tables):
        part = pq.read_table(out / f"part-{i:05d}.parquet")
        assert part.column_names == ["id", "label", "probabilities"]
        assert part.column("id").to_pylist() == table.column("id").to_pylist()
        want = _library_outputs(booster, table)
        assert part.column("label").to_pylist() == want["label"].tolist()
        assert np.array_equal(np.array(part.column("probabilities").to_pylist()), want["probabilities"])
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_failed"], summary["workers"]) == (65, 0, 2)


def test_cli_predict_names_a_missing_feature(tmp_path: Path, boosters: dict[str, Booster]) -> None:
    path = boosters["xgb-binary"].path
    write_table(make_table(5).drop_columns(["f0"]), tmp_path / "in.parquet")
    result = invoke("predict", "-m", path, "-i", tmp_path / "in.parquet", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 2
    assert f"XGBoost model {path} needs feature 'f0', which the data does not have" in result.output


def test_python_api_predict(tmp_path: Path, boosters: dict[str, Booster]) -> None:
    booster = boosters["lgb-regressor"]
    table = make_table(30, seed=9)
    write_table(table, tmp_path / "in.parquet")
    summary = sluice.predict(str(booster.path), str(tmp_path / "in.parquet"), str(tmp_path / "out"))
    assert summary.rows == 30
    part = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert np.array_equal(part.column("prediction").to_numpy(), _library_outputs(booster, table)["prediction"])


@pytest.fixture
def server(tmp_path: Path, boosters: dict[str, Booster]) -> Iterator[ServerThread]:
    settings = ServeSettings(repository=_repository(tmp_path / "models", boosters), port=0, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running


def _infer(server: ServerThread, model: str, x: np.ndarray, datatype: str) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=json.dumps(body))
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return {o["name"]: o for o in json.loads(response.read())["outputs"]}
    finally:
        conn.close()


def test_serve_answers_over_http(server: ServerThread, boosters: dict[str, Booster]) -> None:
    # boosters compute and return, as ONNX Runtime does: small batches may run on the event loop
    assert all(v.dispatcher._allow_inline for vs in server.app.host.served().values() for v in vs)
    table = make_table(6, seed=4)
    x = _frame(table).to_numpy()
    for name, datatype in (("xgb-multiclass", "FP32"), ("lgb-binary", "FP64")):
        outputs = _infer(server, name, x.astype(np.float32 if datatype == "FP32" else np.float64), datatype)
        want = _library_outputs(boosters[name], table)
        assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["data"] == want["label"].tolist()
        proba = outputs["probabilities"]
        assert proba["datatype"] == datatype and proba["shape"] == list(want["probabilities"].shape)
        dtype = np.float32 if datatype == "FP32" else np.float64
        assert np.array_equal(np.array(proba["data"], dtype=dtype), want["probabilities"].ravel())
