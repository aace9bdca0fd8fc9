"""kill -9 of a process that runs a Python model in worker processes leaves nothing behind.

The model's worker processes are forked by a forkserver and a resource tracker watches them; a
SIGKILLed parent cannot shut any of them down, so they must notice on their own. Processes are
found by a marker in their environment, which survives their being re-parented to PID 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support import SRC_ROOT, make_table, write_module, write_table

pytestmark = pytest.mark.slow

SLOW_MODULE = """
import os, pathlib, time

def predict(x):
    pathlib.Path(os.environ["SLUICE_TEST_STARTED"], str(os.getpid())).touch()
    time.sleep(0.2)
    return x.sum(axis=1)
"""


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("SLUICE_TEST_RUN") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _describe(procs: list[psutil.Process]) -> list[str]:
    described = []
    for proc in procs:
        try:
            described.append(f"{proc.pid} ppid={proc.ppid()} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    return described


def _start(args: list[str], cwd: Path, marker: str, started: Path, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC_ROOT),
        "SLUICE_TEST_RUN": marker,
        "SLUICE_TEST_STARTED": str(started),
        "SLUICE_HOME": str(home),
    }
    command = [sys.executable, "-m", "sluice", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_predict(proc: subprocess.Popen[bytes], started: Path, deadline_s: float = 120.0) -> None:
    """Until a worker process has called the model (so the forkserver and tracker are up too)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if any(started.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"sluice exited with {proc.returncode} first: {proc.communicate()[1].decode()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the model was never called")


def _kill_and_wait_for_descendants(proc: subprocess.Popen[bytes], marker: str, deadline_s: float = 30.0) -> list[str]:
    """SIGKILL ``proc``; the marked processes still alive after ``deadline_s``."""
    helpers = [p for p in _marked(marker) if p.pid != proc.pid]
    assert len(helpers) >= 3, _describe(helpers)  # forkserver, resource tracker, worker(s)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    end = time.monotonic() + deadline_s
    left = _marked(marker)
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = _marked(marker)
    return _describe(left)


@pytest.fixture
def marker() -> Iterator[str]:
    """This test's processes' marker; whatever carries it is killed when the test ends, pass or fail."""
    value = uuid.uuid4().hex
    yield value
    for survivor in _marked(value):
        try:
            survivor.kill()
        except psutil.Error:
            continue


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_module(tmp_path / "code", "slowmodel", SLOW_MODULE)
    write_table(make_table(4_000), tmp_path / "in.parquet")
    (tmp_path / "started").mkdir()
    return tmp_path


def test_kill_9_of_predict_leaves_no_worker_forkserver_or_tracker(workspace: Path, marker: str) -> None:
    args = ["predict", "-m", "slowmodel:predict", "-i", str(workspace / "in.parquet"), "-o", str(workspace / "out")]
    proc = _start([*args, "--batch-size", "10", "--workers", "2"], workspace / "code", marker, workspace / "started",
                  workspace / "home")  # fmt: skip
    _wait_for_predict(proc, workspace / "started")
    assert _kill_and_wait_for_descendants(proc, marker) == []


def test_kill_9_of_a_jobs_worker_leaves_no_worker_forkserver_or_tracker(
    workspace: Path, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sluice.jobs

    spec = {"model": "slowmodel:predict", "input": str(workspace / "in.parquet"), "output": str(workspace / "out")}
    spec |= {"batch_size": 10, "workers": 2}
    monkeypatch.chdir(workspace / "code")  # where the model is imported from at submission
    job = sluice.jobs.submit(spec, store=workspace / "home")
    proc = _start(["jobs", "worker", "--job", job.id, "--slots", "1"], workspace / "code", marker,
                  workspace / "started", workspace / "home")  # fmt: skip
    _wait_for_predict(proc, workspace / "started")
    assert _kill_and_wait_for_descendants(proc, marker) == []
