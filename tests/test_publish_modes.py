"""A published version gets the umask's permissions, so a server running as another user reads it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sluice.models import ModelConfig, ModelRepository


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(directory: Path) -> dict[str, str]:
    """``stat.filemode`` of every entry under ``directory``, by relative path."""
    return {str(p.relative_to(directory)): stat.filemode(p.stat().st_mode) for p in sorted(directory.rglob("*"))}


def test_a_published_version_is_readable_by_others(tmp_path: Path, models, umask_022: None) -> None:
    source = tmp_path / "lr.onnx"
    source.write_bytes(Path(models.onnx).read_bytes())
    source.chmod(0o600)  # the file published from need not be readable by others
    repository = ModelRepository(tmp_path / "models")
    assert repository.publish("lr", source, ModelConfig(labels={"stable": 1})) == 1
    assert _modes(tmp_path / "models") == {
        "lr": "drwxr-xr-x",
        "lr/1": "drwxr-xr-x",
        "lr/1/lr.onnx": "-rw-r--r--",
        "lr/model.yaml": "-rw-r--r--",
    }


def test_a_trained_model_is_published_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    torch = pytest.importorskip("torch")
    from sluice.train.export import publish

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    features = ["x0", "x1", "x2"]
    mean, std = np.zeros(3), np.ones(3)
    assert publish(net, features, mean, std, "regression", None, tmp_path / "models", "reg", {}) == 1
    modes = _modes(tmp_path / "models")
    assert modes == {"reg": "drwxr-xr-x", "reg/1": "drwxr-xr-x", "reg/1/model.onnx": "-rw-r--r--",
                     "reg/model.yaml": "-rw-r--r--"}  # fmt: skip
