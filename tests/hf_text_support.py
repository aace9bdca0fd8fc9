"""Small random-weight Hugging Face text models for the tests, and the direct transformers
computation their outputs are compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sluice.models.deep.make import generated_text, make_text_classifier, make_text_embedding

MAX_LENGTH = 64  # the made models' model_max_length: short, so truncation is easy to reach


@dataclass(frozen=True)
class TextModels:
    embedding: Path
    classifier: Path


def make_models(root: Path) -> TextModels:
    """A 2-layer, hidden-32 encoder and a 3-label classifier, seeded."""
    embedding = make_text_embedding(root / "embedding", max_length=MAX_LENGTH, seed=3)
    classifier = make_text_classifier(root / "classifier", labels=("red", "green", "blue"), max_length=MAX_LENGTH)
    return TextModels(embedding, classifier)


@pytest.fixture(scope="module")
def text_models(tmp_path_factory: pytest.TempPathFactory) -> TextModels:
    return make_models(tmp_path_factory.mktemp("hf-text"))


def documents(count: int, seed: int = 0, max_words: int = 30) -> list[str]:
    """Documents of varied length (1 to ``max_words`` words)."""
    return generated_text(count, seed=seed, min_words=1, max_words=max_words)


def direct_embeddings(directory: Path, texts: list[str], *, pooling: str = "mean", normalize: bool = False,
                      max_length: int = MAX_LENGTH) -> np.ndarray:  # fmt: skip
    """What a careful user computes with transformers: one padded batch, the pooling by hand."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model: Any = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch).last_hidden_state
    if pooling == "cls":
        pooled = states[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(1) / mask.sum(1)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=1)
    return np.asarray(pooled.numpy())


def direct_probabilities(directory: Path, texts: list[str], max_length: int = MAX_LENGTH) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model: Any = AutoModelForSequenceClassification.from_pretrained(str(directory), local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        return np.asarray(torch.softmax(model(**batch).logits, dim=-1).numpy())


def token_counts(directory: Path, texts: list[str]) -> list[int]:
    """Each text's length in tokens, untruncated, special tokens included."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]
