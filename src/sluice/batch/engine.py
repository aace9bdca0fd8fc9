"""What an engine is to the run driver: where a planned job's shards run.

The driver (:mod:`sluice.batch.driver`) plans, prepares the output, picks the batch size and
writes the summary; an :class:`Engine` only runs the pending shards. :class:`LocalEngine`
(this machine's pipeline) lives here; the Spark and Ray engines live in
:mod:`sluice.backends`, above this package.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sluice import errors
from sluice.batch.autotune import BatchSizeChoice
from sluice.batch.counts import PartCounts
from sluice.batch.layout import OutputLayout
from sluice.batch.plan import JobPlan
from sluice.batch.progress import ProgressListener
from sluice.batch.shardtask import ShardJob, ShardOutcome
from sluice.batch.spec import JobSpec
from sluice.data.shards import Shard
from sluice.errors import EngineError, SluiceError
from sluice.metrics import LatencyHistogram

__all__ = ["STAGES", "Engine", "EngineRun", "PlannedRun", "WorkerSetup", "raise_for"]

STAGES = ("read", "predict", "write")


@dataclass(frozen=True)
class WorkerSetup:
    """How an engine's tasks predict: the job's ``workers``, predict threads per task, ONNX threads in each."""

    workers: int | None
    predict_threads: int
    intra_op_threads: int


@dataclass(frozen=True)
class PlannedRun:
    """A job ready to run: its plan (model loaded), output, pending shards, skipped parts and batch size."""

    spec: JobSpec
    plan: JobPlan
    layout: OutputLayout
    pending: tuple[Shard, ...]
    skipped: int
    total_rows: int | None
    batch: BatchSizeChoice
    predict_threads: int
    resumed: PartCounts = field(default_factory=PartCounts)  # what the skipped parts, committed by an earlier run, hold

    def shard_job(self) -> ShardJob:
        """The pending shards as picklable work for another process: the model's source, not the model."""
        plan = self.plan
        return ShardJob(
            self.spec,
            plan.model.source,
            self.pending,
            plan.schema,
            plan.columns,
            plan.model_digest,
            self.batch.batch_size,
            predict_threads=self.predict_threads,
        )


@dataclass
class EngineRun:
    """What an engine reports once the pending shards are done: counts, timings and its capacity."""

    workers: int  # the summary's ``workers``: predict threads, or the engine's task slots
    stage_slots: dict[str, int]  # how many of each stage ran at once, for the busy fractions
    rows: int = 0
    rows_failed: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    error_files: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # the model's counts, summed over the shards
    oom_backoffs: int = 0  # batches halved because the model ran out of memory
    oom_max_rows: int | None = None  # the fewest rows per model call any task was held to

    def add(self, outcome: ShardOutcome) -> None:
        """Count one shard's outcome in."""
        for name, count in outcome.counters.items():
            self.counters[name] = self.counters.get(name, 0) + count
        self.add_backoffs(outcome.oom_backoffs, outcome.oom_max_rows)
        self.rows += outcome.rows
        self.rows_failed += outcome.rows_failed
        self.latency.merge(outcome.latency)
        for stage, value in outcome.stage_seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + value
        if outcome.error_file:
            self.error_files.append(outcome.error_file)

    def add_backoffs(self, count: int, max_rows: int | None) -> None:
        """Count in ``count`` out-of-memory halvings that held a task to ``max_rows`` rows per call."""
        self.oom_backoffs += count
        if max_rows is not None:
            self.oom_max_rows = max_rows if self.oom_max_rows is None else min(self.oom_max_rows, max_rows)

    def busy_fraction(self, seconds: float) -> dict[str, float]:
        """Each stage's busy time as a fraction of what its slots could have done in ``seconds``."""
        if seconds <= 0:
            return dict.fromkeys(self.stage_seconds, 0.0)
        return {
            stage: round(min(1.0, value / (seconds * self.stage_slots.get(stage, self.workers))), 3)
            for stage, value in self.stage_seconds.items()
        }


class Engine(Protocol):
    """Where the shards of a planned job run. Use as a context manager: entering starts it."""

    name: str

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def worker_setup(self, spec: JobSpec, concurrency: str) -> WorkerSetup:
        """The worker set-up this engine runs ``spec`` with, for a model of ``concurrency``."""

    def execute(self, run: PlannedRun, progress: ProgressListener) -> EngineRun:
        """Run ``run.pending`` (reporting to ``progress``) once started; raises the error that stopped a shard."""


def collect(outcomes: Iterable[ShardOutcome], run: PlannedRun, progress: ProgressListener, into: EngineRun) -> None:
    """Count each task's outcome into ``into`` as it arrives, reporting progress; raise the first failure."""
    shards = {s.index: s for s in run.pending}
    for outcome in outcomes:
        raise_for(outcome)
        into.add(outcome)
        progress.advance(outcome.rows, outcome.rows_failed)
        progress.shard_done(shards[outcome.shard], outcome.rows, outcome.rows_failed)


def raise_for(outcome: ShardOutcome) -> None:
    """Raise the Sluice error a task reported, as the same type with the same message."""
    if outcome.error is None:
        return
    cls = getattr(errors, outcome.error_type or "", None)
    if isinstance(cls, type) and issubclass(cls, SluiceError):
        try:
            raise cls(outcome.error)
        except TypeError:  # an error type whose constructor takes more than a message
            pass
    raise EngineError(outcome.error)
