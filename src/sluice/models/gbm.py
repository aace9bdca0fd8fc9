"""XGBoost and LightGBM adapters: gradient-boosted trees run by their own libraries, unconverted.

Both libraries predict in native code called through ctypes, which releases the GIL, and both
allow several predictions on one booster at once, so the engines run these models in threads.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from sluice.errors import BindError, MissingDependency, ModelLoadError, PredictError
from sluice.models.base import Model, ModelSource
from sluice.models.signature import BindPlan, FeatureSpec, Signature, TensorSpec

__all__ = ["BoosterInfo", "BoosterSignature", "LightGBMModel", "TreeTask", "XGBoostModel"]

TaskKind = Literal["binary", "multiclass", "class_index", "regression"]


@dataclass(frozen=True)
class TreeTask:
    """What a booster's own ``predict`` returns, as its objective defines it.

    ``binary``: the probability of class 1 per row; ``multiclass``: a probability per class;
    ``class_index``: the class itself (XGBoost's ``multi:softmax``, ``binary:hinge``);
    ``regression``: values, ``width`` per row (anything else, margins of custom objectives included).
    """

    kind: TaskKind
    width: int

    def outputs(self, dtype: np.dtype[np.generic]) -> tuple[TensorSpec, ...]:
        """The output tensors: ``label`` + ``probabilities`` for classifiers, else ``prediction``."""
        label = TensorSpec("label", np.dtype("int64"), (-1,))
        if self.kind == "class_index":
            return (label,)
        if self.kind in ("binary", "multiclass"):
            return label, TensorSpec("probabilities", dtype, (-1, self.width))
        return (TensorSpec("prediction", dtype, (-1,) if self.width == 1 else (-1, self.width)),)

    def decode(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The library's prediction as outputs; labels are what the library's classifiers predict."""
        if self.kind in ("multiclass", "regression") and self.width > 1:
            raw = raw.reshape(-1, self.width)  # LightGBM returns an empty batch's result flat
        if self.kind == "regression":
            return {"prediction": raw}
        if self.kind == "class_index":
            return {"label": raw.astype(np.int64)}
        # XGBClassifier and LGBMClassifier build [1 - p, p] and take the argmax (class 1 iff p > 0.5)
        proba = np.column_stack((1 - raw, raw)) if self.kind == "binary" else raw
        return {"label": proba.argmax(axis=1).astype(np.int64), "probabilities": proba}


@dataclass(frozen=True)
class BoosterSignature(Signature):
    """A booster's signature: its stored feature names bind columns by name.

    A column missing from the data is reported with the model file and the feature's name.
    """

    feature_names: tuple[str, ...] = ()
    origin: str = ""

    def plan(
        self,
        schema: pa.Schema,
        features: FeatureSpec = None,
        *,
        not_features: Sequence[str] = (),
        allow_nan: bool = False,
    ) -> BindPlan:
        """Bind by the booster's feature names unless ``features`` says otherwise."""
        stored = list(self.feature_names)
        if features is None and stored:
            features = stored
        if stored and not isinstance(features, Mapping) and list(features or ()) == stored:
            self._check_present(schema)
        return super().plan(schema, features, not_features=not_features, allow_nan=allow_nan)

    def _check_present(self, schema: pa.Schema) -> None:
        missing = [n for n in self.feature_names if n not in schema.names]
        if not missing:
            return
        quoted = ", ".join(f"'{n}'" for n in missing)
        noun = "feature" if len(missing) == 1 else "features"
        raise BindError(
            f"{self.origin} needs {noun} {quoted}, which the data does not have; the model was trained on "
            f"{len(self.feature_names)} named features ({_abbrev(self.feature_names)}) and the data's columns "
            f"are {schema.names}. Rename the columns, or give the model's features in its order with `features`",
            params=("features",),
        )


@dataclass(frozen=True)
class BoosterInfo:
    """What an adapter reads from a loaded booster."""

    task: TreeTask
    num_features: int
    feature_names: list[str] | None


class _BoostedTrees(Model):
    """Shared by both adapters: one 2-D ``input``, outputs from the objective."""

    concurrency = "threads"
    library: str
    input_dtype: np.dtype[np.generic]
    output_dtype: np.dtype[np.generic]

    def __init__(self, source: ModelSource) -> None:
        self.source = _missing_values_allowed(source)
        path = Path(source.location)
        if source.options.device.startswith("cuda"):
            raise ModelLoadError(
                f"{path}: {self.library} models run on the CPU in Sluice; use `device='cpu'` (or auto), "
                "or convert the model to ONNX (onnxmltools) to run it on a GPU",
                params=("device",),
            )
        info = self._load(path)
        self.task = info.task
        self.feature_names = info.feature_names
        self.signature = BoosterSignature(
            (TensorSpec("input", self.input_dtype, (-1, info.num_features)),),
            info.task.outputs(self.output_dtype),
            feature_names=tuple(info.feature_names or ()),
            origin=f"{self.library} model {path}",
        )

    @abc.abstractmethod
    def _load(self, path: Path) -> BoosterInfo:
        """Load the booster from ``path`` and say what it predicts."""

    @abc.abstractmethod
    def _raw_predict(self, x: np.ndarray) -> np.ndarray:
        """The library's own prediction for the rows of ``x``."""

    @property
    def default_features(self) -> list[str] | None:
        return self.feature_names

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            raw = self._raw_predict(inputs["input"])
        except Exception as exc:  # both libraries raise their own error types; translate at this edge
            raise PredictError(f"{self.library} failed on {self.source.display_name}: {_message(exc)}") from exc
        return self.task.decode(raw)


class XGBoostModel(_BoostedTrees):
    """An XGBoost ``Booster`` saved as JSON (``.json``) or UBJSON (``.ubj``).

    Predicts with ``Booster.inplace_predict``, which XGBoost documents as thread-safe and which
    gives the values of ``Booster.predict``. ``intra_op_threads`` sets the booster's ``nthread``.
    """

    library = "XGBoost"
    input_dtype = np.dtype("float32")  # XGBoost predicts on float32 features whatever it is given
    output_dtype = np.dtype("float32")

    def _load(self, path: Path) -> BoosterInfo:
        xgb = _library("xgboost", f"Loading the XGBoost model {path.name}")
        try:
            self.booster = xgb.Booster(model_file=str(path))
        except Exception as exc:
            raise ModelLoadError(f"XGBoost cannot load {path}: {_message(exc)}") from exc
        if self.source.options.intra_op_threads:
            self.booster.set_param({"nthread": self.source.options.intra_op_threads})
        learner = json.loads(self.booster.save_config())["learner"]
        params = learner["learner_model_param"]
        task = xgboost_task(learner["objective"]["name"], int(params["num_class"]), int(params["num_target"]))
        names = self.booster.feature_names
        return BoosterInfo(task, int(self.booster.num_features()), [str(n) for n in names] if names else None)

    def _raw_predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(x, validate_features=False))


class LightGBMModel(_BoostedTrees):
    """A LightGBM model text file (``Booster.save_model``, usually ``.txt``).

    Predicts with ``Booster.predict``, keyword arguments ``predict_params``: ``intra_op_threads``
    becomes its ``num_threads``.
    """

    library = "LightGBM"
    input_dtype = np.dtype("float64")  # LightGBM compares features with float64 split thresholds
    output_dtype = np.dtype("float64")

    def _load(self, path: Path) -> BoosterInfo:
        lgb = _library("lightgbm", f"Loading the LightGBM model {path.name}")
        try:
            self.booster = lgb.Booster(model_file=str(path))
        except Exception as exc:
            raise ModelLoadError(f"LightGBM cannot load {path}: {_message(exc)}") from exc
        threads = self.source.options.intra_op_threads
        self.predict_params: dict[str, Any] = {"num_threads": threads} if threads else {}
        header = _lightgbm_header(path)
        task = lightgbm_task(header.get("objective", ""), int(header.get("num_class", "1")))
        names = [str(n) for n in self.booster.feature_name()]
        # LightGBM names unnamed features Column_0, Column_1, …: those say nothing about the data
        unnamed = names == [f"Column_{i}" for i in range(len(names))]
        return BoosterInfo(task, int(self.booster.num_feature()), None if unnamed else names)

    def _raw_predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x, **self.predict_params))


def xgboost_task(objective: str, num_class: int, num_target: int) -> TreeTask:
    """What an XGBoost objective predicts."""
    if objective == "binary:logistic" and num_target <= 1:
        return TreeTask("binary", 2)
    if objective == "multi:softprob":
        return TreeTask("multiclass", num_class)
    if objective in ("multi:softmax", "binary:hinge"):
        return TreeTask("class_index", max(num_class, 2))
    return TreeTask("regression", num_class if num_class > 1 else max(num_target, 1))


def lightgbm_task(objective: str, num_class: int) -> TreeTask:
    """What a LightGBM objective (the model file's ``objective=`` line) predicts."""
    name = objective.split(" ")[0]
    if name == "binary":
        return TreeTask("binary", 2)
    if name in ("multiclass", "multiclassova"):
        return TreeTask("multiclass", num_class)
    return TreeTask("regression", max(num_class, 1))


def _lightgbm_header(path: Path) -> dict[str, str]:
    """The ``key=value`` lines before the first tree of a LightGBM model file."""
    header: dict[str, str] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("Tree="):
                break
            key, sep, value = line.rstrip("\r\n").partition("=")
            if sep:
                header[key] = value
    return header


def _missing_values_allowed(source: ModelSource) -> ModelSource:
    """Trees route NaN down their learned missing-value branch: NaN is valid input unless model.yaml says no."""
    if "allow_nan" in source.config.model_fields_set:
        return source
    return dataclasses.replace(source, config=source.config.model_copy(update={"allow_nan": True}))


def _library(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(module, "gbm", purpose) from None


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _message(exc: BaseException) -> str:
    """The library's own message, without XGBoost's timestamp, source location and stack trace."""
    text = str(exc).split("Stack trace:")[0].strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return _LOG_PREFIX.sub("", first)


def _abbrev(names: Sequence[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join([*names[: limit - 2], "…", names[-1]])
