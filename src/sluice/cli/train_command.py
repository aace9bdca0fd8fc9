"""``sluice train``: data-parallel training that publishes a model version; ``sluice train plan``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sluice.cli.grammar import Renamed, SluiceTyper, deprecation_epilog, group_class
from sluice.cli.options import RepositoryOption, given_fields, split_csv
from sluice.cli.runtime import console, run_cli
from sluice.cli.train_plan_command import plan

if TYPE_CHECKING:
    from rich.table import Table

    from sluice.train.launch import TrainResult

# the names every other command uses for the data, the model and columns that are no feature
RENAMED = {
    "--data": Renamed("--input"),
    "--model-name": Renamed("--model"),
    "--exclude": Renamed("--exclude-features"),
}

train_app = SluiceTyper(
    cls=group_class(RENAMED),
    help="Train a tabular model data-parallel and publish it; plan communication on a cluster.",
    epilog=deprecation_epilog(RENAMED),
    rich_markup_mode="markdown",
)
train_app.command("plan")(plan)


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Training data: file, directory, glob or URI.", show_default=False),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Column to predict (float = regression, else classes).", show_default=False)
    ] = None,
    model_name: Annotated[
        str | None, typer.Option("--model", "-m", help="Model (NAME) to publish a new version of.", show_default=False)
    ] = None,
    repository: RepositoryOption = None,
    config: Annotated[
        Path | None, typer.Option(help="Training config (YAML/JSON); flags override its fields.", show_default=False)
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated feature columns (default: every numeric column but the target).", show_default=False
        ),
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option(
            "--exclude-features", help="Comma-separated columns never used as features (ids).", show_default=False
        ),
    ] = None,
    nproc: Annotated[
        int | None, typer.Option(help="Processes (ranks) on this machine (default: 2).", show_default=False)
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="ddp, fp16, powersgd or localsgd (default: ddp).", show_default=False)
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the training data (default: 5).", show_default=False)
    ] = None,
    global_batch_size: Annotated[
        int | None, typer.Option(help="Rows per optimizer step across all ranks (default: 512).", show_default=False)
    ] = None,
    grad_accumulation: Annotated[
        int | None,
        typer.Option(
            help="Micro-batches per step, gradients not synchronized between (default: 1).", show_default=False
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: 0.001).", show_default=False)] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the initial weights, the split and the shuffles (default: 0).", show_default=False),
    ] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Comma-separated hidden layer widths (default: 64,64).", show_default=False)
    ] = None,
    bucket_cap_mb: Annotated[
        float | None, typer.Option(help="DDP gradient bucket size in MB (default: 25).", show_default=False)
    ] = None,
    powersgd_rank: Annotated[
        int | None, typer.Option(help="PowerSGD matrix rank (default: 1).", show_default=False)
    ] = None,
    powersgd_start_iter: Annotated[
        int | None, typer.Option(help="PowerSGD: exact all-reduce before this step (default: 10).", show_default=False)
    ] = None,
    localsgd_period: Annotated[
        int | None, typer.Option(help="Local SGD: average models every H steps (default: 4).", show_default=False)
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint of the same run.")
    ] = False,
    checkpoint_dir: Annotated[
        str | None, typer.Option(help="Where epoch checkpoints go (default: under $SLUICE_HOME).", show_default=False)
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write loss and validation metric curves to this .png file.", show_default=False)
    ] = None,
    no_publish: Annotated[bool, typer.Option("--no-publish", help="Train and report, but publish no version.")] = False,
    mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow",
            help="Also register the published version in the MLflow model registry (MLFLOW_TRACKING_URI), "
            "with the training parameters and metrics.",
        ),
    ] = False,
) -> None:
    """Train an MLP over the feature columns data-parallel (torch.distributed) and publish it.

    Runs --nproc processes (gloo on CPU, NCCL when there is a GPU per rank), or one rank per
    process under torchrun. Gradients are synchronized by the --strategy: ddp (bucketed
    all-reduce overlapping backward), fp16 (compressed all-reduce), powersgd (low-rank with error
    feedback) or localsgd (models averaged every H steps). Prints loss, validation metric,
    samples/s, compute vs communication time and gradient bytes per step and per epoch, saves a
    checkpoint every epoch, and publishes the model as the next version of --model (ONNX,
    with the training config, metrics and data fingerprint in model.yaml); with --mlflow, also as
    the next version of that name in the MLflow model registry.
    """
    if ctx.invoked_subcommand is not None:
        return
    if mlflow and no_publish:
        run_cli(_refuse_mlflow_without_publish)

    fields: dict[str, Any] = {
        "data": data, "target": target, "model_name": model_name, "repository": repository,
        "features": split_csv(features), "exclude": split_csv(exclude), "nproc": nproc, "strategy": strategy,
        "epochs": epochs, "global_batch_size": global_batch_size, "grad_accumulation": grad_accumulation,
        "lr": lr, "seed": seed, "bucket_cap_mb": bucket_cap_mb, "powersgd_rank": powersgd_rank,
        "powersgd_start_iter": powersgd_start_iter, "localsgd_period": localsgd_period,
        "resume": resume or None, "checkpoint_dir": checkpoint_dir,
        "hidden": [int(h) for h in split_csv(hidden) or []] or None,
    }  # fmt: skip
    result, version = run_cli(lambda: _train(config, fields, not no_publish))
    out = console(stderr=False)
    out.print(epochs_table(result))
    if result.dropped_rows:
        out.print(
            f"[yellow]{result.dropped_rows:,} rows left out:[/] a missing or non-finite feature or target, "
            "or a record that could not be read",
            highlight=False,
        )
    if version is not None:
        out.print(
            f"published [bold]{result.config.model_name}@{version}[/] "
            f"(validation {result.metric_name} {result.validation_metric:.4f})",
            highlight=False,
        )
    if mlflow and version is not None:
        from sluice.train.mlflow_register import register_in_mlflow

        registered = run_cli(lambda: register_in_mlflow(result, version))
        out.print(
            f"registered [bold]{registered.uri}[/] in MLflow at {registered.tracking_uri} (run {registered.run_id})",
            highlight=False,
        )
    if plot is not None:
        from sluice.train.curves import write_curves

        run_cli(lambda: write_curves({result.config.strategy: result.history}, plot, result.metric_name))


# training-config fields whose flag is not the field's name
_FIELD_FLAGS = {"data": "--input", "model_name": "--model", "exclude": "--exclude-features"}


def _refuse_mlflow_without_publish() -> None:
    from sluice.errors import ConfigError

    raise ConfigError("--mlflow registers the version a run publishes; it cannot go with --no-publish")


def _train(config_path: Path | None, fields: dict[str, Any], publish: bool) -> tuple[TrainResult, int | None]:
    from sluice.train import TrainConfig, train
    from sluice.train.publish import publish_result

    required = ("data", "target", "model_name")
    given = given_fields(fields, required, from_file=config_path is not None, file_flag="--config", flags=_FIELD_FLAGS)
    cfg = TrainConfig.from_file(config_path, **given) if config_path is not None else TrainConfig.build(**given)
    from sluice.cli.train_progress import TrainProgress

    with TrainProgress() as progress:
        result = train(cfg, progress)
    return result, publish_result(result) if publish else None


def epochs_table(result: TrainResult) -> Table:
    from rich.table import Table

    table = Table(
        title=f"sluice train: {result.config.strategy}, {result.world_size} rank(s), "
        f"{result.train_rows:,} training / {result.validation_rows:,} validation rows",
        title_justify="left",
    )
    columns = ("epoch", "train loss", "val loss", f"val {result.metric_name}", "samples/s", "compute s", "comm s",
               "exposed comm s", "grad bytes/step")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for e in result.history.epochs:
        table.add_row(
            str(e.epoch), f"{e.train_loss:.4f}", f"{e.val_loss:.4f}", f"{e.val_metric:.4f}",
            f"{e.samples_per_s:,.0f}", f"{e.compute_s:.2f}", f"{e.comm_s:.2f}", f"{e.exposed_comm_s:.2f}",
            f"{e.grad_bytes_per_step:,.0f}",
        )  # fmt: skip
    return table
