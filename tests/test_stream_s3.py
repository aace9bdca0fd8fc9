"""A directory source on an object store: new objects under an s3:// prefix (moto's real S3 API on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import sluice
from s3_support import S3Server, moto_s3
from stream_support import manifest, sink_table
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
