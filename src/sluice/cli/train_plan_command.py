"""``sluice train plan``: per-step all-reduce time of a model on a cluster, and what each strategy buys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from sluice.cli.runtime import console as runtime_console
from sluice.cli.runtime import run_cli

if TYPE_CHECKING:
    from rich.table import Table

    from sluice.train.plan import CommPlan

__all__ = ["format_bytes", "format_seconds", "plan", "plan_table"]


def plan(
    params: Annotated[
        str, typer.Option(metavar="N", help="Model parameters: 350M, 1.3B, 7e9, 125k.", show_default=False)
    ],
    workers: Annotated[int, typer.Option(metavar="N", help="Data-parallel workers (ranks) in the ring.")],
    bandwidth: Annotated[
        str,
        typer.Option(
            metavar="RATE",
            help="Per-worker link bandwidth: 100Gbit, 25Gbps, 400Mbit (bits/s) or 10GB/s (bytes/s).",
            show_default=False,
        ),
    ],
    latency_us: Annotated[str, typer.Option(metavar="US", help="Per-message latency α in µs (or 0.01ms).")] = "5",
    dtype_bytes: Annotated[int, typer.Option(metavar="N", help="Bytes per gradient value (4 = fp32).")] = 4,
    powersgd_rank: Annotated[int, typer.Option(metavar="R", help="PowerSGD rank r.")] = 4,
    localsgd_period: Annotated[int, typer.Option(metavar="H", help="Local SGD: average models every H steps.")] = 8,
    layer_width: Annotated[
        int | None,
        typer.Option(
            metavar="D",
            help="PowerSGD assumption: the weights form square D×D matrices "
            "(default: (128/12 · params)^(1/3), a transformer's width, to a multiple of 64).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
) -> None:
    """Estimate the ring all-reduce time per training step, and what fp16, PowerSGD and local SGD save.

    T = 2(N−1)/N · S/B + 2(N−1)·α, with S = params × dtype bytes, B the bandwidth and α the
    latency: the bandwidth lower bound plus the latency term. When a step computes for less than
    its strategy's time, communication dominates (no overlap assumed). See docs/training-plan.md.

    Exit codes: 0 success, 2 unusable input.
    """
    result = run_cli(
        lambda: _plan(params, workers, bandwidth, latency_us, dtype_bytes, powersgd_rank, localsgd_period, layer_width)
    )
    if as_json:
        import json

        print(json.dumps(result.to_dict(), indent=2))
    else:
        _render(result)


def _plan(
    params: str,
    workers: int,
    bandwidth: str,
    latency_us: str,
    dtype_bytes: int,
    powersgd_rank: int,
    localsgd_period: int,
    layer_width: int | None,
) -> CommPlan:
    from sluice.train.plan import parse_bandwidth, parse_latency_us, parse_params, plan_communication

    return plan_communication(
        parse_params(params),
        workers,
        parse_bandwidth(bandwidth),
        latency_us=parse_latency_us(latency_us),
        dtype_bytes=dtype_bytes,
        powersgd_rank=powersgd_rank,
        localsgd_period=localsgd_period,
        layer_width=layer_width,
    )


def _render(result: CommPlan) -> None:
    from rich.markup import escape

    out = runtime_console(stderr=False)
    bits_per_s = result.bandwidth_bytes_per_s * 8
    out.print(
        f"[bold]{result.params:,} parameters × {result.dtype_bytes} bytes = {format_bytes(result.gradient_bytes)}"
        f"[/] of gradient, ring all-reduce over {result.workers} workers at {bits_per_s / 1e9:g} Gbit/s, "
        f"α = {result.latency_seconds * 1e6:g} µs",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"T = 2(N−1)/N · S/B + 2(N−1)·α = {format_seconds(result.bandwidth_seconds)} + "
        f"{format_seconds(result.latency_term_seconds)} = [bold]{format_seconds(result.allreduce_seconds)}[/] per step",
        highlight=False,
        soft_wrap=True,
    )
    out.print(plan_table(result))
    for cost in result.strategies:
        out.print(f"  {cost.strategy}: {escape(cost.assumption)}", highlight=False, soft_wrap=True)
    if result.layer_width_assumed:
        out.print(
            f"  (the {result.layer_width}-wide matrices are an assumption from the parameter count; "
            "set --layer-width to your model's)",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"Communication dominates when a step computes for less than its comm/step "
        f"(plain DDP: {format_seconds(result.allreduce_seconds)}); DDP overlaps part of it with backward.",
        highlight=False,
        soft_wrap=True,
    )


def format_seconds(seconds: float) -> str:
    """``0.221 s``, ``2.41 ms``, ``630 µs``: three significant digits in a readable unit."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def format_bytes(count: float) -> str:
    """``1.4 GB``, ``7.29 MB``: decimal units, three significant digits."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.3g} B"


def plan_table(plan: CommPlan) -> Table:
    """One row per strategy: bytes per step, bandwidth and latency time, total, speed-up over DDP."""
    from rich.table import Table

    table = Table(title_justify="left")
    for header in ("strategy", "bytes/step", "bandwidth", "latency", "comm/step", "vs ddp"):
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for cost in plan.strategies:
        table.add_row(
            cost.strategy,
            format_bytes(cost.bytes_per_step),
            format_seconds(cost.bandwidth_seconds),
            format_seconds(cost.latency_seconds),
            format_seconds(cost.seconds_per_step),
            f"{cost.speedup:.3g}×",
        )
    return table
