"""Streams on an object store (moto's real S3 API on 127.0.0.1): a prefix new objects land in, a prefix of parts."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import sluice
from s3_support import S3Server, moto_s3
from sluice.stream.failpoints import POINTS
from stream_support import batch_table, land_files, manifest, run_stream_process, sink_table
from support import make_table


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with moto_s3(monkeypatch) as server:
        yield server


def _upload(server: S3Server, tmp_path: Path, key: str, start: int, rows: int) -> None:
    local = tmp_path / f"{start}.parquet"
    pq.write_table(make_table(rows, start=start), local)
    server.filesystem().put(str(local), key)


def test_new_objects_under_a_prefix_are_read_once(tmp_path: Path, models: Any, s3: S3Server) -> None:
    s3.filesystem().mkdir("landing")
    _upload(s3, tmp_path, "landing/in/a.parquet", 0, 40)
    _upload(s3, tmp_path, "landing/in/_temporary/b.parquet", 1000, 40)  # a writer's staging area
    sink = tmp_path / "out"
    options = {"key_column": "id", "once": True, "storage_options": s3.options}
    first = sluice.stream(str(models.onnx), "s3://landing/in/", str(sink), **options)
    _upload(s3, tmp_path, "landing/in/c.parquet", 40, 40)
    second = sluice.stream(str(models.onnx), "s3://landing/in/", str(sink), **options)
    assert (first.records, second.records) == (40, 40)
    assert sink_table(sink).column("id").to_pylist() == list(range(80))
    assert manifest(sink)["progress"]["consumed"] == ["a.parquet", "c.parquet"]
    assert manifest(sink)["fingerprint"]["source"] == "s3://landing/in"


# -- an object-store sink ------------------------------------------------------------------------

SEED = 20261205
FILES, ROWS = 6, 80  # 40-row micro-batches, 2 per group: 6 groups, each file across two


def _sink_rows(server: S3Server, prefix: str) -> pa.Table:
    """The sink read back as a dataset (pyarrow skips `_pending/`, `_errors/` and the manifest), sorted by id."""
    fs = server.filesystem()
    fs.invalidate_cache()
    return ds.dataset(prefix, filesystem=fs, format="parquet").to_table().sort_by("id")


def _s3_manifest(server: S3Server, prefix: str) -> dict[str, Any]:
    fs = server.filesystem()
    fs.invalidate_cache()
    return dict(json.loads(fs.cat(f"{prefix}/_stream.json")))


def _names(server: S3Server, prefix: str) -> list[str]:
    fs = server.filesystem()
    fs.invalidate_cache()
    return sorted(p[len(prefix) + 1 :] for p in fs.find(prefix))


def _cli_args(models: Any, source: Path, server: S3Server, sink: str) -> list[str | Path]:
    options = [f"--storage-option={k}={v}" for k, v in server.options.items()]
    return [
        "-m", models.onnx, "--source", source, "--sink", sink, "--key-column", "id",
        "--batch-size", "40", "--max-group", "2", "--once", "-q", *options,
    ]  # fmt: skip


def test_groups_commit_as_parts_under_an_s3_prefix(tmp_path: Path, models: Any, s3: S3Server) -> None:
    s3.filesystem().mkdir("scored")
    source = tmp_path / "in"
    land_files(source, 2, 50)
    options = {"key_column": "id", "once": True, "storage_options": s3.options, "batch_size": 30}
    first = sluice.stream(str(models.onnx), str(source), "s3://scored/out/", **options)
    land_files(source, 1, 50, start=100)
    second = sluice.stream(str(models.onnx), str(source), "s3://scored/out/", **options, sink_format="parquet")
    assert (first.records, second.records) == (100, 50)
    assert _sink_rows(s3, "scored/out").equals(batch_table(models.onnx, source, tmp_path / "batch"))
    written = _s3_manifest(s3, "scored/out")
    assert (written["groups"], written["records"], written["progress"]["consumed"]) == (
        first.groups + second.groups,
        150,
        ["in-000000.parquet", "in-000050.parquet", "in-000100.parquet"],
    )
    parts = [f"part-{i:05d}.parquet" for i in range(written["groups"])]
    assert _names(s3, "scored/out") == ["_stream.json", "_stream_metrics.json", *parts]  # nothing left pending


def test_a_stream_over_another_streams_s3_sink_is_refused(tmp_path: Path, models: Any, s3: S3Server) -> None:
    s3.filesystem().mkdir("scored-2")
    land_files(tmp_path / "in", 1, 20)
    options = {"key_column": "id", "once": True, "storage_options": s3.options}
    sluice.stream(str(models.onnx), str(tmp_path / "in"), "s3://scored-2/out/", **options)
    refused = r"^s3://scored-2/out holds the output of a different stream"
    with pytest.raises(sluice.errors.OutputConflict, match=refused):
        sluice.stream(str(models.onnx), str(tmp_path / "in"), "s3://scored-2/out/", **{**options, "key_column": None})


@pytest.mark.slow
def test_sigkill_at_every_phase_then_restart_leaves_every_record_once_on_s3(
    tmp_path: Path, models: Any, s3: S3Server
) -> None:
    s3.filesystem().mkdir("scored-3")
    source = tmp_path / "in"
    land_files(source, FILES, ROWS)
    args = _cli_args(models, source, s3, "s3://scored-3/out/")
    done = run_stream_process(*args, failpoints="group.committed=1")
    assert done.returncode == -signal.SIGKILL
    # committed, not yet copied into place: readers see no part yet
    assert _names(s3, "scored-3/out") == ["_pending/part-00000.parquet", "_stream.json"]
    assert _s3_manifest(s3, "scored-3/out")["groups"] == 1
    rng = random.Random(SEED)
    plan = [(point, rng.randint(1, 2)) for point in POINTS]
    rng.shuffle(plan)
    codes = [run_stream_process(*args, failpoints=f"{point}={visit}").returncode for point, visit in plan]
    assert codes == [-signal.SIGKILL] * len(plan)
    done = run_stream_process(*args)
    assert done.returncode == 0, done.stderr
    got = _sink_rows(s3, "scored-3/out")
    assert got.num_rows == FILES * ROWS
    assert got.equals(batch_table(models.onnx, source, tmp_path / "batch"))
    written = _s3_manifest(s3, "scored-3/out")
    assert written["records"] == FILES * ROWS
    parts = [f"part-{i:05d}.parquet" for i in range(written["groups"])]
    assert _names(s3, "scored-3/out") == ["_stream.json", "_stream_metrics.json", *parts]
