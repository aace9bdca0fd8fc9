"""Running ``Model.predict`` on bound batches: in threads or worker processes, isolating bad
rows and backing off when the model runs out of memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sluice.errors import ModelOutOfMemory, PredictError
from sluice.models.base import Model
from sluice.models.runner import ModelRunner

__all__ = ["OomBackoff", "PredictResult", "Predictor"]

Tensors = dict[str, np.ndarray]
# A batch that fails as a whole this large says the model is broken, not the data.
BROKEN_MODEL_ROWS = 16


@dataclass
class PredictResult:
    """Outputs for the rows that succeeded (``ok`` indexes the input rows) and the failures."""

    outputs: Tensors
    ok: np.ndarray
    failed: list[tuple[int, str]] = field(default_factory=list)


class OomBackoff:
    """How often the model ran out of memory, and the rows per call it has been held to since.

    Shared by every thread of a predictor: once a batch of ``n`` rows ran out of memory, no
    later call gets more than ``n // 2`` rows.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.max_rows: int | None = None  # None: never ran out of memory

    def limit(self, rows: int) -> int:
        """The rows one call may take out of ``rows``."""
        with self._lock:
            return rows if self.max_rows is None else min(rows, self.max_rows)

    def halve(self, rows: int) -> None:
        """A call of ``rows`` rows ran out of memory: later calls take at most half as many."""
        with self._lock:
            self.count += 1
            half = max(1, rows // 2)
            self.max_rows = half if self.max_rows is None else min(self.max_rows, half)


class Predictor:
    """Calls the model, in this process (threads) or in a pool of worker processes.

    When a batch fails, it is split in halves until the failing rows are isolated, so one
    record the model cannot take costs that record alone, not its whole batch. When the model
    runs out of memory (:class:`~sluice.errors.ModelOutOfMemory`) the call is retried in halves
    and every later call takes at most half as many rows (:attr:`backoff`): each row is
    predicted once, in order, whatever the sizes.
    """

    def __init__(self, model: Model, workers: int) -> None:
        self.model = model
        self.runner = ModelRunner(model, workers).start()
        self.backoff = OomBackoff()

    def close(self) -> None:
        self.runner.close()

    def _call(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Predict ``inputs`` in calls of at most :attr:`backoff`'s rows, halving on out-of-memory."""
        num_rows = next(iter(inputs.values())).shape[0] if inputs else 0
        size = self.backoff.limit(num_rows)
        if size >= num_rows:
            try:
                return self.runner.call(inputs)
            except ModelOutOfMemory:
                if num_rows <= 1:
                    raise
                self.backoff.halve(num_rows)
                size = self.backoff.limit(num_rows)
        parts = [self._call({k: v[i : i + size] for k, v in inputs.items()}) for i in range(0, num_rows, size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def run(self, inputs: Tensors, num_rows: int, on_latency: Callable[[float], None]) -> PredictResult:
        """Predict ``num_rows`` bound rows; rows the model rejects are isolated and returned as failures."""
        start = time.perf_counter()
        try:
            outputs = self._call(inputs)
        except PredictError as exc:
            result = self._isolate(inputs, np.arange(num_rows), exc)
            if num_rows >= BROKEN_MODEL_ROWS and not result.ok.size:
                raise PredictError(f"the model failed on every one of {num_rows} records of a batch: {exc}") from exc
            return result
        on_latency(time.perf_counter() - start)
        return PredictResult(outputs, np.arange(num_rows))

    def _isolate(self, inputs: Tensors, rows: np.ndarray, error: PredictError) -> PredictResult:
        if rows.size == 1:
            return PredictResult({}, np.empty(0, dtype=np.int64), [(int(rows[0]), str(error))])
        parts: list[PredictResult] = []
        for half in np.array_split(np.arange(rows.size), 2):
            sub = {k: v[half] for k, v in inputs.items()}
            try:
                parts.append(PredictResult(self._call(sub), rows[half]))
            except PredictError as exc:
                parts.append(self._isolate(sub, rows[half], exc))
        good = [p for p in parts if p.ok.size]
        names = good[0].outputs.keys() if good else ()
        outputs = {k: np.concatenate([p.outputs[k] for p in good]) for k in names}
        ok = np.concatenate([p.ok for p in parts])
        return PredictResult(outputs, ok, [f for p in parts for f in p.failed])
