"""Measuring one set-up of a real model on real rows: throughput, latency, memory.

Each measurement loads the model afresh with the set-up's intra-op thread count (so memory
an earlier set-up left in the runtime's arena cannot hide this one's), warms up, then has
``workers`` threads call ``predict`` on batches cut from the sample for at least
``min_seconds``. Memory is the growth of the process's peak RSS over the measurement (plus,
for Python models, the growth of each of the runner's worker processes after its first call),
or, for a model torch put on a CUDA device, the peak device memory its allocator handed out
(:func:`sluice.tune.memory.memory_meter`). Running out of memory or past the time cap is
recorded, never fatal.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Mapping

import numpy as np

from sluice.errors import ModelOutOfMemory, PredictError
from sluice.metrics import LatencyHistogram, peak_rss_bytes, reset_peak_rss, rss_bytes
from sluice.models.base import Model, ModelSource
from sluice.models.loader import load_source
from sluice.models.runner import ModelRunner
from sluice.tune.memory import memory_meter
from sluice.tune.profile import Measurement, Setup

__all__ = ["ModelBench"]

_OOM_HINTS = ("alloc", "out of memory", "bad_alloc")


class ModelBench:
    """A ``measure(setup)`` function for the search, over a model and a bound sample."""

    def __init__(
        self,
        source: ModelSource,
        sample: Mapping[str, np.ndarray],
        *,
        min_seconds: float = 0.25,
        min_calls: int = 8,
        max_batch_seconds: float = 10.0,
        memory_limit_bytes: int | None = None,
    ) -> None:
        self.source = source
        self.sample = dict(sample)
        self.sample_rows = int(next(iter(self.sample.values())).shape[0])
        self.min_seconds = min_seconds
        self.min_calls = min_calls
        self.max_batch_seconds = max_batch_seconds
        self.memory_limit_bytes = memory_limit_bytes
        self.row_bytes = sum(v[:1].nbytes for v in self.sample.values())

    def model(self, intra_op_threads: int) -> Model:
        """A fresh model for each measurement: memory an earlier set-up left in the runtime's
        arena would otherwise hide this set-up's growth."""
        options = self.source.options.model_copy(update={"intra_op_threads": intra_op_threads})
        return load_source(self.source.with_options(options))

    def batches(self, size: int, count: int) -> list[dict[str, np.ndarray]]:
        """``count`` batches of ``size`` rows cut from the sample (repeating it when short)."""
        out = []
        for i in range(count):
            start = (i * size) % self.sample_rows
            index = np.arange(start, start + size) % self.sample_rows
            out.append({k: np.ascontiguousarray(v[index]) for k, v in self.sample.items()})
        return out

    def __call__(self, setup: Setup) -> Measurement:
        inputs_bytes = self.row_bytes * setup.batch_size * setup.workers
        if self.memory_limit_bytes is not None and inputs_bytes > self.memory_limit_bytes:
            return Measurement(setup, "over_memory", note=f"inputs alone need {inputs_bytes:,} bytes")
        model = self.model(setup.intra_op_threads)
        runner = ModelRunner(model, setup.workers)
        try:
            runner.start()
            return self._measure(runner, setup)
        except MemoryError:
            return Measurement(setup, "oom", note="MemoryError")
        except ModelOutOfMemory as exc:
            return Measurement(setup, "oom", note=str(exc)[:300])
        except PredictError as exc:
            if any(h in str(exc).lower() for h in _OOM_HINTS):
                return Measurement(setup, "oom", note=str(exc)[:300])
            return Measurement(setup, "error", note=str(exc)[:300])
        finally:
            runner.close()
            model.close()
            del model, runner
            gc.collect()
            _trim()

    def _measure(self, runner: ModelRunner, setup: Setup) -> Measurement:
        baseline = rss_bytes()
        reset_peak_rss()
        meter = memory_meter()
        on_device = meter.where != "host"
        if on_device:
            meter.start()
        # the model's own preparation (tokenizing, decoding) runs off the model's thread in a
        # run, beside the previous batch's predict: what is measured here is the model's call
        batches = [runner.model.prepare(b).inputs for b in self.batches(setup.batch_size, max(2, setup.workers))]
        start = time.perf_counter()
        runner.warm_up(batches[: setup.workers])  # first calls allocate and plan; every worker starts
        first = (time.perf_counter() - start) / setup.workers
        if first > self.max_batch_seconds:
            return Measurement(setup, "timeout", note=f"one batch took {first:.1f} s")
        workers = _WorkerPeaks(runner.worker_pids())
        latency = LatencyHistogram()
        rows = [0] * setup.workers
        errors: list[BaseException] = []
        deadline = time.perf_counter() + self.min_seconds

        def work(i: int) -> None:
            calls = 0
            try:
                while calls < self.min_calls or time.perf_counter() < deadline:
                    t = time.perf_counter()
                    runner.call(batches[(i + calls) % len(batches)])
                    latency.record(time.perf_counter() - t)
                    rows[i] += setup.batch_size
                    calls += 1
            except BaseException as exc:  # noqa: BLE001 - re-raised in the measuring thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(setup.workers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        pct = latency.percentiles_ms((50, 99))
        return Measurement(
            setup,
            "ok",
            rows_per_second=sum(rows) / wall,
            latency_p50_ms=pct["p50"],
            latency_p99_ms=pct["p99"],
            peak_memory_bytes=meter.peak_growth_bytes()
            if on_device
            else max(0, peak_rss_bytes() - baseline) + workers.growth_bytes(),
            batches=latency.count,
        )


class _WorkerPeaks:
    """The peak resident memory of worker processes above what each held when this started."""

    def __init__(self, pids: list[int]) -> None:
        self._baseline = {}
        for pid in pids:
            reset_peak_rss(pid)
            self._baseline[pid] = rss_bytes(pid)

    def growth_bytes(self) -> int:
        return sum(max(0, peak_rss_bytes(pid) - rss) for pid, rss in self._baseline.items())


def _trim() -> None:
    """Give freed heap memory back to the system (glibc), so the next baseline is honest."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
