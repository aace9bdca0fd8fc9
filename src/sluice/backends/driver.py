"""The driver side of the cluster backends: plan on the driver, run shards on the engine, summarize.

Planning (shards, columns, batch size, the output manifest) and the summary are the local
engine's own code; only where the shards run differs. Each pending shard becomes one engine
task, whose output part is committed atomically by the worker, so a task the engine retries
never leaves half a part behind and a re-run (on any backend) skips complete parts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from sluice import errors
from sluice.backends.shardtask import ShardJob, ShardOutcome
from sluice.batch.autotune import BatchSizeChoice, choose_batch_size
from sluice.batch.layout import OutputLayout
from sluice.batch.plan import JobPlan, plan_job
from sluice.batch.progress import NullProgress, ProgressListener
from sluice.batch.run import finish_run
from sluice.batch.spec import DEFAULT_BATCH_SIZE, JobSpec
from sluice.batch.summary import ResourceMonitor, ResourceUsage, RunSummary
from sluice.data.shards import estimate_rows
from sluice.errors import EngineError, SluiceError
from sluice.metrics import LatencyHistogram
from sluice.models.loader import load_source, resolve_model
from sluice.tune.cost import cost_per_million

__all__ = ["Engine", "run_on_engine"]

STAGES = ("read", "predict", "write")


class Engine(Protocol):
    """A started cluster engine that runs shard tasks. Use as a context manager."""

    name: str

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def slots(self) -> int:
        """Tasks the engine runs at once (for the summary's busy fractions)."""

    def run(self, job: ShardJob) -> Iterator[ShardOutcome]:
        """Run every shard of ``job``, yielding each outcome as its task ends."""


@dataclass(frozen=True)
class _Prepared:
    spec: JobSpec
    plan: JobPlan
    layout: OutputLayout
    job: ShardJob
    skipped: int
    total_rows: int | None
    batch: BatchSizeChoice


def _prepare(spec: JobSpec) -> _Prepared:
    # The engine runs a task per core: one predict thread and one ONNX Runtime thread in each
    # use the cores without oversubscribing them.
    threads = 1
    spec = spec.model_copy(update={"intra_op_threads": spec.intra_op_threads or 1})
    source = resolve_model(spec.model, spec.repository, options=spec.load_options())
    model = load_source(source)
    try:
        plan = plan_job(spec, model)
        layout = OutputLayout(spec.output, spec.output_format)
        done = layout.prepare(plan.fingerprint(), spec.overwrite)
        pending = tuple(s for s in plan.shards if s.index not in done)
        estimates = [estimate_rows(s) for s in pending]
        total = None if None in estimates else sum(n for n in estimates if n is not None)
        batch = BatchSizeChoice(DEFAULT_BATCH_SIZE, "default")
        if pending:
            tuning = spec.model_copy(update={"workers": threads})
            batch = choose_batch_size(tuning, model, total, list(plan.columns.passthrough))
    finally:
        model.close()
    job = ShardJob(
        spec, source, pending, plan.schema, plan.columns, plan.model_digest, batch.batch_size, predict_threads=threads
    )
    return _Prepared(spec, plan, layout, job, len(done), total, batch)


def run_on_engine(spec: JobSpec, engine: Engine, *, progress: ProgressListener | None = None) -> RunSummary:
    """Plan ``spec`` here, run its pending shards on ``engine``, write the same summary as local."""
    progress = progress or NullProgress()
    prepared = _prepare(spec)
    monitor = ResourceMonitor()
    monitor.start()
    outcomes: list[ShardOutcome] = []
    slots, start, started_s = 1, time.perf_counter(), 0.0
    progress.start(prepared.total_rows, len(prepared.plan.shards), prepared.skipped)
    try:
        with engine:
            slots = engine.slots()
            started_s = time.perf_counter() - start
            start = time.perf_counter()
            for outcome in engine.run(prepared.job) if prepared.job.shards else ():
                _raise_for(outcome)
                outcomes.append(outcome)
                progress.advance(outcome.rows, outcome.rows_failed)
                progress.shard_done(prepared.plan.shards[outcome.shard], outcome.rows, outcome.rows_failed)
            seconds = time.perf_counter() - start  # stopping the engine is not the job's time
    finally:
        progress.finish()
        usage = monitor.stop()
    summary = _summarize(prepared, engine.name, outcomes, seconds, usage, slots)
    summary.engine_start_seconds = round(started_s, 3)
    return finish_run(prepared.spec, prepared.layout, summary)


def _raise_for(outcome: ShardOutcome) -> None:
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


def _summarize(
    prepared: _Prepared, backend: str, outcomes: list[ShardOutcome], seconds: float, usage: ResourceUsage, slots: int
) -> RunSummary:
    latency = LatencyHistogram()
    busy = dict.fromkeys(STAGES, 0.0)
    for outcome in outcomes:
        latency.merge(outcome.latency)
        for stage, value in outcome.stage_seconds.items():
            busy[stage] = busy.get(stage, 0.0) + value
    rows = sum(o.rows for o in outcomes)
    failed = sum(o.rows_failed for o in outcomes)
    rate = (rows + failed) / seconds if seconds > 0 else 0.0
    spec = prepared.spec
    return RunSummary(
        rows=rows,
        rows_failed=failed,
        seconds=round(seconds, 3),
        rows_per_second=round(rate, 1),
        batch_size=prepared.batch.batch_size,
        batch_size_source=prepared.batch.source,
        tuning_seconds=prepared.batch.tuning_seconds,
        workers=slots,
        batch_latency_ms=latency.percentiles_ms(),
        stage_busy_fraction={
            k: round(min(1.0, v / (seconds * slots)), 3) if seconds > 0 else 0.0 for k, v in busy.items()
        },
        peak_rss_bytes=usage.peak_rss_bytes,
        cpu_utilization=usage.cpu_utilization,
        gpu_utilization=usage.gpu_utilization,
        cost_per_million_usd=cost_per_million(spec.price_per_hour, rate),
        model=prepared.plan.model.source.display_name,
        input=spec.input,
        output=prepared.layout.root.url,
        shards=len(prepared.plan.shards),
        shards_skipped=prepared.skipped,
        error_files=sorted(o.error_file for o in outcomes if o.error_file),
        backend=backend,
    )
