"""``sluice train plan``: per-step all-reduce time of a model on a cluster, and what each strategy buys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sluice.train.plan import CommPlan

__all__ = ["plan"]


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
    from sluice.cli.main import run_cli

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
    from rich.console import Console
    from rich.markup import escape

    from sluice.train.plan import format_bytes, format_seconds, plan_table

    out = Console()
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
