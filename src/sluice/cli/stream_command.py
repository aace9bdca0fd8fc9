"""``sluice stream``: flags → stream spec → run until stopped → this run's figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sluice.cli.options import RepositoryOption, given_fields, parse_key_values, split_csv
from sluice.cli.runtime import console, run_cli

if TYPE_CHECKING:
    from sluice.stream import StreamSpec, StreamSummary

__all__ = ["spec_fields", "status_line", "stream"]


def _option(help_: str, *names: str) -> Any:
    return typer.Option(*names, help=help_, show_default=False)


SpecOption = Annotated[
    Path | None, _option("Stream spec (YAML/JSON: sluice.stream.StreamSpec's fields); flags override it.", "--spec")
]
ModelOption = Annotated[
    str | None,
    _option("Model file, 'module:function', or NAME, NAME@VERSION, NAME@LABEL in the repository.", "--model", "-m"),
]
SourceOption = Annotated[
    str | None, _option("Directory (or URI prefix) new files land in, or redis://HOST:PORT/STREAM.", "--source")
]
SinkOption = Annotated[
    str | None, _option("Output directory (one part per committed group), or redis://HOST:PORT/STREAM.", "--sink")
]
SourceFormatOption = Annotated[str | None, _option("parquet, csv or jsonl (default: from each file's extension).")]
SinkFormatOption = Annotated[str | None, _option("parquet or jsonl (default: parquet).")]
FeaturesOption = Annotated[str | None, _option("Comma-separated feature columns (default: as sluice predict).")]
KeyColumnOption = Annotated[
    str | None, _option("Column copied to the output and the error files to identify each record.")
]
IncludeOption = Annotated[str | None, _option("Comma-separated columns to copy to the output.")]
BatchSizeOption = Annotated[int | None, _option("Most records in one micro-batch (default: 1024).")]
BatchDelayOption = Annotated[
    float | None,
    _option("Longest wait, in ms, for a Redis micro-batch to fill once its first entry is there (default: 5)."),
]
TargetLatencyOption = Annotated[
    float | None,
    _option("End-to-end latency, arrival to commit, that the group size is chosen for, in ms (default: 100)."),
]
MinGroupOption = Annotated[int | None, _option("Fewest micro-batches per group under backlog (default: 1).")]
MaxGroupOption = Annotated[int | None, _option("Most micro-batches committed together (default: 256).")]
PollOption = Annotated[
    float | None,
    _option("How often an idle directory is listed, or how long an idle Redis read waits, in ms (default: 50)."),
]
GroupOption = Annotated[str | None, _option("Redis consumer group of a Redis source (default: sluice).")]
ConsumerOption = Annotated[
    str | None, _option("Consumer name within the group, one per process sharing it (default: sluice-1).")
]
ClaimIdleOption = Annotated[
    float | None,
    _option(
        "Claim entries another consumer of the group left pending this long, in ms: it died (default: 30000 "
        "with a Redis sink on the source's server, the one sink that allows claims; off otherwise)."
    ),
]
ValueFieldOption = Annotated[
    str | None, _option("Redis entry field holding the record as a JSON object (default: each field is a column).")
]
MetricsPortOption = Annotated[
    int | None, _option("Serve the figures as Prometheus text at http://HOST:PORT/metrics (default: off).")
]
MetricsHostOption = Annotated[str | None, _option("Address --metrics-port listens on (default: 127.0.0.1).")]
StorageOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        help="fsspec option for an s3:// source or sink, e.g. endpoint_url=http://127.0.0.1:9000; repeatable.",
        show_default=False,
        metavar="KEY=VALUE",
    ),
]
OnceOption = Annotated[bool, typer.Option("--once", help="Process what the source holds now, commit it, and exit.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Start the sink over instead of resuming it.")]
IntraOpThreadsOption = Annotated[int | None, _option("Threads inside one model call (default: every core).")]
DeviceOption = Annotated[str | None, _option("auto, cpu, cuda or cuda:N (default: auto, a GPU if any).")]
TrustPickleOption = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow pickle/joblib model files (they can run arbitrary code).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No status line.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print this run's figures as JSON on stdout at the end.")]

_AS_GIVEN = (
    "model", "source", "sink", "repository", "source_format", "sink_format", "key_column", "batch_size",
    "batch_delay_ms", "target_latency_ms", "min_group", "max_group", "poll_interval_ms", "group", "consumer",
    "claim_idle_ms", "value_field", "metrics_port", "metrics_host", "intra_op_threads", "device",
)  # fmt: skip


def stream(
    ctx: typer.Context,
    spec_file: SpecOption = None,
    model: ModelOption = None,
    source: SourceOption = None,
    sink: SinkOption = None,
    repository: RepositoryOption = None,
    source_format: SourceFormatOption = None,
    sink_format: SinkFormatOption = None,
    features: FeaturesOption = None,
    key_column: KeyColumnOption = None,
    include: IncludeOption = None,
    batch_size: BatchSizeOption = None,
    batch_delay_ms: BatchDelayOption = None,
    target_latency_ms: TargetLatencyOption = None,
    min_group: MinGroupOption = None,
    max_group: MaxGroupOption = None,
    poll_interval_ms: PollOption = None,
    group: GroupOption = None,
    consumer: ConsumerOption = None,
    claim_idle_ms: ClaimIdleOption = None,
    value_field: ValueFieldOption = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = None,
    storage_option: StorageOption = None,
    once: OnceOption = False,
    overwrite: OverwriteOption = False,
    intra_op_threads: IntraOpThreadsOption = None,
    device: DeviceOption = None,
    trust_pickle: TrustPickleOption = False,
    quiet: QuietOption = False,
    summary_json: JsonOption = False,
) -> None:
    """Predict on records as they arrive: micro-batches in groups, each group committed exactly once.

    A directory source reads each complete new file once, in name order (names starting with `_` or
    `.` are not complete: write a file under such a name and rename it into place). The sink gets one
    part-NNNNN file per committed group, _errors/errors-NNNNN.jsonl for records the model could not
    take, _stream.json (what is committed) and _stream_metrics.json (throughput, latency p50/p99, group
    size); a directory sink may be an s3:// prefix (--storage-option). After a crash, the same command
    resumes where the last commit left off.

    Several processes with one --group and each its own --consumer share a Redis stream; with a Redis
    sink on the source's server, one that dies has its entries claimed by the others (--claim-idle-ms).
    --spec FILE gives the fields in YAML or JSON; flags override them.

    Runs until Ctrl-C or SIGTERM, which commit the group in flight and exit 0 (or, with --once, until
    the source holds nothing new). See docs/streaming.md.

    Exit codes: 0 stopped cleanly, 1 model failure, 2 usage error or unusable source or sink.
    """
    spec = run_cli(lambda: build_spec(spec_fields(ctx.params), spec_file))
    summary = run_cli(lambda: run_spec(spec, quiet))
    if summary_json:
        import json

        print(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        console().print(status_line(summary), highlight=False, soft_wrap=True)


def spec_fields(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The stream-spec fields the command's flags set; None for each flag not given."""
    fields = {name: flags[name] for name in _AS_GIVEN}
    fields.update(
        features=split_csv(flags["features"]),
        include=split_csv(flags["include"]),
        once=flags["once"] or None,
        overwrite=flags["overwrite"] or None,
        trust_pickle=flags["trust_pickle"] or None,
        storage_options=parse_key_values(flags["storage_option"] or [], "--storage-option") or None,
    )
    return fields


def build_spec(fields: Mapping[str, Any], spec_file: Path | None = None) -> StreamSpec:
    """The stream: the spec file with the given flags over it, or the flags alone (then --model, --source, --sink)."""
    from sluice.stream import StreamSpec

    required = ("model", "source", "sink")
    given = given_fields(fields, required, from_file=spec_file is not None, file_flag="--spec")
    return StreamSpec.from_file(spec_file, **given) if spec_file is not None else StreamSpec.build(**given)


def run_spec(spec: StreamSpec, quiet: bool) -> StreamSummary:
    """Run the stream, with a status line on stderr about once a second unless ``quiet``."""
    from sluice.stream import StreamRunner

    return StreamRunner(spec, on_group=None if quiet else _printer()).run()


def _printer() -> Callable[[StreamSummary], None]:
    err = console()

    def show(summary: StreamSummary) -> None:
        err.print(status_line(summary), highlight=False, soft_wrap=True, end="\r" if err.is_terminal else "\n")

    return show


def status_line(summary: StreamSummary) -> str:
    """``records 1,700 (16,454/s) · failed 0 · latency p50 628 ms p99 651 ms · group 8 · lag 0``."""
    latency = summary.latency_ms

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} ms"

    lag = "-" if summary.lag is None else f"{summary.lag:,}"
    return (
        f"records {summary.records:,} ({summary.records_per_second:,.0f}/s) · failed {summary.records_failed:,} · "
        f"latency p50 {ms(latency['p50'])} p99 {ms(latency['p99'])} · group {summary.group_size} · lag {lag}"
    )
