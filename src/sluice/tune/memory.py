"""Batch size from a memory limit: measure peak memory per row, fit the batch under the limit.

A predict call's peak memory grows with its rows: ``fixed + per_row × rows``. The probe calls
the loaded model twice on batches growing fourfold from :data:`FIRST_PROBE_ROWS` and measures
the peak of each pair of calls above the memory in use before the first probe: on the GPU the
model computes on when torch has put it there (``torch.cuda.max_memory_allocated``), else this
process's resident memory (its peak RSS). Measuring from before the first call counts what a
runtime keeps between calls (ONNX Runtime's arena, caches) as well as what a call frees again.
It stops once a probe uses half the usable limit or reaches the largest size asked for. The two
largest probes give the line; :func:`fit_batch` takes the largest batch whose predicted peak,
plus the batch's own inputs, fits the limit less :data:`MARGIN`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sluice.errors import ConfigError, ModelOutOfMemory, PredictError
from sluice.metrics import peak_rss_bytes, reset_peak_rss
from sluice.models.base import Model

__all__ = [
    "MARGIN",
    "HostMemoryMeter",
    "MemoryFit",
    "MemoryMeter",
    "Probe",
    "fit_batch",
    "format_bytes",
    "memory_bound",
    "memory_meter",
    "probe_memory",
]

# Measured peaks vary between calls (allocator caching, fragmentation): a fifth of the limit
# is kept free so that a batch sized from the probes does not land just over it.
MARGIN = 0.2
FIRST_PROBE_ROWS = 8
PROBE_FACTOR = 4
# Larger probes cost seconds on a deep model on CPU; the line from smaller ones extrapolates.
MAX_PROBE_ROWS = 1024


class MemoryMeter(Protocol):
    """Peak memory above a baseline, from :meth:`start` on; ``where`` names the memory measured."""

    where: str

    def start(self) -> None:
        """Take the baseline and forget earlier peaks."""

    def reset_peak(self) -> None:
        """Forget earlier peaks, keeping the baseline."""

    def peak_growth_bytes(self) -> int:
        """The highest memory use above the baseline since :meth:`start`."""


class HostMemoryMeter:
    """This process's peak resident memory above what it held at :meth:`start` (Linux's VmHWM)."""

    where = "host"

    def __init__(self) -> None:
        self._baseline = 0

    def start(self) -> None:
        """Free what can be freed, then take the resident memory as the baseline."""
        self.reset_peak()
        import psutil

        self._baseline = int(psutil.Process().memory_info().rss)

    def reset_peak(self) -> None:
        """Give freed memory back to the system, then restart the peak-RSS mark."""
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: an honest peak
        reset_peak_rss()

    def peak_growth_bytes(self) -> int:
        """Peak RSS since :meth:`start` above the baseline."""
        return max(0, peak_rss_bytes() - self._baseline)


def memory_meter() -> MemoryMeter:
    """The meter for the memory a model computes in: its CUDA device when torch put it on one, else the host."""
    if "torch" in sys.modules:  # only a model that imported torch can hold CUDA memory through it
        from sluice.models.deep.memory import cuda_meter

        meter = cuda_meter()
        if meter is not None:
            return meter
    return HostMemoryMeter()


@dataclass(frozen=True)
class Probe:
    """One measured call: its rows and the peak memory above the baseline during it."""

    rows: int
    peak_bytes: int


@dataclass(frozen=True)
class MemoryFit:
    """The largest batch whose measured memory fits ``limit_bytes``, and the figures behind it."""

    batch_size: int
    limit_bytes: int
    per_row_bytes: int  # model memory per row plus the row's inputs
    fixed_bytes: int  # memory a call takes whatever its rows
    where: str  # "host" or the CUDA device measured
    probes: tuple[Probe, ...]

    def describe(self) -> str:
        """The figures in words, for the summary's batch-size reason."""
        return (
            f"{format_bytes(self.per_row_bytes)} per record + {format_bytes(self.fixed_bytes)} per call "
            f"measured on {self.where}; the memory limit {format_bytes(self.limit_bytes)} less its {MARGIN:.0%} "
            f"margin holds {self.batch_size:,} records"
        )


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1 (``1.5 MiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fit_batch(probes: list[Probe], limit_bytes: int, input_row_bytes: int, where: str) -> MemoryFit:
    """The largest batch whose predicted peak (line through the two largest probes, inputs
    included) fits ``limit_bytes`` less :data:`MARGIN`.

    Raises :class:`ConfigError` naming the figures when not even one record fits.
    """
    probes = sorted(probes, key=lambda p: p.rows)
    last = probes[-1]
    slope = 0.0
    if len(probes) > 1 and last.rows > probes[-2].rows:
        slope = (last.peak_bytes - probes[-2].peak_bytes) / (last.rows - probes[-2].rows)
    if slope <= 0:  # noise between close peaks: charge the whole peak to the rows, which over-estimates
        slope = last.peak_bytes / last.rows
    fixed = max(0, round(last.peak_bytes - slope * last.rows))
    per_row = max(1, round(slope) + input_row_bytes)
    usable = limit_bytes * (1 - MARGIN)
    batch = int((usable - fixed) // per_row)
    if batch < 1:
        raise ConfigError(
            f"`memory_limit` {format_bytes(limit_bytes)} cannot hold one record: measured on {where}, "
            f"{last.rows:,} records took {format_bytes(last.peak_bytes)} ({format_bytes(per_row)} per record "
            f"with its inputs + {format_bytes(fixed)} per call), over the {format_bytes(round(usable))} the limit "
            f"leaves after its {MARGIN:.0%} margin; raise the limit",
            params=("memory_limit",),
        )
    return MemoryFit(batch, limit_bytes, per_row, fixed, where, tuple(probes))


def probe_memory(model: Model, sample: Mapping[str, np.ndarray], limit_bytes: int, max_rows: int) -> list[Probe]:
    """Peak memory of ``model``'s predict on batches of growing size cut from the bound ``sample``.

    Stops after the probe of ``max_rows`` rows (at most :data:`MAX_PROBE_ROWS`), after one that
    used half the usable limit, or before one that ran out of memory (a CUDA out-of-memory);
    when the first probe runs out, it is halved until one record.
    """
    meter = memory_meter()
    largest = max(1, min(max_rows, MAX_PROBE_ROWS))
    probes: list[Probe] = []
    rows = min(FIRST_PROBE_ROWS, largest)
    meter.start()
    while True:
        try:
            probes.append(Probe(rows, _peak_of(model, _cut(sample, rows), meter)))
        except ModelOutOfMemory as exc:
            if probes:
                break
            if rows == 1:
                raise _probe_error(ModelOutOfMemory, "ran out of memory on one record", exc) from exc
            rows //= 2
            continue
        except PredictError as exc:  # a record the model rejects: the smaller probes must do
            if probes:
                break
            raise _probe_error(PredictError, f"failed on the input's first {rows} records", exc) from exc
        if rows >= largest or probes[-1].peak_bytes >= limit_bytes * (1 - MARGIN) / 2:
            break
        rows = min(rows * PROBE_FACTOR, largest)
    return probes


def _peak_of(model: Model, batch: dict[str, np.ndarray], meter: MemoryMeter) -> int:
    """The peak memory above the meter's baseline of two predict calls on ``batch``."""
    prepared = model.prepare(batch).inputs
    meter.reset_peak()
    for _ in range(2):  # a first call of a size may allocate differently from the next
        model.predict_prepared(prepared)
    return meter.peak_growth_bytes()


def _probe_error(kind: type[PredictError], what: str, exc: Exception) -> PredictError:
    message = f"measuring the memory per record for `memory_limit`: the model {what}: {exc}"
    return kind(message, params=("memory_limit",))


def memory_bound(model: Model, sample: Mapping[str, np.ndarray], limit_bytes: int, max_rows: int) -> MemoryFit:
    """Probe ``model`` on ``sample`` (calls of up to ``max_rows`` rows); fit the largest batch under ``limit_bytes``."""
    if limit_bytes <= 0:
        raise ConfigError(f"`memory_limit` must be more than 0 bytes, found {limit_bytes}", params=("memory_limit",))
    probes = probe_memory(model, sample, limit_bytes, max_rows)
    input_row_bytes = sum(v[:1].nbytes for v in sample.values())
    return fit_batch(probes, limit_bytes, input_row_bytes, memory_meter().where)


def _cut(sample: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``rows`` rows of ``sample``, repeating it when it is shorter."""
    available = int(next(iter(sample.values())).shape[0])
    index = np.arange(rows) % available
    return {k: np.ascontiguousarray(v[index]) for k, v in sample.items()}
