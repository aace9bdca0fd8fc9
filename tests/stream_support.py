"""Helpers for the streaming tests: landing files, running `sluice stream`, reading a sink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

import sluice
from support import SRC_ROOT, make_table, write_table


def land(table: pa.Table, directory: Path, name: str) -> Path:
    """Write ``table`` under a hidden name, then rename it into place, as a well-behaved producer does."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = write_table(table, directory / f".{name}.tmp", fmt=name.rsplit(".", 1)[-1])
    target = directory / name
    os.replace(temporary, target)
    return target


def land_files(directory: Path, files: int, rows: int, start: int = 0) -> list[int]:
    """``files`` Parquet files of ``rows`` rows each (ids from ``start``); returns their ids."""
    ids: list[int] = []
    for i in range(files):
        table = make_table(rows, start=start + rows * i)
        land(table, directory, f"in-{start + rows * i:06d}.parquet")
        ids += table.column("id").to_pylist()
    return ids


def sink_table(sink: Path) -> pa.Table:
    """The sink read as a dataset (as pyarrow and pandas users read it), sorted by id."""
    fmt = "json" if any(sink.glob("part-*.jsonl")) else "parquet"
    return ds.dataset(sink, format=fmt).to_table().sort_by("id")


def batch_table(model: Path, source: Path, out: Path) -> pa.Table:
    """What a batch run over the same files predicts, sorted by id."""
    sluice.predict(str(model), str(source), str(out), key_column="id", max_error_fraction=1.0)
    return ds.dataset(out).to_table().sort_by("id")


def error_records(sink: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in sorted((sink / "_errors").glob("*.jsonl")) for line in p.read_text().splitlines()]


def manifest(sink: Path) -> dict[str, Any]:
    return dict(json.loads((sink / "_stream.json").read_text()))


def stream_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "sluice", "stream", *(str(a) for a in args)]


def stream_env(failpoints: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_STREAM_FAILPOINTS"}
    env["PYTHONPATH"] = str(SRC_ROOT)
    if failpoints:
        env["SLUICE_STREAM_FAILPOINTS"] = failpoints
    return env


def run_stream_process(*args: str | Path, failpoints: str | None = None) -> subprocess.CompletedProcess[str]:
    """``sluice stream ARGS`` in a fresh interpreter, to its end."""
    return subprocess.run(
        stream_command(*args), env=stream_env(failpoints), capture_output=True, text=True, timeout=120, check=False
    )
