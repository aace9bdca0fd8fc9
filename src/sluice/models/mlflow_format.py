"""MLflow model directories (an ``MLmodel`` file beside the artifacts): the flavor Sluice runs.

An MLflow model lists the *flavors* it can be loaded as. :func:`mlflow_source` picks the one
Sluice runs natively: ``onnx`` (ONNX Runtime), ``xgboost`` and ``lightgbm`` boosters (their own
libraries), ``sklearn`` (the scikit-learn adapter: a skops file as it is, a pickle only with
``trust_pickle``), and falls back to ``python_function`` (:class:`~sluice.models.mlflow_pyfunc.PyfuncModel`),
which unpickles and so needs ``trust_pickle`` too. The MLmodel file is read here without MLflow;
only the ``python_function`` fallback imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sluice.errors import ModelLoadError, ModelNotFound, UnsafeModelError
from sluice.models.base import ModelSource
from sluice.models.config import LoadOptions, ModelConfig, ModelFormat
from sluice.models.signature import Signature, TensorSpec

__all__ = [
    "MLMODEL",
    "MlflowModelInfo",
    "is_mlflow_model_dir",
    "mlflow_signature",
    "mlflow_source",
    "read_mlmodel",
]

MLMODEL = "MLmodel"
"""The file that makes a directory an MLflow model."""

# MLflow's column types (mlflow.types.DataType) as the dtypes Sluice binds columns to
_COLUMN_TYPES = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "object",
    "binary": "object",
    "datetime": "datetime64[ns]",
}
_SKOPS = "skops"


@dataclass(frozen=True)
class MlflowModelInfo:
    """What an ``MLmodel`` file says: its flavors (name → settings) and its signature, if any."""

    directory: Path
    flavors: Mapping[str, Mapping[str, Any]]
    signature: Signature | None

    @property
    def column_names(self) -> list[str] | None:
        """The input column names of a column-based signature (None for tensors or none)."""
        if self.signature is None or not all(s.shape == (-1,) for s in self.signature.inputs):
            return None
        return [s.name for s in self.signature.inputs]


def is_mlflow_model_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding an ``MLmodel`` file."""
    return (path / MLMODEL).is_file()


def read_mlmodel(directory: Path) -> MlflowModelInfo:
    """Parse ``directory/MLmodel``; :class:`ModelLoadError` names the file when it is malformed."""
    path = directory / MLMODEL
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelNotFound(f"cannot read MLflow model file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict) or not data["flavors"]:
        raise ModelLoadError(f"{path} lists no flavors; expected a 'flavors:' mapping as MLflow writes it")
    signature = data.get("signature")
    return MlflowModelInfo(directory, data["flavors"], mlflow_signature(signature, path) if signature else None)


def mlflow_signature(signature: Mapping[str, Any], origin: Path | str = "the MLmodel file") -> Signature:
    """An MLflow signature (``inputs``/``outputs`` as MLflow stores them: JSON text) as a Sluice Signature.

    A column-based schema becomes one 1-D tensor per column, named after it; a tensor-based one
    keeps its tensors (an unnamed one is ``input``, or ``prediction`` as the output). Without
    an output schema the model returns one float64 ``prediction``.
    """
    inputs = _specs(signature.get("inputs"), "input", origin)
    if not inputs:
        raise ModelLoadError(f"{origin}: the signature has no inputs")
    outputs = _specs(signature.get("outputs"), "prediction", origin) or (
        TensorSpec("prediction", np.dtype("float64"), (-1,)),
    )
    return Signature(inputs, outputs)


def _specs(schema: object, default_name: str, origin: Path | str) -> tuple[TensorSpec, ...]:
    if schema is None:
        return ()
    try:
        entries = json.loads(schema) if isinstance(schema, str) else schema
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{origin}: the signature is not the JSON MLflow writes: {exc}") from exc
    if not isinstance(entries, list):
        raise ModelLoadError(f"{origin}: expected the signature's schema as a list, found {type(entries).__name__}")
    specs = [
        _spec(entry, default_name if len(entries) == 1 else f"{default_name}_{i}", origin)
        for i, entry in enumerate(entries)
    ]
    return tuple(specs)


def _spec(entry: Mapping[str, Any], default_name: str, origin: Path | str) -> TensorSpec:
    name = str(entry.get("name") or default_name)
    kind = entry.get("type")
    if kind == "tensor":
        tensor = entry.get("tensor-spec") or {}
        shape = tuple(int(d) for d in tensor.get("shape") or (-1,))
        return TensorSpec(name, np.dtype(tensor.get("dtype", "float64")), shape)
    if kind not in _COLUMN_TYPES:
        known = ", ".join([*_COLUMN_TYPES, "tensor"])
        raise ModelLoadError(
            f"{origin}: signature column '{name}' has MLflow type {kind!r}, which Sluice cannot bind; "
            f"supported types: {known}"
        )
    return TensorSpec(name, np.dtype(_COLUMN_TYPES[kind]), (-1,))


def mlflow_source(
    directory: Path,
    config: ModelConfig | None = None,
    options: LoadOptions | None = None,
    name: str | None = None,
    version: int | None = None,
) -> ModelSource:
    """The :class:`ModelSource` for the MLflow model in ``directory``: its natively run flavor, else pyfunc.

    The signature's column names become the model's features unless ``config`` names some.
    """
    info = read_mlmodel(directory)
    config = config or ModelConfig()
    options = options or LoadOptions()
    fmt, location, flavor = _native(info) or ("mlflow", str(directory), "python_function")
    if fmt == "mlflow" and "python_function" not in info.flavors:
        raise ModelLoadError(
            f"{directory / MLMODEL}: none of its flavors ({', '.join(sorted(info.flavors))}) is one Sluice runs; "
            "it runs onnx, xgboost, lightgbm, sklearn and python_function"
        )
    if fmt in ("pickle", "mlflow") and not options.trust_pickle:
        raise UnsafeModelError(
            f"MLflow model {directory}: its '{flavor}' flavor is loaded by unpickling, which runs whatever code "
            "the files contain. Pass `trust_pickle=True` if you trust where the model comes from, or log it "
            "in a flavor that loads without code (onnx, xgboost, lightgbm, or sklearn with "
            "serialization_format='skops')",
            params=("trust_pickle",),
        )
    if config.features is None and info.column_names and fmt != "mlflow":
        config = config.model_copy(update={"features": info.column_names})
    return ModelSource(fmt, location, config, options, name, version)


def _native(info: MlflowModelInfo) -> tuple[ModelFormat, str, str] | None:
    """``(format, artifact, flavor)`` of the first flavor Sluice runs itself, or None."""
    flavors = info.flavors
    if "onnx" in flavors:
        return "onnx", _artifact(info, "onnx", "data"), "onnx"
    if "xgboost" in flavors:
        return "xgboost", _artifact(info, "xgboost", "data"), "xgboost"
    if "lightgbm" in flavors:
        lgb = flavors["lightgbm"]
        if lgb.get("model_class", "lightgbm.basic.Booster") == "lightgbm.basic.Booster":
            return "lightgbm", _artifact(info, "lightgbm", "data"), "lightgbm"
        return _sklearn_format(lgb), _artifact(info, "lightgbm", "data"), "lightgbm"
    if "sklearn" in flavors:
        return _sklearn_format(flavors["sklearn"]), _artifact(info, "sklearn", "pickled_model"), "sklearn"
    return None


def _sklearn_format(flavor: Mapping[str, Any]) -> ModelFormat:
    # MLflow writes skops files unless asked for (cloud)pickle; older models carry no setting
    return "sklearn" if flavor.get("serialization_format") == _SKOPS else "pickle"


def _artifact(info: MlflowModelInfo, flavor: str, key: str) -> str:
    relative = info.flavors[flavor].get(key)
    if not isinstance(relative, str) or not relative:
        raise ModelLoadError(f"{info.directory / MLMODEL}: flavor '{flavor}' names no '{key}' file")
    path = (info.directory / relative).resolve()
    if info.directory.resolve() not in path.parents:
        raise ModelLoadError(f"{info.directory / MLMODEL}: flavor '{flavor}' names {relative}, outside the model")
    if not path.is_file():
        raise ModelNotFound(f"MLflow model {info.directory}: flavor '{flavor}' file {path} does not exist")
    return str(path)
