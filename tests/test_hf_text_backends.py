"""A Hugging Face text model in the tuner and on the Ray backend: the same model layer as batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

import sluice
from hf_text_support import TextModels, direct_embeddings, documents, text_models
from sluice.tune import tune

__all__ = ["text_models"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    texts = documents(90, seed=31, max_words=60)
    directory = tmp_path_factory.mktemp("corpus")
    for i in range(3):  # three files: three shards for the engine's tasks
        pq.write_table(pa.table({"doc_id": list(range(i * 30, i * 30 + 30)), "body": texts[i * 30 : i * 30 + 30]}),
                       directory / f"docs-{i}.parquet")  # fmt: skip
    return directory, texts


def test_tuner_profiles_a_text_model(text_models: TextModels, corpus: tuple[Path, list[str]]) -> None:
    directory, _ = corpus
    model = sluice.load_model(str(text_models.embedding))
    profile = tune(
        model, str(directory), key_column="doc_id", setups=((1, 1),), max_batch_size=64, min_seconds=0.05,
        sample_rows=90,
    )  # fmt: skip
    assert profile.sample_rows == 90
    assert profile.chosen is not None and profile.chosen.status == "ok"
    assert {m.status for m in profile.measurements} == {"ok"}
    assert all(m.rows_per_second and m.rows_per_second > 0 for m in profile.measurements)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
def test_ray_backend_equals_local(text_models: TextModels, corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    directory, texts = corpus
    options = {"key_column": "doc_id", "max_length": 20, "batch_size": 16}
    local = sluice.predict(str(text_models.embedding), str(directory), str(tmp_path / "local"), **options)
    # Sluice starts (and stops) a local Ray instance, or joins the one another test started
    remote = sluice.predict(str(text_models.embedding), str(directory), str(tmp_path / "ray"), backend="ray", **options)
    assert (remote.rows, remote.rows_failed, remote.backend) == (90, 0, "ray")
    assert remote.counters == local.counters and remote.counters["truncated_records"] > 0
    assert remote.padding_waste == local.padding_waste
    table = pq.read_table(tmp_path / "ray").sort_by("doc_id")
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - direct_embeddings(text_models.embedding, texts, max_length=20)).max() <= 1e-4
