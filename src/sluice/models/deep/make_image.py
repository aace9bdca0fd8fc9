"""Random-weight image classifiers in Hugging Face format, and directories of generated images.

Both are made here, never downloaded, for tests, examples and benchmarks. The classifier is a
ResNet (transformers' ``ResNetForImageClassification``) with seeded random weights, saved as
``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``; ``tiny`` (the default)
loads and predicts in milliseconds, ``resnet18`` has ResNet-18's layers and 224x224 inputs.
The images are seeded random JPEGs (smooth colour fields with noise, so they compress like
photographs rather than like static), optionally with a few corrupt files among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = ["IMAGE_SIZES", "ImageModelSize", "make_image_classifier", "write_images"]

ImageModelSize = Literal["tiny", "resnet18"]


@dataclass(frozen=True)
class _Shape:
    embedding_size: int
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    image_size: int


IMAGE_SIZES: dict[str, _Shape] = {
    "tiny": _Shape(8, (8, 16), (1, 1), 32),
    "resnet18": _Shape(64, (64, 128, 256, 512), (2, 2, 2, 2), 224),
}
DEFAULT_LABELS = ("cat", "dog", "bird")


def make_image_classifier(
    directory: str | Path,
    *,
    size: ImageModelSize = "tiny",
    labels: Sequence[str] = DEFAULT_LABELS,
    image_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a seeded random-weight ResNet image classifier in ``directory`` and return the directory.

    ``labels`` become ``id2label``; ``image_size`` (default: the size's own) is the side of the
    square the image processor resizes every image to.
    """
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    shape = IMAGE_SIZES[size]
    side = image_size or shape.image_size
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config: Any = ResNetConfig(  # type: ignore[call-arg]
        num_channels=3,
        embedding_size=shape.embedding_size,
        hidden_sizes=list(shape.hidden_sizes),
        depths=list(shape.depths),
        layer_type="basic",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model: Any = ResNetForImageClassification(config)
    model.eval()
    _spread_logits(model, side, seed)
    model.save_pretrained(out)
    processor = ViTImageProcessorPil(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(out)
    return out


def _spread_logits(model: object, side: int, seed: int) -> None:
    """A random head orthogonal to the mean feature of generated images: the features of a
    random network share a large common part, which would give every image the same class."""
    import torch

    network: Any = model
    rng = np.random.default_rng(seed + 1)
    images = np.stack([np.asarray(_random_image(rng, side), dtype=np.float32) for _ in range(16)])
    pixels = torch.from_numpy((images / 127.5 - 1.0).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        features = network.resnet(pixel_values=pixels).pooler_output.flatten(1)
        mean = features.mean(dim=0)
        head = network.classifier[-1]
        weight = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed + 1))
        weight -= (weight @ mean)[:, None] * mean[None, :] / mean.dot(mean).clamp_min(1e-12)
        spread = (features - mean) @ weight.T
        head.weight.copy_(weight * 4.0 / spread.std().clamp_min(1e-12))
        head.bias.zero_()


def write_images(
    directory: str | Path,
    count: int,
    *,
    size: int = 32,
    corrupt: int = 0,
    seed: int = 0,
    quality: int = 90,
) -> list[Path]:
    """Write ``count`` seeded random JPEGs ``img-000000.jpg``... of ``size`` x ``size`` pixels, then
    ``corrupt`` files that are not decodable images (``bad-000.jpg``...: a truncated JPEG, then
    text); returns every path written, in name order."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = out / f"img-{i:06d}.jpg"
        _random_image(rng, size).save(path, format="JPEG", quality=quality)
        paths.append(path)
    for i in range(corrupt):
        path = out / f"bad-{i:03d}.jpg"
        if i % 2 == 0:
            _random_image(rng, size).save(path, format="JPEG", quality=quality)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])  # the header survives, half the image data does not
        else:
            path.write_bytes(b"this is not an image\n")
        paths.append(path)
    return sorted(paths)


def _random_image(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
    return Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8))
