"""One shard in, one committed part out: the task every engine runs.

:func:`run_planned_shard` runs the local pipeline on one shard of a planned job — the same
reader, bind, predictor (bisection included), error records and atomic part writer as
``sluice predict`` on one machine — so the output of every engine and of the job service's
workers is the same by construction. A Spark task or a Ray actor calls :func:`run_shard`
with the planned job as a picklable :class:`ShardJob` and a shard position; the model is
loaded once per worker process and reused by every later task.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa

from sluice.batch.layout import OutputLayout
from sluice.batch.pipeline import Pipeline
from sluice.batch.plan import ColumnPlan, JobPlan
from sluice.batch.predictor import Predictor
from sluice.batch.progress import NullProgress, ProgressListener
from sluice.batch.spec import JobSpec
from sluice.data.shards import Shard
from sluice.errors import SluiceError
from sluice.models.base import Model, ModelSource
from sluice.models.loader import load_source

__all__ = ["ShardJob", "ShardOutcome", "run_planned_shard", "run_shard", "worker_model"]


@dataclass(frozen=True)
class ShardJob:
    """A planned job as an engine's workers receive it: no model, only where to load it from."""

    spec: JobSpec
    source: ModelSource
    shards: tuple[Shard, ...]  # the shards still to run; tasks name them by position
    schema: pa.Schema
    columns: ColumnPlan
    model_digest: str
    batch_size: int
    predict_threads: int

    def layout(self) -> OutputLayout:
        """The job's output directory, reached with the job's storage options."""
        return OutputLayout(self.spec.output, self.spec.output_format, self.spec.storage_options)


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard's task reports: counts and timings, or the Sluice error that stopped it."""

    shard: int  # the shard's index in the job (its part number)
    rows: int = 0
    rows_failed: int = 0
    error_file: str | None = None
    latency: dict[str, Any] = field(default_factory=dict)  # LatencyHistogram.snapshot()
    stage_seconds: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # the model's counts (e.g. truncated records)
    pid: int = 0
    model_loaded: bool = False  # this task loaded the model (False: a previous task's was reused)
    error_type: str | None = None
    error: str | None = None
    oom_backoffs: int = 0  # batches halved because the model ran out of memory
    oom_max_rows: int | None = None  # rows per model call after those halvings

    @property
    def index(self) -> int:
        """The shard's index in the job (its part number)."""
        return self.shard

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardOutcome:
        return cls(**json.loads(text))


def run_planned_shard(
    plan: JobPlan,
    layout: OutputLayout,
    shard: Shard,
    *,
    batch_size: int,
    workers: int,
    progress: ProgressListener,
    predictor: Predictor | None = None,
    started: Callable[[Pipeline], None] = lambda _p: None,
) -> ShardOutcome:
    """Read, predict and write ``shard``; returns once its part is durable. Sluice errors raise.

    ``started`` receives the pipeline, so another thread can :meth:`Pipeline.cancel` it.
    """
    pipeline = Pipeline(
        plan,
        layout,
        [shard],
        batch_size=batch_size,
        workers=workers,
        readers=1,
        progress=progress,
        predictor=predictor,
    )
    started(pipeline)
    stats = pipeline.run()
    return ShardOutcome(
        shard.index,
        rows=stats.rows,
        rows_failed=stats.rows_failed,
        error_file=stats.error_files[0] if stats.error_files else None,
        latency=stats.latency.snapshot(),
        stage_seconds=dict(stats.stages.seconds),
        counters=dict(stats.counters),
        pid=os.getpid(),
        oom_backoffs=stats.oom_backoffs,
        oom_max_rows=stats.oom_max_rows,
    )


_MODELS: dict[tuple[str, str], Model] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(job: ShardJob) -> tuple[Model, bool]:
    """The job's model in this worker process, loaded on first use; ``True`` if loaded now."""
    key = (job.model_digest, repr(job.source.options))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model, False
        model = load_source(job.source)
        # The engine runs one task per core already: a pool of model processes inside each
        # task would only oversubscribe the machine.
        model.concurrency = "threads"
        _MODELS[key] = model
        return model, True


def run_shard(job: ShardJob, position: int) -> ShardOutcome:
    """Run the shard at ``position`` of ``job.shards`` in this worker; Sluice errors come back as data.

    Errors that are Sluice's (bad data as a whole, a broken model) are deterministic: they are
    returned for the driver to raise, not retried. Anything else raises, so the engine's own
    task retry applies.
    """
    shard = job.shards[position]
    try:
        model, loaded = worker_model(job)
    except SluiceError as exc:
        return ShardOutcome(shard.index, pid=os.getpid(), error_type=type(exc).__name__, error=str(exc))
    plan = JobPlan(job.spec, model, [shard], job.schema, job.columns, job.model_digest)
    try:
        outcome = run_planned_shard(
            plan, job.layout(), shard, batch_size=job.batch_size, workers=job.predict_threads, progress=NullProgress()
        )
    except SluiceError as exc:
        return ShardOutcome(
            shard.index, pid=os.getpid(), model_loaded=loaded, error_type=type(exc).__name__, error=str(exc)
        )
    return replace(outcome, model_loaded=loaded)
