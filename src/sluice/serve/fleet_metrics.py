"""One ``/metrics`` for ``sluice serve --workers N``: the workers' Prometheus texts merged.

Each worker renders its own text exactly as a single server does; :func:`merge_metrics` adds
them up by each family's ``# TYPE``: the samples of a ``counter`` or a ``histogram`` (its
``_bucket``, ``_sum`` and ``_count``) are summed across workers, so counts add up exactly. A
``gauge`` named in :data:`SUMMED_GAUGES` (a queue depth) is summed too; any other gauge (a
route weight, a score quantile: values that do not add) keeps one sample per worker, with a
``worker`` label. :class:`Retired` keeps the counters of workers that exited, so that a
restarted worker's fresh zeros never make a fleet counter go down.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "SUMMED_GAUGES",
    "Family",
    "Retired",
    "WorkerFigures",
    "fleet_metrics_text",
    "merge_metrics",
    "parse_metrics",
    "render_families",
]

SUMMED_GAUGES = frozenset({"sluice_queue_depth_requests"})
"""Gauges whose fleet value is the sum of the workers' values."""

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass
class Family:
    """One metric family: its help, type and samples (``name{labels}`` → value), in order."""

    name: str
    kind: str = "untyped"
    help: str = ""
    samples: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def additive(self) -> bool:
        return self.kind in ("counter", "histogram") or self.name in SUMMED_GAUGES


def parse_metrics(text: str) -> dict[str, Family]:
    """The families of one Prometheus text exposition, by name, in the order they appear."""
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, keyword, rest = line.split(" ", 2)
            name, _, value = rest.partition(" ")
            family = families.setdefault(name, Family(name))
            if keyword == "HELP":
                family.help = value
            else:
                family.kind = value
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        sample, labels, value = match.groups()
        family = families.setdefault(_family_of(sample, families), Family(sample))
        family.samples[(sample, labels or "")] = float(value)
    return families


def _family_of(sample: str, families: dict[str, Family]) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        base = sample.removesuffix(suffix)
        if base != sample and families.get(base, Family(base)).kind == "histogram":
            return base
    return sample


def merge_metrics(texts: Mapping[int, str], *, retired: Retired | None = None) -> dict[str, Family]:
    """The fleet's families from each worker's text, by worker number; see the module docstring."""
    merged: dict[str, Family] = {}
    sources = [(str(slot), parse_metrics(text)) for slot, text in sorted(texts.items())]
    if retired is not None:
        sources.append(("", retired.families))
    for slot, families in sources:
        for name, family in families.items():
            target = merged.setdefault(name, Family(name, family.kind, family.help))
            for (sample, labels), value in family.samples.items():
                if family.additive:
                    key = (sample, labels)
                    target.samples[key] = target.samples.get(key, 0.0) + value
                elif slot:
                    target.samples[(sample, _with_worker(labels, slot))] = value
    return merged


def _with_worker(labels: str, slot: str) -> str:
    inner = labels[1:-1] if labels else ""
    return "{" + (inner + "," if inner else "") + f'worker="{slot}"' + "}"


def render_families(families: Iterable[Family]) -> str:
    """Prometheus text of ``families`` (integral values without a decimal point)."""
    lines: list[str] = []
    for family in families:
        if family.help:
            lines.append(f"# HELP {family.name} {family.help}")
        if family.kind != "untyped":
            lines.append(f"# TYPE {family.name} {family.kind}")
        lines += [f"{sample}{labels} {_number(value)}" for (sample, labels), value in family.samples.items()]
    return "\n".join(lines) + "\n" if lines else ""


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else f"{value:.12g}"


@dataclass
class Retired:
    """The counters and histograms of workers that have exited, added to every later merge."""

    families: dict[str, Family] = field(default_factory=dict)

    def add(self, text: str) -> None:
        """Keep the additive samples of a worker's last text (gauges die with the worker)."""
        for name, family in parse_metrics(text).items():
            if not family.additive or family.name in SUMMED_GAUGES:
                continue
            target = self.families.setdefault(name, Family(name, family.kind, family.help))
            for key, value in family.samples.items():
                target.samples[key] = target.samples.get(key, 0.0) + value


@dataclass(frozen=True)
class WorkerFigures:
    """What the supervisor knows of one worker for ``/metrics``; ``text`` is its last own text."""

    slot: int
    pid: int
    up: bool
    ready: bool
    restarts: int
    text: str


def fleet_metrics_text(workers: Sequence[WorkerFigures], retired: Retired | None = None) -> str:
    """The fleet's ``/metrics``: the workers' texts merged, then one family per worker figure.

    ``sluice_worker_requests_total{worker,pid}`` counts the inference requests each worker
    process answered (a restarted worker is a new ``pid``), which shows how evenly the kernel
    spreads connections.
    """
    merged = merge_metrics({w.slot: w.text for w in workers if w.up and w.text}, retired=retired)
    own = [
        Family(
            "sluice_workers",
            "gauge",
            "Worker processes the server runs.",
            {("sluice_workers", ""): float(len(workers))},
        ),
        Family("sluice_worker_up", "gauge", "1 while the worker process runs and listens."),
        Family("sluice_worker_ready", "gauge", "1 while the worker is ready."),
        Family("sluice_worker_restarts_total", "counter", "Times the worker was restarted after it exited."),
        Family("sluice_worker_requests_total", "counter", "Inference requests the worker process answered."),
    ]
    for w in workers:
        labels = f'{{worker="{w.slot}",pid="{w.pid}"}}'
        own[1].samples[("sluice_worker_up", labels)] = float(w.up)
        own[2].samples[("sluice_worker_ready", labels)] = float(w.ready)
        own[3].samples[("sluice_worker_restarts_total", f'{{worker="{w.slot}"}}')] = float(w.restarts)
        if w.up and w.text:
            requests = parse_metrics(w.text).get("sluice_requests_total")
            total = sum(requests.samples.values(), 0.0) if requests is not None else 0.0
            own[4].samples[("sluice_worker_requests_total", labels)] = total
    return render_families([*merged.values(), *own])
