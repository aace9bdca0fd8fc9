"""``storage_options`` carry the endpoint and credentials of S3 input and output on the local engine.

The Spark and Ray runs of the same check are in test_backends.py, which starts those engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sluice
from s3_support import S3Server, expected_rows, moto_s3, read_back, upload_inputs


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with moto_s3(monkeypatch) as server:
        yield server


def test_local_run_reads_and_writes_s3_through_storage_options(tmp_path: Path, models: Any, s3: S3Server) -> None:
    table = upload_inputs(s3, tmp_path, "local-bucket", files=3, rows=500)
    summary = sluice.predict(str(models.onnx), "s3://local-bucket/in/", "s3://local-bucket/out", key_column="id",
                             batch_size=128, storage_options=s3.options)  # fmt: skip
    assert (summary.rows, summary.rows_failed, summary.shards, summary.output) == (
        1500, 0, 3, "s3://local-bucket/out"
    )  # fmt: skip
    rows, written = read_back(s3, "s3://local-bucket/out", shards=3)
    assert rows == expected_rows(models.onnx, table)
    assert (written["rows"], written["backend"]) == (1500, "local")


def test_resumed_run_on_s3_counts_the_parts_it_skipped(tmp_path: Path, models: Any, s3: S3Server) -> None:
    upload_inputs(s3, tmp_path, "resume-bucket", files=3, rows=200)
    options = {"key_column": "id", "batch_size": 64, "storage_options": s3.options}
    first = sluice.predict(str(models.onnx), "s3://resume-bucket/in/", "s3://resume-bucket/out", **options)
    fs = s3.filesystem()
    fs.rm("resume-bucket/out/part-00001.parquet")  # as a run stopped before part 1 committed leaves it
    fs.invalidate_cache()
    resumed = sluice.predict(str(models.onnx), "s3://resume-bucket/in/", "s3://resume-bucket/out", **options)
    assert (first.rows, resumed.rows, resumed.rows_failed, resumed.shards_skipped) == (600, 600, 0, 2)
    again = sluice.predict(str(models.onnx), "s3://resume-bucket/in/", "s3://resume-bucket/out", **options)
    assert (again.rows, again.rows_per_second, again.shards_skipped) == (600, resumed.rows_per_second, 3)
    _, written = read_back(s3, "s3://resume-bucket/out", shards=3)
    assert (written["rows"], written["rows_per_second"]) == (600, resumed.rows_per_second)
