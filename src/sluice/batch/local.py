"""The local engine: this machine's pipeline, with reader threads and predict workers."""

from __future__ import annotations

import os

from sluice.batch.engine import EngineRun, PlannedRun, WorkerSetup
from sluice.batch.pipeline import Pipeline
from sluice.batch.progress import ProgressListener
from sluice.batch.spec import JobSpec

__all__ = ["LocalEngine", "default_workers"]


def default_workers(concurrency: str) -> int:
    """Predict workers when the user gives none: one per core, one for serial models."""
    if concurrency == "serial":
        return 1
    return max(1, os.cpu_count() or 1)


class LocalEngine:
    """Runs every pending shard in one :class:`~sluice.batch.pipeline.Pipeline` in this process.

    The driver's loaded model is the one that predicts: nothing is started or loaded twice.
    """

    name = "local"

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def worker_setup(self, spec: JobSpec, concurrency: str) -> WorkerSetup:
        """One predict worker per core (one for serial models), each with its share of the cores."""
        workers = spec.workers or default_workers(concurrency)
        # Several workers each running single-threaded beat one worker with a thread per
        # core on batch jobs here (bench/batch_throughput.py), and never oversubscribe.
        threads = spec.intra_op_threads or max(1, (os.cpu_count() or 1) // workers)
        return WorkerSetup(workers=workers, predict_threads=workers, intra_op_threads=threads)

    def execute(self, run: PlannedRun, progress: ProgressListener) -> EngineRun:
        """Read, predict and write the pending shards here; returns once every part is committed."""
        workers = run.predict_threads
        pipeline = Pipeline(
            run.plan,
            run.layout,
            list(run.pending),
            batch_size=run.batch.batch_size,
            workers=workers,
            readers=run.spec.readers or min(2, len(run.pending) or 1),
            progress=progress,
        )
        stats = pipeline.run()
        result = EngineRun(
            workers=workers,
            stage_slots={"read": pipeline.readers, "predict": workers, "write": workers},
            rows=stats.rows,
            rows_failed=stats.rows_failed,
            latency=stats.latency,
            stage_seconds=dict(stats.stages.seconds),
            error_files=list(stats.error_files),
            counters=dict(stats.counters),
        )
        result.add_backoffs(stats.oom_backoffs, stats.oom_max_rows)
        return result
