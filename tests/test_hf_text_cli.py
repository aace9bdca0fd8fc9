"""``sluice predict`` on a Hugging Face text model over a real Parquet file, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

import sluice
from hf_text_support import (
    TextModels,
    direct_embeddings,
    direct_probabilities,
    documents,
    text_models,
    token_counts,
)

__all__ = ["text_models"]

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _sluice(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, env=env, check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    texts = documents(120, seed=11, max_words=60)
    path = tmp_path_factory.mktemp("corpus") / "docs.parquet"
    pq.write_table(pa.table({"doc_id": list(range(120)), "body": texts}), path, row_group_size=50)
    return path, texts


def test_predict_embeddings_end_to_end(text_models: TextModels, corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, texts = corpus
    out = tmp_path / "out"
    result = _sluice(
        "predict", "-m", str(text_models.embedding), "-i", str(path), "-o", str(out), "--key-column", "doc_id",
        "--max-length", "24", "--normalize", "--batch-size", "32", "--forward-batch-size", "8", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    table = pq.read_table(out / "part-00000.parquet")
    assert table.schema.names == ["doc_id", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert table.column("doc_id").to_pylist() == list(range(120))
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = direct_embeddings(text_models.embedding, texts, normalize=True, max_length=24)
    assert np.abs(got - expected).max() <= 1e-4
    lengths = token_counts(text_models.embedding, texts)
    assert summary["rows"] == 120 and summary["rows_failed"] == 0
    assert summary["rows_per_second"] > 0
    assert summary["counters"]["truncated_records"] == sum(n > 24 for n in lengths) > 0
    assert summary["counters"]["tokens"] == sum(min(n, 24) for n in lengths)
    assert 0 < summary["padding_waste"] < summary["padding_waste_unbucketed"] < 1
    assert json.loads((out / "_summary.json").read_text())["counters"] == summary["counters"]


def test_no_bucketing_reports_equal_waste(
    text_models: TextModels, corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = corpus
    summary = sluice.predict(
        str(text_models.embedding), str(path), str(tmp_path / "o"), bucketing=False, batch_size=40,
        forward_batch_size=8, text_column="body", include=["doc_id"],
    )  # fmt: skip
    assert summary.padding_waste == summary.padding_waste_unbucketed
    assert summary.counters["padded_tokens"] == summary.counters["padded_tokens_unbucketed"]


def test_predict_labels_and_summary_table(
    text_models: TextModels, corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, texts = corpus
    out = tmp_path / "out"
    model = str(text_models.classifier)
    result = _sluice("predict", "-m", model, "-i", str(path), "-o", str(out), "--include", "doc_id")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out / "part-00000.parquet")
    assert table.schema.names == ["doc_id", "label", "score", "probabilities"]
    assert table.schema.field("label").type == pa.string()
    expected = direct_probabilities(text_models.classifier, texts)
    names = np.array(["red", "green", "blue"])
    assert table.column("label").to_pylist() == names[expected.argmax(axis=1)].tolist()
    assert "throughput" in result.stderr and "rows/s" in result.stderr
    assert "padding waste" in result.stderr and "truncated records" in result.stderr


def test_text_column_errors_exit_2(text_models: TextModels, tmp_path: Path) -> None:
    path = tmp_path / "two.parquet"
    pq.write_table(pa.table({"title": ["a"], "body": ["b"]}), path)
    result = _sluice("predict", "-m", str(text_models.embedding), "-i", str(path), "-o", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "takes one text column, the only string column not passed through; the data has 2 (title, body)" in (
        result.stderr
    )
    assert "name it with --text-column" in result.stderr
    unknown = _sluice(
        "predict", "-m", str(text_models.embedding), "-i", str(path), "-o", str(tmp_path / "o"), "--task", "nope"
    )
    assert unknown.returncode == 2 and "unknown --task 'nope'" in unknown.stderr


def test_help_lists_the_text_flags() -> None:
    result = _sluice("predict", "--help")
    for flag in ("--text-column", "--task", "--pooling", "--normalize", "--max-length", "--no-bucketing",
                 "--forward-batch-size"):  # fmt: skip
        assert flag in result.stdout, flag


def test_without_a_batch_size_a_text_model_takes_eight_forward_passes_per_batch(
    text_models: TextModels, corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, texts = corpus
    out = tmp_path / "o"
    summary = sluice.predict(
        str(text_models.embedding), str(path), str(out), forward_batch_size=4, text_column="body", include=["doc_id"]
    )
    assert (summary.batch_size, summary.batch_size_source) == (32, "model")
    assert summary.batch_size_reason == (
        "the model's own batch size (a deep model is not auto-tuned: one batch takes seconds)"
    )
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column("doc_id").to_pylist() == list(range(120))
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - direct_embeddings(text_models.embedding, texts)).max() <= 1e-4
