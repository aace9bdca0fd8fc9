"""``sluice routes show|set|promote|rollback`` and ``sluice ab report``: a running server's routing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sluice.cli.grammar import SluiceTyper
from sluice.cli.runtime import console as runtime_console
from sluice.cli.runtime import run_cli

if TYPE_CHECKING:
    from sluice.serve.abreport import ExperimentReport
    from sluice.serve.control import ControlClient

__all__ = ["ab_app", "routes_app"]

routes_app = SluiceTyper(
    help="Show and change how a running server splits a model's traffic (persisted to model.yaml).",
    no_args_is_help=True,
)
ab_app = SluiceTyper(help="A/B experiments on a running server.", no_args_is_help=True)

UrlOption = Annotated[
    str, typer.Option(envvar="SLUICE_URL", help="Server base URL (default: $SLUICE_URL, else the local one).")
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="SLUICE_AUTH_TOKEN",
        help="Bearer token of the server (default: $SLUICE_AUTH_TOKEN).",
        show_default=False,
        show_envvar=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer instead of a summary.")]
ModelArgument = Annotated[str, typer.Argument(help="Model name in the server's repository.", show_default=False)]
DEFAULT_URL = "http://127.0.0.1:8000"


def _client(url: str, token: str | None) -> ControlClient:
    from sluice.serve.control import ControlClient

    return ControlClient(url, token=token or None)


def parse_assignments(text: str, flag: str) -> dict[str, float]:
    """``"1=90,canary=10"`` → ``{"1": 90.0, "canary": 10.0}``."""
    from sluice.errors import ConfigError

    result: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        variant, sep, value = part.partition("=")
        try:
            result[variant.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not variant.strip():
            raise ConfigError(f"{flag} {text!r}: expected VARIANT=NUMBER pairs separated by commas, got {part!r}")
    if not result:
        raise ConfigError(f"{flag} {text!r}: expected VARIANT=NUMBER pairs separated by commas")
    return result


def _print_routes(document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    routing = document.get("routing")
    typer.echo(f"model {document['model_name']}: labels {document.get('labels') or {}}")
    if routing is None:
        typer.echo("no routing: requests without a version go to the stable label, else the latest version")
        return
    typer.echo(f"weights {routing['weights']} (live {document.get('live_weights')}), primary first")
    typer.echo(f"shadow {routing.get('shadow') or {}}; sticky_key {routing.get('sticky_key')}; mode {routing['mode']}")


@routes_app.command("show")
def show(
    model: ModelArgument, url: UrlOption = DEFAULT_URL, auth_token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Print the model's routing as the server has it loaded."""
    _print_routes(run_cli(lambda: _client(url, auth_token).routes(model)), json_)


@routes_app.command("set")
def set_routes(
    model: ModelArgument,
    weights: Annotated[
        str | None, typer.Option(help="VARIANT=WEIGHT,… e.g. 1=90,2=10 or stable=90,canary=10; first is primary.")
    ] = None,
    shadow: Annotated[
        str | None, typer.Option(help="VARIANT=FRACTION,… of requests copied to a shadow, e.g. 3=0.2 (3=0 ends it).")
    ] = None,
    sticky_key: Annotated[
        str | None, typer.Option(help="'parameters.NAME' or 'header:NAME': the same key reaches the same variant.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="weighted, or thompson (weights follow the outcomes).")] = None,
    url: UrlOption = DEFAULT_URL,
    auth_token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Change the routing of a running server; it is written to model.yaml atomically and applied
    without dropping a request (new variants load and warm up before they take traffic)."""

    def change() -> dict[str, Any]:
        from sluice.errors import ConfigError

        if weights is None and shadow is None and sticky_key is None and mode is None:
            raise ConfigError("nothing to change: give --weights, --shadow, --sticky-key or --mode")
        return _client(url, auth_token).set_routes(
            model,
            weights=parse_assignments(weights, "--weights") if weights else None,
            shadow=parse_assignments(shadow, "--shadow") if shadow else None,
            sticky_key=sticky_key,
            mode=mode,
        )

    _print_routes(run_cli(change), json_)


@routes_app.command("promote")
def promote(
    model: ModelArgument,
    variant: Annotated[
        str | None, typer.Argument(help="Variant to promote (default: the only candidate).", show_default=False)
    ] = None,
    url: UrlOption = DEFAULT_URL,
    auth_token: TokenOption = None,
    json_: JsonOption = False,
) -> None:
    """Label the variant's version 'stable' and send it all traffic."""
    _print_routes(run_cli(lambda: _client(url, auth_token).promote(model, variant)), json_)


@routes_app.command("rollback")
def rollback(
    model: ModelArgument, url: UrlOption = DEFAULT_URL, auth_token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Send all traffic back to the primary (the first variant under weights)."""
    _print_routes(run_cli(lambda: _client(url, auth_token).rollback(model)), json_)


@ab_app.command("report")
def report(
    model: ModelArgument, url: UrlOption = DEFAULT_URL, auth_token: TokenOption = None, json_: JsonOption = False
) -> None:
    """Per variant: traffic, mean outcome with a 95% interval, the difference from the primary with
    its always-valid sequential p-value (safe to read at any time), the outcomes the fixed-horizon
    test would still need (for information), and a recommendation decided by the sequential test."""
    from sluice.serve.abreport import experiment_report

    result = run_cli(lambda: experiment_report(_client(url, auth_token).experiment(model)))
    if json_:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return

    typer.echo(f"A/B report of model {result.model}: {result.outcome} outcomes against the primary, {result.rules}")
    runtime_console(stderr=False).print(_report_table(result))
    typer.echo(f"recommendation: {result.recommendation} ({result.reason})")


def _report_table(result: ExperimentReport) -> Any:
    from rich.table import Table

    table = Table()
    for column in ("variant", "traffic", "outcomes", "mean [95% CI]", "diff", "p", "need", "advice"):
        table.add_column(column, justify="left" if column in ("variant", "advice") else "right")
    for row in result.variants:
        mean = "–" if row.mean_outcome is None else f"{row.mean_outcome:.4g}"
        if row.interval is not None:
            mean += f" [{row.interval.low:.3g}, {row.interval.high:.3g}]"
        c = row.comparison
        errors = f", {row.errors} err" if row.errors else ""
        table.add_row(
            f"{row.variant} (v{row.version or '?'})",
            f"{row.requests} ({row.traffic_share:.0%}{errors})",
            str(row.outcomes),
            mean,
            "primary" if c is None else _num(c.difference, "+.3g"),
            "" if c is None else _num(c.p_value, ".3g"),
            "" if c is None or c.still_needed is None else str(c.still_needed),
            "" if c is None else c.recommendation,
        )
    return table


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)
