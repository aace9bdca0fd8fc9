"""The cost model: instance prices, cost per 1M predictions, and capacity plans for a deadline.

Everything here is pure arithmetic on its inputs except :func:`load_prices`, which reads the
price table (the built-in ``prices.yaml``, ``$SLUICE_PRICES`` or a given file).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sluice.errors import ConfigError

if TYPE_CHECKING:
    from sluice.tune.profile import Profile

__all__ = [
    "PRICES_ENV",
    "CostPlan",
    "Instance",
    "InstancePlan",
    "PriceTable",
    "Throughput",
    "cost_per_million",
    "load_prices",
    "parse_deadline",
    "parse_prices",
    "parse_rows",
    "plan_capacity",
]

PRICES_ENV = "SLUICE_PRICES"
BUILTIN_PRICES = "the built-in price table (sluice/tune/prices.yaml)"
NEEDS_GPU = "not planned: needs a GPU measurement"
NEEDS_CPU = "not planned: needs a CPU-only measurement"


def cost_per_million(price_per_hour: float | None, rows_per_second: float) -> float | None:
    """USD per 1M predictions: price per hour / (rows per second × 3600) × 1e6.

    ``None`` without a price, or when nothing was predicted (``rows_per_second <= 0``).
    """
    if price_per_hour is None or rows_per_second <= 0:
        return None
    return price_per_hour / (rows_per_second * 3600) * 1e6


# -- the price table -----------------------------------------------------------------------


class Instance(BaseModel):
    """One machine type and what it costs per hour (USD)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    vcpus: int = Field(ge=1)
    memory_gib: float | None = Field(gt=0, description="Memory; null if unknown.")
    gpus: int = Field(default=0, ge=0)
    gpu: str | None = None
    on_demand_usd_per_hour: float = Field(ge=0)
    spot_usd_per_hour: float | None = Field(default=None, ge=0)
    source: str = Field(min_length=1, description="Where the prices come from.")
    date: str = Field(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM the prices date from.")

    @model_validator(mode="after")
    def _gpu_named_when_counted(self) -> Instance:
        if self.gpus and not self.gpu:
            raise ValueError("gpu must name the GPU model when gpus > 0")
        if not self.gpus and self.gpu:
            raise ValueError("gpu must be null when gpus is 0")
        return self


class _TableFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[Instance] = Field(min_length=1)


@dataclass(frozen=True)
class PriceTable:
    """The instances one can plan for; ``source`` says which file they came from."""

    instances: tuple[Instance, ...]
    source: str

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def get(self, name: str) -> Instance:
        """The instance called ``name`` (case-insensitive); ConfigError naming close matches."""
        by_key = {i.name.casefold(): i for i in self.instances}
        found = by_key.get(name.casefold())
        if found is not None:
            return found
        close = difflib.get_close_matches(name.casefold(), list(by_key), n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(by_key[c].name for c in close)}?"
            if close
            else f"known instances: {', '.join(i.name for i in self.instances)}"
        )
        raise ConfigError(
            f"unknown instance {name!r} in {self.source}; {hint} (add your own with `prices=FILE`)", params=("prices",)
        )

    def select(self, names: Sequence[str]) -> list[Instance]:
        """The named instances in the order given, each once."""
        chosen = [self.get(n) for n in names]
        return list({i.name: i for i in chosen}.values())


def load_prices(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> PriceTable:
    """The price table from ``path``, else ``$SLUICE_PRICES``, else the built-in one."""
    env = os.environ if environ is None else environ
    if path is None and env.get(PRICES_ENV):
        path, origin = env[PRICES_ENV], f" (from ${PRICES_ENV})"
    else:
        origin = ""
    if path is None:
        text = resources.files("sluice").joinpath("tune", "prices.yaml").read_text(encoding="utf-8")
        return parse_prices(text, BUILTIN_PRICES)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read price table {path}{origin}: {exc.strerror}") from exc
    return parse_prices(text, str(path))


def parse_prices(text: str, source: str) -> PriceTable:
    """Validate a YAML price table; errors name ``source``, the entry and the field.

    Top-level keys starting with ``x-`` are ignored (room for YAML anchors).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping with an 'instances' list, found {type(data).__name__}")
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    try:
        table = _TableFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, data)}") from exc
    keys = [i.name.casefold() for i in table.instances]
    twice = [i.name for n, i in enumerate(table.instances) if keys.count(keys[n]) > 1 and keys.index(keys[n]) == n]
    if twice:
        raise ConfigError(f"{source}: instance(s) listed more than once: {', '.join(twice)}")
    return PriceTable(tuple(table.instances), source)


def _describe(exc: ValidationError, data: dict[Any, Any]) -> str:
    """Pydantic's errors with ``instances[i] (name)`` in place of bare indices."""
    entries = data.get("instances")
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "instances" and isinstance(loc[1], int) and isinstance(entries, list):
            entry = entries[loc[1]] if loc[1] < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"instances[{loc[1]}]" + (f" ({name})" if name else "")
            where += "".join(f": {p}" for p in loc[2:])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


# -- parsing rows and deadlines ------------------------------------------------------------

_ROWS = re.compile(r"(\d+(?:_\d+)*(?:\.\d+)?(?:e\+?\d{1,2})?)([kmb]?)", re.IGNORECASE)
_ROW_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_DURATION_UNITS_S = (86400, 3600, 60, 1)


def parse_rows(text: str) -> int:
    """A row count: ``1000000``, ``1_000_000``, ``1e9``, ``2.5M``, ``10k``, ``1B``."""
    match = _ROWS.fullmatch(text.strip())
    # The pattern admits only decimal literals (PEP 515 underscores included), which Decimal parses exactly.
    value = Decimal(match[1]) * _ROW_SUFFIX[match[2].lower()] if match else None
    if value is None or value < 1 or value != value.to_integral_value():
        raise ConfigError(
            f"invalid row count {text!r}: expected a positive whole number such as "
            "1000000, 1_000_000, 1e9, 2.5M or 1B (suffixes K, M, B)"
        )
    return int(value)


def parse_deadline(text: str) -> float:
    """A duration in seconds: ``2h``, ``90m``, ``45s``, ``1h30m``, ``1.5h``, ``1d``."""
    compact = text.strip().lower().replace(" ", "")
    match = _DURATION.fullmatch(compact) if compact else None
    seconds = 0.0
    if match:
        seconds = sum(float(v) * unit for v, unit in zip(match.groups(), _DURATION_UNITS_S, strict=True) if v)
    if seconds <= 0:
        raise ConfigError(
            f"invalid deadline {text!r}: expected a duration such as 2h, 90m, 45s or 1h30m "
            "(units d, h, m, s, largest first)"
        )
    return seconds


# -- the capacity planner ------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """A measured rate: ``rows_per_second`` on a machine with ``cores`` CPUs and ``gpus`` GPUs used."""

    rows_per_second: float
    cores: int
    gpus: int = 0
    source: str = "rows_per_second"

    @classmethod
    def from_profile(cls, profile: Profile, origin: str, cores: int | None = None, gpus: int = 0) -> Throughput:
        """The chosen set-up's rate from a ``sluice tune`` profile (cores from its hardware)."""
        chosen = profile.chosen
        if chosen is None:
            raise ConfigError(f"{origin}: the profile has no chosen set-up ({profile.reason}); nothing to plan from")
        measured_cores = cores if cores is not None else profile.hardware.get("cores")
        if not isinstance(measured_cores, int):
            raise ConfigError(f"{origin}: hardware.cores is missing; pass `cores`", params=("cores",))
        # A profile times the model alone; a whole job also reads and writes (see docs/cost.md).
        origin = f"{origin}: {chosen.setup.describe()}, the model alone, without reading and writing data"
        return cls(chosen.rows_per_second, measured_cores, gpus, origin)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], origin: str, cores: int, gpus: int = 0) -> Throughput:
        """The rate of a ``sluice predict`` run from its ``_summary.json``."""
        rate = summary.get("rows_per_second")
        if not isinstance(rate, int | float) or isinstance(rate, bool):
            raise ConfigError(f"{origin}: rows_per_second is missing or not a number; is this a _summary.json?")
        return cls(float(rate), cores, gpus, f"{origin}: sluice predict run")

    def check(self) -> None:
        """Raise ConfigError unless the figures can be planned from."""
        if not self.rows_per_second > 0 or math.isinf(self.rows_per_second):
            raise ConfigError(f"measured rows per second must be > 0, found {self.rows_per_second} ({self.source})")
        if self.cores < 1:
            raise ConfigError(f"cores must be at least 1, found {self.cores}")
        if self.gpus < 0:
            raise ConfigError(f"GPU count must be 0 or more, found {self.gpus}")

    def assumption(self) -> str:
        """The scaling assumption a plan from this measurement makes, in words."""
        billing = (
            "The rows are split evenly over independent instances, billed per second, "
            "with no start-up time or minimum charge."
        )
        if self.gpus:
            per_gpu = self.rows_per_second / self.gpus
            return (
                f"Throughput scales linearly with the GPU count: {self.rows_per_second:,.0f} rows/s measured with "
                f"{self.gpus} GPU(s) is {per_gpu:,.0f} rows/s per GPU, assuming every GPU is as fast as the "
                f"measured one (a different GPU model can be much faster or slower). {billing} "
                "CPU-only instances are not planned from a GPU measurement."
            )
        per_vcpu = self.rows_per_second / self.cores
        return (
            f"Throughput scales linearly with vCPUs: {self.rows_per_second:,.0f} rows/s measured on "
            f"{self.cores} cores is {per_vcpu:,.0f} rows/s per vCPU. {billing} "
            "GPU instances are not planned from a CPU-only measurement."
        )


@dataclass(frozen=True)
class InstancePlan:
    """How many of one instance meet the deadline, and what that costs (USD); figures are None if not planned."""

    instance: Instance
    rows_per_second_per_instance: float | None = None
    instances_needed: int | None = None
    wall_seconds: float | None = None
    on_demand_usd: float | None = None
    spot_usd: float | None = None
    not_planned: str | None = None

    @property
    def planned(self) -> bool:
        return self.not_planned is None

    def to_dict(self) -> dict[str, Any]:
        inst, rate = self.instance, self.rows_per_second_per_instance
        return {
            "instance": inst.name,
            **inst.model_dump(exclude={"name", "memory_gib", "source", "date"}),
            "planned": self.planned,
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "instance"},
            "on_demand_usd_per_million": None if rate is None else cost_per_million(inst.on_demand_usd_per_hour, rate),
        }


@dataclass(frozen=True)
class CostPlan:
    """Plans for every candidate instance: cheapest on demand first (then fastest), unplannable ones last."""

    rows: int
    deadline_seconds: float
    measured: Throughput
    plans: tuple[InstancePlan, ...]
    prices: str = ""
    notes: tuple[str, ...] = ()

    @property
    def assumption(self) -> str:
        return self.measured.assumption()

    @property
    def cheapest(self) -> InstancePlan | None:
        return next((p for p in self.plans if p.planned), None)

    def to_dict(self) -> dict[str, Any]:
        cheapest = self.cheapest
        return {
            "rows": self.rows,
            "deadline_seconds": self.deadline_seconds,
            "measured": asdict(self.measured),
            "assumption": self.assumption,
            "notes": list(self.notes),
            "prices": self.prices,
            "cheapest": None if cheapest is None else cheapest.instance.name,
            "plans": [p.to_dict() for p in self.plans],
        }


def plan_capacity(
    measured: Throughput,
    rows: int,
    deadline_seconds: float,
    instances: Sequence[Instance],
    prices: str = "",
    notes: Sequence[str] = (),
) -> CostPlan:
    """For each instance: rows/s each, how many finish ``rows`` within the deadline, wall time and cost."""
    measured.check()
    if rows < 1:
        raise ConfigError(f"rows must be at least 1, found {rows}")
    if not deadline_seconds > 0:
        raise ConfigError(f"the deadline must be longer than 0 s, found {deadline_seconds}")
    plans = [_plan_one(measured, inst, rows, deadline_seconds) for inst in instances]
    # Ties in cost (common under linear scaling) go to the plan that finishes first.
    plans.sort(key=lambda p: (not p.planned, round(p.on_demand_usd or 0.0, 9), p.wall_seconds or 0.0, p.instance.name))
    return CostPlan(rows, deadline_seconds, measured, tuple(plans), prices, tuple(notes))


def _plan_one(measured: Throughput, inst: Instance, rows: int, deadline_s: float) -> InstancePlan:
    if inst.gpus and not measured.gpus:
        return InstancePlan(inst, not_planned=NEEDS_GPU)
    if measured.gpus and not inst.gpus:
        return InstancePlan(inst, not_planned=NEEDS_CPU)
    scale = inst.gpus / measured.gpus if measured.gpus else inst.vcpus / measured.cores
    rate = measured.rows_per_second * scale
    # The relative slack keeps an exact fit (e.g. 7.2e9 rows at 1e6 rows/s in 2 h) from rounding up.
    needed = max(1, math.ceil(rows / (rate * deadline_s) * (1 - 1e-12)))
    wall_s = rows / (needed * rate)
    billed_hours = needed * wall_s / 3600
    spot = inst.spot_usd_per_hour
    return InstancePlan(
        inst,
        rows_per_second_per_instance=rate,
        instances_needed=needed,
        wall_seconds=wall_s,
        on_demand_usd=billed_hours * inst.on_demand_usd_per_hour,
        spot_usd=None if spot is None else billed_hours * spot,
    )
