"""The ``sluice`` command leaves ``sys.path`` alone unless a ``module:function`` model needs the working directory.

Each test runs the console-script entry point in a fresh interpreter started with ``-P``, so the
working directory is not on ``sys.path`` to begin with (as for the installed ``sluice`` script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import SRC_ROOT, make_table, read_jsonl, write_module, write_table

ENTRY = """
import json, os, sys
before = list(sys.path)
sys.argv = ["sluice", *sys.argv[1:]]
from sluice.cli.main import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "cwd_was_on_path": os.getcwd() in before,
                  "added": [p for p in sys.path if p not in before]}))
"""

ROW_SUM = """
def predict(x):
    return x.sum(axis=1)
"""


def _sluice(cwd: Path, *args: str | Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(SRC_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-P", "-c", ENTRY, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    assert report["cwd_was_on_path"] is False
    return report


@pytest.mark.parametrize("command", ["predict", "models"])
def test_commands_without_a_python_model_leave_sys_path_alone(tmp_path: Path, models, command: str) -> None:
    write_table(make_table(3), tmp_path / "in.parquet")
    if command == "predict":
        args: tuple[str | Path, ...] = (
            "predict",
            "-m",
            models.onnx,
            "-i",
            "in.parquet",
            "-o",
            "out",
            "--key-column",
            "id",
            "-q",
        )
    else:
        args = ("models", "show", models.onnx)
    report = _sluice(tmp_path, *args)
    assert report == {"code": 0, "cwd_was_on_path": False, "added": []}


def test_a_module_function_model_is_found_in_the_working_directory(tmp_path: Path) -> None:
    write_module(tmp_path, "row_sum_cli", ROW_SUM)
    table = make_table(5)
    write_table(table, tmp_path / "in.parquet")
    report = _sluice(
        tmp_path, "predict", "-m", "row_sum_cli:predict", "-i", "in.parquet", "-o", "out",
        "--key-column", "id", "--output-format", "jsonl", "--workers", "1", "-q",
    )  # fmt: skip
    assert report == {"code": 0, "cwd_was_on_path": False, "added": [str(tmp_path)]}
    rows = read_jsonl(tmp_path / "out" / "part-00000.jsonl")
    expected = [sum(float(table.column(f)[i].as_py()) for f in ("f0", "f1", "f2", "f3")) for i in range(5)]
    assert [r["id"] for r in rows] == list(range(5))
    assert [r["prediction"] for r in rows] == pytest.approx(expected, rel=1e-6)
