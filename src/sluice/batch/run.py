"""Running a batch job end to end, and predicting in memory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from sluice.batch.autotune import BatchSizeChoice, choose_batch_size
from sluice.batch.layout import SUMMARY, OutputLayout
from sluice.batch.pipeline import Pipeline
from sluice.batch.plan import plan_job
from sluice.batch.predictor import Predictor
from sluice.batch.progress import NullProgress, ProgressListener
from sluice.batch.spec import DEFAULT_BATCH_SIZE, JobSpec
from sluice.batch.summary import ResourceMonitor, RunSummary
from sluice.data.shards import estimate_rows
from sluice.errors import ConfigError, ErrorFractionExceeded, PredictError
from sluice.models.base import Model
from sluice.models.loader import load_source, resolve_model
from sluice.models.signature import FeatureSpec
from sluice.tune.cost import cost_per_million

__all__ = ["default_workers", "finish_run", "predict", "predict_batches", "run_job"]


def default_workers(concurrency: str) -> int:
    """Predict workers when the user gives none: one per core, one for serial models."""
    if concurrency == "serial":
        return 1
    return max(1, os.cpu_count() or 1)


def _with_defaults(spec: JobSpec) -> tuple[JobSpec, Model]:
    source = resolve_model(spec.model, spec.repository, options=spec.load_options())
    workers = spec.workers or default_workers(source.config.concurrency or _concurrency_of(source.format))
    updates: dict[str, Any] = {"workers": workers}
    if spec.intra_op_threads is None:
        # Several workers each running single-threaded beat one worker with a thread per
        # core on batch jobs here (bench/batch_throughput.py), and never oversubscribe.
        updates["intra_op_threads"] = max(1, (os.cpu_count() or 1) // workers)
    spec = spec.model_copy(update=updates)
    model = load_source(source.with_options(spec.load_options()))
    if model.concurrency == "serial":
        spec = spec.model_copy(update={"workers": 1})
    return spec, model


def _concurrency_of(fmt: str) -> str:
    return "processes" if fmt == "python" else "threads"


def run_job(spec: JobSpec, *, progress: ProgressListener | None = None) -> RunSummary:
    """Run a batch prediction job; returns its summary (also written to ``_summary.json``).

    Raises :class:`ErrorFractionExceeded` (carrying the summary) when more records failed
    than ``spec.max_error_fraction`` allows.
    """
    if spec.backend != "local":
        raise ConfigError(
            f"sluice.batch.run_job runs jobs on this machine; run backend '{spec.backend}' with "
            "sluice.run_job (sluice.backends.run_job)"
        )
    progress = progress or NullProgress()
    spec, model = _with_defaults(spec)
    plan = plan_job(spec, model)
    layout = OutputLayout(spec.output, spec.output_format, spec.storage_options)
    done = layout.prepare(plan.fingerprint(), spec.overwrite)
    pending = [s for s in plan.shards if s.index not in done]
    estimates = [estimate_rows(s) for s in pending]
    total = None if None in estimates else sum(n for n in estimates if n is not None)
    batch = BatchSizeChoice(DEFAULT_BATCH_SIZE, "default")
    if pending:
        batch = choose_batch_size(spec, model, total, list(plan.columns.passthrough))
    workers = spec.workers or 1
    pipeline = Pipeline(
        plan,
        layout,
        pending,
        batch_size=batch.batch_size,
        workers=workers,
        readers=spec.readers or min(2, len(pending) or 1),
        progress=progress,
    )
    monitor = ResourceMonitor()
    monitor.start()
    start = time.perf_counter()
    progress.start(total, len(plan.shards), len(done))
    try:
        stats = pipeline.run()
    finally:
        progress.finish()
        usage = monitor.stop()
        model.close()
    seconds = time.perf_counter() - start
    processed = stats.rows + stats.rows_failed
    rate = processed / seconds if seconds > 0 else 0.0
    capacity = {"read": pipeline.readers, "predict": workers, "write": workers}
    summary = RunSummary(
        rows=stats.rows,
        rows_failed=stats.rows_failed,
        seconds=round(seconds, 3),
        rows_per_second=round(rate, 1),
        batch_size=batch.batch_size,
        batch_size_source=batch.source,
        tuning_seconds=batch.tuning_seconds,
        workers=workers,
        batch_latency_ms=stats.latency.percentiles_ms(),
        stage_busy_fraction={
            k: round(min(1.0, v / (seconds * capacity[k])), 3) if seconds > 0 else 0.0
            for k, v in stats.stages.seconds.items()
        },
        peak_rss_bytes=usage.peak_rss_bytes,
        cpu_utilization=usage.cpu_utilization,
        gpu_utilization=usage.gpu_utilization,
        cost_per_million_usd=cost_per_million(spec.price_per_hour, rate),
        model=model.source.display_name,
        input=spec.input,
        output=layout.root.url,
        shards=len(plan.shards),
        shards_skipped=len(done),
        error_files=sorted(stats.error_files),
    )
    return finish_run(spec, layout, summary)


def finish_run(spec: JobSpec, layout: OutputLayout, summary: RunSummary) -> RunSummary:
    """Write ``_summary.json``; then raise :class:`ErrorFractionExceeded` or mark the output ``_SUCCESS``.

    Every backend ends its run here, so the summary and the success rule are the same on each.
    """
    layout.write_json(SUMMARY, summary.to_dict())
    if summary.error_fraction > spec.max_error_fraction:
        raise ErrorFractionExceeded(
            f"{summary.rows_failed} of {summary.rows + summary.rows_failed} records failed "
            f"({summary.error_fraction:.2%}), more than --max-error-fraction {spec.max_error_fraction}; "
            f"see the _errors/errors-*.jsonl files in {layout.root.url}",
            summary,
        )
    layout.mark_success()
    return summary


def predict(model: str, input: str, output: str, **options: Any) -> RunSummary:  # noqa: A002
    """Batch prediction from ``input`` to ``output``; ``options`` are :class:`JobSpec` fields."""
    progress = options.pop("progress", None)
    return run_job(JobSpec.build(model=model, input=input, output=output, **options), progress=progress)


def predict_batches(
    model: Model,
    data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    features: FeatureSpec = None,
) -> Iterator[pa.RecordBatch]:
    """Predict over in-memory Arrow data; yields one batch of output columns per input batch.

    Rows the model cannot take raise :class:`~sluice.errors.BindError` or
    :class:`~sluice.errors.PredictError` naming the row; use :func:`run_job` for per-record
    error files.
    """
    if isinstance(data, pa.Table):
        batches: Iterable[pa.RecordBatch] = data.to_batches(max_chunksize=batch_size)
    elif isinstance(data, pa.RecordBatch):
        batches = [data.slice(i, batch_size) for i in range(0, data.num_rows, batch_size)]
    else:
        batches = data
    predictor = Predictor(model, 1)
    features = features or model.source.config.features or model.default_features
    try:
        for batch in batches:
            inputs = model.signature.bind(batch, features)
            result = predictor.run(inputs, batch.num_rows, lambda _s: None)
            if result.failed:
                row, message = result.failed[0]
                raise PredictError(f"row {row}: {message}")
            columns = model.signature.unbind(result.outputs, batch.num_rows)
            yield pa.RecordBatch.from_arrays([a for _, a in columns], names=[n for n, _ in columns])
    finally:
        predictor.close()
