"""The run driver: one set of steps (defaults, plan, layout, batch size, summary) for every engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import sluice
from sluice.backends.spark import SparkEngine
from sluice.batch.driver import pick_batch_size, plan_run, run_on_engine, with_defaults
from sluice.batch.engine import EngineRun
from sluice.batch.layout import SUMMARY
from sluice.batch.local import LocalEngine
from sluice.batch.shardrun import ShardRunner
from sluice.batch.shardtask import ShardOutcome
from sluice.batch.spec import JobSpec
from sluice.metrics import LatencyHistogram
from support import make_table, write_table


def _spec(models: Any, tmp_path: Path, **fields: Any) -> JobSpec:
    for i in range(3):
        write_table(make_table(200, start=i * 200), tmp_path / "in" / f"in-{i}.parquet")
    fields = {"key_column": "id", "batch_size": 64, **fields}
    return JobSpec.build(model=str(models.onnx), input=str(tmp_path / "in"), output=str(tmp_path / "out"), **fields)


def test_busy_fraction_divides_each_stage_by_its_own_slots() -> None:
    run = EngineRun(workers=4, stage_slots={"read": 2, "predict": 4, "write": 4})
    run.stage_seconds = {"read": 5.0, "predict": 20.0, "write": 50.0}
    assert run.busy_fraction(10.0) == {"read": 0.25, "predict": 0.5, "write": 1.0}
    assert run.busy_fraction(0.0) == {"read": 0.0, "predict": 0.0, "write": 0.0}


def test_outcomes_add_up_counts_timings_latency_and_error_files() -> None:
    latency = LatencyHistogram()
    for seconds in (0.01, 0.02, 0.03):
        latency.record(seconds)
    run = EngineRun(workers=2, stage_slots=dict.fromkeys(("read", "predict", "write"), 2))
    run.add(ShardOutcome(0, rows=10, rows_failed=1, error_file="e0", latency=latency.snapshot(),
                         stage_seconds={"read": 1.0, "predict": 2.0, "write": 0.5}))  # fmt: skip
    run.add(ShardOutcome(1, rows=5, latency=latency.snapshot(), stage_seconds={"read": 1.0, "predict": 1.0}))
    assert (run.rows, run.rows_failed, run.error_files, run.latency.count) == (15, 1, ["e0"], 6)
    assert run.stage_seconds == {"read": 2.0, "predict": 3.0, "write": 0.5}


def test_each_engine_fills_in_its_own_worker_setup(models: Any, tmp_path: Path) -> None:
    spec = _spec(models, tmp_path)
    local, _, setup = with_defaults(spec, LocalEngine())
    cores = os.cpu_count() or 1
    assert (local.workers, local.intra_op_threads, setup.predict_threads) == (cores, 1, cores)
    cluster, _, setup = with_defaults(spec, SparkEngine())  # not started: only its set-up is asked
    assert (cluster.workers, cluster.intra_op_threads, setup.predict_threads) == (None, 1, 1)
    given, _, setup = with_defaults(spec.model_copy(update={"workers": 3, "intra_op_threads": 2}), LocalEngine())
    assert (given.workers, given.intra_op_threads, setup.predict_threads) == (3, 2, 3)


def test_plan_run_skips_the_parts_a_previous_run_completed(models: Any, tmp_path: Path) -> None:
    spec = _spec(models, tmp_path)
    first = sluice.batch.run_job(spec)
    (tmp_path / "out" / "part-00001.parquet").unlink()
    run = plan_run(spec, LocalEngine())
    run.plan.model.close()
    assert ([s.index for s in run.pending], run.skipped, run.total_rows) == ([1], 2, 200)
    assert run.batch.batch_size == first.batch_size == 64


def test_a_local_engine_passed_to_the_backends_api_is_the_same_run_as_batch_run_job(
    models: Any, tmp_path: Path
) -> None:
    spec = _spec(models, tmp_path)
    via_batch = sluice.batch.run_job(spec)
    other = spec.model_copy(update={"output": str(tmp_path / "other")})
    via_api = sluice.run_job(other, engine=LocalEngine())
    assert via_api.to_dict().keys() == via_batch.to_dict().keys()
    assert (via_api.rows, via_api.shards, via_api.backend, via_api.workers) == (600, 3, "local", via_batch.workers)
    for i in range(3):
        part = f"part-{i:05d}.parquet"
        assert pq.read_table(tmp_path / "other" / part) == pq.read_table(tmp_path / "out" / part)
    written = json.loads((tmp_path / "other" / SUMMARY).read_text())
    assert (written["rows"], written["engine_start_seconds"]) == (600, 0.0)


def test_the_shard_runner_picks_the_batch_size_the_driver_picks(models: Any, tmp_path: Path) -> None:
    spec = _spec(models, tmp_path, batch_size=96)
    runner = ShardRunner(spec).open()
    try:
        run = plan_run(spec, LocalEngine())
        run.plan.model.close()
        assert runner.choose_batch_size() == pick_batch_size(run.spec, run.plan, run.pending, 2) == run.batch
        assert runner.spec.workers == run.spec.workers
        assert runner.run_shard(2, batch_size=96, progress=sluice.batch.NullProgress()).index == 2
    finally:
        runner.close()


def test_an_engine_that_fails_to_start_fails_the_run_before_any_summary(models: Any, tmp_path: Path) -> None:
    class Broken(LocalEngine):
        def __enter__(self) -> LocalEngine:
            raise sluice.errors.EngineError("could not start")

    with pytest.raises(sluice.errors.EngineError, match="could not start"):
        run_on_engine(_spec(models, tmp_path), Broken())
    assert not (tmp_path / "out" / SUMMARY).exists()
