"""One entry point for every backend: the job spec's ``backend`` picks the engine."""

from __future__ import annotations

from typing import Any

from sluice.batch.driver import run_on_engine
from sluice.batch.engine import Engine
from sluice.batch.local import LocalEngine
from sluice.batch.progress import ProgressListener
from sluice.batch.run import run_job as run_local
from sluice.batch.spec import JobSpec
from sluice.batch.summary import RunSummary
from sluice.errors import Interrupted

__all__ = ["BACKENDS", "engine_for", "predict", "run_job"]

BACKENDS = ("local", "spark", "ray")


def engine_for(spec: JobSpec) -> Engine:
    """The engine ``spec.backend`` names, configured from the spec (not started yet)."""
    if spec.backend == "local":
        return LocalEngine()
    if spec.backend == "spark":
        from sluice.backends.spark import SparkEngine

        return SparkEngine(spec.spark_master)
    from sluice.backends.ray import RayEngine

    return RayEngine(spec.ray_address, actors=spec.workers)


def run_job(spec: JobSpec, *, progress: ProgressListener | None = None, engine: Engine | None = None) -> RunSummary:
    """Run a batch job on its backend: ``local`` (this machine's pipeline), ``spark`` or ``ray``.

    Every backend writes the same rows, error records and ``_summary.json`` keys. ``engine``
    passes an engine you configured yourself, e.g. ``SparkEngine(session=spark)``.
    """
    if spec.backend == "local" and engine is None:
        return run_local(spec, progress=progress)
    try:
        return run_on_engine(spec, engine or engine_for(spec), progress=progress)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: completed parts are kept; run the same command again to resume") from None


def predict(model: str, input: str, output: str, **options: Any) -> RunSummary:  # noqa: A002
    """Batch prediction from ``input`` to ``output`` on ``backend=`` (default ``local``).

    ``options`` are :class:`~sluice.batch.JobSpec` fields, e.g.
    ``predict("demo@1", "in/", "out/", backend="spark", spark_master="local[2]")``.
    """
    progress = options.pop("progress", None)
    engine = options.pop("engine", None)
    return run_job(JobSpec.build(model=model, input=input, output=output, **options), progress=progress, engine=engine)
