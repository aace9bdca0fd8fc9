"""``--batch-size auto``: a short tuning pass on the first rows, cached per model and machine.

The pass runs the tuner's search with the job's own worker set-up fixed, so only the batch
size varies, and stores the answer under (model digest, hardware, worker set-up) in
``$SLUICE_CACHE_DIR/batch-sizes.json`` (default ``~/.cache/sluice``): the next job with the
same model on the same machine starts at once.

With ``memory_limit``, the model's peak memory per row is measured first on the input's first
rows (:func:`sluice.tune.memory.memory_bound`); the tuner then searches only batch sizes under
the bound it gives, and the user's, cached or default size is cut down to it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sluice.batch.spec import DEFAULT_BATCH_SIZE, JobSpec
from sluice.models.base import Model
from sluice.models.loader import model_digest
from sluice.tune.profile import hardware

if TYPE_CHECKING:
    from sluice.tune.memory import MemoryFit

__all__ = ["BatchSizeChoice", "cache_path", "choose_batch_size"]

# Tuning reads this many rows and measures each batch size this long: about 1-2 s in all.
SAMPLE_ROWS = 1 << 14
MEASURE_SECONDS = 0.1
# The tuner times the model alone; the engine adds ~0.3 ms of binding and bookkeeping per
# batch, which makes batches under ~1k rows slower end to end than the model alone suggests
# (MLP in bench/: 512 rows is the model's best, 570-640k rows/s end to end vs 730-840k at 1-4k).
MIN_AUTO_BATCH = 1024
# The tuner's largest batch, and the largest a memory limit is fitted up to under `auto`.
MAX_AUTO_BATCH = 1 << 16

_SOURCE_REASONS = {
    "option": "the `batch_size` option",
    "tuned": "tuned on the input's first rows: the highest throughput measured",
    "cache": "tuned earlier for this model on this machine (batch-size cache)",
    "default": "the default",
    "model": "the model's own batch size (a deep model is not auto-tuned: one batch takes seconds)",
}


@dataclass(frozen=True)
class BatchSizeChoice:
    batch_size: int
    source: Literal["option", "tuned", "cache", "default", "memory", "model"]
    tuning_seconds: float = 0.0
    note: str = ""
    memory_limit_bytes: int | None = None
    memory_per_row_bytes: int | None = None  # measured for the limit, inputs included

    @property
    def reason(self) -> str:
        """Why this batch size, in words (the summary's ``batch_size_reason``)."""
        return self.note or _SOURCE_REASONS.get(self.source, self.source)


def cache_path() -> Path:
    root = os.environ.get("SLUICE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sluice"
    )
    return Path(root) / "batch-sizes.json"


def choose_batch_size(
    spec: JobSpec, model: Model, estimated_rows: int | None, not_features: list[str]
) -> BatchSizeChoice:
    """The job's batch size: the user's, a cached or freshly tuned one, or the default; with
    ``memory_limit``, no larger than the batch the measured memory per row fits in the limit."""
    if spec.memory_limit is None:
        return _unbounded(spec, model, estimated_rows, not_features, MAX_AUTO_BATCH)
    started = time.perf_counter()
    fit = _memory_fit(spec, model, not_features, spec.memory_limit)
    probing = time.perf_counter() - started
    choice = _unbounded(spec, model, estimated_rows, not_features, min(fit.batch_size, MAX_AUTO_BATCH))
    return _within(choice, fit, probing)


def _unbounded(
    spec: JobSpec, model: Model, estimated_rows: int | None, not_features: list[str], max_batch: int
) -> BatchSizeChoice:
    if spec.batch_size != "auto":
        return BatchSizeChoice(spec.batch_size, "option")
    if model.preferred_batch_size is not None:
        return BatchSizeChoice(model.preferred_batch_size, "model")
    if estimated_rows is not None and estimated_rows < spec.tune_min_rows:
        return BatchSizeChoice(
            DEFAULT_BATCH_SIZE,
            "default",
            note=f"the default: input under {spec.tune_min_rows:,} rows, not worth tuning",
        )
    key = _cache_key(model, spec)
    cached = _read_cache().get(key)
    if cached is not None:
        return BatchSizeChoice(int(cached["batch_size"]), "cache")
    return _tune(spec, model, key, not_features, max_batch)


def _memory_fit(spec: JobSpec, model: Model, not_features: list[str], limit_bytes: int) -> MemoryFit:
    from sluice.tune.api import load_sample
    from sluice.tune.memory import MAX_PROBE_ROWS, memory_bound

    sample = load_sample(
        model,
        spec.input,
        rows=MAX_PROBE_ROWS,
        features=spec.features,
        not_features=not_features,
        storage_options=spec.storage_options,
    )
    largest = spec.batch_size if isinstance(spec.batch_size, int) else MAX_AUTO_BATCH
    return memory_bound(model, sample, limit_bytes, largest)


def _within(choice: BatchSizeChoice, fit: MemoryFit, probing_seconds: float) -> BatchSizeChoice:
    """``choice`` cut down to the batch ``fit`` allows, saying which bound it."""
    bounded = choice.batch_size > fit.batch_size
    if bounded:
        note = f"bounded by memory: {fit.describe()} (unbounded: {choice.reason}, {choice.batch_size:,})"
    else:
        note = f"{choice.reason}; within the memory limit: {fit.describe()}"
    return replace(
        choice,
        batch_size=fit.batch_size if bounded else choice.batch_size,
        source="memory" if bounded else choice.source,
        note=note,
        tuning_seconds=round(choice.tuning_seconds + probing_seconds, 3),
        memory_limit_bytes=fit.limit_bytes,
        memory_per_row_bytes=fit.per_row_bytes,
    )


def _tune(spec: JobSpec, model: Model, key: str, not_features: list[str], max_batch: int) -> BatchSizeChoice:
    # the tuner is imported only when a job tunes: a cached size is most runs' start-up
    from sluice.tune.api import load_sample
    from sluice.tune.measure import ModelBench
    from sluice.tune.search import SearchSpace, choose, search

    started = time.perf_counter()
    sample = load_sample(
        model,
        spec.input,
        rows=SAMPLE_ROWS,
        features=spec.features,
        not_features=not_features,
        storage_options=spec.storage_options,
    )
    bench = ModelBench(model.source, sample, min_seconds=MEASURE_SECONDS)
    smallest = min(MIN_AUTO_BATCH, max_batch)
    space = SearchSpace(
        ((spec.workers or 1, spec.intra_op_threads or 1),),
        min_batch=smallest,
        max_batch=max_batch,
        start_batch=smallest,
    )
    choice = choose(search(bench, space))
    seconds = round(time.perf_counter() - started, 3)
    if choice.measurement is None:
        return BatchSizeChoice(DEFAULT_BATCH_SIZE, "default", seconds, note=choice.reason)
    size = choice.measurement.setup.batch_size
    if max_batch >= MAX_AUTO_BATCH:  # a size tuned under a memory bound is no answer for a job without it
        _write_cache(key, {"batch_size": size, "rows_per_second": round(choice.measurement.rows_per_second)})
    return BatchSizeChoice(size, "tuned", seconds)


def _cache_key(model: Model, spec: JobSpec) -> str:
    hw = hardware()
    return "|".join([model_digest(model), hw["cpu"], str(hw["cores"]), f"w{spec.workers}", f"t{spec.intra_op_threads}"])


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, value: dict[str, Any]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = value
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs the next run a tuning pass
