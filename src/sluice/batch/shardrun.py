"""Running one shard of a planned job at a time: the engine as a job service's worker drives it.

:class:`ShardRunner` plans a job once with the run driver's own steps (model defaults,
planning, output layout, batch size: :mod:`sluice.batch.driver`) and runs any of its shards
on demand through the same per-shard task as every engine
(:func:`~sluice.batch.shardtask.run_planned_shard`). :meth:`ShardRunner.run_shard` returns
only once the shard's part is durable: written, flushed and renamed into place (or uploaded
whole to an object store).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sluice.batch.autotune import BatchSizeChoice
from sluice.batch.driver import check_output, output_layout, pick_batch_size, with_defaults
from sluice.batch.layout import OutputLayout
from sluice.batch.local import LocalEngine
from sluice.batch.pipeline import Pipeline
from sluice.batch.plan import JobPlan, plan_job
from sluice.batch.predictor import Predictor
from sluice.batch.progress import ProgressListener
from sluice.batch.shardtask import ShardOutcome, run_planned_shard
from sluice.batch.spec import JobSpec
from sluice.errors import ConfigError

__all__ = ["ShardOutcome", "ShardRunner"]


class ShardRunner:
    """One job, planned once; its shards run one at a time (or from several threads at once)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._plan: JobPlan | None = None
        self._layout: OutputLayout | None = None
        self._predictor: Predictor | None = None

    def open(self) -> ShardRunner:
        """Load the model and plan the job (lists the input, reads its schema)."""
        spec, model, _ = with_defaults(self.spec, LocalEngine())
        try:
            self._plan = plan_job(spec, model)
            self._layout = output_layout(spec)
            self._predictor = Predictor(model, spec.workers or 1)
        except BaseException:
            model.close()
            raise
        self.spec = spec
        return self

    @property
    def plan(self) -> JobPlan:
        if self._plan is None:
            raise RuntimeError("ShardRunner.open() was not called")
        return self._plan

    @property
    def layout(self) -> OutputLayout:
        if self._layout is None:
            raise RuntimeError("ShardRunner.open() was not called")
        return self._layout

    def fingerprint(self) -> dict[str, Any]:
        """What the output manifest records; equal for the same model, input and options."""
        return self.plan.fingerprint()

    def prepare_output(self) -> None:
        """Create the output directory and its manifest; refuses another job's output (unless overwriting).

        Refuses too, before any work, columns the output format cannot hold and input files inside the output.
        """
        check_output(self.plan, self.layout)
        self.layout.prepare(self.fingerprint(), self.spec.overwrite)

    def choose_batch_size(self) -> BatchSizeChoice:
        """The batch size ``sluice predict`` would use (tuned, cached or given)."""
        return pick_batch_size(self.spec, self.plan, self.plan.shards, self.spec.workers or 1)

    def run_shard(
        self,
        index: int,
        *,
        batch_size: int,
        progress: ProgressListener,
        started: Callable[[Pipeline], None] = lambda _p: None,
    ) -> ShardOutcome:
        """Read, predict and write shard ``index``; returns once its part is durable.

        ``started`` receives the pipeline, so another thread can :meth:`Pipeline.cancel` it.
        Temporary files that a crashed attempt at this shard left behind are removed first.
        """
        if not 0 <= index < len(self.plan.shards):
            raise ConfigError(f"shard {index} does not exist; the job has {len(self.plan.shards)} shards")
        shard = self.plan.shards[index]
        self.layout.remove_leftovers(index)
        return run_planned_shard(
            self.plan,
            self.layout,
            shard,
            batch_size=batch_size,
            workers=self.spec.workers or 1,
            progress=progress,
            predictor=self._predictor,
            started=started,
        )

    def close(self) -> None:
        """Stop the predict workers and release the model."""
        if self._predictor is not None:
            self._predictor.close()
            self._predictor = None
        if self._plan is not None:
            self._plan.model.close()
