"""Running a batch job end to end on this machine, and predicting in memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from sluice.batch.driver import finish_run, run_on_engine
from sluice.batch.local import LocalEngine, default_workers
from sluice.batch.plan import image_binding
from sluice.batch.predictor import Predictor
from sluice.batch.progress import ProgressListener
from sluice.batch.spec import DEFAULT_BATCH_SIZE, JobSpec
from sluice.batch.step import predict_step
from sluice.batch.summary import RunSummary
from sluice.errors import ConfigError, DataError
from sluice.models.base import Model
from sluice.models.signature import BindPlan, FeatureSpec


def _plan(model: Model, schema: pa.Schema, features: FeatureSpec, image_column: str | None) -> BindPlan:
    if image_column is None:
        return model.signature.plan(schema, features)
    image = image_binding(image_column, model, schema)
    if image.paths is not None:
        raise DataError(
            f"`image_column` '{image_column}' holds paths; in memory, give the encoded images as a binary "
            "column, or predict from files with sluice.predict, whose readers read the images",
            params=("image_column",),
        )
    return model.signature.plan(schema, image.features)


__all__ = ["default_workers", "finish_run", "predict", "predict_batches", "run_job"]


def run_job(spec: JobSpec, *, progress: ProgressListener | None = None) -> RunSummary:
    """Run a batch prediction job on this machine; returns its summary (also written beside the parts).

    Raises :class:`~sluice.errors.ErrorFractionExceeded` (carrying the summary) when more
    records failed than ``spec.max_error_fraction`` allows.
    """
    if spec.backend != "local":
        raise ConfigError(
            f"sluice.batch.run_job runs jobs on this machine; run backend '{spec.backend}' with "
            "sluice.run_job (sluice.backends.run_job)"
        )
    return run_on_engine(spec, LocalEngine(), progress=progress)


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
    text_column: str | None = None,
    image_column: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Predict over in-memory Arrow data; yields one batch of output columns per input batch.

    ``text_column`` names the string column a text model reads (default: the only string column).
    ``image_column`` names a binary column of encoded images that feeds an image model (a column
    of image paths is read by :func:`predict`'s readers; here the images are already in memory).

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
    features = features or ([text_column] if text_column else None) or model.source.config.features
    features = features or model.default_features
    plans: dict[pa.Schema, BindPlan] = {}
    try:
        for batch in batches:
            if (bind := plans.get(batch.schema)) is None:
                bind = plans[batch.schema] = _plan(model, batch.schema, features, image_column)
            yield predict_step(batch, bind, predictor, strict=True).batch
    finally:
        predictor.close()
