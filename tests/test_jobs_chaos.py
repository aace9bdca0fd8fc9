"""Exactly-once output: SIGKILL real worker processes at seeded points, resume, compare with an uninterrupted run."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

import sluice.jobs
from jobs_support import output_files, run_worker, worker_command, worker_env, write_inputs
from sluice.jobs.model import JobState
from sluice.jobs.sqlite import SqliteJobStore
from support import hidden_files

SEED = 20261129
FILES, ROWS, BATCH = 12, 300, 100  # 3 batches per shard: a kill can land inside a part


def _kill_plan(rng: random.Random) -> list[tuple[str, int]]:
    """Every failpoint once, the per-shard ones in a seeded order and at a seeded visit."""
    middle = ["shard.claimed", "shard.batch_written", "shard.committed", "shard.recorded"]
    rng.shuffle(middle)
    visits = {"shard.batch_written": rng.randint(2, 4)}
    plan = [("job.prepared", 1)]
    plan += [(point, visits.get(point, rng.randint(1, 2))) for point in middle]
    return [*plan, ("job.summary", 1), ("job.succeeded", 1)]


def _no_overlapping_attempts(attempts: list[dict[str, Any]]) -> bool:
    by_shard: dict[int, list[tuple[float, float]]] = {}
    for a in attempts:
        by_shard.setdefault(a["idx"], []).append((a["started_at"], a["ended_at"]))
    for spans in by_shard.values():
        spans.sort()
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
            return False
    return True


def test_sigkill_at_seeded_points_then_resume_matches_an_uninterrupted_run(tmp_path: Path, models) -> None:
    ids = write_inputs(tmp_path / "in", FILES, ROWS)
    base = {"model": str(models.onnx), "input": str(tmp_path / "in"), "key_column": "id", "batch_size": BATCH}
    reference = sluice.jobs.submit({**base, "output": str(tmp_path / "ref")}, store=tmp_path / "home-ref")
    assert reference.wait().state is JobState.SUCCEEDED

    home, out = tmp_path / "home", tmp_path / "out"
    job = sluice.jobs.submit({**base, "output": str(out), "max_attempts": 10}, store=home)
    rng = random.Random(SEED)
    plan = _kill_plan(rng)
    killed = [(point, run_worker(home, failpoints=f"{point}={visit}")) for point, visit in plan]
    assert killed == [(point, -signal.SIGKILL) for point, _ in plan]  # 7 distinct points, each a real SIGKILL

    # and once more from outside, at a seeded moment of a fresh job's run
    assert job.status().state is JobState.RUNNING  # killed before recording the end: FINISH is redone
    victim = subprocess.Popen(worker_command("--slots", "1"), env=worker_env(home))
    time.sleep(rng.uniform(0.2, 1.0))
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    assert run_worker(home) == 0
    final = job.status()
    assert (final.state, final.rows, final.rows_failed, final.shards_done) == (
        JobState.SUCCEEDED,
        FILES * ROWS,
        0,
        FILES,
    )
    assert output_files(out) == output_files(tmp_path / "ref")  # same part files, byte for byte
    assert hidden_files(out) == []
    got = [i for p in sorted(out.glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert got == ids  # no duplicate, no missing row

    attempts = SqliteJobStore(home / "jobs.db").attempts(job.id)
    done = sorted(a["idx"] for a in attempts if a["outcome"] == "DONE")
    assert done == list(range(FILES))  # every shard recorded exactly once
    assert sum(a["outcome"] == "LOST" for a in attempts) == 3  # claimed, batch_written, committed
    assert _no_overlapping_attempts(attempts)
    messages = [e.message for _, e in job.logs()]
    assert sum("its worker's process is gone; it will be redone" in m for m in messages) == 3
