"""End to end through ``sluice predict`` (in-process CLI) on real files and a real ONNX model."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sluice.cli.main import app
from support import (
    FEATURES,
    hidden_files,
    invoke,
    listing,
    make_table,
    onnx_predict,
    read_output,
    write_table,
)

FORMATS = ["parquet", "csv", "jsonl"]
STABLE_KEYS = {
    "rows",
    "rows_failed",
    "seconds",
    "rows_per_second",
    "batch_size",
    "workers",
    "batch_latency_ms",
    "stage_busy_fraction",
    "peak_rss_bytes",
    "cpu_utilization",
    "gpu_utilization",
    "cost_per_million_usd",
    "counters",  # the model's own counts: empty but for models that report some (text models)
    "padding_waste",
    "padding_waste_unbucketed",
}
RUN_KEYS = {
    "model",
    "input",
    "output",
    "shards",
    "shards_skipped",
    "error_files",
    "batch_size_source",
    "tuning_seconds",
    "backend",  # local, spark or ray: the same keys on every backend
    "engine_start_seconds",
}


def _inputs(directory: Path, fmt: str) -> list[pa.Table]:
    tables = [make_table(25, start=0), make_table(17, start=100)]
    for i, table in enumerate(tables):
        write_table(table, directory / f"in-{i}.{fmt}")
    return tables


def _assert_predictions(part: pa.Table, expected_input: pa.Table, model: Path, out_fmt: str) -> None:
    want = onnx_predict(model, expected_input)
    assert part.column("id").to_pylist() == expected_input.column("id").to_pylist()
    assert part.column("label").to_pylist() == want["label"].tolist()
    if out_fmt == "csv":
        got = np.column_stack([part.column(f"probabilities_{i}").to_numpy() for i in range(2)])
    else:
        got = np.array(part.column("probabilities").to_pylist())
    np.testing.assert_array_equal(got.astype(np.float32), want["probabilities"])


@pytest.mark.parametrize("out_fmt", FORMATS)
@pytest.mark.parametrize("in_fmt", FORMATS)
def test_predict_every_format_pair(tmp_path: Path, models, in_fmt: str, out_fmt: str) -> None:
    tables = _inputs(tmp_path / "in", in_fmt)
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in",
        "-o",
        out,
        "--key-column",
        "id",
        "--output-format",
        out_fmt,
        "--batch-size",
        "8",
        "--workers",
        "2",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert listing(out) == sorted(
        ["_SUCCESS", "_sluice_job.json", f"part-00000.{out_fmt}", f"part-00001.{out_fmt}", "_summary.json"]
    )
    expected_columns = (
        ["id", "label", "probabilities_0", "probabilities_1"] if out_fmt == "csv" else ["id", "label", "probabilities"]
    )
    for i, table in enumerate(tables):
        part = read_output(out / f"part-{i:05d}.{out_fmt}")
        assert part.column_names == expected_columns
        assert part.num_rows == table.num_rows
        _assert_predictions(part, table, models.onnx, out_fmt)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows"] == 42
    assert summary["rows_failed"] == 0
    assert summary["batch_size"] == 8
    assert summary["workers"] == 2
    assert summary["shards"] == 2
    assert summary["shards_skipped"] == 0
    assert summary["error_files"] == []
    assert summary["model"] == "lr.onnx"


def test_parquet_output_types(tmp_path: Path, models) -> None:
    write_table(make_table(5), tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke("predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id", "-q")
    assert result.exit_code == 0, result.output
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.names == ["id", "label", "probabilities"]
    assert schema.field("id").type == pa.int64()
    assert schema.field("label").type == pa.int64()
    assert schema.field("probabilities").type == pa.list_(pa.float32(), 2)


def test_summary_json_has_exactly_the_stable_keys(tmp_path: Path, models) -> None:
    write_table(make_table(30), tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    result = invoke("predict", "-m", models.onnx, "-i", tmp_path / "in", "-o", out, "--key-column", "id", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "_summary.json").read_text())
    assert set(summary) == STABLE_KEYS | RUN_KEYS
    assert set(summary["batch_latency_ms"]) == {"p50", "p95", "p99"}
    assert all(isinstance(v, float) and v >= 0 for v in summary["batch_latency_ms"].values())
    assert set(summary["stage_busy_fraction"]) == {"read", "predict", "write"}
    assert all(0.0 <= v <= 1.0 for v in summary["stage_busy_fraction"].values())
    assert summary["gpu_utilization"] is None
    assert summary["cost_per_million_usd"] is None
    assert (summary["counters"], summary["padding_waste"], summary["padding_waste_unbucketed"]) == ({}, None, None)
    assert summary["peak_rss_bytes"] > 0
    assert summary["rows"] == 30
    assert summary["input"] == str(tmp_path / "in")
    assert summary["output"] == str(out)
    assert (out / "_SUCCESS").read_bytes() == b""
    assert hidden_files(out) == []


def test_cost_per_million_from_price_per_hour(tmp_path: Path, models) -> None:
    write_table(make_table(200), tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in.parquet",
        "-o",
        out,
        "--key-column",
        "id",
        "--price-per-hour",
        "3.6",
        "-q",
        "--json",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    summary = json.loads((out / "_summary.json").read_text())
    assert printed == summary
    rate = summary["rows_per_second"]
    assert rate > 0
    # rows_per_second is rounded to 0.1 in the file; the cost uses the unrounded rate.
    assert math.isclose(summary["cost_per_million_usd"], 3.6 / (rate * 3600) * 1e6, rel_tol=0.05 / rate + 1e-9)


def test_include_copies_named_columns(tmp_path: Path, models) -> None:
    # f2 is passed through and, named in --features, still feeds the model.
    table = make_table(12)
    write_table(table, tmp_path / "in.jsonl")
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in.jsonl",
        "-o",
        out,
        "--key-column",
        "id",
        "--include",
        "name,f2",
        "--features",
        ",".join(FEATURES),
        "--output-format",
        "jsonl",
        "-q",
    )
    assert result.exit_code == 0, result.output
    part = read_output(out / "part-00000.jsonl")
    assert part.column_names == ["id", "name", "f2", "label", "probabilities"]
    assert part.column("name").to_pylist() == table.column("name").to_pylist()
    assert part.column("f2").to_pylist() == pytest.approx(table.column("f2").to_pylist(), rel=1e-7)
    assert part.column("label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()


def test_exclude_copies_every_other_column(tmp_path: Path, models) -> None:
    table = make_table(9)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", out, "--exclude", ",".join(FEATURES), "-q"
    )
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column_names == ["id", "name", "label", "probabilities"]
    assert part.column("id").to_pylist() == list(range(9))
    assert part.column("label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()


def test_exclude_with_key_column_puts_key_first(tmp_path: Path, models) -> None:
    write_table(make_table(4), tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in.parquet",
        "-o",
        out,
        "--key-column",
        "name",
        "--exclude",
        "f0,f1,f2,f3",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert pq.read_schema(out / "part-00000.parquet").names == ["name", "id", "label", "probabilities"]


def test_include_and_exclude_together_is_a_usage_error(tmp_path: Path, models) -> None:
    write_table(make_table(4), tmp_path / "in.parquet")
    result = invoke(
        "predict",
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in.parquet",
        "-o",
        tmp_path / "out",
        "--include",
        "id",
        "--exclude",
        "name",
    )
    assert result.exit_code == 2
    assert "include and exclude are mutually exclusive: pass one or the other" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_explicit_features_with_other_numeric_columns(tmp_path: Path, models) -> None:
    table = make_table(10).append_column("extra", pa.array(np.arange(10, dtype=np.float64)))
    write_table(table, tmp_path / "in.csv")
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in.csv",
        "-o",
        out,
        "--features",
        ",".join(FEATURES),
        "--include",
        "id",
        "--output-format",
        "csv",
        "-q",
    )
    assert result.exit_code == 0, result.output
    part = read_output(out / "part-00000.csv")
    assert part.column("label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()


def test_default_features_count_mismatch_names_counts(tmp_path: Path, models) -> None:
    write_table(make_table(3), tmp_path / "in.parquet")
    result = invoke("predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert (
        "error: model input 'X' takes 4 features per row but the data has 5 numeric columns (id, f0, f1, f2, f3); "
        "choose them with --features, or pass identifiers through with --key-column/--include"
    ) in result.stderr
    assert "Traceback" not in result.output


def test_unknown_key_column_is_a_usage_error(tmp_path: Path, models) -> None:
    write_table(make_table(3), tmp_path / "in.parquet")
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", tmp_path / "out", "--key-column", "nope"
    )
    assert result.exit_code == 2
    assert "--key-column 'nope' is not a column of the input; columns: ['id', 'name', 'f0', 'f1', 'f2', 'f3']" in (
        result.stderr
    )
    assert "Traceback" not in result.output


def test_unknown_include_column_is_a_usage_error(tmp_path: Path, models) -> None:
    write_table(make_table(3), tmp_path / "in.parquet")
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", tmp_path / "out", "--include", "id,zz"
    )
    assert result.exit_code == 2
    assert "--include names column(s) ['zz'] that the input does not have" in result.stderr
    assert "Traceback" not in result.output


def test_missing_required_options(tmp_path: Path) -> None:
    result = invoke("predict", "-i", tmp_path)
    assert result.exit_code == 2
    assert "--model, --output required (or give them in a --spec file)" in result.stderr
    assert "Traceback" not in result.output


def test_spec_file_with_flag_override(tmp_path: Path, models) -> None:
    table = make_table(6)
    write_table(table, tmp_path / "in.parquet")
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"model: {models.onnx}\ninput: {tmp_path / 'in.parquet'}\noutput: {tmp_path / 'ignored'}\n"
        "key_column: id\noutput_format: jsonl\n"
    )
    out = tmp_path / "out"
    result = invoke("predict", "--spec", spec, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "ignored").exists()
    part = read_output(out / "part-00000.jsonl")
    assert part.column("id").to_pylist() == list(range(6))


def test_spec_file_with_unknown_field(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("model: m.onnx\ninput: in\noutput: out\nbatchsize: 3\n")
    result = invoke("predict", "--spec", spec)
    assert result.exit_code == 2
    assert f"error: {spec}: batchsize: Extra inputs are not permitted" in result.stderr
    assert "Traceback" not in result.output


def test_invalid_batch_size(tmp_path: Path, models) -> None:
    result = invoke("predict", "-m", models.onnx, "-i", tmp_path, "-o", tmp_path / "out", "--batch-size", "0")
    assert result.exit_code == 2
    assert "invalid job: batch_size: must be between 1 and 16777216, or 'auto'; found 0" in result.stderr
    assert "Traceback" not in result.output


def test_summary_table_printed_without_quiet(tmp_path: Path, models) -> None:
    write_table(make_table(7), tmp_path / "in.parquet")
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", tmp_path / "out", "--key-column", "id"
    )
    assert result.exit_code == 0, result.output
    assert "predict: 1 parts (7 rows)" in result.stderr
    assert "part 00000 done: 7 rows from" in result.stderr
    assert "sluice predict" in result.stderr
    assert "n/a (pass --price-per-hour)" in result.stderr


def test_zipmap_classifier_gives_plain_tensors(tmp_path: Path, models) -> None:
    table = make_table(11)
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", models.zipmap_onnx, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id", "-q"
    )
    assert result.exit_code == 0, result.output
    part = pq.read_table(out / "part-00000.parquet")
    assert part.column_names == ["id", "output_label", "output_probability"]
    prob_type = part.schema.field("output_probability").type
    assert pa.types.is_fixed_size_list(prob_type) or pa.types.is_list(prob_type)
    assert prob_type.value_type == pa.float32()
    want = onnx_predict(models.onnx, table)
    assert part.column("output_label").to_pylist() == want["label"].tolist()
    np.testing.assert_array_equal(
        np.array(part.column("output_probability").to_pylist(), np.float32), want["probabilities"]
    )


def test_zipmap_classifier_csv_expands_probabilities(tmp_path: Path, models) -> None:
    table = make_table(5)
    write_table(table, tmp_path / "in.csv")
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.zipmap_onnx,
        "-i",
        tmp_path / "in.csv",
        "-o",
        out,
        "--key-column",
        "id",
        "--output-format",
        "csv",
        "-q",
    )
    assert result.exit_code == 0, result.output
    part = read_output(out / "part-00000.csv")
    assert part.column_names == ["id", "output_label", "output_probability_0", "output_probability_1"]


def test_regressor_scalar_output(tmp_path: Path, models) -> None:
    table = make_table(8)
    write_table(table, tmp_path / "in.jsonl")
    out = tmp_path / "out"
    result = invoke(
        "predict",
        "-m",
        models.regressor_onnx,
        "-i",
        tmp_path / "in.jsonl",
        "-o",
        out,
        "--key-column",
        "id",
        "--output-format",
        "csv",
        "-q",
    )
    assert result.exit_code == 0, result.output
    part = read_output(out / "part-00000.csv")
    want = onnx_predict(models.regressor_onnx, table)["variable"]
    assert want.shape == (8, 1)
    assert part.column_names == ["id", "variable_0"]
    np.testing.assert_array_equal(part.column("variable_0").to_numpy().astype(np.float32), want[:, 0])


def test_parquet_row_groups_split_into_shards_in_order(tmp_path: Path, models) -> None:
    table = make_table(40)
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=10)
    out = tmp_path / "out"
    spec = tmp_path / "job.yaml"
    spec.write_text("shard_rows: 20\n")
    result = invoke(
        "predict",
        "--spec",
        spec,
        "-m",
        models.onnx,
        "-i",
        tmp_path / "in.parquet",
        "-o",
        out,
        "--key-column",
        "id",
        "--batch-size",
        "3",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted(out.glob("part-*"))] == ["part-00000.parquet", "part-00001.parquet"]
    first = pq.read_table(out / "part-00000.parquet")
    second = pq.read_table(out / "part-00001.parquet")
    assert first.column("id").to_pylist() == list(range(20))
    assert second.column("id").to_pylist() == list(range(20, 40))
    assert first.column("label").to_pylist() + second.column("label").to_pylist() == (
        onnx_predict(models.onnx, table)["label"].tolist()
    )


def test_empty_parquet_file_gives_empty_part(tmp_path: Path, models) -> None:
    write_table(make_table(5), tmp_path / "in" / "a.parquet")
    write_table(make_table(0), tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    result = invoke("predict", "-m", models.onnx, "-i", tmp_path / "in", "-o", out, "--key-column", "id", "-q")
    assert result.exit_code == 0, result.output
    empty = pq.read_table(out / "part-00001.parquet")
    assert empty.num_rows == 0
    assert empty.schema == pq.read_schema(out / "part-00000.parquet")


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("predict", "demo", "models"):
        assert command in result.stdout


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == "0.1.0"


@pytest.mark.parametrize("out_fmt", FORMATS)
def test_large_string_passthrough(tmp_path: Path, models, out_fmt: str) -> None:
    # Parquet written by polars and others stores text as large_string.
    table = make_table(4)
    table = table.set_column(1, "name", table.column("name").cast(pa.large_string()))
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id",
        "--include", "name", "--output-format", out_fmt, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    part = read_output(out / f"part-00000.{out_fmt}")
    assert part.column("name").to_pylist() == ["row-0", "row-1", "row-2", "row-3"]


@pytest.mark.parametrize("out_fmt", FORMATS)
def test_text_passthrough_with_separators_and_quotes(tmp_path: Path, models, out_fmt: str) -> None:
    names = ["comma, inside", 'say "hi"', "two\nlines", "tab\there", "", None]
    table = make_table(len(names)).set_column(1, "name", pa.array(names, pa.string()))
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id",
        "--include", "name", "--output-format", out_fmt, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    if out_fmt == "csv":
        part = pacsv.read_csv(
            out / "part-00000.csv",
            convert_options=pacsv.ConvertOptions(
                column_types={"name": pa.string()}, strings_can_be_null=True, quoted_strings_can_be_null=False
            ),
        )
    else:
        part = read_output(out / f"part-00000.{out_fmt}")
    assert part.column("name").to_pylist() == names
    assert part.column("id").to_pylist() == list(range(len(names)))


PREDICT_FLAGS = [
    "--model", "--input", "--output", "--spec", "--repository", "--input-format", "--output-format", "--features",
    "--key-column", "--key-type", "--text-column", "--task", "--pooling", "--normalize", "--max-length",
    "--no-bucketing", "--forward-batch-size", "--include", "--exclude", "--batch-size", "--workers", "--readers",
    "--intra-op-threads",
    "--device", "--max-error-fraction", "--price-per-hour", "--overwrite", "--trust-pickle", "--trust-type",
    "--storage-option", "--backend", "--spark-master", "--ray-address", "--quiet", "--json", "--help",
]  # fmt: skip


def test_predict_help_lists_every_flag_in_order() -> None:
    result = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200)
    assert result.exit_code == 0
    shown = re.findall(r"^│ (--[a-z-]+)", result.stdout, re.M)
    assert shown == PREDICT_FLAGS
    for short in ("-m", "-i", "-o", "-r", "-q"):
        assert f" {short} " in result.stdout
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 success, 1 model or engine failure, 2 usage error or unusable input, 3 error fraction" in text


def test_every_job_spec_field_but_the_tuning_knobs_has_a_flag() -> None:
    from sluice.batch import JobSpec
    from sluice.cli.predict_command import spec_fields

    flags = {
        "model": "m", "input_": "in/", "output": "out/", "repository": "repo", "input_format": "csv",
        "output_format": "jsonl", "features": "f0, f1", "key_column": "id", "key_type": "string", "include": "name",
        "exclude": None,
        "batch_size": "64", "workers": 2, "readers": 1, "intra_op_threads": 1, "device": "cpu",
        "max_error_fraction": 0.5, "price_per_hour": 1.0, "overwrite": True, "trust_pickle": False,
        "trust_type": ["a.B"], "storage_option": ["endpoint_url=http://127.0.0.1:9000", "anon=true"],
        "backend": "local", "spark_master": None, "ray_address": None, "text_column": "body", "task": None,
        "pooling": "cls", "normalize": True, "max_length": 128, "no_bucketing": True, "forward_batch_size": 32,
    }  # fmt: skip
    fields = spec_fields(flags)
    spec_file_only = {"tune_min_rows", "shard_rows", "model_search_path"}
    assert set(JobSpec.model_fields) - set(fields) == spec_file_only
    assert set(fields) <= set(JobSpec.model_fields)
    assert fields == {
        "model": "m", "input": "in/", "output": "out/", "repository": "repo", "input_format": "csv",
        "output_format": "jsonl", "features": ["f0", "f1"], "key_column": "id", "key_type": "string",
        "include": ["name"], "exclude": None, "batch_size": "64", "workers": 2, "readers": 1, "intra_op_threads": 1,
        "device": "cpu",
        "max_error_fraction": 0.5, "price_per_hour": 1.0, "overwrite": True, "trust_pickle": None,
        "trusted_types": ["a.B"], "storage_options": {"endpoint_url": "http://127.0.0.1:9000", "anon": True},
        "backend": "local", "spark_master": None, "ray_address": None, "text_column": "body", "task": None,
        "pooling": "cls", "normalize": True, "max_length": 128, "bucketing": False, "forward_batch_size": 32,
    }  # fmt: skip


def test_quiet_predict_does_not_load_rich(tmp_path: Path, models) -> None:
    """A quiet run draws nothing, so it does not pay rich's import (~35 ms of start-up)."""
    write_table(make_table(30), tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    argv = [
        "sluice",
        "predict",
        "-m",
        str(models.onnx),
        "-i",
        str(tmp_path / "in"),
        "-o",
        str(out),
        "--key-column",
        "id",
        "-q",
    ]
    code = (
        "import sys\n"
        f"sys.argv = {argv!r}\n"
        "from sluice.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((out / "_summary.json").read_text())["rows"] == 30
