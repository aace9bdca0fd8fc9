"""A real ``mlflow server`` for the tests: SQLite backend store, local artifact root, 127.0.0.1.

The server runs from its own virtualenv (``make mlflow-server``; ``$SLUICE_MLFLOW_SERVER`` names
another ``mlflow`` executable): the full ``mlflow`` package pins versions the project's own
environment must not take, while the tests' client side is ``mlflow-skinny`` (the ``mlflow`` extra).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# MLflow reports usage to its makers by default; no test sends traffic beyond 127.0.0.1
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
os.environ.update(NO_TELEMETRY)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_VENV = REPO_ROOT / ".venv-mlflow"


def import_mlflow() -> Any:
    """The ``mlflow`` client package (the test is skipped without it), imported as Sluice imports it:
    without the warnings MLflow's pyfunc module gives at import, which the suite turns into errors."""
    mlflow = pytest.importorskip("mlflow", reason="the MLflow client is not installed: pip install 'sluice[mlflow]'")
    from sluice.models.mlflow_pyfunc import mlflow_module

    mlflow_module("mlflow.pyfunc", "the tests")
    return mlflow


def mlflow_server_executable() -> Path:
    """The ``mlflow`` executable that runs the server; skips the test when there is none."""
    pytest.importorskip("mlflow", reason="the MLflow client is not installed: pip install 'sluice[mlflow]'")
    given = os.environ.get("SLUICE_MLFLOW_SERVER")
    path = Path(given) if given else SERVER_VENV / "bin" / "mlflow"
    if not path.is_file():
        pytest.skip(f"the MLflow server is not installed at {path}: `make mlflow-server` creates it")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` in a child process (its own session, so stopping it stops its workers)."""

    def __init__(self, executable: Path, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log = root / "server.log"
        command = [
            str(executable), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **NO_TELEMETRY},
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


def register(name: str, model_dir: Path, alias: str | None = None) -> int:
    """Log the MLflow model in ``model_dir`` to a new run and register it as the next version of ``name``."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), "model")
    version = int(mlflow.register_model(f"runs:/{run.info.run_id}/model", name, await_registration_for=0).version)
    if alias is not None:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))
    return version


def run_of(name: str, version: int) -> str:
    """The run id of a registered version."""
    import mlflow

    return str(mlflow.MlflowClient().get_model_version(name, str(version)).run_id)
