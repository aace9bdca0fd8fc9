"""The ``sluice`` command: parses flags, calls the Python API, renders the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sluice.cli.grammar import SluiceTyper, command_class, deprecation_epilog
from sluice.cli.options import RepositoryOption, TrustTypeOption
from sluice.cli.predict_command import build_spec, render_result, run_spec
from sluice.cli.runtime import console, run_cli

app = SluiceTyper(
    name="sluice",
    help="Batch and real-time inference for ML models over Parquet, CSV and JSON Lines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
models_app = SluiceTyper(help="Inspect the model repository.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put demo-data/, models/ and demo-output/.")] = Path(
        "."
    ),
    rows: Annotated[int, typer.Option(help="Rows of synthetic data.")] = 1_000_000,
    files: Annotated[int, typer.Option(help="Parquet files to split the data into.")] = 8,
    with_target: Annotated[
        bool,
        typer.Option(
            "--with-target",
            help="Also write demo-train/: 20,000 labelled rows (id, the features, a 0/1 'churned' column) "
            "for `sluice train`.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")] = False,
) -> None:
    """Create a synthetic data set and a small ONNX classifier, then run `sluice predict` on them.

    The data (an `id` column and 32 float features, deterministic) and the model
    (models/demo/1/model.onnx) are made only if missing; the predictions go to
    demo-output/, replacing an earlier demo run. --with-target adds a labelled training set.
    """
    from sluice.demo import prepare_demo

    err = console()
    if not quiet:
        err.print(f"Preparing the demo under {directory.resolve()} …")
    paths = run_cli(lambda: prepare_demo(directory, rows=rows, files=files, with_target=with_target))
    if paths.training is not None and not quiet:
        err.print(f"labelled training set (target column 'churned'): {paths.training}", highlight=False)
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
    summary = run_cli(lambda: run_spec(build_spec(None, fields), quiet))
    render_result(summary, as_json=False, quiet=quiet)


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
    trust_type: TrustTypeOption = None,
) -> None:
    """Load a model and print its signature (inputs and outputs)."""
    from sluice.cli.render import signature_table
    from sluice.models import LoadOptions, load_model

    options = LoadOptions(trust_pickle=trust_pickle, trusted_types=tuple(trust_type or ()))
    loaded = run_cli(lambda: load_model(model, repository, options=options))
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
    from sluice.cli.predict_command import predict
    from sluice.cli.routes_command import ab_app, routes_app
    from sluice.cli.serve_command import serve
    from sluice.cli.stream_command import stream
    from sluice.cli.train_command import train_app
    from sluice.cli.tune_command import RENAMED as TUNE_RENAMED
    from sluice.cli.tune_command import tune

    app.command("predict")(predict)
    app.command("demo")(demo)
    app.command("tune", cls=command_class(TUNE_RENAMED), epilog=deprecation_epilog(TUNE_RENAMED))(tune)
    app.command("cost")(cost)
    app.command("serve")(serve)
    app.command("stream")(stream)
    app.add_typer(train_app, name="train")
    app.add_typer(bench_app, name="bench")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(routes_app, name="routes")
    app.add_typer(ab_app, name="ab")


_register()


def main() -> None:
    """Console-script entry point."""
    app()
