"""``sluice tune``: profile a model, choose its set-up, write JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sluice.cli.grammar import Renamed
from sluice.cli.options import RepositoryOption, TrustTypeOption
from sluice.cli.runtime import console, flag_text, run_cli

if TYPE_CHECKING:
    from rich.table import Table

    from sluice.models import LoadOptions
    from sluice.tune.profile import Profile

__all__ = ["RENAMED", "profile_table", "tune"]

# --json prints to stdout, as on every command; the file it used to take is --json-file's
RENAMED = {"--json": Renamed("--json-file", only_with_value=True)}


def tune(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model file, 'module:function', or NAME, NAME@VERSION, NAME@LABEL.")
    ],
    input_: Annotated[
        str, typer.Option("--input", "-i", help="Sample data (file, directory, glob or URI); its first rows are used.")
    ],
    repository: RepositoryOption = None,
    features: Annotated[str | None, typer.Option(help="Comma-separated feature columns.", show_default=False)] = None,
    key_column: Annotated[
        str | None, typer.Option(help="An identifier column, never taken as a feature.", show_default=False)
    ] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option(help="Budget for the p99 latency of one batch, in milliseconds.", show_default=False)
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="Budget for peak memory growth, e.g. 2GiB or 512MB: batch sizes are searched only up to the "
            "largest the memory measured per record fits (GPU memory when the model runs on one).",
            show_default=False,
        ),
    ] = None,
    price_per_hour: Annotated[
        float | None, typer.Option(help="Machine price in USD/hour, for cost per 1M predictions.", show_default=False)
    ] = None,
    instance: Annotated[
        str | None,
        typer.Option(help="Take the price from the price table's instance (see `sluice cost`).", show_default=False),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the profile as JSON on stdout instead of the table.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json-file", help="Also write the profile to this JSON file.", show_default=False)
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Draw throughput and p99 latency against batch size: .html or .png.", show_default=False),
    ] = None,
    sample_rows: Annotated[int, typer.Option(help="Rows of the sample to measure with.")] = 1 << 16,
    max_batch_size: Annotated[int, typer.Option(help="Largest batch size to try.")] = 1 << 16,
    sweep: Annotated[bool, typer.Option("--sweep", help="Measure the whole grid instead of searching it.")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow pickle/joblib model files.")] = False,
    trust_type: TrustTypeOption = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or cuda:N: where PyTorch, Hugging Face and ONNX models run.")
    ] = "auto",
    precision: Annotated[
        str, typer.Option(help="fp32, fp16 or bf16: what PyTorch and Hugging Face models compute in.")
    ] = "fp32",
) -> None:
    """Find the batch size and worker set-up with the highest throughput within the budgets.

    Measures the model on real rows of the sample: per-batch latency p50/p99, throughput and
    peak memory of each set-up visited by a search (batch sizes growing fourfold, a hill climb
    around the best, then the other thread set-ups), and picks the fastest whose p99 and memory
    fit. Prints every measurement and the reason for the choice; --json prints them as JSON instead,
    --json-file and --plot keep them.
    """
    if plot is not None:
        from sluice.tune.plot import check_plot

        # a missing plotting package is found before the measurements, not after them
        run_cli(lambda: check_plot(plot))
    options = run_cli(lambda: _load_options(trust_pickle, trust_type, device, precision))
    profile = run_cli(
        lambda: _tune(model, input_, repository, features, key_column, max_latency_ms, memory_limit,
                      price_per_hour, instance, sample_rows, max_batch_size, sweep, options)
    )  # fmt: skip
    if as_json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        console(stderr=False).print(profile_table(profile))
        console(stderr=False).print(f"[bold]choice:[/] {flag_text(profile.reason)}", highlight=False)
    if json_path is not None:
        json_path.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    if plot is not None:
        from sluice.tune.plot import write_plot

        run_cli(lambda: write_plot(profile, plot))


def _load_options(trust_pickle: bool, trust_type: list[str] | None, device: str, precision: str) -> LoadOptions:
    from pydantic import ValidationError

    from sluice.configfile import format_validation_error
    from sluice.errors import ConfigError
    from sluice.models import LoadOptions

    fields = {"trust_pickle": trust_pickle, "trusted_types": tuple(trust_type or ()), "device": device}
    try:
        return LoadOptions.model_validate({**fields, "precision": precision})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _tune(
    model: str,
    sample: str,
    repository: str | None,
    features: str | None,
    key_column: str | None,
    max_latency_ms: float | None,
    memory_limit: str | None,
    price_per_hour: float | None,
    instance: str | None,
    sample_rows: int,
    max_batch_size: int,
    sweep: bool,
    options: LoadOptions,
) -> Profile:
    from sluice.errors import ConfigError
    from sluice.models import load_model
    from sluice.tune.api import tune as run_tune
    from sluice.tune.cost import load_prices

    if price_per_hour is not None and instance is not None:
        raise ConfigError("--price-per-hour and --instance both set a price: pass one of them")
    if instance is not None:
        price_per_hour = load_prices().get(instance).on_demand_usd_per_hour
    loaded = load_model(model, repository, options=options)
    return run_tune(
        loaded,
        sample,
        features=[f.strip() for f in features.split(",")] if features else None,
        key_column=key_column,
        max_latency_ms=max_latency_ms,
        memory_limit=memory_limit,
        price_per_hour=price_per_hour,
        instance=instance,
        sample_rows=sample_rows,
        max_batch_size=max_batch_size,
        sweep=sweep,
    )


def profile_table(profile: Profile) -> Table:
    from rich.table import Table

    from sluice.tune.cost import cost_per_million

    title = f"sluice tune: {profile.model}, {profile.sample_rows:,} sample rows, {profile.tuning_seconds:.1f} s"
    table = Table(title=title, title_justify="left")
    for col in ("", "batch", "workers×threads", "status", "rows/s", "p50 ms", "p99 ms", "peak mem", "$/1M rows"):
        table.add_column(col, justify="right" if col not in ("", "status") else "left")
    ordered = sorted(
        profile.measurements, key=lambda m: (m.setup.workers, m.setup.intra_op_threads, m.setup.batch_size)
    )
    for m in ordered:
        chosen = profile.chosen is not None and m.setup == profile.chosen.setup
        cost = cost_per_million(profile.price_per_hour, m.rows_per_second) if m.ok else None
        table.add_row(
            "★" if chosen else "",
            f"{m.setup.batch_size:,}",
            f"{m.setup.workers} × {m.setup.intra_op_threads}",
            m.status if m.ok else f"[red]{m.status}[/]",
            f"{m.rows_per_second:,.0f}" if m.ok else "-",
            _ms(m.latency_p50_ms),
            _ms(m.latency_p99_ms),
            f"{(m.peak_memory_bytes or 0) / (1 << 20):,.1f} MiB" if m.ok else "-",
            "n/a" if cost is None else f"{cost:.2g}",
            style="bold green" if chosen else None,
        )
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
