"""The driver side of the cluster backends: shards as tasks on a started cluster engine.

Planning, the output layout, the batch size and the summary are the run driver's
(:mod:`sluice.batch.driver`), the same for every engine; a :class:`TaskEngine` only sends each
pending shard to the cluster as one task (:func:`~sluice.batch.shardtask.run_shard`), whose
output part is committed atomically by the worker, so a task the engine retries never leaves
half a part behind and a re-run (on any backend) skips complete parts.
"""

from __future__ import annotations

from collections.abc import Iterator

from sluice.batch.driver import run_on_engine
from sluice.batch.engine import STAGES, Engine, EngineRun, PlannedRun, WorkerSetup, collect
from sluice.batch.progress import ProgressListener
from sluice.batch.shardtask import ShardJob, ShardOutcome
from sluice.batch.spec import JobSpec

__all__ = ["Engine", "TaskEngine", "run_on_engine"]


class TaskEngine:
    """What Spark and Ray share: one task per core, each shard one task, outcomes counted here.

    Subclasses start and stop the cluster (``__enter__``/``__exit__``) and implement
    :meth:`slots` and :meth:`run`.
    """

    name = "tasks"

    def slots(self) -> int:
        """Tasks the engine runs at once (for the summary's busy fractions)."""
        raise NotImplementedError

    def run(self, job: ShardJob) -> Iterator[ShardOutcome]:
        """Run every shard of ``job``, yielding each outcome as its task ends."""
        raise NotImplementedError

    def worker_setup(self, spec: JobSpec, concurrency: str) -> WorkerSetup:
        """One predict thread and one ONNX Runtime thread per task: a task per core uses the cores
        without oversubscribing them."""
        return WorkerSetup(workers=spec.workers, predict_threads=1, intra_op_threads=spec.intra_op_threads or 1)

    def execute(self, run: PlannedRun, progress: ProgressListener) -> EngineRun:
        """Send the pending shards to the cluster; raises the Sluice error a task reported."""
        # The workers load their own copy of the model: the driver's served only for planning.
        run.plan.model.close()
        slots = self.slots()
        result = EngineRun(workers=slots, stage_slots=dict.fromkeys(STAGES, slots))
        if run.pending:
            collect(self.run(run.shard_job()), run, progress, result)
        return result
