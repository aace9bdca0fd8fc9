"""The run driver: every batch job, on every engine, runs through :func:`run_on_engine`.

A run flows in five steps, each written once here:

1. **plan** — resolve the model and fill in the engine's worker set-up (:func:`with_defaults`),
   load the model, list the input into shards and bind its columns (:func:`~sluice.batch.plan.plan_job`);
2. **layout** — open the output directory with the job's storage options, check that the
   output can hold the job's columns and lies outside its input (:func:`check_output`), lock it
   for this run (:mod:`~sluice.batch.outputlock`: a second run on the same output stops with
   :class:`~sluice.errors.OutputInUse`), check or write its manifest and find the parts a
   previous run completed (:func:`output_layout`);
3. **batch size** — the user's, a cached or freshly tuned one, or the default, for the worker
   set-up one task of the engine runs (:func:`pick_batch_size`);
4. **engine** — start the engine and run the pending shards on it: this machine's pipeline
   (:class:`~sluice.batch.local.LocalEngine`), or Spark tasks and Ray actors
   (:mod:`sluice.backends`), each shard committing its part atomically;
5. **summary** — the figures of the run (:func:`summarize`), written beside the parts, then
   ``_SUCCESS`` unless too many records failed (:func:`finish_run`).

A resumed run's summary and verdict cover the whole job: its counts and error files add those
of the parts it skipped (:func:`~sluice.batch.counts.committed_counts`), so a re-run ends as
the uninterrupted run would have; its time and throughput are this run's. A re-run that finds
every part complete runs nothing and keeps the summary of the run that wrote them
(:func:`kept_summary`), judging it again.

The job service's :class:`~sluice.batch.shardrun.ShardRunner` reuses steps 1-3 and runs one
shard at a time; its store writes the summary when the last shard is done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sluice.batch.autotune import BatchSizeChoice, choose_batch_size
from sluice.batch.counts import PartCounts, committed_counts
from sluice.batch.engine import Engine, EngineRun, PlannedRun, WorkerSetup
from sluice.batch.layout import ERROR_FILES, SUMMARY, OutputLayout, current_name
from sluice.batch.plan import JobPlan, plan_job
from sluice.batch.progress import NullProgress, ProgressListener
from sluice.batch.spec import DEFAULT_BATCH_SIZE, JobSpec
from sluice.batch.summary import ResourceMonitor, ResourceUsage, RunSummary
from sluice.data.shards import Shard, estimate_rows
from sluice.data.writers import check_writable
from sluice.errors import ErrorFractionExceeded
from sluice.models.base import Model
from sluice.models.loader import load_source, resolve_model

__all__ = [
    "check_output",
    "estimated_rows",
    "finish_run",
    "kept_summary",
    "output_layout",
    "pick_batch_size",
    "plan_run",
    "run_on_engine",
    "summarize",
    "with_defaults",
]

log = logging.getLogger(__name__)


def with_defaults(spec: JobSpec, engine: Engine) -> tuple[JobSpec, Model, WorkerSetup]:
    """``spec`` with the engine's worker set-up filled in, and the model loaded with it."""
    source = resolve_model(spec.model, spec.repository, options=spec.load_options(), search_path=spec.model_search_path)
    setup = engine.worker_setup(spec, source.config.concurrency or _concurrency_of(source.format))
    spec = spec.model_copy(update={"workers": setup.workers, "intra_op_threads": setup.intra_op_threads})
    model = load_source(source.with_options(spec.load_options()).with_config(spec.model_settings(source.config)))
    if model.concurrency == "serial":
        setup = replace(setup, workers=1, predict_threads=1)
        spec = spec.model_copy(update={"workers": 1})
    return spec, model, setup


def _concurrency_of(fmt: str) -> str:
    return "processes" if fmt == "python" else "threads"


def output_layout(spec: JobSpec) -> OutputLayout:
    """The job's output directory, reached with the job's storage options."""
    return OutputLayout(spec.output, spec.output_format, spec.storage_options)


def check_output(plan: JobPlan, layout: OutputLayout) -> None:
    """Before any work: the output format can hold every output column, and no input file is in the output."""
    check_writable(plan.output_schema(), plan.spec.output_format)
    layout.check_outside(s.location for s in plan.shards)


def estimated_rows(shards: Sequence[Shard]) -> int | None:
    """The rows in ``shards``, or None when a shard's count is not known before reading it."""
    estimates = [estimate_rows(s) for s in shards]
    return None if None in estimates else sum(n for n in estimates if n is not None)


def pick_batch_size(spec: JobSpec, plan: JobPlan, shards: Sequence[Shard], predict_threads: int) -> BatchSizeChoice:
    """The batch size for ``shards``, tuned (when asked) for one task of ``predict_threads`` threads."""
    if not shards:
        return BatchSizeChoice(DEFAULT_BATCH_SIZE, "default")
    tuning = spec.model_copy(update={"workers": predict_threads})
    return choose_batch_size(tuning, plan.model, estimated_rows(shards), list(plan.columns.passthrough))


def plan_run(spec: JobSpec, engine: Engine) -> PlannedRun:
    """Steps 1-3: plan ``spec`` for ``engine``, prepare its output, choose its batch size.

    The output stays claimed by this run (:meth:`OutputLayout.claim`) until the caller releases it.
    """
    layout = output_layout(spec)
    spec, model, setup = with_defaults(spec, engine)
    try:
        plan = plan_job(spec, model)
        check_output(plan, layout)
        layout.claim()
        done = layout.prepare(plan.fingerprint(), spec.overwrite)
        pending = tuple(s for s in plan.shards if s.index not in done)
        layout.remove_orphan_errors(s.index for s in pending)
        resumed = committed_counts(layout, done & {s.index for s in plan.shards})
        batch = pick_batch_size(spec, plan, pending, setup.predict_threads)
    except BaseException:
        layout.release()
        model.close()
        raise
    return PlannedRun(  # the plan's spec: planning may fill in a field (an image input's key column)
        plan.spec, plan, layout, pending, len(done), estimated_rows(pending), batch, setup.predict_threads, resumed
    )


@dataclass(frozen=True)
class _Timed:
    result: EngineRun
    seconds: float  # running the shards
    start_seconds: float  # starting the engine, not part of ``seconds``


def _execute(run: PlannedRun, engine: Engine, progress: ProgressListener) -> _Timed:
    started = time.perf_counter()
    with engine:
        start_seconds = time.perf_counter() - started
        began = time.perf_counter()
        result = engine.execute(run, progress)
        seconds = time.perf_counter() - began  # stopping the engine is not the job's time
    return _Timed(result, seconds, start_seconds)


def run_on_engine(spec: JobSpec, engine: Engine, *, progress: ProgressListener | None = None) -> RunSummary:
    """Run ``spec`` on ``engine``: plan here, run the pending shards there, write the summary.

    Raises :class:`ErrorFractionExceeded` (carrying the summary) when more records failed
    than ``spec.max_error_fraction`` allows.
    """
    progress = progress or NullProgress()
    run = plan_run(spec, engine)
    try:
        return _run_planned(run, engine, progress)
    finally:
        run.layout.release()


def _run_planned(run: PlannedRun, engine: Engine, progress: ProgressListener) -> RunSummary:
    kept = kept_summary(run)
    if kept is not None:
        run.plan.model.close()
        progress.start(run.total_rows, len(run.plan.shards), run.skipped)
        progress.finish()
        return finish_run(run.spec, run.layout, kept, write=False)
    monitor = ResourceMonitor()
    monitor.start()
    progress.start(run.total_rows, len(run.plan.shards), run.skipped)
    try:
        timed = _execute(run, engine, progress)
    finally:
        progress.finish()
        usage = monitor.stop()
        run.plan.model.close()
    summary = summarize(run, engine.name, timed.result, timed.seconds, usage)
    summary.engine_start_seconds = round(timed.start_seconds, 3)
    return finish_run(run.spec, run.layout, summary)


def summarize(run: PlannedRun, backend: str, result: EngineRun, seconds: float, usage: ResourceUsage) -> RunSummary:
    """The run's summary: counts, speed, batch size, busy fractions, resources and cost."""
    rate = (result.rows + result.rows_failed) / seconds if seconds > 0 else 0.0  # this run's speed
    return RunSummary(
        rows=result.rows + run.resumed.rows,
        rows_failed=result.rows_failed + run.resumed.rows_failed,
        seconds=round(seconds, 3),
        rows_per_second=round(rate, 1),
        batch_size=run.batch.batch_size,
        batch_size_source=run.batch.source,
        tuning_seconds=run.batch.tuning_seconds,
        workers=result.workers,
        batch_latency_ms=result.latency.percentiles_ms(),
        stage_busy_fraction=result.busy_fraction(seconds),
        peak_rss_bytes=usage.peak_rss_bytes,
        cpu_utilization=usage.cpu_utilization,
        gpu_utilization=usage.gpu_utilization,
        cost_per_million_usd=_cost_per_million(run.spec.price_per_hour, rate),
        model=run.plan.model.source.display_name,
        input=run.spec.input,
        output=run.layout.root.url,
        shards=len(run.plan.shards),
        shards_skipped=run.skipped,
        error_files=sorted([*result.error_files, *run.resumed.error_files]),
        backend=backend,
        batch_size_reason=run.batch.reason,
        memory_limit_bytes=run.batch.memory_limit_bytes,
        memory_per_row_bytes=run.batch.memory_per_row_bytes,
        oom_backoffs=result.oom_backoffs,
        final_batch_size=min(run.batch.batch_size, result.oom_max_rows or run.batch.batch_size),
        gpu_peak_memory_bytes=usage.gpu_peak_memory_bytes,
        gpu_unavailable_reason=usage.gpu_unavailable_reason,
    ).with_counters(result.counters)


def kept_summary(run: PlannedRun) -> RunSummary | None:
    """The summary of the run that completed every part, when ``run`` has nothing left to do.

    None when a part is pending, or when ``_summary.json`` is missing, unreadable or does not
    match the parts (then the run writes a fresh one from the parts' counts). The figures are
    the earlier run's; the cost is worked out again when this run names a price.
    """
    if run.pending:
        return None
    try:
        with run.layout.root.child(SUMMARY).open("rb") as fh:
            earlier = RunSummary.from_dict(json.load(fh))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: every part is complete but its summary cannot be kept (%s)", run.layout.root.url, exc)
        return None
    counted = run.resumed
    if not _describes(earlier, counted):
        return None  # e.g. the 0-row summary an earlier Sluice wrote when re-run over a complete output
    if run.layout.adopted:  # the error files it names were moved to their current names
        run.layout.write_json(SUMMARY, replace(earlier, error_files=list(counted.error_files)).to_dict())
    cost = earlier.cost_per_million_usd
    if run.spec.price_per_hour is not None:
        cost = _cost_per_million(run.spec.price_per_hour, earlier.rows_per_second)
    return replace(
        earlier,
        shards_skipped=run.skipped,
        error_files=list(counted.error_files),
        cost_per_million_usd=cost,
        complete_before=True,
    )


def _cost_per_million(price_per_hour: float | None, rows_per_second: float) -> float | None:
    if price_per_hour is None:  # most runs name no price: the price table module stays unloaded
        return None
    from sluice.tune.cost import cost_per_million

    return cost_per_million(price_per_hour, rows_per_second)


def _describes(summary: RunSummary, counted: PartCounts) -> bool:
    """Whether ``summary`` counts what the committed parts hold (error files by their current names)."""
    named = sorted(current_name(f) for f in summary.error_files)
    return (summary.rows, summary.rows_failed, named) == (
        counted.rows,
        counted.rows_failed,
        sorted(counted.error_files),
    )


def finish_run(spec: JobSpec, layout: OutputLayout, summary: RunSummary, *, write: bool = True) -> RunSummary:
    """Write the summary (unless ``write`` is false); then raise :class:`ErrorFractionExceeded` or mark ``_SUCCESS``.

    Every engine ends its run here, so the summary and the success rule are the same on each.
    A run whose output another run has taken over (object stores) raises
    :class:`~sluice.errors.OutputInUse` instead of writing either.
    """
    layout.check_claim()
    if write:
        layout.write_json(SUMMARY, summary.to_dict())
    if summary.error_fraction > spec.max_error_fraction:
        raise ErrorFractionExceeded(
            f"{summary.rows_failed} of {summary.rows + summary.rows_failed} records failed "
            f"({summary.error_fraction:.2%}), more than `max_error_fraction` {spec.max_error_fraction}; "
            f"see the {ERROR_FILES} files in {layout.root.url}",
            summary,
            params=("max_error_fraction",),
        )
    layout.mark_success()
    return summary
