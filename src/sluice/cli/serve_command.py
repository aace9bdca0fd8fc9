"""``sluice serve``: the Open Inference Protocol (KServe v2 / Triton) server, over HTTP and gRPC."""

from __future__ import annotations

import functools
import os
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
    grpc_port: Annotated[
        int,
        typer.Option(
            metavar="PORT",
            help="Port of the gRPC service (Triton's inference.GRPCInferenceService) on the same address "
            "(0: any free port).",
        ),
    ] = 8001,
    grpc: Annotated[
        bool,
        typer.Option("--grpc/--no-grpc", help="Serve gRPC beside HTTP, with the same models, batcher and token."),
    ] = True,
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
            help="Latency target of the adaptive batcher; requests that cannot meet it, counting the time they "
            "already spent on the server, get 503 with Retry-After (gRPC: UNAVAILABLE) before their body is read "
            "when the queue alone rules them out (model.yaml 'batching: {target_p99_ms: …}' overrides it per model).",
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
    device: Annotated[
        str,
        typer.Option(
            metavar="DEVICE",
            help="auto, cpu, cuda or cuda:N: where PyTorch, Hugging Face and ONNX models run (auto: a GPU if any).",
        ),
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(metavar="PRECISION", help="fp32, fp16 or bf16: what PyTorch and Hugging Face models compute in."),
    ] = "fp32",
    workers: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Serving processes behind the same HTTP and gRPC ports (SO_REUSEPORT), each with its own copy "
            "of every model and its own batchers: N times the model memory. A supervisor restarts a worker "
            "that dies, applies load/unload, route changes and --watch reloads in all of them, and answers "
            "/metrics and readiness for all. Raise it when one process's CPU is the limit and cores are idle "
            "(see docs/serving.md); 1 serves in this process.",
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
    header_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="A connection must send a request's whole head within this long of connecting (or of the "
            "request's first byte), else it gets 408 and is closed.",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="A request's body must arrive within this long of its head (else 408)."),
    ] = 60.0,
    max_incomplete_requests: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Most connections still sending a request; one more and the one waiting longest gets 503 "
            "(default: half of 'ulimit -n', at most 1024).",
            show_default=False,
        ),
    ] = None,
    json_non_finite: Annotated[
        str,
        typer.Option(
            metavar="triton|null",
            help="NaN and infinity in JSON outputs: 'triton' writes NaN, Infinity and -Infinity as Triton does "
            "(tritonclient reads them; strict JSON parsers refuse them); 'null' writes null, valid JSON that "
            "loses which of the three it was (binary outputs are always exact).",
        ),
    ] = "triton",
    jobs: Annotated[
        bool,
        typer.Option(
            "--jobs",
            help="Also serve the batch jobs REST API at /v1/jobs (behind --auth-token), over the job database "
            "in $SLUICE_HOME; `sluice jobs worker` runs the jobs. Submitted jobs take models of --repository "
            "by name, no trust flags, and inputs and outputs under --jobs-data-root only.",
        ),
    ] = False,
    jobs_data_root: Annotated[
        list[str] | None,
        typer.Option(
            "--jobs-data-root",
            metavar="DIR",
            help="With --jobs: a directory (or URI prefix, s3://bucket/prefix/) that submitted jobs may read "
            "and write under; repeatable. Without one, every submission is refused (403).",
            show_default=False,
        ),
    ] = None,
    jobs_allow_model: Annotated[
        list[str] | None,
        typer.Option(
            "--jobs-allow-model",
            metavar="REF",
            help="With --jobs: a model reference submitted jobs may use besides the repository's names "
            "(module:function, a model file), exactly as a job gives it; repeatable.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the repository's models with the Open Inference Protocol v2 (Triton-compatible) over HTTP and gRPC.

    Serves the versions each model.yaml's 'versions:' policy names (default: the latest) plus every
    labelled or routed version; a label works where a version goes in a URL
    (/v2/models/NAME/versions/stable/infer). A 'routing:' section splits requests that name no
    version between variants, with sticky keys, shadows and a guardrail (see docs/ab-testing.md;
    'sluice routes' and 'sluice ab report' talk to it). Endpoints: /v2/health/live,
    /v2/health/ready, /v2, /v2/models/NAME[/versions/V][/ready|/config|/infer],
    /v2/models/NAME/feedback|experiment|routes[/promote|/rollback], /v2/repository/index,
    /v2/repository/models/NAME/load|unload, /metrics (Prometheus).
    With --jobs: POST/GET /v1/jobs, GET /v1/jobs/ID, POST /v1/jobs/ID:cancel (see docs/jobs.md).
    gRPC (--grpc-port, default 8001 as Triton's): ServerLive, ServerReady, ModelReady,
    ServerMetadata, ModelMetadata, ModelConfig, ModelInfer, RepositoryIndex,
    RepositoryModelLoad/Unload, for tritonclient.grpc and perf_analyzer -i grpc; the token goes
    in 'authorization: Bearer TOKEN' metadata; errors carry Triton's status codes.

    Requests are batched per model version to stay within --target-p99-ms. One request may hold
    at most the model's max_batch_size rows (default 64; model.yaml 'batching: {max_batch_size: N}');
    a larger one gets 400 naming the limit. A request may set a
    timeout with the 'timeout' parameter (microseconds) or a Sluice-Timeout-Ms header (504 when
    it passes; it counts from the request's arrival). Under overload, requests that cannot finish
    in time get 503 with Retry-After at once (gRPC: UNAVAILABLE with retry-after and
    grpc-retry-pushback-ms trailers); model.yaml 'batching: {max_queue_rows: N}' caps the queue.
    Stop with Ctrl-C or SIGTERM: readiness turns false at once, in-flight requests
    finish (up to --drain-timeout; what is still queued then gets 503 with Retry-After), then it
    exits 0. With --workers N, every worker drains so, and the server exits 0 once all have.

    Exit codes: 0 stopped cleanly, 1 server failure, 2 usage error or unusable input (a port in use
    included), 130 interrupted before it started.
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
                    "grpc_port": grpc_port if grpc else None,
                    "auth_token": auth_token or None,
                    "max_body_bytes": max_body_bytes,
                    "target_p99_ms": target_p99_ms,
                    "trust_pickle": trust_pickle,
                    "intra_op_threads": intra_op_threads,
                    "device": device,
                    "precision": precision,
                    "workers": workers,
                    "log_level": log_level.lower(),
                    "access_log": access_log,
                    "watch": watch,
                    "watch_interval_s": watch_interval,
                    "drain_timeout_s": drain_timeout,
                    "header_timeout_s": header_timeout,
                    "body_timeout_s": body_timeout,
                    "max_incomplete_requests": max_incomplete_requests,
                    "json_non_finite": json_non_finite,
                }
            )
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None
        policy = (settings.repository, tuple(jobs_data_root or ()), tuple(jobs_allow_model or ()))
        # a function, not the apps: with --workers N each worker process builds its own
        run(settings, mounts=functools.partial(_jobs_api, *policy) if jobs else None)

    run_cli(start)


def _jobs_api(
    repository: os.PathLike[str], data_roots: tuple[str, ...], allowed_models: tuple[str, ...]
) -> dict[str, Any]:
    """The jobs REST API, composed in here: the server itself knows nothing of batch jobs."""
    from sluice.jobs.http import PREFIX, JobsApi
    from sluice.jobs.policy import SubmitPolicy
    from sluice.jobs.store import open_store

    policy = SubmitPolicy(str(repository), data_roots, allowed_models)
    return {PREFIX: JobsApi(open_store(), policy=policy)}
