"""Bad input end to end: per-record error files, exit codes, and whole-job usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import hidden_files, invoke, listing, make_table, onnx_predict, read_jsonl, write_table

GOOD = "1.0,2.0,3.0,4.0"
NAN_MESSAGE = "value is NaN and the model does not accept NaN (allow_nan: false)"


def _predict(model: Path, src: Path, out: Path, *extra: str):
    return invoke(
        "predict", "-m", model, "-i", src, "-o", out, "--key-column", "id", "--output-format", "jsonl", "-q", *extra
    )


def _ids(part: Path) -> list[int]:
    return [r["id"] for r in read_jsonl(part)]


def _usage_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    return " ".join(result.stderr.split())


# -- per-record errors -------------------------------------------------------------------


def test_nan_feature_in_parquet(tmp_path: Path, models) -> None:
    first = make_table(10)
    second = make_table(20, start=100)
    f1 = second.column("f1").to_numpy().copy()
    f1[[3, 13]] = np.nan
    second = second.set_column(3, "f1", pa.array(f1))
    write_table(first, tmp_path / "in" / "a.parquet")
    write_table(second, tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in", out, "--batch-size", "4", "--max-error-fraction", "0.1")
    assert result.exit_code == 0, result.output
    assert listing(out) == [
        "_SUCCESS",
        "_errors",
        "_sluice_job.json",
        "_summary.json",
        "part-00000.jsonl",
        "part-00001.jsonl",
    ]
    source = str(tmp_path / "in" / "b.parquet")
    assert read_jsonl(out / "_errors" / "errors-00001.jsonl") == [
        {"source": source, "row": 3, "key": 103, "field": "f1", "error": NAN_MESSAGE},
        {"source": source, "row": 13, "key": 113, "field": "f1", "error": NAN_MESSAGE},
    ]
    good = [i for i in range(100, 120) if i not in (103, 113)]
    assert _ids(out / "part-00001.jsonl") == good
    assert _ids(out / "part-00000.jsonl") == list(range(10))
    kept = second.filter(pa.array([i in good for i in range(100, 120)]))
    assert [r["label"] for r in read_jsonl(out / "part-00001.jsonl")] == onnx_predict(models.onnx, kept)[
        "label"
    ].tolist()
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_failed"]) == (28, 2)
    assert summary["error_files"] == [str(out / "_errors" / "errors-00001.jsonl")]


def test_error_fraction_exceeded_exits_3(tmp_path: Path, models) -> None:
    table = make_table(10)
    f0 = table.column("f0").to_numpy().copy()
    f0[[2, 5]] = np.nan
    write_table(table.set_column(2, "f0", pa.array(f0)), tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in.parquet", out, "--max-error-fraction", "0.1")
    assert result.exit_code == 3
    message = " ".join(result.stderr.split())
    assert (
        f"error: 2 of 10 records failed (20.00%), more than --max-error-fraction 0.1; "
        f"see the _errors/errors-*.jsonl files in {out}"
    ) in message
    assert "Traceback" not in result.output
    assert "_SUCCESS" not in listing(out)
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_failed"]) == (8, 2)
    assert _ids(out / "part-00000.jsonl") == [0, 1, 3, 4, 6, 7, 8, 9]
    assert [r["row"] for r in read_jsonl(out / "_errors" / "errors-00000.jsonl")] == [2, 5]


def test_error_fraction_default_is_zero(tmp_path: Path, models) -> None:
    table = make_table(4)
    f0 = table.column("f0").to_numpy().copy()
    f0[0] = np.nan
    write_table(table.set_column(2, "f0", pa.array(f0)), tmp_path / "in.parquet")
    result = _predict(models.onnx, tmp_path / "in.parquet", tmp_path / "out")
    assert result.exit_code == 3
    assert "more than --max-error-fraction 0.0" in result.stderr


def test_error_fraction_within_limit_exits_0(tmp_path: Path, models) -> None:
    table = make_table(10)
    f0 = table.column("f0").to_numpy().copy()
    f0[[2, 5]] = np.nan
    write_table(table.set_column(2, "f0", pa.array(f0)), tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in.parquet", out, "--max-error-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert (out / "_SUCCESS").exists()


def test_csv_string_in_numeric_feature_with_features(tmp_path: Path, models) -> None:
    src = tmp_path / "in.csv"
    src.write_text(f"id,f0,f1,f2,f3\n0,{GOOD}\n1,1.0,abc,3.0,4.0\n2,{GOOD}\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--features", "f0,f1,f2,f3", "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "key": 1, "field": "f1", "error": "expected a number, found 'abc'"}
    ]
    assert _ids(out / "part-00000.jsonl") == [0, 2]


def test_csv_string_in_numeric_feature(tmp_path: Path, models) -> None:
    # Without --features: one stray value among many numbers must not change which columns are features.
    src = tmp_path / "in.csv"
    lines = [f"{i},{GOOD}" if i != 7 else f"{i},1.0,abc,3.0,4.0" for i in range(20)]
    src.write_text("id,f0,f1,f2,f3\n" + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 7, "key": 7, "field": "f1", "error": "expected a number, found 'abc'"}
    ]
    assert _ids(out / "part-00000.jsonl") == [i for i in range(20) if i != 7]


def test_csv_wrong_field_count(tmp_path: Path, models) -> None:
    src = tmp_path / "in.csv"
    src.write_text(f"id,f0,f1,f2,f3\n0,{GOOD}\n1,1.0,2.0,3.0\n2,{GOOD}\n3,{GOOD}\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "line": 3, "key": None, "field": None, "error": "expected 5 fields, found 4"}
    ]
    assert _ids(out / "part-00000.jsonl") == [0, 2, 3]


def test_csv_empty_field_is_missing(tmp_path: Path, models) -> None:
    src = tmp_path / "in.csv"
    src.write_text(f"id,f0,f1,f2,f3\n0,{GOOD}\n1,1.0,,3.0,4.0\n2,{GOOD}\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "key": 1, "field": "f1", "error": "missing value"}
    ]
    assert _ids(out / "part-00000.jsonl") == [0, 2]


def test_csv_nan_text(tmp_path: Path, models) -> None:
    src = tmp_path / "in.csv"
    src.write_text(f"id,f0,f1,f2,f3\n0,{GOOD}\n1,{GOOD}\n2,nan,2.0,3.0,4.0\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 2, "key": 2, "field": "f0", "error": NAN_MESSAGE}
    ]
    assert _ids(out / "part-00000.jsonl") == [0, 1]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _record(i: int, **values: object) -> str:
    fields = {"id": i, "f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0}
    fields.update(values)
    return json.dumps({k: v for k, v in fields.items() if v is not ...})


def test_jsonl_unparseable_line(tmp_path: Path, models) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [_record(0), '{"id": 1, "f0": 1.0, "f1": 2.0, "f2": 3.0', _record(2)])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert error.pop("error").startswith("not valid JSON: ")
    assert error == {"source": str(src), "row": 1, "line": 2, "key": None, "field": None}
    assert _ids(out / "part-00000.jsonl") == [0, 2]


def test_jsonl_non_object_line(tmp_path: Path, models) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [_record(0), "[1, 2, 3]", _record(2)])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {
            "source": str(src),
            "row": 1,
            "line": 2,
            "key": None,
            "field": None,
            "error": "expected a JSON object, found list",
        }
    ]
    assert _ids(out / "part-00000.jsonl") == [0, 2]


def test_jsonl_string_in_numeric_feature(tmp_path: Path, models) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [_record(0), _record(1, f1="abc"), _record(2)])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert "'abc'" in error.pop("error")
    error.pop("line", None)
    assert error == {"source": str(src), "row": 1, "key": 1, "field": "f1"}
    assert _ids(out / "part-00000.jsonl") == [0, 2]


@pytest.mark.parametrize("bad", [{"f1": None}, {"f1": ...}], ids=["null", "absent"])
def test_jsonl_missing_feature(tmp_path: Path, models, bad: dict[str, object]) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [_record(0), _record(1, **bad), _record(2)])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "key": 1, "field": "f1", "error": "missing value"}
    ]
    assert _ids(out / "part-00000.jsonl") == [0, 2]


def test_jsonl_nan_feature(tmp_path: Path, models) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [_record(0), _record(1, f3=float("nan")), _record(2)])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "key": 1, "field": "f3", "error": NAN_MESSAGE}
    ]


def test_jsonl_every_kind_of_bad_record_beside_good_ones(tmp_path: Path, models) -> None:
    lines = [
        _record(0),
        _record(1, f0=float("nan")),
        _record(2),
        "not json at all",
        _record(4, f2=None),
        _record(5, f2=...),
        _record(6),
        _record(7),
    ]
    src = _jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--batch-size", "3", "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    errors = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert [(e["row"], e["field"]) for e in errors] == [(1, "f0"), (3, None), (4, "f2"), (5, "f2")]
    assert _ids(out / "part-00000.jsonl") == [0, 2, 6, 7]
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows"], summary["rows_failed"]) == (4, 4)


def test_error_rows_count_from_file_start_across_batches(tmp_path: Path, models) -> None:
    table = make_table(23)
    f2 = table.column("f2").to_numpy().copy()
    f2[[0, 9, 22]] = np.nan
    write_table(table.set_column(4, "f2", pa.array(f2)), tmp_path / "in.csv")
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in.csv", out, "--batch-size", "4", "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert [(e["row"], e["key"]) for e in read_jsonl(out / "_errors" / "errors-00000.jsonl")] == [
        (0, 0),
        (9, 9),
        (22, 22),
    ]
    assert _ids(out / "part-00000.jsonl") == [i for i in range(23) if i not in (0, 9, 22)]


def test_every_record_of_a_file_failing_gives_an_empty_part(tmp_path: Path, models) -> None:
    table = make_table(3)
    write_table(table, tmp_path / "in" / "a.parquet")
    bad = make_table(3, start=10)
    bad = bad.set_column(2, "f0", pa.array(np.full(3, np.nan, dtype=np.float32)))
    write_table(bad, tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in", "-o", out, "--key-column", "id", "-q",
        "--max-error-fraction", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    empty = pq.read_table(out / "part-00001.parquet")
    assert empty.num_rows == 0
    assert empty.schema == pq.read_schema(out / "part-00000.parquet")
    assert [e["key"] for e in read_jsonl(out / "_errors" / "errors-00001.jsonl")] == [10, 11, 12]


# -- whole-job errors (exit 2) ---------------------------------------------------------------


def test_file_missing_a_feature_column_parquet(tmp_path: Path, models) -> None:
    write_table(make_table(4), tmp_path / "in" / "a.parquet")
    write_table(make_table(4, start=10).drop_columns(["f3"]), tmp_path / "in" / "b.parquet")
    result = _predict(models.onnx, tmp_path / "in", tmp_path / "out")
    message = _usage_error(result)
    assert f"error: {tmp_path / 'in' / 'b.parquet'} has no column 'f3'" in message


def test_file_missing_a_feature_column_csv(tmp_path: Path, models) -> None:
    write_table(make_table(4), tmp_path / "in" / "a.csv")
    write_table(make_table(4, start=10).drop_columns(["f3"]), tmp_path / "in" / "b.csv")
    result = _predict(models.onnx, tmp_path / "in", tmp_path / "out")
    message = _usage_error(result)
    assert str(tmp_path / "in" / "b.csv") in message
    assert "'f3'" in message


def test_nonexistent_input(tmp_path: Path, models) -> None:
    result = _predict(models.onnx, tmp_path / "nope", tmp_path / "out")
    assert _usage_error(result) == f"error: input {tmp_path / 'nope'} does not exist"


def test_unknown_extension(tmp_path: Path, models) -> None:
    src = tmp_path / "data.txt"
    src.write_text("id,f0\n1,2\n")
    result = _predict(models.onnx, src, tmp_path / "out")
    assert _usage_error(result) == (
        f"error: cannot tell the format of {src} from its extension; expected .parquet, .csv or .jsonl "
        "(optionally compressed), or pass --input-format"
    )


def test_input_format_overrides_extension(tmp_path: Path, models) -> None:
    table = make_table(5)
    src = write_table(table, tmp_path / "data.txt", "csv")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--input-format", "csv")
    assert result.exit_code == 0, result.output
    assert _ids(out / "part-00000.jsonl") == list(range(5))


def test_directory_without_data_files(tmp_path: Path, models) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hello")
    result = _predict(models.onnx, tmp_path / "in", tmp_path / "out")
    assert _usage_error(result) == f"error: input {tmp_path / 'in'} holds no data files (.parquet, .csv, .jsonl)"


def test_message_keeps_square_brackets(tmp_path: Path, models) -> None:
    pattern = f"{tmp_path}/[abc]*.csv"
    result = _predict(models.onnx, Path(pattern), tmp_path / "out")
    assert _usage_error(result) == f"error: input {pattern} holds no data files (.parquet, .csv, .jsonl)"


def test_unknown_model(tmp_path: Path) -> None:
    write_table(make_table(2), tmp_path / "in.parquet")
    (tmp_path / "repo").mkdir()
    result = invoke(
        "predict", "-m", "nope", "-r", tmp_path / "repo", "-i", tmp_path / "in.parquet", "-o", tmp_path / "o"
    )
    assert (
        _usage_error(result) == f"error: no model named 'nope' in repository {tmp_path / 'repo'} (models there: none)"
    )


def test_output_of_a_different_job_needs_overwrite(tmp_path: Path, models) -> None:
    write_table(make_table(6), tmp_path / "in.parquet")
    out = tmp_path / "out"
    assert _predict(models.onnx, tmp_path / "in.parquet", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = _predict(models.zipmap_onnx, tmp_path / "in.parquet", out)
    assert _usage_error(result) == (
        f"error: {out} holds the output of a different job (other model, input or options); "
        "pass --overwrite to replace it, or choose another output directory"
    )
    assert read_jsonl(out / "part-00000.jsonl")[0].keys() == {"id", "label", "probabilities"}
    result = _predict(models.zipmap_onnx, tmp_path / "in.parquet", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert read_jsonl(out / "part-00000.jsonl")[0].keys() == {"id", "output_label", "output_probability"}
    assert (out / "notes.txt").read_text() == "mine"
    assert hidden_files(out) == []


def test_output_with_unrecorded_parts_needs_overwrite(tmp_path: Path, models) -> None:
    write_table(make_table(6), tmp_path / "in.parquet")
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.jsonl").write_text('{"id": 99}\n')
    result = _predict(models.onnx, tmp_path / "in.parquet", out)
    assert _usage_error(result) == (
        f"error: {out} already holds part files that Sluice did not record; "
        "pass --overwrite to replace them, or choose another output directory"
    )
    assert _predict(models.onnx, tmp_path / "in.parquet", out, "--overwrite").exit_code == 0
    assert _ids(out / "part-00000.jsonl") == list(range(6))


def test_changed_options_count_as_a_different_job(tmp_path: Path, models) -> None:
    write_table(make_table(6), tmp_path / "in.parquet")
    out = tmp_path / "out"
    assert _predict(models.onnx, tmp_path / "in.parquet", out).exit_code == 0
    result = _predict(models.onnx, tmp_path / "in.parquet", out, "--include", "name")
    assert "holds the output of a different job" in _usage_error(result)


def test_features_list_naming_a_missing_column(tmp_path: Path, models) -> None:
    write_table(make_table(2), tmp_path / "in.parquet")
    result = _predict(models.onnx, tmp_path / "in.parquet", tmp_path / "out", "--features", "f0,f1,f2,zz")
    assert _usage_error(result) == (
        "error: model input 'X' needs column 'zz', which the data does not have; "
        "its columns are ['id', 'name', 'f0', 'f1', 'f2', 'f3']"
    )


def test_features_list_of_the_wrong_width(tmp_path: Path, models) -> None:
    write_table(make_table(2), tmp_path / "in.parquet")
    result = _predict(models.onnx, tmp_path / "in.parquet", tmp_path / "out", "--features", "f0,f1,f2")
    assert _usage_error(result) == (
        "error: model input 'X' takes 4 features per row but 3 columns were given (f0, f1, f2)"
    )


def test_unreadable_parquet_file(tmp_path: Path, models) -> None:
    src = tmp_path / "broken.parquet"
    src.write_bytes(b"not parquet at all")
    result = _predict(models.onnx, src, tmp_path / "out")
    assert _usage_error(result).startswith(f"error: {src} is not a readable Parquet file: ")


def test_unknown_output_format(tmp_path: Path, models) -> None:
    write_table(make_table(2), tmp_path / "in.parquet")
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", tmp_path / "o", "--output-format", "xml"
    )
    assert _usage_error(result) == "error: invalid job: output_format: Input should be 'parquet', 'csv' or 'jsonl'"


def test_cuda_requested_without_a_gpu(tmp_path: Path, models) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    write_table(make_table(2), tmp_path / "in.parquet")
    result = _predict(models.onnx, tmp_path / "in.parquet", tmp_path / "out", "--device", "cuda")
    assert _usage_error(result) == (
        "error: device 'cuda' was requested but ONNX Runtime has no CUDA provider here; "
        "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu"
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_empty_text_file_beside_others_gives_empty_part(tmp_path: Path, models, fmt: str) -> None:
    write_table(make_table(5), tmp_path / "in" / f"a.{fmt}")
    (tmp_path / "in" / f"b.{fmt}").write_text("id,name,f0,f1,f2,f3\n" if fmt == "csv" else "")
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in", out)
    assert result.exit_code == 0, result.output
    assert _ids(out / "part-00000.jsonl") == list(range(5))
    assert (out / "part-00001.jsonl").read_text() == ""
    assert json.loads((out / "_summary.json").read_text())["rows"] == 5


def test_gzip_csv_input(tmp_path: Path, models) -> None:
    import gzip

    table = make_table(6)
    write_table(table, tmp_path / "plain.csv")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv.gz").write_bytes(gzip.compress((tmp_path / "plain.csv").read_bytes()))
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in", out)
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "part-00000.jsonl")
    assert [r["id"] for r in rows] == list(range(6))
    assert [r["label"] for r in rows] == onnx_predict(models.onnx, table)["label"].tolist()
