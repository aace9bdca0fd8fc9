"""Running a model's ``predict`` where it belongs: in this process, or in worker processes.

Models whose ``predict`` releases the GIL are called from the caller's threads; models that
hold it (plain Python) run in a pool of worker processes, each of which loads the model once.
The batch engine and the tuner both call models through a :class:`ModelRunner`.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sluice.errors import PredictError
from sluice.models.base import Model, ModelSource
from sluice.models.lifeline import Owner, watch_owner
from sluice.models.loader import load_source

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["ModelRunner"]

Tensors = dict[str, np.ndarray]


class ModelRunner:
    """``call(inputs)`` runs ``predict_prepared`` (inputs the model's ``prepare`` returned) here
    or in one of ``workers`` processes."""

    def __init__(self, model: Model, workers: int) -> None:
        self.model = model
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def in_processes(self) -> bool:
        return self.model.concurrency == "processes"

    def start(self) -> ModelRunner:
        if self.in_processes and self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver: workers fork from a clean single-threaded server, never from this
            # process, whose reader threads may hold locks that a forked child would inherit.
            # Each worker watches this process, so that a SIGKILL here leaves none behind.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_worker_init,
                initargs=(self.model.source, Owner.current()),
            )
        return self

    def call(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        if self._pool is None:
            return self.model.predict_prepared(inputs)
        return self._pool.submit(_worker_predict, dict(inputs)).result()

    def warm_up(self, batches: list[Tensors]) -> None:
        """One call per batch, all submitted at once: afterwards every worker process the
        batches need has started, loaded the model and made a call."""
        if self._pool is None:
            for inputs in batches:
                self.model.predict_prepared(inputs)
            return
        for future in [self._pool.submit(_worker_predict, dict(inputs)) for inputs in batches]:
            future.result()

    def worker_pids(self) -> list[int]:
        """The process ids of this runner's workers (none when predict runs in this process).

        Only the pool's own workers: other children of this process (a server, a cluster,
        another runner's pool) are not this model's.
        """
        if self._pool is None:
            return []
        return sorted(getattr(self._pool, "_processes", None) or {})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_WORKER_MODEL: Model | None = None


def _worker_init(source: ModelSource, owner: Owner) -> None:
    global _WORKER_MODEL  # noqa: PLW0603 - one model per worker process, loaded once
    watch_owner(owner)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts us down
    _WORKER_MODEL = load_source(source)


def _worker_predict(inputs: Tensors) -> Tensors:
    if _WORKER_MODEL is None:
        raise PredictError("worker process has no model loaded")
    return _WORKER_MODEL.predict_prepared(inputs)
