"""``sluice predict``: flags → job spec → run on the chosen engine → summary.

The command is four named steps: :func:`spec_fields` (the flags as job-spec fields),
:func:`build_spec`, :func:`run_spec` and :func:`render_result`; ``sluice demo`` reuses the last three.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sluice.cli.options import RepositoryOption, given_fields, parse_key_values, split_csv
from sluice.cli.runtime import console, render_summary, run_cli

if TYPE_CHECKING:
    from sluice.batch import JobSpec
    from sluice.batch.summary import RunSummary

__all__ = ["build_spec", "predict", "render_result", "run_spec", "spec_fields"]


def _option(help_: str, *names: str, metavar: str | None = None) -> Any:
    return typer.Option(*names, help=help_, show_default=False, metavar=metavar)


ModelOption = Annotated[
    str | None,
    _option(
        "Model file (.onnx, .skops, .pkl, XGBoost .json/.ubj, LightGBM .txt), 'module:function', an MLflow "
        "model (directory, models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH), a Hugging Face "
        "model directory (config.json, model.safetensors, tokenizer.json), "
        "or NAME, NAME@VERSION, NAME@LABEL in the repository.",
        "--model",
        "-m",
    ),
]
InputOption = Annotated[str | None, _option("Input file, directory, glob or URI (s3://…).", "--input", "-i")]
OutputOption = Annotated[str | None, _option("Output directory or URI prefix for part-NNNNN files.", "--output", "-o")]
SpecOption = Annotated[Path | None, _option("Job spec (YAML/JSON); flags override its fields.", "--spec")]
InputFormatOption = Annotated[
    str | None,
    _option(
        "parquet, csv, jsonl, or image: one record per image file, columns key (its path below the input) "
        "and image (its bytes) (default: from the file extensions; a directory of only .jpg/.jpeg/.png/.webp "
        "files is images)."
    ),
]
OutputFormatOption = Annotated[str | None, _option("parquet, csv or jsonl (default: parquet).")]
FeaturesOption = Annotated[
    str | None,
    _option("Comma-separated feature columns (default: model.yaml, else every numeric column not passed through)."),
]
KeyColumnOption = Annotated[
    str | None, _option("Column copied to the output and the error files to identify each record.")
]
KeyTypeOption = Annotated[
    str | None,
    _option(
        "Read the key column as 'string' or 'int64' (default: int64 while every key is a plain integer "
        "that fits, else text; never a float).",
        metavar="string|int64",
    ),
]
TextColumnOption = Annotated[
    str | None, _option("String column a text model reads (default: the only string column not passed through).")
]
TaskOption = Annotated[
    str | None,
    _option(
        "Hugging Face task: feature-extraction, text-classification or image-classification "
        "(default: model.yaml's task:, else config.json's architectures).",
        metavar="TASK",
    ),
]
PoolingOption = Annotated[
    str | None,
    _option(
        "feature-extraction: 'mean' of the token embeddings over the attention mask, or the 'cls' token's "
        "(default: model.yaml's text.pooling, else mean).",
        metavar="mean|cls",
    ),
]
NormalizeOption = Annotated[
    bool,
    typer.Option(
        "--normalize",
        help="feature-extraction: scale each embedding to unit length (default: model.yaml's text.normalize).",
    ),
]
MaxLengthOption = Annotated[
    int | None,
    _option(
        "Tokens per record (special tokens included); longer records are truncated and counted as "
        "truncated_records in the summary (default: the tokenizer's model_max_length)."
    ),
]
NoBucketingOption = Annotated[
    bool,
    typer.Option(
        "--no-bucketing",
        help="Text models: forward passes take the records in input order, not ordered by length "
        "(length bucketing, the default, computes less padding; output order is input order either way).",
    ),
]
ForwardBatchSizeOption = Annotated[
    int | None,
    _option("Text models: records per forward pass, each padded to its longest record (default: 64)."),
]
ImageColumnOption = Annotated[
    str | None,
    _option(
        "Column that feeds an image model: binary (encoded JPEG/PNG/WebP) or string (image paths or URIs; "
        "a relative path is read from the directory of the input file that holds it, s3:// with "
        "--storage-option)."
    ),
]
IncludeOption = Annotated[str | None, _option("Comma-separated columns to copy to the output.")]
ExcludeOption = Annotated[str | None, _option("Copy every column except these (comma-separated) to the output.")]
BatchSizeOption = Annotated[
    str | None,
    _option(
        "Rows per model call, or 'auto': tuned on the first rows and cached per model and machine (a deep "
        "model takes its own size instead: 512 texts, 64 images) (default: auto)."
    ),
]
MemoryLimitOption = Annotated[
    str | None,
    _option(
        "Peak memory one batch may take, e.g. 2GiB or 512MiB: the batch size is cut to the largest batch whose "
        "memory, measured per record on the first rows (GPU memory when the model runs on one), fits with a margin.",
        metavar="BYTES",
    ),
]
WorkersOption = Annotated[
    int | None,
    _option("Parallel predict workers (threads, or processes for Python models) (default: one per core)."),
]
ReadersOption = Annotated[int | None, _option("Input shards read at once (default: 2).")]
IntraOpThreadsOption = Annotated[
    int | None, _option("Threads inside one model call: ONNX Runtime, XGBoost, LightGBM (default: cores / workers).")
]
DeviceOption = Annotated[
    str | None,
    _option(
        "auto, cpu, cuda or cuda:N: where PyTorch, Hugging Face and ONNX models run (default: auto, a GPU if any)."
    ),
]
PrecisionOption = Annotated[
    str | None, _option("fp32, fp16 or bf16: what PyTorch and Hugging Face models compute in (default: fp32).")
]
MaxErrorFractionOption = Annotated[
    float | None, _option("Fraction of records allowed to fail before the exit code is 3 (default: 0).")
]
PricePerHourOption = Annotated[float | None, _option("Machine price in USD/hour, for cost per 1M predictions.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing output instead of resuming it.")]
TrustPickleOption = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow pickle/joblib model files (they can run arbitrary code).")
]
TrustTypeOption = Annotated[
    list[str] | None, _option("A type a skops file may contain that you reviewed (repeatable).", "--trust-type")
]
StorageOption = Annotated[
    list[str] | None,
    _option(
        "fsspec option for s3:// (or other) URIs, e.g. endpoint_url=http://127.0.0.1:9000; repeatable "
        "(a.b=v nests; true/false are booleans). Credentials also come from the AWS environment variables.",
        "--storage-option",
        metavar="KEY=VALUE",
    ),
]
BackendOption = Annotated[
    str | None,
    _option(
        "Where the job runs: local (this machine), spark (pyspark, mapInArrow) or ray (Ray Data actors) "
        "(default: local)."
    ),
]
SparkMasterOption = Annotated[
    str | None,
    _option(
        "Spark master for --backend spark, e.g. local[2] or spark://host:7077 (default: the active "
        "session under spark-submit, else local[*])."
    ),
]
RayAddressOption = Annotated[
    str | None,
    _option(
        "Ray cluster for --backend ray, e.g. ray://head:10001 or auto (default: a local instance "
        "started and stopped by Sluice)."
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary table.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]

# flags whose value is the job-spec field of the same name, as given
_AS_GIVEN = (
    "model", "output", "repository", "input_format", "output_format", "key_column", "key_type", "image_column",
    "batch_size", "memory_limit", "workers", "readers", "intra_op_threads", "device", "precision",
    "max_error_fraction", "price_per_hour", "backend", "spark_master", "ray_address", "text_column", "task",
    "pooling", "max_length", "forward_batch_size",
)  # fmt: skip


def predict(
    ctx: typer.Context,
    model: ModelOption = None,
    input_: InputOption = None,
    output: OutputOption = None,
    spec: SpecOption = None,
    repository: RepositoryOption = None,
    input_format: InputFormatOption = None,
    output_format: OutputFormatOption = None,
    features: FeaturesOption = None,
    key_column: KeyColumnOption = None,
    key_type: KeyTypeOption = None,
    text_column: TextColumnOption = None,
    task: TaskOption = None,
    pooling: PoolingOption = None,
    normalize: NormalizeOption = False,
    max_length: MaxLengthOption = None,
    no_bucketing: NoBucketingOption = False,
    forward_batch_size: ForwardBatchSizeOption = None,
    image_column: ImageColumnOption = None,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    batch_size: BatchSizeOption = None,
    memory_limit: MemoryLimitOption = None,
    workers: WorkersOption = None,
    readers: ReadersOption = None,
    intra_op_threads: IntraOpThreadsOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    max_error_fraction: MaxErrorFractionOption = None,
    price_per_hour: PricePerHourOption = None,
    overwrite: OverwriteOption = False,
    trust_pickle: TrustPickleOption = False,
    trust_type: TrustTypeOption = None,
    storage_option: StorageOption = None,
    backend: BackendOption = None,
    spark_master: SparkMasterOption = None,
    ray_address: RayAddressOption = None,
    quiet: QuietOption = False,
    summary_json: JsonOption = False,
) -> None:
    """Run a model over a data set and write predictions plus per-record error files.

    Writes OUTPUT/part-NNNNN.parquet (or .csv, .jsonl; one per input shard, rows in input order),
    _errors/errors-NNNNN.jsonl for records the model could not take, _summary.json and _SUCCESS.
    Re-running the same command resumes: complete parts are skipped, and the summary and exit code
    cover the whole job; --overwrite starts over.

    With --backend spark or ray the same job runs on that engine with the same output (see docs/cluster.md).

    Exit codes: 0 success, 1 model or engine failure, 2 usage error or unusable input, 3 error fraction
    exceeded, 4 the output is being written by another run, 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM, which stops the run as Ctrl-C does). An output that cannot be written (read-only, a file,
    a full disk) is a usage error.
    """
    fields = run_cli(lambda: spec_fields(ctx.params))
    with _terminate_as_interrupt() as terminated:
        try:
            summary = run_cli(lambda: run_spec(build_spec(spec, fields), quiet))
        except typer.Exit as stop:
            if terminated.is_set() and stop.exit_code == 130:
                raise typer.Exit(143) from None
            raise
    render_result(summary, as_json=summary_json, quiet=quiet)


@contextmanager
def _terminate_as_interrupt() -> Iterator[threading.Event]:
    """SIGTERM stops the run as Ctrl-C does (temporary files removed, resumable); the event tells which came.

    Later SIGTERMs are ignored while the run cleans up, so a supervisor's repeated signal cannot cut it short.
    """
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield terminated
        return

    def interrupt(_signum: int, _frame: object) -> None:
        if not terminated.is_set():
            terminated.set()
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def spec_fields(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The job-spec fields the command's flags set; None for each flag not given."""
    fields = {name: flags[name] for name in _AS_GIVEN}
    fields.update(
        input=flags["input_"],
        features=split_csv(flags["features"]),
        include=split_csv(flags["include"]),
        exclude=split_csv(flags["exclude"]),
        overwrite=flags["overwrite"] or None,
        normalize=flags["normalize"] or None,
        bucketing=False if flags["no_bucketing"] else None,
        trust_pickle=flags["trust_pickle"] or None,
        trusted_types=flags["trust_type"] or None,
        storage_options=parse_key_values(flags["storage_option"] or [], "--storage-option") or None,
    )
    return fields


def build_spec(spec_path: Path | None, fields: Mapping[str, Any]) -> JobSpec:
    """The job: the spec file with the given flags over it, or the flags alone (then model, input, output needed)."""
    from sluice.batch import JobSpec

    given = given_fields(fields, ("model", "input", "output"), from_file=spec_path is not None, file_flag="--spec")
    return JobSpec.from_file(spec_path, **given) if spec_path is not None else JobSpec.build(**given)


def run_spec(job: JobSpec, quiet: bool) -> RunSummary:
    """Run the job on its backend, with a progress bar (or log lines) on stderr unless ``quiet``."""
    from sluice.backends import run_job

    if quiet:  # no bar and no console: rich is not even imported (~35 ms of start-up)
        from sluice.batch.progress import NullProgress

        return run_job(job, progress=NullProgress())
    from sluice.cli.progress import make_progress

    return run_job(job, progress=make_progress(console(), quiet))


def render_result(summary: RunSummary, *, as_json: bool, quiet: bool) -> None:
    """The summary as JSON on stdout, or as a table on stderr unless ``quiet``."""
    if as_json:
        import json

        print(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        render_summary(summary)
