"""A Python model that holds its calls at a gate the test opens, and ``sluice predict`` as a real process.

Every input file but the first has ``f0 >= 1``; the model's calls on such rows wait until the
gate file ``open`` exists, leaving a ``held-PID`` marker, so a test knows the run is mid-way
(its first part committed, later shards in flight) without any timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from support import SRC_ROOT, write_module, write_table

GATE_MODULE = """
import os
import pathlib
import time

GATE = pathlib.Path(os.environ["SLUICE_TEST_GATE"])


def predict(x):
    if (x[:, 0] >= 1).any():
        (GATE / f"held-{os.getpid()}").touch()
        while not (GATE / "open").exists():
            time.sleep(0.005)
    return x.sum(axis=1)
"""
CLI = "from sluice.cli.main import main; main()"


def gate_inputs(directory: Path, sizes: tuple[int, ...]) -> list[pa.Table]:
    """One Parquet file per size; file ``i`` has ``f0 == i`` and ids from ``100_000 * i``."""
    tables = []
    rng = np.random.default_rng(3)
    for i, n in enumerate(sizes):
        columns = {
            "id": pa.array(np.arange(100_000 * i, 100_000 * i + n, dtype=np.int64)),
            "f0": pa.array(np.full(n, i, dtype=np.float32)),
        }
        columns.update({f"f{j}": pa.array(rng.normal(size=n).astype(np.float32)) for j in (1, 2, 3)})
        table = pa.table(columns)
        write_table(table, directory / f"in-{i}.parquet")
        tables.append(table)
    return tables


class Gate:
    """The gate folder the model watches, and the environment a ``sluice`` process needs to load it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "gate"
        self.dir.mkdir(parents=True)
        self.modules = root / "mods"
        write_module(self.modules, "gate_model", GATE_MODULE)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.modules), str(SRC_ROOT)]),
            "SLUICE_TEST_GATE": str(self.dir),
        }
        self._started: list[subprocess.Popen[bytes]] = []

    def open(self) -> None:
        (self.dir / "open").touch()

    def held(self) -> bool:
        return any(self.dir.glob("held-*"))

    def start(self, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        """``sluice ARGS`` in its own process group (as a supervisor would signal it)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._started.append(proc)
        return proc

    def close(self) -> None:
        """Kill what a failed test left running: the processes it started, with their workers."""
        for proc in self._started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()

    def run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", CLI, *args],
            check=False,
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, deadline_s: float = 60) -> None:
    """Wait for ``condition`` while ``proc`` runs; fail if it exits first or ``deadline_s`` passes."""
    end = time.monotonic() + deadline_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"sluice exited with {proc.returncode} before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {what} within {deadline_s} s")
        time.sleep(0.01)


def finish(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> tuple[int, str]:
    """``proc``'s exit code and stderr once it ends (killed, and the test failed, after ``timeout_s``)."""
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"sluice did not exit within {timeout_s} s")
    return proc.returncode, stderr.decode()
