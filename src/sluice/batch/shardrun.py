"""Running one shard of a planned job at a time: the engine as a job service's worker drives it.

:class:`ShardRunner` plans a job once (model loaded, columns bound, output located) and runs
any of its shards on demand through the same :class:`~sluice.batch.pipeline.Pipeline` that
``sluice predict`` uses. :meth:`ShardRunner.run_shard` returns only once the shard's part is
durable: written, flushed and renamed into place (or uploaded whole to an object store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sluice.batch.autotune import BatchSizeChoice, choose_batch_size
from sluice.batch.layout import OutputLayout
from sluice.batch.pipeline import Pipeline
from sluice.batch.plan import JobPlan, plan_job
from sluice.batch.predictor import Predictor
from sluice.batch.progress import ProgressListener
from sluice.batch.run import _with_defaults
from sluice.batch.spec import JobSpec
from sluice.data.shards import estimate_rows
from sluice.errors import ConfigError

__all__ = ["ShardOutcome", "ShardRunner"]


@dataclass(frozen=True)
class ShardOutcome:
    """A shard whose part is durable."""

    index: int
    rows: int
    rows_failed: int
    error_file: str | None


class ShardRunner:
    """One job, planned once; its shards run one at a time (or from several threads at once)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._plan: JobPlan | None = None
        self._layout: OutputLayout | None = None
        self._predictor: Predictor | None = None

    def open(self) -> ShardRunner:
        """Load the model and plan the job (lists the input, reads its schema)."""
        spec, model = _with_defaults(self.spec)
        try:
            self._plan = plan_job(spec, model)
            self._layout = OutputLayout(spec.output, spec.output_format, spec.storage_options)
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
        """Create the output directory and its manifest; refuses another job's output (unless overwriting)."""
        self.layout.prepare(self.fingerprint(), self.spec.overwrite)

    def choose_batch_size(self) -> BatchSizeChoice:
        """The batch size ``sluice predict`` would use (tuned, cached or given)."""
        estimates = [estimate_rows(s) for s in self.plan.shards]
        total = None if None in estimates else sum(n for n in estimates if n is not None)
        return choose_batch_size(self.spec, self.plan.model, total, list(self.plan.columns.passthrough))

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
        pipeline = Pipeline(
            self.plan,
            self.layout,
            [shard],
            batch_size=batch_size,
            workers=self.spec.workers or 1,
            readers=1,
            progress=progress,
            predictor=self._predictor,
        )
        started(pipeline)
        stats = pipeline.run()
        error_file = stats.error_files[0] if stats.error_files else None
        return ShardOutcome(index, stats.rows, stats.rows_failed, error_file)

    def close(self) -> None:
        """Stop the predict workers and release the model."""
        if self._predictor is not None:
            self._predictor.close()
            self._predictor = None
        if self._plan is not None:
            self._plan.model.close()
