"""The embedded demo: a synthetic tabular data set and a small classifier exported to ONNX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.errors import MissingDependency
from sluice.models.config import ModelConfig
from sluice.models.repository import ModelRepository

__all__ = ["DemoPaths", "feature_names", "make_demo_data", "make_demo_model", "make_labelled_data", "prepare_demo"]

SEED = 20261129
FEATURES = 32


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo puts its data set, its model repository, its predictions and its training set."""

    data: Path
    repository: Path
    output: Path
    training: Path | None = None


def feature_names(count: int = FEATURES) -> list[str]:
    return [f"f{i}" for i in range(count)]


def _weights(features: int) -> np.ndarray:
    return np.random.default_rng(SEED).normal(size=features).astype(np.float32)


def make_demo_data(directory: Path, rows: int = 1_000_000, files: int = 8, features: int = FEATURES) -> list[Path]:
    """Write ``rows`` rows (``id`` plus ``features`` float32 columns) as ``files`` Parquet files.

    Deterministic: the same arguments always produce the same values. Existing files are kept.
    """
    return _write_parts(directory, "demo", rows, files, features, seed=0, row_group_size=1 << 16)


def make_labelled_data(
    directory: Path, rows: int = 20_000, files: int = 2, features: int = FEATURES, target: str = "churned"
) -> list[Path]:
    """Write a training set: ``id``, the demo's ``features`` and a 0/1 ``target`` column, as ``files`` Parquet files.

    The target follows the demo model's hidden weights with noise, so a model trained on it has
    something to learn (accuracy around 0.9). Deterministic; existing files are kept.
    """

    def label(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        noisy: np.ndarray = x @ _weights(features) + rng.normal(scale=2.0, size=len(x))
        return (noisy > 0).astype(np.int64)

    return _write_parts(directory, "train", rows, files, features, seed=500, label=(target, label))


def _write_parts(
    directory: Path,
    stem: str,
    rows: int,
    files: int,
    features: int,
    *,
    seed: int,
    label: tuple[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] | None = None,
    row_group_size: int | None = None,
) -> list[Path]:
    """``files`` Parquet files ``STEM-NN.parquet`` of ``id`` and float32 features (and a label
    column); file ``i`` draws from seed ``[SEED, seed + i]``. Existing files are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    per_file = -(-rows // files)
    names = ["id", *feature_names(features)]
    for i in range(files):
        path = directory / f"{stem}-{i:02d}.parquet"
        paths.append(path)
        start = i * per_file
        count = max(0, min(per_file, rows - start))
        if path.exists():
            continue
        rng = np.random.default_rng([SEED, seed + i])
        x = rng.normal(size=(count, features)).astype(np.float32)
        columns = [pa.array(np.arange(start, start + count, dtype=np.int64))]
        columns += [pa.array(x[:, j]) for j in range(features)]
        if label is not None:
            columns.append(pa.array(label[1](rng, x)))
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(
            pa.table(columns, names=names + ([label[0]] if label else [])), tmp, row_group_size=row_group_size
        )
        tmp.replace(path)
    return paths


def make_demo_model(repository: Path, name: str = "demo", features: int = FEATURES, sample: int = 20_000) -> int:
    """Train a logistic regression on synthetic rows, export it to ONNX and publish it.

    Returns the published version; an existing model of that name is left as it is.
    """
    repo = ModelRepository(repository)
    if repo.versions(name):
        return repo.versions(name)[-1]
    try:
        from skl2onnx import to_onnx
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise MissingDependency(exc.name or "scikit-learn", "sklearn", "The demo model") from None
    rng = np.random.default_rng([SEED, 999])
    x = rng.normal(size=(sample, features)).astype(np.float32)
    logits = x @ _weights(features) + rng.normal(scale=4.0, size=sample)  # overlapping classes
    y = (logits > 0).astype(np.int64)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    staging = repository / f".{name}-build"
    staging.mkdir(parents=True, exist_ok=True)
    artifact = staging / "model.onnx"
    artifact.write_bytes(onx.SerializeToString())
    config = ModelConfig(
        features=feature_names(features),
        labels={"stable": 1},
        description="Logistic regression over 32 synthetic features (sluice demo).",
    )
    version = repo.publish(name, artifact, config)
    artifact.unlink()
    staging.rmdir()
    return version


def prepare_demo(root: Path, rows: int = 1_000_000, files: int = 8, with_target: bool = False) -> DemoPaths:
    """Create (if missing) the demo data and model under ``root``; with ``with_target`` also the
    labelled training set ``demo-train/`` (``id``, the features and a 0/1 ``churned`` column)."""
    paths = DemoPaths(
        root / "demo-data", root / "models", root / "demo-output", root / "demo-train" if with_target else None
    )
    make_demo_data(paths.data, rows=rows, files=files)
    make_demo_model(paths.repository)
    if paths.training is not None:
        make_labelled_data(paths.training)
    return paths
