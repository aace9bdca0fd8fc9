"""Ctrl-C on a real ``sluice predict`` process: exit 130, only whole parts kept, and a re-run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support import SRC_ROOT, hidden_files, make_table, wait_for_part, write_module, write_table

FILES = 6
ROWS = 30
SLOW_MODULE = """
import time

def predict(x):
    time.sleep(0.05)
    return x.sum(axis=1)
"""
CLI = "from sluice.cli.main import main; main()"


def _sluice(args: list[str], cwd: Path, modules: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(modules), str(SRC_ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_ctrl_c_keeps_whole_parts_and_rerun_completes(tmp_path: Path) -> None:
    modules = tmp_path / "mods"
    write_module(modules, "slow_sum_model", SLOW_MODULE)
    expected: dict[int, list[int]] = {}
    for i in range(FILES):
        table = make_table(ROWS, start=1000 * i)
        write_table(table, tmp_path / "in" / f"in-{i}.parquet")
        expected[i] = table.column("id").to_pylist()
    out = tmp_path / "out"
    args = [
        "predict", "-m", "slow_sum_model:predict", "-i", str(tmp_path / "in"), "-o", str(out),
        "--key-column", "id", "--batch-size", "2", "--workers", "2", "-q",
    ]  # fmt: skip

    proc = _sluice(args, tmp_path, modules)
    wait_for_part(out, proc, 60.0)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("sluice did not exit within 10 s of SIGINT")
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"interrupted" in stderr
    assert hidden_files(out) == []
    assert not (out / "_SUCCESS").exists()
    parts = sorted(out.glob("part-*.parquet"))
    assert 1 <= len(parts) < FILES
    for part in parts:
        index = int(part.name[5:10])
        table = pq.read_table(part)
        assert table.num_rows == ROWS
        assert table.column("id").to_pylist() == expected[index]

    rerun = _sluice(args, tmp_path, modules)
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr.decode()
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["shards_skipped"] == len(parts)
    ids: list[int] = []
    for i in range(FILES):
        ids += pq.read_table(out / f"part-{i:05d}.parquet").column("id").to_pylist()
    assert ids == [i for f in range(FILES) for i in expected[f]]
    assert len(set(ids)) == FILES * ROWS
    assert hidden_files(out) == []
    assert (out / "_SUCCESS").exists()
