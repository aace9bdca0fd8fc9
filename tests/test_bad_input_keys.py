"""Key columns are read as written: int64 only while every key is a plain integer that fits, else
text, never a float; ``--key-type`` forces either."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import invoke, read_jsonl

FEATURES = "1.0,2.0,3.0,4.0"
# a row count whose CSV text is well past the first 1 MiB block, where the types are sampled
LATE = 60_000


def _predict(model: Path, src: Path, out: Path, *extra: str):
    return invoke(
        "predict", "-m", model, "-i", src, "-o", out, "--key-column", "id", "--output-format", "jsonl", "-q", *extra
    )


def _csv(path: Path, keys: list[str]) -> Path:
    path.write_text("id,f0,f1,f2,f3\n" + "".join(f"{k},{FEATURES}\n" for k in keys))
    return path


def _jsonl_text(path: Path, keys: list[str]) -> Path:
    """Lines whose ``id`` is the JSON text given (a number or a quoted string), written as is."""
    path.write_text("".join(f'{{"id": {k}, "f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0}}\n' for k in keys))
    return path


def _keys(out: Path) -> list[object]:
    return [r["id"] for r in read_jsonl(out / "part-00000.jsonl")]


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


# -- as written ------------------------------------------------------------------------------


def test_csv_keys_beyond_float_precision_and_int64_stay_distinct_text(tmp_path: Path, models) -> None:
    keys = ["9007199254740992", "9007199254740993", "18446744073709551616"]
    out = tmp_path / "out"
    _ok(_predict(models.onnx, _csv(tmp_path / "in.csv", keys), out))
    assert _keys(out) == keys


def test_csv_keys_with_leading_zeros_stay_as_written(tmp_path: Path, models) -> None:
    out = tmp_path / "out"
    _ok(_predict(models.onnx, _csv(tmp_path / "in.csv", ["000123", "000124", "7"]), out))
    assert _keys(out) == ["000123", "000124", "7"]


def test_csv_plain_integer_keys_stay_int64(tmp_path: Path, models) -> None:
    out = tmp_path / "out"
    _ok(invoke("predict", "-m", models.onnx, "-i", _csv(tmp_path / "in.csv", ["-3", "0", "9007199254740993"]),
               "-o", out, "--key-column", "id", "-q"))  # fmt: skip
    part = pq.read_table(out / "part-00000.parquet")
    assert part.schema.field("id").type == pa.int64()
    assert part.column("id").to_pylist() == [-3, 0, 9007199254740993]


def test_jsonl_key_beyond_int64_is_read_as_its_digits(tmp_path: Path, models) -> None:
    src = _jsonl_text(tmp_path / "in.jsonl", [str(2**64), "5", '"000123"'])
    out = tmp_path / "out"
    _ok(_predict(models.onnx, src, out))
    assert _keys(out) == ["18446744073709551616", "5", "000123"]


def test_jsonl_integer_keys_that_fit_stay_integers(tmp_path: Path, models) -> None:
    out = tmp_path / "out"
    _ok(_predict(models.onnx, _jsonl_text(tmp_path / "in.jsonl", ["9007199254740993", "1"]), out))
    assert _keys(out) == [9007199254740993, 1]


def test_csv_late_key_beyond_int64_is_a_record_error_that_says_so(tmp_path: Path, models) -> None:
    src = _csv(tmp_path / "in.csv", [str(i) for i in range(LATE)] + ["18446744073709551616", "000123"])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out)
    assert result.exit_code == 3, result.output
    rewrite = "key '000123' is not written as int64 writes integers, so reading it as one would change it"
    hint = "; the key column 'id' was typed int64 from the file's first rows: read keys as text with key_type 'string' (--key-type string)"  # noqa: E501
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {
            "source": str(src), "row": LATE, "key": "18446744073709551616", "field": "id",
            "error": "expected an integer from -9223372036854775808 to 9223372036854775807 (int64), found "
            "'18446744073709551616', which is out of range" + hint,
        },
        {
            "source": str(src), "row": LATE + 1, "key": "000123", "field": "id",
            "error": rewrite + hint,
        },
    ]  # fmt: skip
    assert _keys(out) == list(range(LATE))


def test_jsonl_late_integer_overflow_names_the_range(tmp_path: Path, models) -> None:
    lines = [json.dumps({"id": i, "n": i, "f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0}) for i in range(20_000)]
    lines.append(json.dumps({"id": 20_000, "n": 2**64, "f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0}))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--include", "n")
    assert result.exit_code == 3, result.output
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {
            "source": str(src), "row": 20_000, "line": 20_001, "key": 20_000, "field": "n",
            "error": "expected an integer from -9223372036854775808 to 9223372036854775807 (int64), found "
            "18446744073709551616, which is out of range",
        }
    ]  # fmt: skip


# -- forced ----------------------------------------------------------------------------------


def test_key_type_string_reads_integer_keys_as_text(tmp_path: Path, models) -> None:
    for name, src in {
        "csv": _csv(tmp_path / "in.csv", ["1", "2"]),
        "jsonl": _jsonl_text(tmp_path / "in.jsonl", ["1", "2"]),
        "parquet": _parquet(tmp_path / "in.parquet", pa.array([1, 2], pa.int64())),
    }.items():
        out = tmp_path / f"out-{name}"
        _ok(_predict(models.onnx, src, out, "--key-type", "string"))
        assert _keys(out) == ["1", "2"], name


def test_key_type_int64_parses_keys_and_sets_aside_those_that_do_not_fit(tmp_path: Path, models) -> None:
    src = _csv(tmp_path / "in.csv", ["000123", "abc", "18446744073709551616", "42"])
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--key-type", "int64", "--max-error-fraction", "0.5")
    _ok(result)
    assert _keys(out) == [123, 42]
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 1, "key": "abc", "field": "id", "error": "expected an integer, found 'abc'"},
        {
            "source": str(src), "row": 2, "key": "18446744073709551616", "field": "id",
            "error": "expected an integer from -9223372036854775808 to 9223372036854775807 (int64), found "
            "'18446744073709551616', which is out of range",
        },
    ]  # fmt: skip


def test_key_type_int64_casts_a_parquet_text_key(tmp_path: Path, models) -> None:
    src = _parquet(tmp_path / "in.parquet", pa.array(["7", "x", "9"]))
    out = tmp_path / "out"
    _ok(_predict(models.onnx, src, out, "--key-type", "int64", "--max-error-fraction", "0.5"))
    assert _keys(out) == [7, 9]
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert error == {"source": str(src), "row": 1, "key": "x", "field": "id", "error": "expected an integer, found 'x'"}


def test_an_unknown_key_type_is_a_usage_error(tmp_path: Path, models) -> None:
    result = _predict(models.onnx, _csv(tmp_path / "in.csv", ["1"]), tmp_path / "out", "--key-type", "float")
    assert result.exit_code == 2, result.output
    assert "key_type" in result.stderr
    assert "'string' or 'int64'" in result.stderr


def _parquet(path: Path, ids: pa.Array) -> Path:
    n = len(ids)
    pq.write_table(pa.table({"id": ids, **{f"f{j}": pa.array([1.0] * n, pa.float32()) for j in range(4)}}), path)
    return path


@pytest.mark.parametrize("key_type", ["string", "int64"])
def test_key_type_is_part_of_the_job_identity(tmp_path: Path, models, key_type: str) -> None:
    src = _csv(tmp_path / "in.csv", ["1", "2"])
    out = tmp_path / "out"
    _ok(_predict(models.onnx, src, out))
    again = _predict(models.onnx, src, out, "--key-type", key_type)
    assert again.exit_code == 2, again.output
    assert "different job" in " ".join(again.stderr.split())
