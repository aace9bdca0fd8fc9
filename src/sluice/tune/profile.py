"""What tuning measures: set-ups, one measurement per set-up, and the profile of a model."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Choice", "Measurement", "Profile", "Setup", "hardware"]

Status = Literal["ok", "oom", "timeout", "error", "over_memory"]


@dataclass(frozen=True, order=True)
class Setup:
    """How a model is run: rows per ``predict`` call, parallel callers, threads per call."""

    batch_size: int
    workers: int = 1
    intra_op_threads: int = 1

    def describe(self) -> str:
        return f"batch {self.batch_size} × {self.workers} worker(s) × {self.intra_op_threads} thread(s)"


@dataclass(frozen=True)
class Measurement:
    """The figures of one set-up; ``status`` says whether it ran ("ok") or why not."""

    setup: Setup
    status: Status
    rows_per_second: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    peak_memory_bytes: int | None = None
    batches: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(**{**data, "setup": Setup(**data["setup"])})


@dataclass(frozen=True)
class Choice:
    """The chosen set-up and why: which constraint bound the choice, if any."""

    measurement: Measurement | None
    reason: str


def hardware() -> dict[str, Any]:
    """The machine a profile was measured on (part of the cache key for automatic batch sizes)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "machine": platform.machine()}


@dataclass
class Profile:
    """Every measurement of one tuning run, the constraints and the choice (``tune.json``)."""

    model: str
    model_digest: str
    measurements: list[Measurement]
    chosen: Measurement | None
    reason: str
    max_latency_ms: float | None = None
    memory_limit_bytes: int | None = None
    memory_per_row_bytes: int | None = None  # measured for the memory limit, inputs included
    price_per_hour: float | None = None
    instance: str | None = None
    tuning_seconds: float = 0.0
    sample_rows: int = 0
    hardware: dict[str, Any] = field(default_factory=hardware)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["measurements"] = [m.to_dict() for m in self.measurements]
        data["chosen"] = self.chosen.to_dict() if self.chosen else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        fields = dict(data)
        fields["measurements"] = [Measurement.from_dict(m) for m in data["measurements"]]
        fields["chosen"] = Measurement.from_dict(data["chosen"]) if data.get("chosen") else None
        return cls(**fields)
