"""``load_model``: one entry point from a reference string to a loaded :class:`Model`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sluice.errors import ModelNotFound
from sluice.models.base import Model, ModelSource
from sluice.models.config import LoadOptions, ModelConfig
from sluice.models.mlflow_format import is_mlflow_model_dir, mlflow_source
from sluice.models.mlflow_registry import MlflowRegistry, is_mlflow_uri
from sluice.models.repository import (
    DEFAULT_REPOSITORY,
    MODEL_EXTENSIONS,
    ModelRepository,
    format_for_path,
    is_callable_reference,
)

__all__ = ["default_repository", "load_model", "load_source", "model_digest", "resolve_model"]


def default_repository() -> str:
    """``$SLUICE_REPOSITORY``, else ``./models``."""
    return os.environ.get("SLUICE_REPOSITORY") or DEFAULT_REPOSITORY


def resolve_model(
    ref: str,
    repository: str | os.PathLike[str] | None = None,
    *,
    options: LoadOptions | None = None,
    config: ModelConfig | None = None,
    search_path: str | None = None,
) -> ModelSource:
    """Where ``ref`` points: a model file, an MLflow model (its directory, ``models:/…`` or ``runs:/…``),
    ``module:function``, or ``NAME[@VERSION|@LABEL]``.

    ``config`` applies to file and callable references, which have no model.yaml;
    ``search_path`` is the directory a ``module:function`` is imported from (default: the
    working directory).
    """
    options = options or LoadOptions()
    if is_mlflow_uri(ref):
        return MlflowRegistry().source(ref, config, options)
    if is_callable_reference(ref):
        return ModelSource("python", ref, config or ModelConfig(), options, search_path=search_path or os.getcwd())
    path = Path(ref)
    if path.is_dir() and is_mlflow_model_dir(path):
        return mlflow_source(path, config, options)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource("hf", str(path), config or ModelConfig(), options)
    if path.is_file():
        return ModelSource(format_for_path(path), str(path), config or ModelConfig(), options)
    if os.sep in ref or path.suffix.lower() in MODEL_EXTENSIONS:
        raise ModelNotFound(f"model file {ref} does not exist")
    return ModelRepository(repository or default_repository()).resolve(ref, options)


def load_source(source: ModelSource) -> Model:
    """Load the model a :class:`ModelSource` describes, with the adapter for its format."""
    if source.format == "onnx":
        from sluice.models.onnx import OnnxModel

        return OnnxModel(source)
    if source.format in ("sklearn", "pickle"):
        from sluice.models.sklearn import SklearnModel

        return SklearnModel(source)
    if source.format == "xgboost":
        from sluice.models.gbm import XGBoostModel

        return XGBoostModel(source)
    if source.format == "lightgbm":
        from sluice.models.gbm import LightGBMModel

        return LightGBMModel(source)
    if source.format == "mlflow":
        from sluice.models.mlflow_pyfunc import PyfuncModel

        return PyfuncModel(source)
    if source.format == "hf":
        return _load_hf(source)
    from sluice.models.python import PythonModel

    return PythonModel(source)


def _load_hf(source: ModelSource) -> Model:
    """A Hugging Face model directory, by the task its config.json names."""
    directory = Path(source.location)
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{config_path} is not a readable Hugging Face config: {exc}") from exc
    architectures = hf_config.get("architectures") or []
    if not any(str(a).endswith("ForImageClassification") for a in architectures):
        raise ModelNotFound(f"{config_path}: architectures {architectures} name no task Sluice runs")
    from sluice.models.deep.hf_image import load_image_classifier

    return load_image_classifier(source, directory, hf_config)


def load_model(
    ref: str,
    repository: str | os.PathLike[str] | None = None,
    *,
    options: LoadOptions | None = None,
    config: ModelConfig | None = None,
) -> Model:
    """Load a model by reference, e.g. ``load_model("demo@stable", repository="models")``."""
    return load_source(resolve_model(ref, repository, options=options, config=config))


def model_digest(model: Model) -> str:
    """A content hash of the model artifact (or the callable's reference)."""
    source = model.source
    digest = hashlib.sha256()
    if source.format == "python":
        digest.update(source.location.encode())
    else:
        location = Path(source.location)
        # an MLflow pyfunc model is a directory: every file in it, by relative path
        for path in sorted(p for p in location.rglob("*") if p.is_file()) if location.is_dir() else [location]:
            if path != location:
                digest.update(str(path.relative_to(location)).encode())
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    digest.update(repr(sorted(source.config.model_dump().items())).encode())
    return digest.hexdigest()[:16]
