"""Whole files that are empty, truncated, corrupt or ill-formed: zero records or one clear message."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import invoke, listing, make_table, read_jsonl, write_table

HEADER = "id,f0,f1,f2,f3\n"


def _predict(model: Path, src: Path, out: Path, *extra: str):
    return invoke(
        "predict", "-m", model, "-i", src, "-o", out, "--key-column", "id", "--output-format", "jsonl", "-q", *extra
    )


def _ids(out: Path) -> list[int]:
    return [r["id"] for part in sorted(out.glob("part-*.jsonl")) for r in read_jsonl(part)]


def _usage_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ")
    return " ".join(result.stderr.split())


# -- files that decide nothing ---------------------------------------------------------------


def test_a_header_only_csv_before_good_rows_does_not_decide_the_types(tmp_path: Path, models) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(HEADER)
    (tmp_path / "in" / "b.csv").write_text(HEADER + "".join(f"{i},1.0,2.0,3.0,4.0\n" for i in range(10)))
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in", out)
    assert result.exit_code == 0, result.output
    assert _ids(out) == list(range(10))
    assert (out / "part-00000.jsonl").read_text() == ""
    assert json.loads((out / "_summary.json").read_text())["rows"] == 10


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_zero_byte_file_is_zero_records(tmp_path: Path, models, fmt: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"a.{fmt}").write_bytes(b"")
    write_table(make_table(5), tmp_path / "in" / f"b.{fmt}")
    (tmp_path / "in" / f"c.{fmt}").write_bytes(b"")
    out = tmp_path / "out"
    result = _predict(models.onnx, tmp_path / "in", out)
    assert result.exit_code == 0, result.output
    assert _ids(out) == list(range(5))
    assert listing(out) == ["_SUCCESS", "_sluice_job.json", "_summary.json", *(f"part-0000{i}.jsonl" for i in range(3))]
    assert (out / "part-00000.jsonl").read_text() == (out / "part-00002.jsonl").read_text() == ""


def test_an_input_of_only_zero_byte_files_is_a_usage_error(tmp_path: Path, models) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.parquet").write_bytes(b"")
    message = _usage_error(_predict(models.onnx, tmp_path / "in", tmp_path / "out"))
    assert message == (
        f"error: every input file is empty (0 bytes), starting with {tmp_path / 'in' / 'part-0.parquet'}: "
        "there are no columns to read"
    )


def test_spark_bookkeeping_files_and_folders_are_skipped(tmp_path: Path, models) -> None:
    src = tmp_path / "in"
    write_table(make_table(4), src / "part-00000.parquet")
    (src / "_temporary" / "0").mkdir(parents=True)
    (src / "_temporary" / "0" / "part-00001.parquet").write_bytes(b"half a file")
    (src / ".part-00000.parquet.crc").write_bytes(b"crc")
    (src / "_SUCCESS").write_bytes(b"")
    (src / ".hidden").mkdir()
    (src / ".hidden" / "x.csv").write_text("not,the,columns\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out)
    assert result.exit_code == 0, result.output
    assert _ids(out) == [0, 1, 2, 3]


# -- files that cannot be read ---------------------------------------------------------------


def test_a_truncated_gzip_csv_is_one_message(tmp_path: Path, models) -> None:
    whole = gzip.compress(write_table(make_table(20_000), tmp_path / "plain.csv").read_bytes())
    src = tmp_path / "in" / "a.csv.gz"
    src.parent.mkdir()
    src.write_bytes(whole[: len(whole) // 2])
    message = _usage_error(_predict(models.onnx, src, tmp_path / "out", "--batch-size", "256"))
    assert message == (
        f"error: {src} is truncated or corrupt and cannot be read as gzip-compressed csv: Truncated compressed stream"
    )


def test_a_parquet_file_with_corrupt_pages_is_one_message(tmp_path: Path, models) -> None:
    src = tmp_path / "a.parquet"
    pq.write_table(make_table(2000), src, compression="snappy")
    data = bytearray(src.read_bytes())
    for i in range(200, 2000, 7):  # inside the first column chunks; the footer stays readable
        data[i] ^= 0x5A
    src.write_bytes(bytes(data))
    message = _usage_error(_predict(models.onnx, src, tmp_path / "out", "--batch-size", "256"))
    assert (
        message
        == f"error: {src} is truncated or corrupt and cannot be read as parquet: Corrupt snappy compressed data."
    )


def test_a_missing_bool_feature_is_a_record_error(tmp_path: Path, models) -> None:
    table = make_table(3).set_column(5, "f3", pa.array([True, None, False]))
    src = write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "key": 1, "field": "f3", "error": "missing value"}
    ]
    assert _ids(out) == [0, 2]


@pytest.mark.parametrize(("header", "where"), [("id,id,f0,f1,f2,f3", "'id' is columns [1, 2]"),
                                               ("id,f0,f0,f1,f2,f3", "'f0' is columns [2, 3]")])  # fmt: skip
def test_a_duplicated_column_name_is_one_message(tmp_path: Path, models, header: str, where: str) -> None:
    src = tmp_path / "in.csv"
    src.write_text(header + "\n1,1,1.0,2.0,3.0,4.0\n")
    message = _usage_error(_predict(models.onnx, src, tmp_path / "out"))
    assert message == f"error: {src} has duplicated column names ({where}); rename them so that each is unique"


def test_a_duplicated_column_in_a_later_file_is_found_before_any_work(tmp_path: Path, models) -> None:
    write_table(make_table(5), tmp_path / "in" / "a.csv")
    (tmp_path / "in" / "b.csv").write_text("id,f0,f1,f2,f3,f3\n1,1,2,3,4,4\n")
    out = tmp_path / "out"
    message = _usage_error(_predict(models.onnx, tmp_path / "in", out, "--readers", "1"))
    assert message == (
        f"error: {tmp_path / 'in' / 'b.csv'} has duplicated column names ('f3' is columns [5, 6]); "
        "rename them so that each is unique"
    )
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_later_file_missing_a_feature_stops_the_job_before_the_first_part(tmp_path: Path, models, fmt: str) -> None:
    write_table(make_table(50_000), tmp_path / "in" / f"a.{fmt}")
    b = write_table(make_table(4, start=10).drop_columns(["f3"]), tmp_path / "in" / f"b.{fmt}")
    out = tmp_path / "out"
    message = _usage_error(_predict(models.onnx, tmp_path / "in", out, "--readers", "1", "--batch-size", "256"))
    assert message == (
        f"error: {b} has no column 'f3' (needed as a feature or to pass through); "
        "its columns are ['id', 'name', 'f0', 'f1', 'f2']"
    )
    assert not out.exists()


def test_a_csv_field_of_ten_megabytes_is_read(tmp_path: Path, models) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,f0,f1,f2,f3,blob\n0,1,2,3,4,a\n1,1,2,3,4," + "x" * (10 << 20) + "\n2,1,2,3,4,c\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--include", "blob")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "part-00000.jsonl")
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [len(r["blob"]) for r in rows] == [1, 10 << 20, 1]


def test_a_long_csv_record_after_bad_rows_keeps_each_row_once(tmp_path: Path, models) -> None:
    rows = [f"{i},1,2,3,4,a" for i in range(20_000)]
    rows[3] = "3,1,2"  # too few fields: one error record, not one per restart of the reader
    rows[15_000] = "15000,1,2,3,4," + "y" * (3 << 20)
    src = tmp_path / "in.csv"
    src.write_text("id,f0,f1,f2,f3,blob\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.01", "--batch-size", "1000")
    assert result.exit_code == 0, result.output
    assert _ids(out) == [i for i in range(20_000) if i != 3]
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert error == {"source": str(src), "row": 3, "line": 5, "key": None, "field": None,
                     "error": "expected 6 fields, found 3"}  # fmt: skip


def test_a_bad_line_in_a_later_block_drops_no_good_row(tmp_path: Path, models) -> None:
    # the parser reports rejected lines of blocks it has read ahead of the rows handed out
    src = tmp_path / "in.csv"
    src.write_text(HEADER + "".join(f"{i},1.0,2.0,3.0,4.0\n" for i in range(100_000)) + "100000,1.0\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.01", "--batch-size", "1000")
    assert result.exit_code == 0, result.output
    assert _ids(out) == list(range(100_000))
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert (error["row"], error["error"]) == (100_000, "expected 5 fields, found 2")
