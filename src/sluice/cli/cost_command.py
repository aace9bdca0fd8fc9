"""``sluice cost``: how many instances finish a job by a deadline, and what they cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sluice.cli.runtime import console as runtime_console
from sluice.cli.runtime import run_cli

if TYPE_CHECKING:
    from sluice.tune.cost import CostPlan, Instance, InstancePlan, Throughput

__all__ = ["cost"]


def cost(
    rows: Annotated[
        str,
        typer.Option(metavar="N", help="Rows to predict: 1000000, 1_000_000, 1e9, 2.5M or 1B.", show_default=False),
    ],
    deadline: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="Time allowed: 2h, 90m, 45s, 1h30m (units d, h, m, s).", show_default=False
        ),
    ],
    instance: Annotated[
        list[str] | None,
        typer.Option(
            "--instance",
            metavar="NAME",
            help="Plan only this instance type from the price table (repeatable; default: every instance).",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            metavar="TUNE.JSON",
            help="A `sluice tune` profile: its chosen set-up's rows/s and its machine's cores.",
            show_default=False,
        ),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(
            metavar="SUMMARY.JSON",
            help="A `sluice predict` _summary.json (or its output directory): its rows/s (cores from --cores).",
            show_default=False,
        ),
    ] = None,
    rows_per_second: Annotated[
        float | None,
        typer.Option(metavar="RATE", help="A measured throughput in rows/s, with --cores.", show_default=False),
    ] = None,
    cores: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Logical CPUs (as os.cpu_count counts them) of the machine that measured the throughput "
            "(default: the profile's, else this machine's).",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="GPUs the measurement ran on; 0 means a CPU-only measurement, which plans only CPU instances.",
        ),
    ] = 0,
    prices: Annotated[
        Path | None,
        typer.Option(
            metavar="PRICES.YAML",
            help="Price table to use instead of the built-in one (default: $SLUICE_PRICES, else built-in).",
            show_default=False,
        ),
    ] = None,
    price_per_hour: Annotated[
        float | None,
        typer.Option(
            metavar="USD",
            help="Price per hour to plan with instead of the table's: of the one --instance given or, "
            "without --instance, of a machine like the measured one.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
) -> None:
    """Plan how many instances predict --rows rows within --deadline, and what they cost.

    The throughput comes from exactly one of --profile (tune.json), --summary (_summary.json) or
    --rows-per-second. For each instance: rows/s per instance, instances needed to meet the
    deadline, wall time with that many, and the cost on demand and on spot (billed per second),
    cheapest on demand first.

    Scaling assumption: throughput grows linearly with vCPUs relative to the measured machine's
    cores. GPU instances are planned only from a GPU measurement (--gpus), and then scale with the
    GPU count.

    Prices are approximate list prices (see `docs/cost.md`); override them with --prices FILE,
    $SLUICE_PRICES or --price-per-hour.

    Exit codes: 0 success, 2 unusable input.
    """
    plan = run_cli(
        lambda: _plan(
            rows, deadline, instance or [], _Measured(profile, summary, rows_per_second, cores, gpus),
            prices, price_per_hour,
        )
    )  # fmt: skip
    if as_json:
        import json

        print(json.dumps(plan.to_dict(), indent=2))
    else:
        _render(plan)


@dataclass(frozen=True)
class _Measured:
    """Where the throughput comes from, as the flags gave it."""

    profile: Path | None
    summary: Path | None
    rows_per_second: float | None
    cores: int | None
    gpus: int

    def resolve(self, notes: list[str]) -> Throughput:
        import os

        from sluice.errors import ConfigError
        from sluice.tune.cost import Throughput

        sources = {"--profile": self.profile, "--summary": self.summary, "--rows-per-second": self.rows_per_second}
        given = [flag for flag, value in sources.items() if value is not None]
        if len(given) != 1:
            found = f" (got {' and '.join(given)})" if given else ""
            raise ConfigError(
                "give the measured throughput with exactly one of --profile tune.json, --summary _summary.json "
                f"or --rows-per-second N{found}"
            )
        if self.profile is not None:
            return Throughput.from_profile(_read_profile(self.profile), str(self.profile), self.cores, self.gpus)
        cores = self.cores
        if cores is None:
            cores = os.cpu_count() or 1
            notes.append(
                f"assuming the throughput was measured on this machine's {cores} cores; pass --cores to say otherwise"
            )
        if self.summary is not None:
            from sluice.batch.layout import summary_file

            path = Path(summary_file(self.summary))
            return Throughput.from_summary(_read_json(path), str(path), cores, self.gpus)
        return Throughput(self.rows_per_second or 0.0, cores, self.gpus, source="--rows-per-second")


def _plan(
    rows: str,
    deadline: str,
    names: list[str],
    measured: _Measured,
    prices: Path | None,
    price_per_hour: float | None,
) -> CostPlan:
    from sluice.tune.cost import load_prices, parse_deadline, parse_rows, plan_capacity

    row_count = parse_rows(rows)
    deadline_s = parse_deadline(deadline)
    notes: list[str] = []
    throughput = measured.resolve(notes)
    if price_per_hour is not None:
        named = load_prices(prices).select(names) if names else []
        candidates = [_priced(throughput, named, price_per_hour)]
        source = f"--price-per-hour {price_per_hour:g}"
    else:
        table = load_prices(prices)
        candidates = table.select(names) if names else list(table)
        source = table.source
    return plan_capacity(throughput, row_count, deadline_s, candidates, source, notes)


def _priced(throughput: Throughput, named: list[Instance], price_per_hour: float) -> Instance:
    """The one machine --price-per-hour prices: the named instance, or one like the measured machine."""
    import datetime

    from sluice.errors import ConfigError
    from sluice.tune.cost import Instance

    if price_per_hour < 0:
        raise ConfigError(f"--price-per-hour must be 0 or more, found {price_per_hour:g}")
    if len(named) > 1:
        raise ConfigError("--price-per-hour prices one machine: give at most one --instance with it")
    update: dict[str, Any] = {"on_demand_usd_per_hour": price_per_hour, "spot_usd_per_hour": None}
    if named:
        return named[0].model_copy(update={**update, "source": "--price-per-hour"})
    return Instance(
        name="measured machine",
        provider="--price-per-hour",
        vcpus=throughput.cores,
        memory_gib=None,
        gpus=throughput.gpus,
        gpu="as measured" if throughput.gpus else None,
        source="--price-per-hour",
        date=datetime.date.today().strftime("%Y-%m"),
        **update,
    )


def _read_json(path: Path) -> dict[str, Any]:
    import json

    from sluice.errors import ConfigError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _read_profile(path: Path) -> Any:
    from sluice.errors import ConfigError
    from sluice.tune.profile import Profile

    data = _read_json(path)
    try:
        return Profile.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a sluice tune profile ({type(exc).__name__}: {exc})") from exc


# -- rendering -----------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _usd(amount: float | None) -> str:
    if amount is None:
        return "n/a"
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def _row(plan: InstancePlan) -> list[str]:
    inst = plan.instance
    gpus = f"{inst.gpus} × {inst.gpu}" if inst.gpus else "-"
    if plan.rows_per_second_per_instance is None or plan.wall_seconds is None:
        return [inst.name, str(inst.vcpus), gpus, plan.not_planned or "", "", "", "", ""]
    return [
        inst.name,
        str(inst.vcpus),
        gpus,
        f"{plan.rows_per_second_per_instance:,.0f}",
        f"{plan.instances_needed:,}",
        _duration(plan.wall_seconds),
        _usd(plan.on_demand_usd),
        _usd(plan.spot_usd),
    ]


def _render(plan: CostPlan) -> None:
    from rich.markup import escape
    from rich.table import Table

    from sluice.tune.cost import BUILTIN_PRICES

    console = runtime_console(stderr=False)
    measured = plan.measured
    on = f"{measured.cores} cores" + (f" and {measured.gpus} GPU(s)" if measured.gpus else "")
    console.print(
        f"[bold]{plan.rows:,} rows within {_duration(plan.deadline_seconds)}[/]; measured "
        f"{measured.rows_per_second:,.0f} rows/s on {on} ({escape(measured.source)})",
        highlight=False,
        soft_wrap=True,
    )
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(f"[bold]Scaling assumption:[/] {escape(plan.assumption)}", highlight=False, soft_wrap=True)
    table = Table(title_justify="left")
    for header in ("instance", "vCPUs", "GPUs", "rows/s each", "instances", "wall time", "on demand", "spot"):
        table.add_column(header, justify="left" if header in ("instance", "GPUs") else "right")
    cheapest = plan.cheapest
    for p in plan.plans:
        style = "bold green" if p is cheapest else (None if p.planned else "dim")
        table.add_row(*(escape(cell) for cell in _row(p)), style=style)
    console.print(table)
    if cheapest is not None and cheapest.wall_seconds is not None:
        spot = f", {_usd(cheapest.spot_usd)} on spot" if cheapest.spot_usd is not None else ""
        console.print(
            f"[bold green]cheapest:[/] {cheapest.instances_needed} × {escape(cheapest.instance.name)} for "
            f"{_duration(cheapest.wall_seconds)}: {_usd(cheapest.on_demand_usd)} on demand{spot}",
            highlight=False,
            soft_wrap=True,
        )
    caveat = "; approximate list prices, check them for your region" if plan.prices == BUILTIN_PRICES else ""
    console.print(f"[dim]prices: {escape(plan.prices)}{caveat}[/]", highlight=False, soft_wrap=True)
