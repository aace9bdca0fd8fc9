"""Batch prediction: the job spec, the pipelined engine and the run summary."""

from sluice.batch.progress import NullProgress, ProgressListener
from sluice.batch.run import predict, predict_batches, run_job
from sluice.batch.spec import DEFAULT_BATCH_SIZE, JobSpec
from sluice.batch.summary import RunSummary

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "JobSpec",
    "NullProgress",
    "ProgressListener",
    "RunSummary",
    "predict",
    "predict_batches",
    "run_job",
]
