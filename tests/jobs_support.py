"""Helpers for the job service's tests: inputs, specs, worker processes, output comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import SRC_ROOT, make_table, write_table


def write_inputs(directory: Path, files: int, rows: int) -> list[int]:
    """``files`` Parquet files of ``rows`` rows each; returns every id in order."""
    ids: list[int] = []
    for i in range(files):
        table = make_table(rows, start=rows * i)
        write_table(table, directory / f"in-{i:02d}.parquet")
        ids += table.column("id").to_pylist()
    return ids


def write_spec(path: Path, **fields: Any) -> Path:
    path.write_text(json.dumps(fields, indent=1))
    return path


def worker_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_JOBS_FAILPOINTS")}
    env.update({"SLUICE_HOME": str(home), "PYTHONPATH": str(SRC_ROOT), **extra})
    return env


def worker_command(*extra: str) -> list[str]:
    """``sluice jobs worker`` in a fresh interpreter: until idle, one slot, short polls."""
    return [sys.executable, "-m", "sluice", "jobs", "worker", "--until-idle", "--poll", "0.05", *extra]


def run_worker(home: Path, *extra: str, failpoints: str | None = None, timeout_s: float = 60) -> int:
    """Run a worker process to its end; returns its exit code (-9 when a failpoint killed it)."""
    env = worker_env(home, **({"SLUICE_JOBS_FAILPOINTS": failpoints} if failpoints else {}))
    command = worker_command("--slots", "1", *extra)
    done = subprocess.run(command, check=False, env=env, capture_output=True, timeout=timeout_s)
    return done.returncode


def output_files(directory: Path) -> dict[str, bytes]:
    """Every file of an output directory but _summary.json (it holds timings), by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "_summary.json"}
