"""``sluice serve``: the Open Inference Protocol (KServe v2 / Triton) HTTP server."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sluice.cli.options import RepositoryOption
from sluice.cli.runtime import run_cli

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
    intra_op_threads: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Threads inside one predict call. 1 leaves the other cores to the HTTP server and makes "
            "small batches fastest; raise it for heavy models with large batches on many cores.",
        ),
    ] = 1,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug.")] = "info",
    access_log: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Write one JSON line per request (time, method, path, status, duration_ms, bytes_out, client) "
            "to FILE, appending; '-' for stderr. Written by its own thread, off the request path.",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Pick up new version directories, edited model.yaml files and moved MLflow registry aliases "
            "(model.yaml source: models:/NAME@ALIAS) without a restart (the new version loads and warms up "
            "before it serves; the old one drains).",
        ),
    ] = False,
    watch_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="How often --watch polls the repository.")
    ] = 1.0,
    drain_timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="On SIGTERM/Ctrl-C, how long in-flight requests may take to finish."),
    ] = 30.0,
    jobs: Annotated[
        bool,
        typer.Option(
            "--jobs",
            help="Also serve the batch jobs REST API at /v1/jobs (behind --auth-token), over the job database "
            "in $SLUICE_HOME; `sluice jobs worker` runs the jobs.",
        ),
    ] = False,
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
    With --jobs: POST/GET /v1/jobs, GET /v1/jobs/ID, POST /v1/jobs/ID:cancel (see docs/jobs.md).

    Requests are batched per model version to stay within --target-p99-ms. A request may set a
    timeout with the 'timeout' parameter (microseconds) or a Sluice-Timeout-Ms header (504 when
    it passes). Stop with Ctrl-C or SIGTERM: readiness turns false at once, in-flight requests
    finish (up to --drain-timeout), then it exits 0.
    """
    from sluice.models import default_repository
    from sluice.serve.server import ServeSettings, run

    def start() -> None:
        from pydantic import ValidationError

        from sluice.configfile import format_validation_error
        from sluice.errors import ConfigError

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
                    "intra_op_threads": intra_op_threads,
                    "log_level": log_level.lower(),
                    "access_log": access_log,
                    "watch": watch,
                    "watch_interval_s": watch_interval,
                    "drain_timeout_s": drain_timeout,
                }
            )
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None
        run(settings, mounts=_jobs_api() if jobs else None)

    run_cli(start)


def _jobs_api() -> dict[str, Any]:
    """The jobs REST API, composed in here: the server itself knows nothing of batch jobs."""
    from sluice.jobs.http import PREFIX, JobsApi
    from sluice.jobs.store import open_store

    return {PREFIX: JobsApi(open_store())}
