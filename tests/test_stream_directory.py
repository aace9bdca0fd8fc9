"""`sluice stream` from a directory into a directory: batch-equal output, new files only, errors, conflicts."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sluice
from sluice.errors import ConfigError, DataError, OutputConflict
from sluice.stream import StreamRunner, StreamSpec
from stream_support import batch_table, error_records, land, land_files, manifest, sink_table
from support import FEATURES, invoke, listing, make_table, write_module, write_table


def test_a_drained_directory_gives_what_a_batch_run_gives(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    ids = land_files(source, 3, 250)
    land(make_table(120, start=750), source, "in-zz.jsonl")  # a second format, a different schema source
    summary = sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True, batch_size=100)
    assert (summary.records, summary.records_failed) == (870, 0)
    assert sink_table(sink).equals(batch_table(models.onnx, source, tmp_path / "batch"))
    assert sink_table(sink).column("id").to_pylist() == [*ids, *range(750, 870)]
    parts = sorted(p.name for p in sink.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(summary.groups)]
    written = manifest(sink)
    assert (written["groups"], written["records"], written["records_failed"]) == (summary.groups, 870, 0)
    assert written["progress"] == {
        "consumed": ["in-000000.parquet", "in-000250.parquet", "in-000500.parquet", "in-zz.jsonl"],
        "partial": None,
    }
    assert listing(sink / "_pending") == []
    figures = json.loads((sink / "_stream_metrics.json").read_text())
    assert figures["records"] == 870 and figures["group_size"] >= 1


def test_a_restart_reads_only_the_files_that_landed_since(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 2, 100)
    first = sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True)
    land_files(source, 1, 100, start=200)
    second = sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True)
    third = sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True)
    assert (first.records, second.records, third.records) == (200, 100, 0)
    assert sink_table(sink).column("id").to_pylist() == list(range(300))
    assert manifest(sink)["records"] == 300


def test_files_still_being_written_are_not_read(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 1, 50)
    write_table(make_table(10, start=1000), source / ".in-1.parquet.tmp-1234", fmt="parquet")  # a writer's temp name
    write_table(make_table(10, start=2000), source / "_temporary" / "0" / "part-0.parquet")  # Spark's staging
    write_table(make_table(10, start=3000), source / "_in-2.parquet")
    (source / "notes.txt").write_text("not data\n")
    summary = sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True)
    assert summary.records == 50
    assert sink_table(sink).column("id").to_pylist() == list(range(50))
    assert manifest(sink)["progress"]["consumed"] == ["in-000000.parquet"]


def test_bad_records_go_to_error_files_and_the_stream_goes_on(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    good = make_table(3, start=0).to_pylist()
    lines = [json.dumps(good[0]), "{not json", json.dumps({**good[1], "f2": "abc"}), json.dumps(good[2])]
    (source).mkdir()
    (source / "a.jsonl").write_text("\n".join(lines) + "\n")
    land_files(source, 1, 20, start=100)
    summary = sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True)
    assert (summary.records, summary.records_failed) == (22, 2)
    assert sink_table(sink).column("id").to_pylist() == [0, 2, *range(100, 120)]
    src = str(source / "a.jsonl")
    assert [{k: r[k] for k in ("source", "row", "line", "field")} for r in error_records(sink)] == [
        {"source": src, "row": 1, "line": 2, "field": None},
        {"source": src, "row": 2, "line": 3, "field": "f2"},
    ]
    assert error_records(sink)[1]["error"] == "expected a number, found 'abc'"
    assert error_records(sink)[1]["key"] == 1
    assert (manifest(sink)["records"], manifest(sink)["records_failed"]) == (22, 2)


def test_a_json_lines_sink_reads_back_as_the_batch_rows(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 2, 40)
    sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True, sink_format="jsonl")
    assert sorted(p.name for p in sink.iterdir() if p.name.startswith("part-"))[0] == "part-00000.jsonl"
    expected = batch_table(models.onnx, source, tmp_path / "batch")
    got = sink_table(sink)
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    assert got.column("label").to_pylist() == expected.column("label").to_pylist()


def test_a_sink_of_another_stream_is_refused_unless_overwritten(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 1, 30)
    sluice.stream(str(models.onnx), str(source), str(sink), key_column="id", once=True)
    other = {"key_column": "name", "features": FEATURES, "once": True}
    with pytest.raises(OutputConflict, match="holds the output of a different stream"):
        sluice.stream(str(models.onnx), str(source), str(sink), **other)
    again = sluice.stream(str(models.onnx), str(source), str(sink), **other, overwrite=True)
    assert again.records == 30
    assert pq.read_table(sink / "part-00000.parquet").column_names == ["name", "label", "probabilities"]
    assert sorted(p.name for p in sink.glob("part-*")) == ["part-00000.parquet"]


def test_a_missing_source_and_bad_options_are_named(tmp_path: Path, models) -> None:
    with pytest.raises(DataError, match=r"source directory .*nope does not exist"):
        sluice.stream(str(models.onnx), str(tmp_path / "nope"), str(tmp_path / "out"), once=True)
    with pytest.raises(ConfigError, match="min_group 5 is more than max_group 2"):
        sluice.stream(str(models.onnx), str(tmp_path), str(tmp_path / "out"), min_group=5, max_group=2)


def test_the_command_streams_and_reports_its_errors(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 2, 30)
    result = invoke(
        "stream", "-m", models.onnx, "--source", source, "--sink", sink, "--key-column", "id", "--once", "--json"
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout[result.stdout.index("{") :])
    assert (figures["records"], figures["records_failed"]) == (60, 0)
    result = invoke(
        "stream", "-m", models.onnx, "--source", source, "--sink", sink, "--key-column", "name", "--features",
        "f0,f1,f2,f3", "--once",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "holds the output of a different stream" in result.output and "--overwrite" in result.output
    result = invoke("stream", "-m", models.onnx, "--source", source)
    assert result.exit_code == 2
    assert "--sink required" in result.output


def test_a_running_stream_serves_its_figures_to_prometheus(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 2, 25)
    stop = threading.Event()
    spec = StreamSpec.build(
        model=str(models.onnx), source=str(source), sink=str(sink), key_column="id", metrics_port=0, poll_interval_ms=5
    )
    runner = StreamRunner(spec, stop=stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (runner.metrics and runner.metrics.records == 50) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.metrics_server is not None
        url = f"http://127.0.0.1:{runner.metrics_server.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = response.read().decode()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert "sluice_stream_records_total 50\n" in text
    assert "sluice_stream_records_failed_total 0\n" in text
    assert "# TYPE sluice_stream_group_size gauge\nsluice_stream_group_size " in text
    assert not thread.is_alive()


PICKY_MODULE = """
import numpy as np

def predict(x):
    if (x[:, 0] == 999).any():
        raise ValueError("f0 may not be 999")
    return x.sum(axis=1)
"""


def test_a_record_the_model_rejects_mid_stream_is_an_error_and_the_rest_go_on(
    tmp_path: Path, models, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module(tmp_path / "mods", "picky_stream_model", PICKY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))  # the model's worker processes import it too
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 1, 30)
    bad = make_table(30, start=30).to_pydict()
    bad["f0"][7] = 999.0
    land(pa.table(bad, schema=make_table(1).schema), source, "in-000030.parquet")
    land_files(source, 1, 30, start=60)
    summary = sluice.stream(
        "picky_stream_model:predict", str(source), str(sink), key_column="id", features=FEATURES, once=True
    )
    assert (summary.records, summary.records_failed) == (89, 1)
    assert sink_table(sink).column("id").to_pylist() == [i for i in range(90) if i != 37]
    (error,) = error_records(sink)
    assert (error["source"], error["row"], error["key"], error["field"]) == (
        str(source / "in-000030.parquet"),
        7,
        37,
        None,
    )
    assert "f0 may not be 999" in error["error"]
