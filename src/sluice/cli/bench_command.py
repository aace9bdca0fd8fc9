"""``sluice bench serve``: offer load to an inference server and report latency per level."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sluice.cli.grammar import Renamed, SluiceTyper, command_class, deprecation_epilog
from sluice.cli.runtime import console, run_cli

if TYPE_CHECKING:
    from rich.table import Table

    from sluice.bench.loadgen import HttpRequest, LevelResult

bench_app = SluiceTyper(help="Measure: load generators and benchmarks.", no_args_is_help=True)

# --json prints to stdout, as on every command; the file it used to take is --json-file's
RENAMED = {"--json": Renamed("--json-file", only_with_value=True)}


def _levels(text: str) -> list[float]:
    from sluice.errors import ConfigError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"levels {text!r} must be comma-separated numbers, e.g. 1,8,32") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"levels {text!r} must be positive numbers, e.g. 1,8,32")
    return values


def _seconds(text: str) -> float:
    from sluice.errors import ConfigError

    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                break
    raise ConfigError(f"duration {text!r} is not understood: use e.g. 10s, 500ms or 1m")


def model_path(model: str) -> str:
    """``NAME`` → ``NAME``; ``NAME@VERSION`` (or a label) → ``NAME/versions/VERSION``, the OIP URL path."""
    name, sep, version = model.partition("@")
    if not sep:
        return model
    if not name or not version or "/" in version:
        _fail(f"--model {model!r}: expected NAME, NAME@VERSION, NAME@LABEL or NAME/versions/V")
    return f"{name}/versions/{version}"


@bench_app.command("serve", cls=command_class(RENAMED), epilog=deprecation_epilog(RENAMED))
def serve(
    url: Annotated[str, typer.Option(help="Server base URL, e.g. http://127.0.0.1:8000.")] = "http://127.0.0.1:8000",
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Model to call: NAME, NAME@VERSION, NAME@LABEL (or NAME/versions/V)."),
    ] = "demo",
    concurrency: Annotated[
        str | None,
        typer.Option(help="Closed loop: comma-separated client counts (default: 1,8,32).", show_default=False),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(help="Open loop: comma-separated Poisson request rates per second.", show_default=False),
    ] = None,
    duration: Annotated[str, typer.Option(help="Time per level, e.g. 10s.")] = "10s",
    rows: Annotated[
        int,
        typer.Option(
            help="Rows per request; the server refuses more than the model's max_batch_size (default 64, "
            "model.yaml 'batching: {max_batch_size: N}')."
        ),
    ] = 1,
    binary: Annotated[bool, typer.Option("--binary", help="Binary tensor data instead of JSON.")] = False,
    auth_token: Annotated[
        str | None, typer.Option(envvar="SLUICE_AUTH_TOKEN", help="Bearer token for the server.", show_default=False)
    ] = None,
    ceiling: Annotated[
        bool,
        typer.Option(
            "--ceiling", help="Also run every level against a trivial local server: the generator's own limit."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout instead of tables.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json-file", help="Also write the results to this JSON file.", show_default=False)
    ] = None,
) -> None:
    """Throughput and p50/p90/p99/p99.9 latency of `POST …/infer` at each load level.

    Closed loop (--concurrency) keeps N requests in flight; open loop (--rate) starts requests
    at Poisson arrival times whatever the server does, and counts latency from each scheduled
    start. Only a 200 counts as throughput; other statuses are tallied per level.
    """
    from sluice.bench.oip import infer_request, model_metadata

    if concurrency is not None and rate is not None:
        run_cli(lambda: _fail("--concurrency and --rate choose different kinds of load: pass one of them"))
    open_loop = rate is not None
    spec = rate if rate is not None else (concurrency or "1,8,32")
    levels = run_cli(lambda: _levels(spec))
    seconds = run_cli(lambda: _seconds(duration))
    headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
    path = run_cli(lambda: model_path(model))
    meta = run_cli(lambda: model_metadata(url, path, headers))
    request = run_cli(lambda: infer_request(url, path, meta, rows=rows, binary=binary, headers=headers))
    results = _run_levels(request, levels, seconds, open_loop)
    report: dict[str, object] = {"url": url, "model": model, "levels": [r.to_dict() for r in results]}
    tables = [results_table(f"{model} at {url}", results)]
    if ceiling:
        trivial = _ceiling(levels, seconds, open_loop)
        tables.append(results_table("generator ceiling: a trivial local server", trivial))
        report["ceiling"] = [r.to_dict() for r in trivial]
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    _show(report, tables, results, as_json)


def _show(report: dict[str, object], tables: list[Table], results: list[LevelResult], as_json: bool) -> None:
    """The report on stdout (tables and the reasons of failures, or JSON); exit 1 if no request succeeded."""
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out = console(stderr=False)
        for table in tables:
            out.print(table)
        for status, reason in failure_reasons(results).items():
            out.print(f"{_status_name(status)}: {reason}", highlight=False, markup=False)
    if results and not any(r.ok for r in results):
        first = next(iter(failure_reasons(results).items()), None)
        why = f": {_status_name(first[0])}: {first[1]}" if first else ""
        run_cli(lambda: _fail_remote(f"no request succeeded{why}"))


def failure_reasons(results: list[LevelResult]) -> dict[int, str]:
    """Each failing status over all levels → the first reason given for it."""
    reasons: dict[int, str] = {}
    for result in results:
        for status, reason in sorted(result.reasons.items()):
            reasons.setdefault(status, reason)
    return reasons


def _status_name(status: int) -> str:
    from sluice.bench.loadgen import NO_ANSWER

    return f"{status} (no HTTP answer)" if status == NO_ANSWER else str(status)


def _fail_remote(message: str) -> None:
    from sluice.errors import RemoteError

    raise RemoteError(message)


def _fail(message: str) -> None:
    from sluice.errors import ConfigError

    raise ConfigError(message)


def _run_levels(request: HttpRequest, levels: list[float], seconds: float, open_loop: bool) -> list[LevelResult]:
    import asyncio

    from sluice.bench.loadgen import closed_loop
    from sluice.bench.loadgen import open_loop as open_

    if open_loop:
        return [asyncio.run(open_(request, level, seconds)) for level in levels]
    return [asyncio.run(closed_loop(request, int(level), seconds)) for level in levels]


def _ceiling(levels: list[float], seconds: float, open_loop: bool) -> list[LevelResult]:
    """The same levels against a trivial server in its own process, on 127.0.0.1."""
    from sluice._net import free_loopback_port
    from sluice.bench.loadgen import HttpRequest

    port = free_loopback_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "sluice.bench.trivial", str(port)], env=env)
    try:
        _wait_for_port(port)
        request = HttpRequest.post(f"http://127.0.0.1:{port}/", b"{}")
        return _run_levels(request, levels, seconds, open_loop)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    _fail(f"the trivial server on port {port} did not start")


def results_table(title: str, results: list[LevelResult]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("level", "requests", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "other statuses"):
        table.add_column(col, justify="left" if col in ("level", "other statuses") else "right")
    for r in results:
        pct = r.latency.percentiles_ms((50, 90, 99, 999))
        others = ", ".join(f"{_status_name(k)}×{v}" for k, v in sorted(r.statuses.items()) if k != 200)
        if r.dropped:
            others = f"{others}, {r.dropped} dropped".lstrip(", ")
        table.add_row(
            r.label,
            f"{r.requests:,}",
            f"{r.throughput_per_s:,.0f}",
            *("-" if pct[k] is None else f"{pct[k]:.2f}" for k in ("p50", "p90", "p99", "p999")),
            others or "-",
        )
    return table
