"""A real S3 API for the tests: moto's server on 127.0.0.1, reached only through storage options.

No AWS variable in the environment names the endpoint or the credentials, so a run reaches
the server only if its storage options flow to every filesystem it opens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice._net import free_loopback_port
from sluice.batch.layout import SUMMARY, OutputLayout
from support import make_table, onnx_predict

# Variables through which boto or s3fs could find an endpoint or credentials by themselves.
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "FSSPEC_S3_ENDPOINT_URL",
)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    options: dict[str, Any]  # the storage options a job needs to reach the server

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.options)


@contextmanager
def moto_s3(env: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with every AWS endpoint and credential variable removed."""
    from moto.server import ThreadedMotoServer

    for name in AWS_VARIABLES:
        env.delenv(name, raising=False)
    env.setenv("AWS_CONFIG_FILE", os.devnull)  # no profile of this machine's user either
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    port = free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": "sluice-test", "secret": "sluice-test-secret"}
    try:
        yield S3Server(endpoint, options)
    finally:
        server.stop()


def upload_inputs(server: S3Server, tmp_path: Path, bucket: str, files: int, rows: int) -> pa.Table:
    """``files`` Parquet files of ``rows`` rows each under ``s3://bucket/in/``; returns all their rows."""
    fs = server.filesystem()
    fs.mkdir(bucket)
    tables = [make_table(rows, start=i * rows, seed=5) for i in range(files)]
    for i, table in enumerate(tables):
        local = tmp_path / f"in-{i}.parquet"
        pq.write_table(table, local)
        fs.put(str(local), f"{bucket}/in/in-{i}.parquet")
    return pa.concat_tables(tables)


def expected_rows(model: Path, table: pa.Table) -> list[dict[str, Any]]:
    """The rows a job with ``key_column="id"`` writes for ``table``: id, label, probabilities."""
    outputs = onnx_predict(model, table)
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float32)
    return [
        {"id": int(i), "label": int(label), "probabilities": [float(p) for p in probs]}
        for i, label, probs in zip(table.column("id").to_pylist(), outputs["label"], probabilities, strict=True)
    ]


def read_back(server: S3Server, output: str, shards: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every predicted row of the output's parts, in part order, and its summary, read from S3."""
    import json

    server.filesystem().invalidate_cache()
    layout = OutputLayout(output, "parquet", server.options)
    rows: list[dict[str, Any]] = []
    for index in range(shards):
        with layout.part(index).open() as fh:
            rows.extend(pq.read_table(fh).to_pylist())
    with layout.root.child(SUMMARY).open() as fh:
        summary = json.load(fh)
    return rows, summary
