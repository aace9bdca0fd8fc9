"""Image fixtures: a random-weight Hugging Face image classifier and generated JPEGs, made
locally, and the direct transformers computation the tests compare Sluice's outputs with."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

LABELS = ("cat", "dog", "bird")


@dataclass(frozen=True)
class ImageKit:
    model: Path  # a tiny ResNet classifier directory: config.json, model.safetensors, preprocessor_config.json
    images: Path  # img-000000.jpg … img-000011.jpg, bad-000.jpg (truncated JPEG), bad-001.jpg (text)


GOOD = [f"img-{i:06d}.jpg" for i in range(12)]
BAD = ["bad-000.jpg", "bad-001.jpg"]


@pytest.fixture(scope="session")
def image_kit(tmp_path_factory: pytest.TempPathFactory) -> ImageKit:
    from sluice.models.deep.make_image import make_image_classifier, write_images

    root = tmp_path_factory.mktemp("images")
    model = make_image_classifier(root / "model", labels=LABELS)
    write_images(root / "images", len(GOOD), corrupt=len(BAD), size=40)
    return ImageKit(model, root / "images")


def expected(model_dir: Path, images: Sequence[bytes]) -> dict[str, np.ndarray]:
    """label, score and probabilities as a transformers user computes them, straight from the directory."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    network = AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    with torch.inference_mode():
        logits = network(**processor(images=decoded, return_tensors="pt")).logits
    probabilities = torch.softmax(logits, dim=-1).numpy()
    top = probabilities.argmax(axis=1)
    labels = np.array([network.config.id2label[int(i)] for i in top], dtype=object)
    return {"label": labels, "score": probabilities[np.arange(len(top)), top], "probabilities": probabilities}


def read_bytes(directory: Path, names: Sequence[str]) -> list[bytes]:
    return [(directory / name).read_bytes() for name in names]


def object_array(values: Sequence[object]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out
