"""The run summary (``_summary.json``) and the resource monitor that feeds it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import psutil

from sluice.metrics import peak_rss_bytes, reset_peak_rss

__all__ = ["ResourceMonitor", "ResourceUsage", "RunSummary"]


@dataclass
class ResourceUsage:
    peak_rss_bytes: int
    cpu_utilization: float
    gpu_utilization: float | None
    gpu_peak_memory_bytes: int | None = None  # device memory in use above the run's start (NVML)
    gpu_unavailable_reason: str | None = None  # why both GPU figures are None


_NO_NVML = "no GPU figures: nvidia-ml-py is not installed (pip install 'sluice[gpu]')"


class ResourceMonitor:
    """Samples memory (this process and its workers) and GPU use while a job runs."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._peak_children = 0
        self._gpu_samples: list[float] = []
        self._gpu_baseline: list[int] = []  # device memory in use on each GPU at the start
        self._gpu_peak = 0
        self._start_wall = 0.0
        self._start_cpu = 0.0
        self._nvml: Any = None
        self._no_gpu: str | None = None

    def start(self) -> None:
        reset_peak_rss()
        self._start_wall = time.perf_counter()
        self._start_cpu = _cpu_seconds(self._process)
        found = _nvml_handles()
        self._nvml, self._no_gpu = (None, found) if isinstance(found, str) else (found, None)
        if self._nvml is not None:
            self._gpu_baseline = _gpu_memory_used(self._nvml)
        self._thread = threading.Thread(target=self._run, name="sluice-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            children = sum(c.memory_info().rss for c in self._process.children(recursive=True))
        except psutil.Error:
            children = 0
        self._peak_children = max(self._peak_children, children)
        if self._nvml is not None:
            nvml, handles = self._nvml
            util = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
            self._gpu_samples.append(sum(util) / len(util) / 100)
            grown = sum(max(0, u - b) for u, b in zip(_gpu_memory_used(self._nvml), self._gpu_baseline, strict=True))
            self._gpu_peak = max(self._gpu_peak, grown)

    def stop(self) -> ResourceUsage:
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall = max(time.perf_counter() - self._start_wall, 1e-9)
        cpu = _cpu_seconds(self._process) - self._start_cpu
        peak_self = peak_rss_bytes()
        gpu = sum(self._gpu_samples) / len(self._gpu_samples) if self._gpu_samples else None
        if self._nvml is not None:
            self._nvml[0].nvmlShutdown()
        return ResourceUsage(
            peak_rss_bytes=peak_self + self._peak_children,
            cpu_utilization=round(cpu / (wall * (os.cpu_count() or 1)), 3),
            gpu_utilization=None if gpu is None else round(gpu, 3),
            gpu_peak_memory_bytes=None if self._no_gpu else self._gpu_peak,
            gpu_unavailable_reason=self._no_gpu,
        )


def _cpu_seconds(process: psutil.Process) -> float:
    t = process.cpu_times()
    own = t.user + t.system + t.children_user + t.children_system
    try:
        live = sum(sum(c.cpu_times()[:2]) for c in process.children(recursive=True))
    except psutil.Error:
        live = 0.0
    return float(own + live)


def _nvml_handles() -> tuple[Any, list[Any]] | str:
    """NVML and a handle per GPU, or why there are no GPU figures."""
    try:
        import pynvml
    except ImportError:
        return _NO_NVML
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # noqa: BLE001 - no driver / no GPU: NVML raises its own error types
        return f"no GPU figures: NVML did not start ({exc})"
    if not count:
        pynvml.nvmlShutdown()
        return "no GPU figures: NVML found no GPU"
    return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]


def _waste(counters: Mapping[str, int], padded_key: str) -> float | None:
    padded = counters.get(padded_key)
    if not padded or "tokens" not in counters:
        return None
    return round(1 - counters["tokens"] / padded, 4)


def _gpu_memory_used(nvml: tuple[Any, list[Any]]) -> list[int]:
    module, handles = nvml
    return [int(module.nvmlDeviceGetMemoryInfo(h).used) for h in handles]


@dataclass
class RunSummary:
    """The figures of one run, with the stable keys of ``_summary.json``."""

    rows: int
    rows_failed: int
    seconds: float
    rows_per_second: float
    batch_size: int
    batch_size_source: str
    tuning_seconds: float
    workers: int
    batch_latency_ms: dict[str, float | None]
    stage_busy_fraction: dict[str, float]
    peak_rss_bytes: int
    cpu_utilization: float
    gpu_utilization: float | None
    cost_per_million_usd: float | None
    model: str = ""
    input: str = ""
    output: str = ""
    shards: int = 0
    shards_skipped: int = 0
    error_files: list[str] = field(default_factory=list)
    backend: str = "local"
    engine_start_seconds: float = 0.0  # starting Spark or Ray, not part of ``seconds``
    # the model's counts over this run (e.g. truncated_records, tokens, padded_tokens of a text model)
    counters: dict[str, int] = field(default_factory=dict)
    # text models: padding cells / all cells of the forward passes, as run and as input order would pad
    padding_waste: float | None = None
    padding_waste_unbucketed: float | None = None
    batch_size_reason: str = ""  # why this batch size: tuned, cached, the option, bounded by memory
    memory_limit_bytes: int | None = None  # the job's `memory_limit`
    memory_per_row_bytes: int | None = None  # peak memory per record measured for the limit
    oom_backoffs: int = 0  # batches halved because the model ran out of memory
    final_batch_size: int | None = None  # rows per model call at the end: ``batch_size`` unless halved
    gpu_peak_memory_bytes: int | None = None  # device memory in use above the run's start (NVML)
    gpu_unavailable_reason: str | None = None  # why the GPU figures are None
    # this run found every part complete and kept the summary of the run that wrote them;
    # not a key of ``_summary.json``
    complete_before: bool = field(default=False, repr=False)

    def with_counters(self, counters: Mapping[str, int]) -> RunSummary:
        """This summary with the model's ``counters`` and the padding waste they imply."""
        self.counters = dict(sorted(counters.items()))
        self.padding_waste = _waste(counters, "padded_tokens")
        self.padding_waste_unbucketed = _waste(counters, "padded_tokens_unbucketed")
        return self

    @property
    def error_fraction(self) -> float:
        total = self.rows + self.rows_failed
        return self.rows_failed / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["complete_before"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """The summary ``to_dict`` gave; keys it does not know are ignored.

        Raises :class:`TypeError` when a key without a default is missing.
        """
        known = {f.name for f in fields(cls)} - {"complete_before"}
        return cls(**{k: v for k, v in data.items() if k in known})
