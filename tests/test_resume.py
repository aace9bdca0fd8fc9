"""Resuming: a re-run redoes only the parts that are missing; --overwrite starts over."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support import hidden_files, invoke, listing, make_table, onnx_predict, read_output, write_table

FILES = 4
ROWS = 10


def _inputs(directory: Path, fmt: str = "parquet") -> list[int]:
    ids: list[int] = []
    for i in range(FILES):
        table = make_table(ROWS, start=100 * i)
        write_table(table, directory / f"in-{i}.{fmt}")
        ids += table.column("id").to_pylist()
    return ids


def _command(models, src: Path, out: Path, out_fmt: str = "parquet", *extra: str) -> list[str]:
    return [
        "predict", "-m", str(models.onnx), "-i", str(src), "-o", str(out), "--key-column", "id",
        "--output-format", out_fmt, "--batch-size", "3", "-q", *extra,
    ]  # fmt: skip


def _all_ids(out: Path, fmt: str) -> list[int]:
    ids: list[int] = []
    for part in sorted(out.glob(f"part-*.{fmt}")):
        ids += read_output(part).column("id").to_pylist()
    return ids


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_rerun_redoes_only_the_lost_part(tmp_path: Path, models, fmt: str) -> None:
    expected_ids = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out, fmt)
    assert invoke(*command).exit_code == 0
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*") if p.name != f"part-00002.{fmt}"}
    (out / f"part-00002.{fmt}").unlink()

    result = invoke(*command)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["shards"] == FILES
    assert summary["shards_skipped"] == FILES - 1
    # the whole job's rows: the redone part's and the skipped parts'
    assert (summary["rows"], summary["rows_failed"], summary["error_files"]) == (FILES * ROWS, 0, [])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*") if p.name != f"part-00002.{fmt}"} == kept
    ids = _all_ids(out, fmt)
    assert ids == expected_ids
    assert len(set(ids)) == len(ids)
    assert (out / "_SUCCESS").exists()
    assert hidden_files(out) == []


def test_rerun_of_a_complete_job_skips_everything_and_keeps_its_summary(tmp_path: Path, models) -> None:
    expected_ids = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out)
    assert invoke(*command).exit_code == 0
    written = (out / "_summary.json").read_text()
    parts = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    result = invoke(*command[:-1], "--json")
    assert result.exit_code == 0, result.output
    assert (out / "_summary.json").read_text() == written
    printed = json.loads(result.stdout)
    first = json.loads(written)
    assert printed == {**first, "shards_skipped": FILES}
    assert (first["shards_skipped"], first["rows"], first["rows_failed"]) == (0, FILES * ROWS, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == parts
    assert _all_ids(out, "parquet") == expected_ids
    assert (out / "_SUCCESS").exists()


def test_overwrite_starts_over(tmp_path: Path, models) -> None:
    expected_ids = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out)
    assert invoke(*command).exit_code == 0
    (out / "part-00001.parquet").unlink()
    result = invoke(*command, "--overwrite")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["shards_skipped"], summary["rows"]) == (0, FILES * ROWS)
    assert _all_ids(out, "parquet") == expected_ids


def test_resumed_predictions_match_a_fresh_run(tmp_path: Path, models) -> None:
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out)
    assert invoke(*command).exit_code == 0
    (out / "part-00000.parquet").unlink()
    (out / "part-00003.parquet").unlink()
    assert invoke(*command).exit_code == 0
    assert json.loads((out / "_summary.json").read_text())["shards_skipped"] == 2
    for i in range(FILES):
        table = make_table(ROWS, start=100 * i)
        part = pq.read_table(out / f"part-{i:05d}.parquet")
        assert part.column("label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()


def test_resume_rewrites_the_error_file_of_a_redone_part(tmp_path: Path, models) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        '{"id": 0, "f0": 1, "f1": 2, "f2": 3, "f3": 4}\n{"id": 1, "f0": null, "f1": 2, "f2": 3, "f3": 4}\n'
    )
    write_table(make_table(3, start=10), tmp_path / "in" / "b.jsonl")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out, "jsonl", "--max-error-fraction", "0.5")
    assert invoke(*command).exit_code == 0
    errors_before = (out / "_errors" / "errors-00000.jsonl").read_text()
    (out / "part-00000.jsonl").unlink()
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert (out / "_errors" / "errors-00000.jsonl").read_text() == errors_before
    assert len(errors_before.splitlines()) == 1
    assert listing(out) == [
        "_SUCCESS",
        "_errors",
        "_sluice_job.json",
        "_summary.json",
        "part-00000.jsonl",
        "part-00001.jsonl",
    ]


def test_resume_cleans_up_temp_files_of_a_crashed_run(tmp_path: Path, models) -> None:
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out)
    assert invoke(*command).exit_code == 0
    (out / "part-00002.parquet").unlink()
    (out / "_SUCCESS").unlink()
    # What a killed run leaves behind: the hidden temporary file of the part it was writing.
    (out / ".part-00002.parquet.tmp-0badf00d").write_bytes(b"PAR1 half a part")
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert hidden_files(out) == []


def test_changed_input_is_a_different_job(tmp_path: Path, models) -> None:
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out)
    assert invoke(*command).exit_code == 0
    write_table(make_table(ROWS + 5, start=200), tmp_path / "in" / "in-2.parquet")
    result = invoke(*command)
    assert result.exit_code == 2
    assert "holds the output of a different job" in result.stderr


# -- an output of the earlier layout: summary.json and errors-NNNNN.jsonl beside the parts ---------


def _earlier_layout_output(tmp_path: Path, models) -> tuple[Path, list[str], dict[str, str]]:
    """A finished run with error files in both parts, moved to the names an earlier Sluice used."""
    (tmp_path / "in").mkdir()
    for i in range(2):
        rows = [{"id": 10 * i + r, "f0": None if r == 1 else 1.0, "f1": 2.0, "f2": 3.0, "f3": 4.0} for r in range(3)]
        (tmp_path / "in" / f"{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out, "parquet", "--max-error-fraction", "0.5")
    assert invoke(*command).exit_code == 0
    errors = {}
    for path in sorted((out / "_errors").iterdir()):
        errors[path.name] = path.read_text()
        path.rename(out / path.name)
    (out / "_errors").rmdir()
    summary = json.loads((out / "_summary.json").read_text())
    summary["error_files"] = [str(out / name) for name in errors]  # where an earlier Sluice wrote them
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "_summary.json").unlink()
    return out, command, errors


def test_resume_over_the_earlier_layout_moves_its_files(tmp_path: Path, models, caplog) -> None:
    out, command, errors = _earlier_layout_output(tmp_path, models)
    kept = (out / "part-00000.parquet").stat().st_mtime_ns
    (out / "part-00001.parquet").unlink()
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert listing(out) == [
        "_SUCCESS", "_errors", "_sluice_job.json", "_summary.json", "part-00000.parquet", "part-00001.parquet",
    ]  # fmt: skip
    assert {p.name: p.read_text() for p in sorted((out / "_errors").iterdir())} == errors
    assert (out / "part-00000.parquet").stat().st_mtime_ns == kept  # skipped, its error file kept
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["shards_skipped"], summary["rows"], summary["rows_failed"]) == (1, 4, 2)
    assert summary["error_files"] == [str(out / "_errors" / name) for name in errors]
    assert f"{out} was written by an earlier Sluice: moved errors-00000.jsonl to _errors/errors-00000.jsonl, " in (
        caplog.text
    )
    import pyarrow.dataset as ds

    assert sorted(ds.dataset(out).to_table().column("id").to_pylist()) == [0, 2, 10, 12]


def test_rerun_of_a_complete_earlier_layout_output_only_renames(tmp_path: Path, models) -> None:
    out, command, errors = _earlier_layout_output(tmp_path, models)
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_text() for p in sorted((out / "_errors").iterdir())} == errors
    assert not [p.name for p in out.iterdir() if p.name in ("summary.json", *errors)]
    summary = json.loads((out / "_summary.json").read_text())  # the finished run's, kept
    assert (summary["shards_skipped"], summary["rows"], summary["rows_failed"]) == (0, 4, 2)
    assert summary["error_files"] == [str(out / "_errors" / name) for name in errors]  # by their new names
    assert (out / "_SUCCESS").exists()


def test_overwrite_removes_the_earlier_layouts_files(tmp_path: Path, models) -> None:
    out, command, _ = _earlier_layout_output(tmp_path, models)
    result = invoke(*command, "--overwrite")
    assert result.exit_code == 0, result.output
    assert listing(out) == [
        "_SUCCESS", "_errors", "_sluice_job.json", "_summary.json", "part-00000.parquet", "part-00001.parquet",
    ]  # fmt: skip
    assert listing(out / "_errors") == ["errors-00000.jsonl", "errors-00001.jsonl"]
    assert json.loads((out / "_summary.json").read_text())["shards_skipped"] == 0
