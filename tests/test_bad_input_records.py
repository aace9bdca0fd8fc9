"""Hostile and unusual JSON Lines records: deep nesting, long lines, mixed-type lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.data.jsonl import MAX_JSON_DEPTH, deep_lines, nesting_depth
from support import SRC_ROOT, invoke, read_jsonl


def _record(i: int, **values: object) -> str:
    return json.dumps({"id": i, "f0": 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0, **values})


def _predict(model: Path, src: Path, out: Path, *extra: str):
    return invoke(
        "predict", "-m", model, "-i", src, "-o", out, "--key-column", "id", "--output-format", "jsonl", "-q", *extra
    )


def _ids(out: Path) -> list[int]:
    return [r["id"] for r in read_jsonl(out / "part-00000.jsonl")]


# -- nesting depth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"", 0),
        (b'{"a": 1}', 1),
        (b'{"a": [1, [2, {"b": []}]]}', 5),
        (b'{"a": "[[[[{{{{"}', 1),  # brackets inside a string do not nest
        (b'{"a": "]]]]", "b": [[1]]}', 3),
        (b'{"a": "say \\"[[[\\"", "b": []}', 2),  # escaped quotes do not end the string
        (b'{"a": "ends in a backslash \\\\", "b": [[]]}', 3),  # an escaped backslash does not escape the quote
    ],
)
def test_nesting_depth(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_deep_lines_finds_only_the_deep_line() -> None:
    shallow = b'{"x": [[1, 2], [3, 4]]}\n' * 400  # many brackets in the chunk, few per line
    deep = b'{"x": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}\n"
    wide = b'{"x": [' + b"[1]," * 2000 + b"[]]}\n"  # more brackets than the limit, but only 3 deep
    chunk = shallow + deep + b"\n" + wide + shallow
    start = len(shallow)
    assert deep_lines(chunk) == [(start, start + len(deep))]
    assert deep_lines(shallow + wide) == []


def test_a_line_nested_fifty_thousand_levels_is_one_record_error(tmp_path: Path, models) -> None:
    deep = '{"id": 3, "f0": 1, "f1": 1, "f2": 1, "f3": 1, "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([_record(0), _record(1), _record(2), deep, _record(4)]) + "\n")
    out = tmp_path / "out"
    # in a process of its own: without the guard, pyarrow's parser overflows the stack (SIGSEGV)
    done = subprocess.run(
        [sys.executable, "-m", "sluice", "predict", "-m", str(models.onnx), "-i", str(src), "-o", str(out),
         "--key-column", "id", "--output-format", "jsonl", "-q", "--batch-size", "64"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC_ROOT)},
    )  # fmt: skip
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": str(src), "row": 3, "line": 4, "key": None, "field": None,
         "error": f"the record is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"}
    ]  # fmt: skip
    assert _ids(out) == [0, 1, 2, 4]


def test_a_deep_first_line_does_not_reach_the_parser_when_typing_columns(tmp_path: Path, models) -> None:
    deep = '{"id": 0, "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([deep, _record(1), _record(2)]) + "\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "sluice", "predict", "-m", str(models.onnx), "-i", str(src), "-o", str(out),
         "--key-column", "id", "--output-format", "jsonl", "-q", "--max-error-fraction", "0.5"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(SRC_ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert _ids(out) == [1, 2]
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert error["row"] == 0
    assert error["error"] == f"the record is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"


# -- long lines ------------------------------------------------------------------------------


def test_a_record_of_three_megabytes_is_read(tmp_path: Path, models) -> None:
    src = tmp_path / "in.jsonl"
    lines = [_record(0, blob="a"), _record(1, blob="x" * (3 << 20)), _record(2, blob="c")]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--include", "blob")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "part-00000.jsonl")
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert len(rows[1]["blob"]) == 3 << 20


def test_a_long_first_line_types_the_columns(tmp_path: Path, models) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([_record(0, blob="y" * (2 << 20)), _record(1, blob="z")]) + "\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--include", "blob")
    assert result.exit_code == 0, result.output
    assert _ids(out) == [0, 1]


def test_a_bad_long_record_is_told_by_its_problem_not_its_length(tmp_path: Path, models) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([_record(0), _record(1, f2="abc", blob="x" * (3 << 20)), _record(2)]) + "\n")
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out, "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    [error] = read_jsonl(out / "_errors" / "errors-00000.jsonl")
    assert error == {"source": str(src), "row": 1, "line": 2, "key": 1, "field": "f2",
                     "error": "expected a number, found 'abc'"}  # fmt: skip


# -- lists of mixed types --------------------------------------------------------------------


def test_a_mixed_type_list_in_an_unused_field_does_not_hide_the_records(tmp_path: Path, models) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(_record(i, tags=[i, "a"]) for i in range(3)) + "\n")  # every sampled line has one
    out = tmp_path / "out"
    result = _predict(models.onnx, src, out)
    assert result.exit_code == 0, result.output
    assert _ids(out) == [0, 1, 2]
