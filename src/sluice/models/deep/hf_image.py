"""Hugging Face image classification: a local model directory as a :class:`~sluice.models.base.Model`.

The model takes one BYTES input ``image``: each row an encoded image (JPEG, PNG, WebP, or any
format Pillow reads). Over JSON, where a BYTES value must be text, a row may be the image's
base64 text instead. :meth:`HfImageClassifier.prepare` decodes each row and runs the model's own
image processor, so batch and serve preprocess exactly alike; a row that does not decode fails
alone with the decoder's reason. Outputs: ``label`` (the config's ``id2label`` name of the top
class), ``score`` (its probability) and ``probabilities`` (softmax over every class, float32).

Nothing is downloaded: every file is read from the directory (``local_files_only``). Weights are
read from ``model.safetensors`` (or its sharded index); ``pytorch_model.bin`` is a pickle, which
can run code when loaded, and is read only with ``trust_pickle``.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sluice.errors import ModelNotFound, UnsafeModelError
from sluice.models.base import Model, ModelSource, Prepared
from sluice.models.deep.device import apply_threads, compute_dtype, resolve_device
from sluice.models.signature import Signature, TensorSpec

__all__ = ["IMAGE_INPUT", "PROCESSOR_FILE", "HfImageClassifier", "decode_image", "load_image_classifier"]

IMAGE_INPUT = "image"
PROCESSOR_FILE = "preprocessor_config.json"
# rows per batch when the job leaves it to the engine (Model.preferred_batch_size)
IMAGE_BATCH_SIZE = 64
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Pillow refuses images over about 179 million pixels (a decompression bomb); so does Sluice.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def load_image_classifier(source: ModelSource, directory: Path, hf_config: dict[str, object]) -> Model:
    """Load the image classifier in ``directory`` (its ``config.json`` already read as ``hf_config``)."""
    return HfImageClassifier(source, directory, hf_config)


def _weights_file(directory: Path, trust_pickle: bool) -> bool:
    """Whether the weights are safetensors (else a trusted pickle); raises when neither may be read."""
    if any((directory / name).is_file() for name in _SAFETENSORS):
        return True
    pickles = [name for name in _PICKLES if (directory / name).is_file()]
    if pickles and trust_pickle:
        return False
    if pickles:
        raise UnsafeModelError(
            f"{directory / pickles[0]} is a pickle, and loading one runs whatever code it contains. "
            "Convert it to model.safetensors (save_pretrained does by default), or pass `trust_pickle=True` "
            "if you fully trust its source.",
            params=("trust_pickle",),
        )
    raise ModelNotFound(f"{directory} has no model weights: expected {directory / _SAFETENSORS[0]}")


def _labels(hf_config: Mapping[str, object], directory: Path) -> np.ndarray:
    id2label = hf_config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelNotFound(f"{directory / 'config.json'} has no 'id2label': the classifier's labels are unknown")
    by_id = {int(k): str(v) for k, v in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ModelNotFound(
            f"{directory / 'config.json'}: 'id2label' must name the classes 0..{len(by_id) - 1}; "
            f"found ids {sorted(by_id)}"
        )
    labels = np.empty(len(by_id), dtype=object)
    labels[:] = [by_id[i] for i in range(len(by_id))]
    return labels


def decode_image(data: object) -> Image.Image:
    """One encoded image (bytes, or its base64 text) as an RGB image; raises ``ValueError`` with the
    decoder's reason when it is not one."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected the encoded image as bytes, found {type(data).__name__}")
    raw = bytes(data)
    try:
        return _open(raw)
    except _IMAGE_ERRORS as exc:
        reason = exc
    try:
        text = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        text = b""
    if text:
        try:
            return _open(text)
        except _IMAGE_ERRORS:
            pass
    raise ValueError(f"cannot decode the image: {_reason(reason)}") from None


def _reason(exc: BaseException) -> str:
    # Pillow names the in-memory file it was given, which says nothing about the record
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)) or type(exc).__name__


def _open(raw: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.convert("RGB")


class HfImageClassifier(Model):
    """A transformers ``AutoModelForImageClassification`` with its ``AutoImageProcessor``."""

    concurrency = "threads"

    def __init__(self, source: ModelSource, directory: Path, hf_config: dict[str, object]) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        from transformers.utils import logging as hf_logging

        self.source = source
        if not (directory / PROCESSOR_FILE).is_file():
            raise ModelNotFound(f"{directory} has no image processor: expected {directory / PROCESSOR_FILE}")
        safetensors = _weights_file(directory, source.options.trust_pickle)
        self._labels = _labels(hf_config, directory)
        self.device = resolve_device(source.options)
        self._dtype = compute_dtype(source.options)
        apply_threads(source.options)
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
        self.network = AutoModelForImageClassification.from_pretrained(
            directory, local_files_only=True, use_safetensors=safetensors
        )
        # channels-last (NHWC) lets oneDNN's and cuDNN's convolutions skip their layout reorders:
        # 1.35x the images/s of the default layout for a ResNet-18 on one CPU thread
        self.network.eval().to(self.device, memory_format=torch.channels_last)
        if source.options.precision != "fp32":  # fp32 leaves the weights as saved; outputs are float32
            self.network.to(dtype=self._dtype)
        classes = len(self._labels)
        self.signature = Signature(
            inputs=(TensorSpec(IMAGE_INPUT, np.dtype(object), (-1,)),),
            outputs=(
                TensorSpec("label", np.dtype(object), (-1,)),
                TensorSpec("score", np.dtype(np.float32), (-1,)),
                TensorSpec("probabilities", np.dtype(np.float32), (-1, classes)),
            ),
        )

    @property
    def preferred_batch_size(self) -> int:
        """64 images: one batch is seconds of CPU work, and every worker gets batches to work on."""
        return IMAGE_BATCH_SIZE

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> Prepared:
        """Decode each row's image and run the image processor; rows that do not decode fail alone."""
        images: list[Image.Image] = []
        ok: list[int] = []
        failed: list[tuple[int, str]] = []
        for row, data in enumerate(np.asarray(inputs[IMAGE_INPUT]).ravel()):
            try:
                images.append(decode_image(data))
            except ValueError as exc:
                failed.append((row, str(exc)))
                continue
            ok.append(row)
        if images:
            pixels = np.asarray(self.processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
        else:
            pixels = np.zeros((0, 3, 1, 1), dtype=np.float32)
        return Prepared({"pixel_values": pixels}, np.asarray(ok, dtype=np.int64), failed)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Classify prepared images (``pixel_values``, as :meth:`prepare` returns them)."""
        pixels = torch.from_numpy(np.ascontiguousarray(inputs["pixel_values"])).to(self.device, dtype=self._dtype)
        if pixels.dim() == 4:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits: Any = self.network(pixel_values=pixels).logits
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        top = probabilities.argmax(axis=1)
        return {
            "label": self._labels[top],
            "score": probabilities[np.arange(top.shape[0]), top],
            "probabilities": probabilities,
        }

    def warm_up_inputs(self) -> dict[str, np.ndarray]:
        """One small black PNG: an empty value is no image and would fail to decode."""
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="PNG")
        image = np.empty(1, dtype=object)
        image[0] = buffer.getvalue()
        return {IMAGE_INPUT: image}
