"""The ``sluice`` command: parses flags, calls the Python API, renders the result."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from sluice.cli.options import RepositoryOption, given_fields, parse_key_values, split_csv

if TYPE_CHECKING:
    from rich.console import Console

    from sluice.batch.summary import RunSummary

app = typer.Typer(
    name="sluice",
    help="Batch and real-time inference for ML models over Parquet, CSV and JSON Lines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
models_app = typer.Typer(help="Inspect the model repository.", no_args_is_help=True)
app.add_typer(models_app, name="models")

T = TypeVar("T")


def console(stderr: bool = True) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def run_cli(action: Callable[[], T]) -> T:
    """Call the API; translate errors into a message and the error's exit code."""
    from sluice.errors import SluiceError

    try:
        return action()
    except SluiceError as exc:
        from rich.markup import escape

        console().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        summary = getattr(exc, "summary", None)
        if summary is not None:
            _render_summary(summary)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console().print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


@app.command()
def predict(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model file (.onnx, .skops, .pkl), 'module:function', or NAME, NAME@VERSION, NAME@LABEL "
            "in the repository.",
            show_default=False,
        ),
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Input file, directory, glob or URI (s3://…).", show_default=False),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Output directory or URI prefix for part-NNNNN files.", show_default=False),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Job spec (YAML/JSON); flags override its fields.", show_default=False)
    ] = None,
    repository: RepositoryOption = None,
    input_format: Annotated[
        str | None, typer.Option(help="parquet, csv or jsonl (default: from the file extension).", show_default=False)
    ] = None,
    output_format: Annotated[
        str | None, typer.Option(help="parquet, csv or jsonl (default: parquet).", show_default=False)
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated feature columns (default: model.yaml, else every numeric column not passed through).",
            show_default=False,
        ),
    ] = None,
    key_column: Annotated[
        str | None,
        typer.Option(
            help="Column copied to the output and the error files to identify each record.", show_default=False
        ),
    ] = None,
    include: Annotated[
        str | None, typer.Option(help="Comma-separated columns to copy to the output.", show_default=False)
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option(help="Copy every column except these (comma-separated) to the output.", show_default=False),
    ] = None,
    batch_size: Annotated[
        str | None,
        typer.Option(
            help="Rows per model call, or 'auto': tune it on the first rows, cached per model and machine "
            "(default: auto).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Parallel predict workers (threads, or processes for Python models) (default: one per core).",
            show_default=False,
        ),
    ] = None,
    readers: Annotated[
        int | None, typer.Option(help="Input shards read at once (default: 2).", show_default=False)
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(help="Threads inside one ONNX Runtime call (default: cores / workers).", show_default=False),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default: auto).", show_default=False)] = None,
    max_error_fraction: Annotated[
        float | None,
        typer.Option(
            help="Fraction of records allowed to fail before the exit code is 3 (default: 0).", show_default=False
        ),
    ] = None,
    price_per_hour: Annotated[
        float | None, typer.Option(help="Machine price in USD/hour, for cost per 1M predictions.", show_default=False)
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing output instead of resuming it.")
    ] = False,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow pickle/joblib model files (they can run arbitrary code).")
    ] = False,
    trust_type: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-type", help="A type a skops file may contain that you reviewed (repeatable).", show_default=False
        ),
    ] = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            metavar="KEY=VALUE",
            help="fsspec option for s3:// (or other) URIs, e.g. endpoint_url=http://127.0.0.1:9000; repeatable "
            "(a.b=v nests; true/false are booleans). Credentials also come from the AWS environment variables.",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Where the job runs: local (this machine), spark (pyspark, mapInArrow) or ray (Ray Data actors) "
            "(default: local).",
            show_default=False,
        ),
    ] = None,
    spark_master: Annotated[
        str | None,
        typer.Option(
            help="Spark master for --backend spark, e.g. local[2] or spark://host:7077 (default: the active "
            "session under spark-submit, else local[*]).",
            show_default=False,
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for --backend ray, e.g. ray://head:10001 or auto (default: a local instance "
            "started and stopped by Sluice).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")] = False,
    summary_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Run a model over a data set and write predictions plus per-record error files.

    Writes OUTPUT/part-NNNNN.parquet (or .csv, .jsonl; one per input shard, rows in input order),
    _errors/errors-NNNNN.jsonl for records the model could not take, _summary.json and _SUCCESS.
    Re-running the same command resumes: complete parts are skipped; --overwrite starts over.

    With --backend spark or ray the same job runs on that engine with the same output (see docs/cluster.md).

    Exit codes: 0 success, 1 model or engine failure, 2 usage error or unusable input, 3 error fraction
    exceeded, 130 interrupted.
    """
    fields: dict[str, Any] = {
        "model": model,
        "input": input_,
        "output": output,
        "repository": repository,
        "input_format": input_format,
        "output_format": output_format,
        "features": split_csv(features),
        "key_column": key_column,
        "include": split_csv(include),
        "exclude": split_csv(exclude),
        "batch_size": batch_size,
        "workers": workers,
        "readers": readers,
        "intra_op_threads": intra_op_threads,
        "device": device,
        "max_error_fraction": max_error_fraction,
        "price_per_hour": price_per_hour,
        "overwrite": overwrite or None,
        "trust_pickle": trust_pickle or None,
        "trusted_types": trust_type or None,
        "storage_options": run_cli(lambda: parse_key_values(storage_option or [], "--storage-option")) or None,
        "backend": backend,
        "spark_master": spark_master,
        "ray_address": ray_address,
    }
    summary = run_cli(lambda: _predict(spec, fields, quiet))
    if summary_json:
        import json

        print(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        _render_summary(summary)


def _predict(spec_path: Path | None, fields: dict[str, Any], quiet: bool) -> RunSummary:
    from sluice.backends import run_job
    from sluice.batch import JobSpec
    from sluice.cli.progress import make_progress

    given = given_fields(fields, ("model", "input", "output"), from_file=spec_path is not None, file_flag="--spec")
    job = JobSpec.from_file(spec_path, **given) if spec_path is not None else JobSpec.build(**given)
    return run_job(job, progress=make_progress(console(), quiet))


def _render_summary(summary: RunSummary) -> None:
    from sluice.cli.render import summary_table

    console().print(summary_table(summary))


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put demo-data/, models/ and demo-output/.")] = Path(
        "."
    ),
    rows: Annotated[int, typer.Option(help="Rows of synthetic data.")] = 1_000_000,
    files: Annotated[int, typer.Option(help="Parquet files to split the data into.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")] = False,
) -> None:
    """Create a synthetic data set and a small ONNX classifier, then run `sluice predict` on them.

    The data (an `id` column and 32 float features, deterministic) and the model
    (models/demo/1/model.onnx) are made only if missing; the predictions go to
    demo-output/, replacing an earlier demo run.
    """
    from sluice.demo import prepare_demo

    err = console()
    if not quiet:
        err.print(f"Preparing the demo under {directory.resolve()} …")
    paths = run_cli(lambda: prepare_demo(directory, rows=rows, files=files))
    if not quiet:
        err.print(
            f"sluice predict --model demo --repository {paths.repository} --input {paths.data} "
            f"--output {paths.output} --key-column id --overwrite",
            style="dim",
            highlight=False,
        )
    fields = {
        "model": "demo",
        "repository": str(paths.repository),
        "input": str(paths.data),
        "output": str(paths.output),
        "key_column": "id",
        "overwrite": True,
    }
    summary = run_cli(lambda: _predict(None, fields, quiet))
    if not quiet:
        _render_summary(summary)


@models_app.command("list")
def models_list(repository: RepositoryOption = None) -> None:
    """List the models in the repository with their versions and labels."""
    from sluice.cli.render import models_table
    from sluice.models import ModelRepository, default_repository

    repo = ModelRepository(repository or default_repository())
    console(stderr=False).print(run_cli(lambda: models_table(repo)))


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="Model file, 'module:function', or NAME, NAME@VERSION, NAME@LABEL.")],
    repository: RepositoryOption = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow pickle/joblib model files.")] = False,
) -> None:
    """Load a model and print its signature (inputs and outputs)."""
    from sluice.cli.render import signature_table
    from sluice.models import LoadOptions, load_model

    loaded = run_cli(lambda: load_model(model, repository, options=LoadOptions(trust_pickle=trust_pickle)))
    console(stderr=False).print(signature_table(loaded))


def _print_version(value: bool) -> None:
    if value:
        from sluice import __version__

        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """Batch and real-time inference for ML models over Parquet, CSV and JSON Lines."""


def _register() -> None:
    from sluice.cli.bench_command import bench_app
    from sluice.cli.cost_command import cost
    from sluice.cli.jobs_command import jobs_app
    from sluice.cli.routes_command import ab_app, routes_app
    from sluice.cli.serve_command import serve
    from sluice.cli.train_command import train_app
    from sluice.cli.tune_command import tune

    app.command("tune")(tune)
    app.command("cost")(cost)
    app.command("serve")(serve)
    app.add_typer(train_app, name="train")
    app.add_typer(bench_app, name="bench")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(routes_app, name="routes")
    app.add_typer(ab_app, name="ab")


_register()


def main() -> None:
    """Console-script entry point."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app()
