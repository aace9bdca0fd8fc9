"""SIGTERM on a real ``sluice predict`` process group (as a supervisor sends it) stops the run as
Ctrl-C does: exit 143, only whole parts kept, no temporary or lock file left, and a re-run resumes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gate_support import Gate, finish, gate_inputs, wait_until
from support import hidden_files, listing

# the first file commits at once; each later one has far more batches than the stop lets run
SIZES = (6, 20_000, 20_000)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """The model's gate; whatever the test started is killed at its end."""
    opened = Gate(tmp_path)
    yield opened
    opened.close()


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_143_and_the_run_resumes(tmp_path: Path, gate: Gate) -> None:
    tables = gate_inputs(tmp_path / "in", SIZES)
    out = tmp_path / "out"
    args = [
        "predict", "-m", "gate_model:predict", "-i", str(tmp_path / "in"), "-o", str(out),
        "--key-column", "id", "--batch-size", "2", "--workers", "2", "-q",
    ]  # fmt: skip
    proc = gate.start(args, tmp_path)
    wait_until(lambda: gate.held() and (out / "part-00000.parquet").exists(), proc, "the first part")

    os.killpg(proc.pid, signal.SIGTERM)  # the whole group: sluice, its forkserver and its model workers
    gate.open()  # the held model calls return; the stop must drop their shards unfinished
    code, stderr = finish(proc)

    assert code == 143, stderr
    assert "Traceback" not in stderr
    assert "interrupted: completed parts are kept; run the same command again to resume" in stderr
    assert listing(out) == ["_sluice_job.json", "part-00000.parquet"]  # no temporary, lock or _SUCCESS file
    assert hidden_files(out) == []
    assert pq.read_table(out / "part-00000.parquet").column("id").to_pylist() == tables[0].column("id").to_pylist()

    rerun = gate.run([*args, "--batch-size", "4096"], tmp_path)  # the batch size is not part of the job
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["shards_skipped"], summary["rows"]) == (1, sum(SIZES))
    ids = [i for p in sorted(out.glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert ids == [i for t in tables for i in t.column("id").to_pylist()]
