"""``sluice serve``: the Open Inference Protocol (KServe v2 / Triton) HTTP server."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice.cli.options import RepositoryOption

__all__ = ["serve"]


def serve(
    repository: RepositoryOption = None,
    host: Annotated[
        str, typer.Option(help="Address to bind. Use 0.0.0.0 only behind a firewall, with --auth-token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    auth_token: Annotated[
        str | None,
        typer.Option(
            envvar="SLUICE_AUTH_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' for inference and repository control "
            "(default: $SLUICE_AUTH_TOKEN; none).",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(metavar="BYTES", help="Largest request body; larger ones get 413.")
    ] = 64 << 20,
    target_p99_ms: Annotated[
        float,
        typer.Option(
            metavar="MS",
            help="Latency target of the adaptive batcher; requests that cannot meet it get 503 with Retry-After "
            "(model.yaml 'batching: {target_p99_ms: …}' overrides it per model).",
        ),
    ] = 100.0,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Serve pickle/joblib model files (they can run arbitrary code); a repository can opt in "
            "instead with 'trust_pickle: true' in its sluice-repository.yaml.",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug.")] = "info",
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Pick up new version directories and edited model.yaml files without a restart "
            "(the new version loads and warms up before it serves; the old one drains).",
        ),
    ] = False,
    watch_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="How often --watch polls the repository.")
    ] = 1.0,
    drain_timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="On SIGTERM/Ctrl-C, how long in-flight requests may take to finish."),
    ] = 30.0,
) -> None:
    """Serve the repository's models over HTTP with the Open Inference Protocol v2 (Triton-compatible).

    Serves the versions each model.yaml's 'versions:' policy names (default: the latest) plus every
    labelled or routed version; a label works where a version goes in a URL
    (/v2/models/NAME/versions/stable/infer). A 'routing:' section splits requests that name no
    version between variants, with sticky keys, shadows and a guardrail (see docs/ab-testing.md;
    'sluice routes' and 'sluice ab report' talk to it). Endpoints: /v2/health/live,
    /v2/health/ready, /v2, /v2/models/NAME[/versions/V][/ready|/config|/infer],
    /v2/models/NAME/feedback|experiment|routes[/promote|/rollback], /v2/repository/index,
    /v2/repository/models/NAME/load|unload, /metrics (Prometheus).

    Requests are batched per model version to stay within --target-p99-ms. A request may set a
    timeout with the 'timeout' parameter (microseconds) or a Sluice-Timeout-Ms header (504 when
    it passes). Stop with Ctrl-C or SIGTERM: readiness turns false at once, in-flight requests
    finish (up to --drain-timeout), then it exits 0.
    """
    from sluice.cli.main import run_cli
    from sluice.models import default_repository
    from sluice.serve.server import ServeSettings, run

    def start() -> None:
        from pydantic import ValidationError

        from sluice.errors import ConfigError
        from sluice.models.config import format_validation_error

        try:
            settings = ServeSettings.model_validate(
                {
                    "repository": repository or default_repository(),
                    "host": host,
                    "port": port,
                    "auth_token": auth_token or None,
                    "max_body_bytes": max_body_bytes,
                    "target_p99_ms": target_p99_ms,
                    "trust_pickle": trust_pickle,
                    "log_level": log_level.lower(),
                    "watch": watch,
                    "watch_interval_s": watch_interval,
                    "drain_timeout_s": drain_timeout,
                }
            )
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None
        run(settings)

    run_cli(start)
