"""Rich tables and log lines for ``sluice jobs``."""

from __future__ import annotations

import time

from rich.table import Table

from sluice.cli.runtime import flag_text
from sluice.jobs.model import JobEvent, JobStatus

__all__ = ["event_line", "jobs_table", "status_table"]


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _rows(s: JobStatus) -> str:
    if s.rows_estimate:
        return f"{s.rows:,} of ~{s.rows_estimate:,} ({min(1.0, s.rows / s.rows_estimate):.0%})"
    return f"{s.rows:,}"


def status_table(s: JobStatus) -> Table:
    """One job: every figure of :class:`JobStatus` on its own line."""
    table = Table(title=f"job {s.id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    elapsed = ((s.finished_at or time.time()) - s.started_at) if s.started_at else None
    lines = [
        ("name", s.name or "-"),
        ("state", s.state.value),
        ("model", s.model),
        ("input", s.input),
        ("output", s.output),
        (
            "shards",
            f"{s.shards_done} of {s.shards_total} done, {s.shards_running} running, {s.shards_failed} failed",
        ),
        ("rows", _rows(s)),
        ("rows failed", f"{s.rows_failed:,}" + (f" ({len(s.error_files)} error files)" if s.error_files else "")),
        ("throughput", f"{s.rows_per_second:,.0f} rows/s"),
        ("attempts", str(s.attempts)),
        ("batch size", str(s.batch_size) if s.batch_size else "-"),
        ("submitted", _when(s.created_at)),
        ("started", _when(s.started_at)),
        ("finished", _when(s.finished_at)),
        ("elapsed", f"{elapsed:.1f} s" if elapsed is not None else "-"),
    ]
    if s.message:
        lines.append(("message", flag_text(s.message)))
    lines += [("error", flag_text(e)) for e in s.errors]
    lines += [("error file", f) for f in s.error_files]
    for key, value in lines:
        table.add_row(key, value)
    return table


def jobs_table(statuses: list[JobStatus]) -> Table:
    """Jobs, one per row."""
    table = Table(title="jobs", title_justify="left")
    for column in ("id", "name", "state", "shards", "rows", "failed", "rows/s", "submitted"):
        numeric = column in ("shards", "rows", "failed", "rows/s")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column in ("id", "state"))
    for s in statuses:
        table.add_row(
            s.id,
            s.name or "",
            s.state.value,
            f"{s.shards_done}/{s.shards_total}",
            f"{s.rows:,}",
            f"{s.rows_failed:,}",
            f"{s.rows_per_second:,.0f}",
            _when(s.created_at),
        )
    return table


def event_line(event: JobEvent) -> str:
    """``2026-11-29 03:02:31  INFO     shard 3 done by …``"""
    return f"{_when(event.at)}  {event.level:<8} {flag_text(event.message)}"
