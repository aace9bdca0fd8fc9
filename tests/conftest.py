"""Session fixtures: real models (ONNX via skl2onnx, skops, pickle, joblib), trained once."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from support import FEATURES


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Automatic batch sizes are cached per machine and jobs kept in ~/.sluice; tests keep theirs in tmp."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SLUICE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("SLUICE_HOME", str(tmp_path_factory.mktemp("sluice-home")))  # no test touches ~/.sluice
    yield
    mp.undo()


# -- models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    """Paths of the session's model artifacts, all trained on the same four float features."""

    onnx: Path  # LogisticRegression, zipmap off: outputs label[int64], probabilities[float32, 2]
    zipmap_onnx: Path  # the same classifier, skl2onnx's default conversion (ZipMap outputs)
    regressor_onnx: Path  # LinearRegression: output variable[float32, 1]
    skops: Path  # LogisticRegression in a skops file
    forest_skops: Path  # RandomForestClassifier: needs --trust-type sklearn.tree._tree.Tree
    named_skops: Path  # LogisticRegression fitted on a DataFrame with columns f0..f3
    pickle: Path  # LogisticRegression pickled
    joblib: Path  # LogisticRegression via joblib


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    import joblib
    import pandas as pd
    import skops.io as sio
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression

    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(np.int64)
    clf = LogisticRegression().fit(x, y)
    (root / "lr.onnx").write_bytes(
        to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17).SerializeToString()
    )
    (root / "lr-zipmap.onnx").write_bytes(to_onnx(clf, x[:1], target_opset=17).SerializeToString())
    reg = LinearRegression().fit(x, x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32))
    (root / "reg.onnx").write_bytes(to_onnx(reg, x[:1], target_opset=17).SerializeToString())
    x64 = x.astype(np.float64)
    sio.dump(LogisticRegression().fit(x64, y), root / "lr.skops")
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x64, y)
    sio.dump(forest, root / "forest.skops")
    sio.dump(LogisticRegression().fit(pd.DataFrame(x64, columns=FEATURES), y), root / "named.skops")
    with (root / "lr.pkl").open("wb") as fh:
        pickle.dump(LogisticRegression().fit(x64, y), fh)
    joblib.dump(LogisticRegression().fit(x64, y), root / "lr.joblib")
    return Models(
        onnx=root / "lr.onnx",
        zipmap_onnx=root / "lr-zipmap.onnx",
        regressor_onnx=root / "reg.onnx",
        skops=root / "lr.skops",
        forest_skops=root / "forest.skops",
        named_skops=root / "named.skops",
        pickle=root / "lr.pkl",
        joblib=root / "lr.joblib",
    )


# -- MLflow ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 for the session; ``MLFLOW_TRACKING_URI`` points at it."""
    from mlflow_support import MlflowServer, mlflow_server_executable

    server = MlflowServer(mlflow_server_executable(), tmp_path_factory.mktemp("mlflow-server"))
    mp = pytest.MonkeyPatch()
    try:
        server.wait_ready()
        mp.setenv("MLFLOW_TRACKING_URI", server.url)
        yield server.url
    finally:
        mp.undo()
        server.stop()
