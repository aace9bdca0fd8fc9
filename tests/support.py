"""Helpers shared by the tests: real input files, output readers, the in-process CLI."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from sluice.cli.main import app

FEATURES = ["f0", "f1", "f2", "f3"]
SRC_ROOT = Path(__file__).resolve().parents[1] / "src"


def onnx_predict(model_path: Path, table: pa.Table, features: Sequence[str] = FEATURES) -> dict[str, np.ndarray]:
    """The model's outputs for ``table``'s rows, computed by onnxruntime directly."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.column_stack([table.column(f).to_numpy().astype(np.float64) for f in features]).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))


# -- data ----------------------------------------------------------------------------------


def make_table(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    """``n`` rows: ``id`` (int64, from ``start``), ``name`` (string) and float32 features f0..f3."""
    rng = np.random.default_rng([seed, start])
    x = rng.normal(size=(n, 4)).astype(np.float32)
    ids = np.arange(start, start + n, dtype=np.int64)
    columns: dict[str, Any] = {"id": pa.array(ids), "name": pa.array([f"row-{i}" for i in ids])}
    columns.update({f: pa.array(x[:, j]) for j, f in enumerate(FEATURES)})
    return pa.table(columns)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_table(table: pa.Table, path: Path, fmt: str | None = None) -> Path:
    """Write ``table`` as Parquet, CSV or JSON Lines (format from the extension by default).

    Floats are written with ``repr`` so text formats round-trip the float32 values exactly.
    """
    fmt = fmt or path.suffix.lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        rows = table.to_pylist()
        lines = [",".join(table.column_names)]
        lines += [",".join(_text(r[c]) for c in table.column_names) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    else:
        raise ValueError(fmt)
    return path


def read_output(path: Path) -> pa.Table:
    """Read one output part of any format into a table (JSON Lines via json.loads)."""
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".csv":
        return pacsv.read_csv(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return pa.Table.from_pylist(rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def hidden_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def approx_equal(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a, b, strict=True))


# -- CLI -----------------------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    """Run ``sluice ARGS`` in-process."""
    return CliRunner().invoke(app, [str(a) for a in args])


# -- Python models -------------------------------------------------------------------------


def write_module(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(source)
    return path


def wait_for_part(out: Path, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    """Wait until ``proc`` (a running ``sluice predict``) has written its first part into ``out``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if out.is_dir() and any(out.glob("part-*.parquet")):
            return
        if proc.poll() is not None:
            pytest.fail(f"sluice exited with {proc.returncode} before a part appeared: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no part file appeared")
