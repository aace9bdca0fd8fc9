"""Hugging Face text models through the Model layer: outputs equal transformers' own, in input order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("transformers")

import sluice
from hf_text_support import (
    MAX_LENGTH,
    TextModels,
    direct_embeddings,
    direct_probabilities,
    documents,
    text_models,
    token_counts,
)
from sluice.errors import PredictError
from sluice.models.config import ModelConfig, TextConfig
from sluice.models.deep.text_batches import forward_passes, pad_rows, padding_counts

__all__ = ["text_models"]

TOLERANCE = 1e-4


def _load(directory: object, **text: object) -> sluice.Model:
    return sluice.load_model(str(directory), config=ModelConfig(text=TextConfig(**text)))  # type: ignore[arg-type]


def _embed(model: sluice.Model, texts: list[str]) -> np.ndarray:
    return model.predict_checked({"text": np.array(texts, dtype=object)})["embedding"]


def test_signature_and_format(text_models: TextModels) -> None:
    model = sluice.load_model(str(text_models.embedding))
    assert model.source.format == "hf"
    assert model.signature.describe() == "inputs: text: object[?] -> outputs: embedding: float32[?, 32]"
    classifier = sluice.load_model(str(text_models.classifier))
    assert classifier.signature.describe() == (
        "inputs: text: object[?] -> outputs: label: object[?]; score: float32[?]; probabilities: float32[?, 3]"
    )


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", False), ("cls", False), ("mean", True), ("cls", True)])
def test_embeddings_equal_transformers(text_models: TextModels, pooling: str, normalize: bool) -> None:
    texts = documents(40, seed=1)
    model = _load(text_models.embedding, pooling=pooling, normalize=normalize, forward_batch_size=8)
    got = _embed(model, texts)
    expected = direct_embeddings(text_models.embedding, texts, pooling=pooling, normalize=normalize)
    assert got.dtype == np.float32 and got.shape == (40, 32)
    assert np.abs(got - expected).max() <= TOLERANCE
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    else:
        assert np.abs(np.linalg.norm(got, axis=1) - 1).max() > 0.1


def test_mean_and_cls_differ(text_models: TextModels) -> None:
    texts = documents(5, seed=2)
    mean = _embed(_load(text_models.embedding), texts)
    cls = _embed(_load(text_models.embedding, pooling="cls"), texts)
    assert np.abs(mean - cls).max() > 0.01


def test_labels_scores_probabilities_equal_transformers(text_models: TextModels) -> None:
    texts = documents(30, seed=4)
    out = sluice.load_model(str(text_models.classifier)).predict_checked({"text": np.array(texts, dtype=object)})
    expected = direct_probabilities(text_models.classifier, texts)
    assert np.abs(out["probabilities"] - expected).max() <= TOLERANCE
    names = np.array(["red", "green", "blue"], dtype=object)
    assert out["label"].tolist() == names[expected.argmax(axis=1)].tolist()
    np.testing.assert_allclose(out["score"], expected.max(axis=1), atol=TOLERANCE)
    assert out["score"].dtype == np.float32 and out["probabilities"].dtype == np.float32


def test_bucketing_keeps_input_order(text_models: TextModels) -> None:
    """Lengths in a shuffled order: bucketed and in-order passes give each record its own embedding."""
    texts = documents(50, seed=5, max_words=40)
    bucketed = _embed(_load(text_models.embedding, forward_batch_size=4), texts)
    in_order = _embed(_load(text_models.embedding, forward_batch_size=4, bucketing=False), texts)
    one_by_one = np.concatenate([direct_embeddings(text_models.embedding, [t]) for t in texts[:6]])
    assert np.abs(bucketed - in_order).max() <= TOLERANCE
    assert np.abs(bucketed[:6] - one_by_one).max() <= TOLERANCE


def test_truncation_is_counted(text_models: TextModels) -> None:
    texts = documents(30, seed=6, max_words=60)
    lengths = token_counts(text_models.embedding, texts)
    model = _load(text_models.embedding, max_length=16)
    prepared = model.prepare({"text": np.array(texts, dtype=object)})
    assert prepared.counters["truncated_records"] == sum(n > 16 for n in lengths) > 0
    assert max(len(r) for r in prepared.inputs["input_ids"]) == 16
    got = model.predict_prepared(prepared.inputs)["embedding"]
    assert np.abs(got - direct_embeddings(text_models.embedding, texts, max_length=16)).max() <= TOLERANCE
    default = sluice.load_model(str(text_models.embedding))
    counted = default.prepare({"text": np.array(texts, dtype=object)}).counters["truncated_records"]
    assert counted == sum(n > MAX_LENGTH for n in lengths)


def test_padding_counters_with_and_without_bucketing(text_models: TextModels) -> None:
    texts = ["a", "a b c d e f g h", "a b", "a b c d e f g h i j k"]
    model = _load(text_models.embedding, forward_batch_size=2)
    counters = model.prepare({"text": np.array(texts, dtype=object)}).counters
    lengths = token_counts(text_models.embedding, texts)
    ordered = sorted(lengths)
    assert counters["tokens"] == sum(lengths)
    assert counters["padded_tokens"] == 2 * ordered[1] + 2 * ordered[3]
    assert counters["padded_tokens_unbucketed"] == 2 * max(lengths[:2]) + 2 * max(lengths[2:])
    assert counters["padded_tokens"] < counters["padded_tokens_unbucketed"]


def test_bytes_and_bad_utf8_records(text_models: TextModels) -> None:
    model = sluice.load_model(str(text_models.embedding))
    values = np.array([b"mi ne", "mi ne", b"\xff\xfe", 7], dtype=object)
    prepared = model.prepare({"text": values})
    assert prepared.ok.tolist() == [0, 1]
    assert prepared.failed == [
        (2, "text is not valid UTF-8: invalid start byte at byte 0"),
        (3, "expected text, found int"),
    ]
    out = model.predict_prepared(prepared.inputs)["embedding"]
    np.testing.assert_array_equal(out[0], out[1])
    with pytest.raises(PredictError, match=r"^row 2: text is not valid UTF-8"):
        model.predict_checked({"text": values})


def test_predict_batches_on_a_table(text_models: TextModels) -> None:
    texts = documents(12, seed=7)
    table = pa.table({"id": list(range(12)), "body": texts})
    model = sluice.load_model(str(text_models.embedding))
    (out,) = list(sluice.predict_batches(model, table))
    assert out.schema.names == ["embedding"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    got = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    assert np.abs(got - direct_embeddings(text_models.embedding, texts)).max() <= TOLERANCE


def test_forward_passes_and_padding_are_pure_numpy() -> None:
    lengths = np.array([5, 1, 3, 1, 4])
    passes = forward_passes(lengths, 2, bucketing=True)
    assert [p.tolist() for p in passes] == [[1, 3], [2, 4], [0]]
    assert [p.tolist() for p in forward_passes(lengths, 2, bucketing=False)] == [[0, 1], [2, 3], [4]]
    assert padding_counts(lengths, passes).padded_tokens == 2 * 1 + 2 * 4 + 5
    ids, mask = pad_rows([np.array([7, 8, 9]), np.array([4])], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
