"""Hugging Face image classification: outputs equal transformers' own computation, images that do
not decode fail alone with the decoder's reason, unsafe or incomplete directories are refused."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sluice
from image_support import BAD, GOOD, LABELS, ImageKit, expected, image_kit, object_array, read_bytes
from sluice.errors import ModelLoadError, ModelNotFound, PredictError, UnsafeModelError
from sluice.models.config import LoadOptions
from support import SRC_ROOT

__all__ = ["image_kit"]


def test_outputs_equal_transformers(image_kit: ImageKit) -> None:
    model = sluice.load_model(str(image_kit.model))
    images = read_bytes(image_kit.images, GOOD)
    assert model.signature.describe() == (
        "inputs: image: object[?] -> outputs: label: object[?]; score: float32[?]; probabilities: float32[?, 3]"
    )
    got = model.predict_checked({"image": object_array(images)})
    want = expected(image_kit.model, images)
    assert got["label"].tolist() == want["label"].tolist()
    assert len(set(want["label"].tolist())) > 1  # the labels differ across images: a real check
    assert set(got["label"].tolist()) <= set(LABELS)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-4, rtol=0)
    assert got["probabilities"].dtype == np.float32


def test_bad_images_fail_alone_with_the_decoders_reason(image_kit: ImageKit) -> None:
    model = sluice.load_model(str(image_kit.model))
    names = [GOOD[0], BAD[0], GOOD[1], BAD[1], GOOD[2]]
    raw = [*read_bytes(image_kit.images, names), b""]
    prepared = model.prepare({"image": object_array(raw)})
    assert prepared.ok.tolist() == [0, 2, 4]
    assert prepared.failed == [
        (1, "cannot decode the image: image file is truncated (0 bytes not processed)"),
        (3, "cannot decode the image: cannot identify image file"),
        (5, "cannot decode the image: cannot identify image file"),
    ]
    outputs = model.predict_prepared(prepared.inputs)
    want = expected(image_kit.model, read_bytes(image_kit.images, GOOD[:3]))
    np.testing.assert_allclose(outputs["probabilities"], want["probabilities"], atol=1e-4, rtol=0)
    with pytest.raises(
        PredictError, match=r"^row 1: cannot decode the image: image file is truncated \(0 bytes not processed\)$"
    ):
        model.predict_checked({"image": object_array(raw)})


def test_base64_text_is_an_image_too(image_kit: ImageKit) -> None:
    """Over JSON a BYTES value is text: an image arrives as its base64 encoding."""
    model = sluice.load_model(str(image_kit.model))
    data = read_bytes(image_kit.images, GOOD[:2])
    as_text = [base64.b64encode(data[0]), base64.b64encode(data[1]).decode()]
    got = model.predict_checked({"image": object_array(as_text)})
    np.testing.assert_allclose(got["probabilities"], expected(image_kit.model, data)["probabilities"], atol=1e-4)


def test_a_pickle_needs_trust(image_kit: ImageKit, tmp_path: Path) -> None:
    import torch

    directory = tmp_path / "pickled"
    shutil.copytree(image_kit.model, directory)
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(
        UnsafeModelError, match=r"pytorch_model\.bin is a pickle, and loading one runs whatever code it contains"
    ):
        sluice.load_model(str(directory))
    trusted = sluice.load_model(str(directory), options=LoadOptions(trust_pickle=True))
    images = read_bytes(image_kit.images, GOOD[:4])
    got = trusted.predict_checked({"image": object_array(images)})
    np.testing.assert_allclose(got["probabilities"], expected(image_kit.model, images)["probabilities"], atol=1e-4)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("preprocessor_config.json", "has no image processor: expected {d}/preprocessor_config.json"),
        ("model.safetensors", "has no model weights: expected {d}/model.safetensors"),
    ],
)
def test_a_missing_file_is_named(image_kit: ImageKit, tmp_path: Path, missing: str, message: str) -> None:
    directory = tmp_path / "partial"
    shutil.copytree(image_kit.model, directory)
    (directory / missing).unlink()
    with pytest.raises(ModelNotFound) as caught:
        sluice.load_model(str(directory))
    assert str(caught.value) == f"{directory} " + message.format(d=directory)


def test_labels_come_from_id2label(image_kit: ImageKit, tmp_path: Path) -> None:
    directory = tmp_path / "renamed"
    shutil.copytree(image_kit.model, directory)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {"0": "zero", "1": "one", "2": "two"}
    (directory / "config.json").write_text(json.dumps(config))
    images = read_bytes(image_kit.images, GOOD)
    got = sluice.load_model(str(directory)).predict_checked({"image": object_array(images)})
    names = dict(zip(LABELS, ("zero", "one", "two"), strict=True))
    assert got["label"].tolist() == [names[label] for label in expected(image_kit.model, images)["label"]]


def test_make_command_is_seeded(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(SRC_ROOT)}
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, "-m", "sluice.models.deep.make", "images", str(tmp_path / name), "--count", "3",
             "--corrupt", "1", "--image-size", "16"],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        assert done.stdout == f"wrote 4 files to {tmp_path / name}\n"
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["bad-000.jpg", "img-000000.jpg", "img-000001.jpg", "img-000002.jpg"]
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_images(image_kit: ImageKit, fmt: str) -> None:
    import io

    from PIL import Image

    encoded = []
    for data in read_bytes(image_kit.images, GOOD[:3]):
        buffer = io.BytesIO()
        with Image.open(io.BytesIO(data)) as image:
            image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        encoded.append(buffer.getvalue())
    got = sluice.load_model(str(image_kit.model)).predict_checked({"image": object_array(encoded)})
    np.testing.assert_allclose(got["probabilities"], expected(image_kit.model, encoded)["probabilities"], atol=1e-4)


def test_a_gpu_asked_for_where_there_is_none_is_named(image_kit: ImageKit) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError) as info:
        sluice.load_model(str(image_kit.model), options=LoadOptions(device="cuda"))
    why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "it finds no CUDA GPU"
    assert str(info.value) == (
        f"device 'cuda' was requested but PyTorch cannot use a GPU here ({why}); use `device='cpu'` or `device='auto'`"
    )
