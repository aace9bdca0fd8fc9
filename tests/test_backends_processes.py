"""``sluice predict --backend spark|ray`` as a real process: after a run, and after Ctrl-C, no Java
or Ray process it started is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from support import SRC_ROOT, make_table, wait_for_part, write_module, write_table

pytestmark = pytest.mark.slow

CLI = "from sluice.cli.main import main; main()"
SLOW_MODULE = """
import time

def predict(x):
    time.sleep(0.1)
    return x.sum(axis=1)
"""
BACKEND_FLAGS = {"spark": ["--spark-master", "local[2]"], "ray": []}


def _leftovers(marker: str) -> list[str]:
    """Processes that carry this run's marker in their environment (Java, Python workers, raylet…)."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.environ().get("SLUICE_TEST_RUN") == marker:
                found.append(f"{proc.info['pid']} {proc.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _start(args: list[str], cwd: Path, marker: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(cwd), str(SRC_ROOT)]),
        "SLUICE_TEST_RUN": marker,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _inputs(tmp_path: Path, files: int, rows: int) -> Path:
    for i in range(files):
        write_table(make_table(rows, start=i * rows), tmp_path / "in" / f"in-{i}.parquet")
    return tmp_path / "in"


@pytest.mark.parametrize("backend", ["spark", "ray"])
def test_no_process_outlives_a_run(backend: str, tmp_path: Path, models: object) -> None:
    marker = uuid.uuid4().hex
    model = str(models.onnx)  # type: ignore[attr-defined]
    args = ["predict", "-m", model, "-i", str(_inputs(tmp_path, 2, 1_000)), "-o", str(tmp_path / "out")]
    args += ["--key-column", "id"]
    proc = _start([*args, "--backend", backend, *BACKEND_FLAGS[backend], "--json"], tmp_path, marker)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    assert b'"rows": 2000' in stdout and b'"backend": "' + backend.encode() in stdout
    assert _leftovers(marker) == []


@pytest.mark.parametrize("backend", ["spark", "ray"])
def test_ctrl_c_stops_the_engine_and_its_workers(backend: str, tmp_path: Path) -> None:
    write_module(tmp_path, "slow_backend_model", SLOW_MODULE)
    marker = uuid.uuid4().hex
    out = tmp_path / "out"
    args = ["predict", "-m", "slow_backend_model:predict", "-i", str(_inputs(tmp_path, 6, 200)), "-o", str(out)]
    # the first two shards are quick, the others take a while: Ctrl-C lands mid-job
    proc = _start([*args, "--batch-size", "10", "--backend", backend, *BACKEND_FLAGS[backend]], tmp_path, marker)
    wait_for_part(out, proc, 240.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode().splitlines()[-1]
    assert "Traceback" not in stderr.decode(), stderr.decode()
    assert _leftovers(marker) == []
    assert not (out / "_SUCCESS").exists()
