"""A re-run ends as the uninterrupted run did: whole-job counts, error files and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from sluice.batch.counts import PartCounts, committed_counts, part_rows
from sluice.batch.layout import OutputLayout
from sluice.cli.main import app
from sluice.data.location import resolve_location
from sluice.data.writers import PartWriter
from support import invoke, listing

HEADER = "id,f0,f1,f2,f3\n"


def _csv(path: Path, ids: range, bad: set[int]) -> None:
    """A CSV of ``ids``; the rows in ``bad`` lack ``f0``, so the model cannot take them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{i},{'' if i in bad else 0.5},1.5,-2.0,3.0\n" for i in ids]
    path.write_text(HEADER + "".join(lines))


def _command(models, src: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "-m", str(models.onnx), "-i", str(src), "-o", str(out), "--key-column", "id", "-q", *extra]


def _summary(out: Path) -> dict:
    return json.loads((out / "_summary.json").read_text())


def _counts(summary: dict) -> tuple:
    return (summary["rows"], summary["rows_failed"], summary["error_files"], summary["shards"])


def test_rerun_of_a_job_with_too_many_failed_records_fails_again(tmp_path: Path, models) -> None:
    _csv(tmp_path / "bad" / "a.csv", range(10), bad={2, 5, 7})
    out = tmp_path / "o"
    command = _command(models, tmp_path / "bad", out)
    error_file = str(out / "_errors" / "errors-00000.jsonl")

    first = invoke(*command)
    assert first.exit_code == 3, first.output
    assert "_SUCCESS" not in listing(out)
    written = (out / "_summary.json").read_text()
    assert _counts(json.loads(written)) == (7, 3, [error_file], 1)

    again = invoke(*command)
    assert again.exit_code == 3, again.output
    assert "3 of 10 records failed (30.00%), more than --max-error-fraction 0.0" in again.output
    assert "_SUCCESS" not in listing(out)
    assert (out / "_summary.json").read_text() == written
    assert len((out / "_errors" / "errors-00000.jsonl").read_text().splitlines()) == 3

    allowed = invoke(*command, "--max-error-fraction", "0.3")  # the same job, judged with a wider allowance
    assert allowed.exit_code == 0, allowed.output
    assert listing(out) == ["_SUCCESS", "_errors", "_sluice_job.json", "_summary.json", "part-00000.parquet"]
    assert _counts(_summary(out)) == (7, 3, [error_file], 1)


def _three_files(src: Path) -> None:
    _csv(src / "a.csv", range(0, 10), bad={1})
    _csv(src / "b.csv", range(10, 20), bad={11, 12})
    _csv(src / "c.csv", range(20, 30), bad=set())


def _interrupt_after_part_0(out: Path) -> None:
    """The output as a run killed while writing parts 1 and 2 leaves it: part 0 alone committed."""
    for name in ("part-00001.csv", "part-00002.csv", "_errors/errors-00001.jsonl", "_summary.json", "_SUCCESS"):
        (out / name).unlink(missing_ok=True)


def test_resumed_run_counts_the_whole_job_like_an_uninterrupted_one(tmp_path: Path, models) -> None:
    _three_files(tmp_path / "in")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for out in (whole, resumed):
        result = invoke(
            *_command(models, tmp_path / "in", out, "--output-format", "csv", "--max-error-fraction", "0.1")
        )
        assert result.exit_code == 0, result.output
    _interrupt_after_part_0(resumed)

    result = invoke(
        *_command(models, tmp_path / "in", resumed, "--output-format", "csv", "--max-error-fraction", "0.1")
    )
    assert result.exit_code == 0, result.output
    expected, found = _summary(whole), _summary(resumed)
    assert (expected["rows"], expected["rows_failed"]) == (27, 3)
    assert (found["rows"], found["rows_failed"], found["shards"]) == (27, 3, 3)
    assert found["error_files"] == [str(resumed / "_errors" / n) for n in ("errors-00000.jsonl", "errors-00001.jsonl")]
    assert (expected["shards_skipped"], found["shards_skipped"]) == (0, 1)
    assert listing(resumed) == listing(whole)


def test_resumed_run_fails_as_the_uninterrupted_one_did(tmp_path: Path, models) -> None:
    _three_files(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out, "--output-format", "csv", "--max-error-fraction", "0.05")
    assert invoke(*command).exit_code == 3
    _interrupt_after_part_0(out)

    result = invoke(*command)  # part 0 (1 failed record) skipped, parts 1 and 2 (2 failed) redone
    assert result.exit_code == 3, result.output
    assert "3 of 30 records failed (10.00%)" in result.output
    assert "_SUCCESS" not in listing(out)
    summary = _summary(out)
    assert (summary["rows"], summary["rows_failed"], summary["shards_skipped"]) == (27, 3, 1)


def test_an_error_file_without_its_part_is_not_counted(tmp_path: Path, models) -> None:
    _three_files(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out, "--output-format", "jsonl", "--max-error-fraction", "0.1")
    assert invoke(*command).exit_code == 0
    # a run stopped after committing part 2's error file, before its part: the records failed then
    (out / "part-00002.jsonl").unlink()
    (out / "_errors" / "errors-00002.jsonl").write_text('{"row": 0}\n{"row": 1}\n')

    result = invoke(*command)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "_errors").iterdir()) == ["errors-00000.jsonl", "errors-00001.jsonl"]
    summary = _summary(out)
    assert (summary["rows"], summary["rows_failed"], len(summary["error_files"])) == (27, 3, 2)
    again = invoke(*command)  # and the complete output keeps that summary
    assert again.exit_code == 0, again.output
    assert _summary(out) == summary


def _wide(*args: str | Path) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "SLUICE_PRICES": ""})


def test_rerun_of_a_finished_job_keeps_its_summary_for_cost(tmp_path: Path, models) -> None:
    _three_files(tmp_path / "in")
    out = tmp_path / "out"
    command = _command(models, tmp_path / "in", out, "--max-error-fraction", "0.1")
    assert invoke(*command).exit_code == 0
    written = (out / "_summary.json").read_text()
    rate = json.loads(written)["rows_per_second"]
    assert rate > 0

    loud = [a for a in command if a != "-q"]
    again = _wide(*loud)  # not quiet: the table says the output was complete
    assert again.exit_code == 0, again.output
    assert "output already complete: nothing to run" in again.output
    assert (out / "_summary.json").read_text() == written
    assert (out / "_SUCCESS").exists()

    priced = _wide(*loud, "--price-per-hour", "2", "--json")
    assert priced.exit_code == 0, priced.output
    assert json.loads(priced.stdout)["cost_per_million_usd"] == 2 / (rate * 3600) * 1e6
    assert "cost per 1M n/a" not in priced.output
    assert (out / "_summary.json").read_text() == written

    cost = _wide("cost", "--rows", "1M", "--deadline", "1h", "--summary", out / "_summary.json", "--cores", "2")
    assert cost.exit_code == 0, cost.output
    assert "measured rows per second must be > 0" not in cost.output


# -- counting what committed parts hold --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("rows", [0, 3])
def test_part_rows_counts_the_rows_a_part_writer_committed(tmp_path: Path, fmt: str, rows: int) -> None:
    texts = ["one line", "two\nlines, and a comma", 'a "quote"'][:rows]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": pa.array(texts, pa.string())})
    part = resolve_location(tmp_path / f"part-00000.{fmt}")
    writer = PartWriter(part, fmt)  # type: ignore[arg-type]
    if rows:
        writer.write(table)
    writer.commit(table.schema)
    assert part_rows(part, fmt) == rows


def test_committed_counts_add_the_parts_and_their_error_files(tmp_path: Path, models) -> None:
    _three_files(tmp_path / "in")
    out = tmp_path / "out"
    assert (
        invoke(
            *_command(models, tmp_path / "in", out, "--output-format", "jsonl", "--max-error-fraction", "0.1")
        ).exit_code
        == 0
    )
    layout = OutputLayout(str(out), "jsonl")
    assert committed_counts(layout, [1, 2]) == PartCounts(18, 2, (str(out / "_errors" / "errors-00001.jsonl"),))
    assert committed_counts(layout, []) == PartCounts()
