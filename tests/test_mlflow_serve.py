"""``sluice serve`` of a registry model (model.yaml ``source: models:/NAME@champion``); with --watch,
moving the alias in MLflow rolls the server to the new version under load with no failed request."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlflow_support import import_mlflow, register
from sluice.serve.server import ServerThread, ServeSettings
from support import FEATURES

mlflow = import_mlflow()
xgb = pytest.importorskip("xgboost")

ROW = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
DEADLINE_S = 90.0  # real seconds after which a stuck test fails instead of hanging the suite


@pytest.fixture(scope="module")
def rollout(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Registered model 'rollout', versions 1 and 2 predicting differently; alias 'champion' on 1.

    Returns what each version predicts for ``ROW``.
    """
    root = tmp_path_factory.mktemp("rollout")
    rng = np.random.default_rng(9)
    x = pd.DataFrame(rng.normal(size=(200, 4)).astype(np.float32), columns=FEATURES)
    expected = {}
    for version, target in ((1, x["f0"]), (2, 5 - 2 * x["f2"])):
        estimator = xgb.XGBRegressor(n_estimators=6, max_depth=3, n_jobs=1).fit(x, target)
        mlflow.xgboost.save_model(estimator, root / f"v{version}", pip_requirements=[])
        assert register("rollout", root / f"v{version}", alias="champion" if version == 1 else None) == version
        expected[version] = float(estimator.predict(pd.DataFrame(ROW, columns=FEATURES))[0])
    assert expected[1] != expected[2]
    return expected


def _repository(root: Path) -> Path:
    (root / "scorer").mkdir(parents=True)
    (root / "scorer" / "model.yaml").write_text("source: models:/rollout@champion\n")
    return root


@pytest.fixture
def server(tmp_path: Path, rollout: dict[int, float]) -> Iterator[ServerThread]:
    settings = ServeSettings(
        repository=_repository(tmp_path / "models"), port=0, log_level="warning", watch=True, watch_interval_s=0.2
    )
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=60)
        yield running


def _infer(conn: http.client.HTTPConnection) -> tuple[int, dict[str, Any]]:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW.ravel().tolist()}]}
    conn.request("POST", "/v2/models/scorer/infer", body=json.dumps(body))
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@dataclass
class Load:
    """A thread sending one request after another and keeping every answer."""

    port: int
    answers: list[tuple[int, str, float]] = field(default_factory=list)  # (status, model_version, prediction)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stop.is_set():
                status, body = _infer(conn)
                if status != 200:
                    self.answers.append((status, str(body), float("nan")))
                    continue
                self.answers.append((status, body["model_version"], body["outputs"][0]["data"][0]))
        finally:
            conn.close()

    def wait_for(self, version: str, count: int) -> None:
        """Wait until ``count`` answers came from ``version``."""
        deadline = time.monotonic() + DEADLINE_S
        while sum(1 for _, v, _ in list(self.answers) if v == version) < count:
            assert time.monotonic() < deadline, f"no {count} answers of version {version}: {self.answers[-3:]}"
            time.sleep(0.05)


def test_serve_answers_with_the_alias_version(server: ServerThread, rollout: dict[int, float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        status, body = _infer(conn)
        assert status == 200, body
        assert (body["model_name"], body["model_version"]) == ("scorer", "1")
        assert body["outputs"][0]["data"] == [rollout[1]]
        conn.request("GET", "/v2/models/scorer/versions/1/ready")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    finally:
        conn.close()


def test_moving_the_alias_rolls_the_server_with_no_failed_request(
    server: ServerThread, rollout: dict[int, float]
) -> None:
    client = mlflow.MlflowClient()
    load = Load(server.port)
    thread = threading.Thread(target=load.run, name="load")
    thread.start()
    try:
        load.wait_for("1", 20)
        client.set_registered_model_alias("rollout", "champion", "2")
        load.wait_for("2", 20)
    finally:
        load.stop.set()
        thread.join(timeout=30)
        client.set_registered_model_alias("rollout", "champion", "1")
    statuses = {status for status, _, _ in load.answers}
    assert statuses == {200}, [a for a in load.answers if a[0] != 200][:3]
    versions = [version for _, version, _ in load.answers]
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}  # one switch, never back
    predictions = {version: {p for _, v, p in load.answers if v == version} for version in ("1", "2")}
    assert predictions == {"1": {rollout[1]}, "2": {rollout[2]}}
