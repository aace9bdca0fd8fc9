"""Rich tables for summaries, models and signatures."""

from __future__ import annotations

from rich.table import Table

from sluice.batch.summary import RunSummary
from sluice.models import Model, ModelRepository

__all__ = ["models_table", "signature_table", "summary_table"]


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _skipped_note(s: RunSummary) -> str:
    if s.complete_before:
        return "  (output already complete: nothing to run; figures of the run that wrote it)"
    return f"  ({s.shards_skipped} already complete, skipped)" if s.shards_skipped else ""


def _batch_note(s: RunSummary) -> str:
    """The memory bound and any out-of-memory halvings behind the batch size."""
    notes = [s.batch_size_reason] if s.memory_limit_bytes is not None and s.batch_size_reason else []
    if s.oom_backoffs:
        notes.append(f"out of memory {s.oom_backoffs}×: halved to {s.final_batch_size}")
    return "".join(f"\n  {n}" for n in notes)


def _gpu_memory(s: RunSummary) -> str:
    if s.gpu_peak_memory_bytes is None:
        return s.gpu_unavailable_reason or "n/a"
    return f"{_bytes(s.gpu_peak_memory_bytes)} peak (above the start)"


def summary_table(s: RunSummary) -> Table:
    table = Table(title="sluice predict", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    lat = s.batch_latency_ms
    busy = s.stage_busy_fraction
    rows = [
        ("model", s.model),
        ("output", s.output),
        ("rows", f"{s.rows:,}"),
        (
            "rows failed",
            f"{s.rows_failed:,}" + (f"  (see {len(s.error_files)} _errors/errors-*.jsonl)" if s.error_files else ""),
        ),
        ("parts", f"{s.shards}{_skipped_note(s)}"),
        ("time", f"{s.seconds:.2f} s"),
        ("throughput", f"{s.rows_per_second:,.0f} rows/s"),
        ("batch size × workers", f"{s.batch_size} × {s.workers}{_batch_note(s)}"),
        ("batch latency", " ".join(f"{k} {v:.2f} ms" for k, v in lat.items() if v is not None) or "n/a"),
        ("stage busy", "  ".join(f"{k} {_pct(v)}" for k, v in busy.items())),
        ("peak memory", _bytes(s.peak_rss_bytes)),
        ("CPU / GPU use", f"{_pct(s.cpu_utilization)} / {_pct(s.gpu_utilization)}"),
        ("GPU memory", _gpu_memory(s)),
        (
            "cost per 1M",
            "n/a (pass --price-per-hour)" if s.cost_per_million_usd is None else f"${s.cost_per_million_usd:.4f}",
        ),
    ]
    rows += _counter_rows(s)
    for key, value in rows:
        table.add_row(key, value)
    return table


def _counter_rows(s: RunSummary) -> list[tuple[str, str]]:
    """The model's counts (truncated records, padding of a text model), when it reported any."""
    rows = [(name.replace("_", " "), f"{value:,}") for name, value in s.counters.items()]
    if s.padding_waste is not None:
        unbucketed = "n/a" if s.padding_waste_unbucketed is None else _pct(s.padding_waste_unbucketed)
        rows.append(("padding waste", f"{_pct(s.padding_waste)} (in input order: {unbucketed})"))
    return rows


def models_table(repo: ModelRepository) -> Table:
    table = Table(title=f"models in {repo.root}", title_justify="left")
    for col in ("name", "versions", "labels", "format"):
        table.add_column(col)
    for name in repo.names():
        config = repo.config(name)
        labels = ", ".join(f"{k}→{v}" for k, v in sorted(config.labels.items()))
        table.add_row(name, ", ".join(map(str, repo.versions(name))), labels, config.format or "auto")
    return table


def signature_table(model: Model) -> Table:
    table = Table(
        title=f"{model.source.display_name} ({model.source.format}, {model.concurrency})", title_justify="left"
    )
    for col in ("kind", "name", "dtype", "shape"):
        table.add_column(col)
    for kind, specs in (("input", model.signature.inputs), ("output", model.signature.outputs)):
        for spec in specs:
            table.add_row(kind, spec.name, spec.dtype.name, str(list(spec.shape)))
    return table
