"""scikit-learn adapter: skops files by default, pickle/joblib only when explicitly trusted."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sluice.errors import MissingDependency, ModelLoadError, PredictError, UnsafeModelError
from sluice.models.base import Model, ModelSource
from sluice.models.signature import Signature, TensorSpec

__all__ = ["SklearnModel"]


class SklearnModel(Model):
    """A fitted scikit-learn estimator (or pipeline) with one 2-D input named ``input``.

    Classifiers return ``label`` and, when they can, ``probabilities`` (rows × classes);
    other estimators return ``prediction``. ``feature_names_in_`` (set when the estimator
    was fitted on named columns) becomes the default feature list.
    """

    concurrency = "threads"

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        path = Path(source.location)
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        self.estimator = _load_skops(path, source) if source.format == "sklearn" else _load_pickle(path, source)
        if not hasattr(self.estimator, "predict"):
            raise ModelLoadError(f"{path} holds a {type(self.estimator).__name__}, which has no predict()")
        width = int(getattr(self.estimator, "n_features_in_", -1))
        names = getattr(self.estimator, "feature_names_in_", None)
        self.feature_names = [str(n) for n in names] if names is not None else None
        self._proba = _has_proba(self.estimator)
        self._frame = _named_frame(self.feature_names) if self.feature_names else (lambda x: x)
        outputs: tuple[TensorSpec, ...]
        if hasattr(self.estimator, "classes_"):
            classes = np.asarray(self.estimator.classes_)
            label = TensorSpec("label", classes.dtype if classes.dtype.kind != "U" else np.dtype(object), (-1,))
            outputs = (label,)
            if self._proba:
                outputs += (TensorSpec("probabilities", np.dtype("float64"), (-1, len(classes))),)
        else:
            outputs = (TensorSpec("prediction", np.dtype("float64"), (-1,)),)
        self.signature = Signature((TensorSpec("input", np.dtype("float64"), (-1, width)),), outputs)

    @property
    def default_features(self) -> list[str] | None:
        return self.feature_names

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self._frame(inputs["input"])
        try:
            if self._proba:
                proba = np.asarray(self.estimator.predict_proba(x))
                classes = np.asarray(self.estimator.classes_)
                return {"label": classes[proba.argmax(axis=1)], "probabilities": proba}
            out = np.asarray(self.estimator.predict(x))
        except Exception as exc:
            raise PredictError(f"{type(self.estimator).__name__}.predict failed: {exc}") from exc
        name = self.signature.outputs[0].name
        return {name: out}


def _named_frame(names: list[str]) -> Callable[[np.ndarray], Any]:
    """Estimators fitted on named columns want them back (else scikit-learn warns per call)."""
    try:
        import pandas as pd
    except ImportError:
        return lambda x: x
    return lambda x: pd.DataFrame(x, columns=names, copy=False)


def _has_proba(estimator: Any) -> bool:
    try:
        return hasattr(estimator, "classes_") and callable(estimator.predict_proba)
    except AttributeError:  # e.g. SVC(probability=False) raises on attribute access
        return False


def _load_skops(path: Path, source: ModelSource) -> Any:
    try:
        import skops.io as sio
    except ImportError:
        raise MissingDependency("skops", "sklearn", f"Loading the scikit-learn model {path.name}") from None
    trusted = [*source.config.trusted_types, *source.options.trusted_types]
    try:
        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in trusted]
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable skops file: {exc}") from exc
    if untrusted:
        raise UnsafeModelError(
            f"{path} contains types that skops does not trust by default: {', '.join(untrusted)}. "
            "Review them; if you trust this file, list them under 'trusted_types' in model.yaml "
            "or pass `trusted_types` for each.",
            params=("trusted_types",),
        )
    return sio.load(path, trusted=trusted or None)


def _load_pickle(path: Path, source: ModelSource) -> Any:
    if not source.options.trust_pickle:
        raise UnsafeModelError(
            f"{path} is a pickle/joblib file, and loading one runs whatever code it contains. "
            "Save the model with skops (skops.io.dump) instead, or pass `trust_pickle=True` if you "
            "created this file yourself or fully trust its source.",
            params=("trust_pickle",),
        )
    try:
        try:
            import joblib
        except ImportError:
            with path.open("rb") as fh:
                return pickle.load(fh)  # noqa: S301 - the user passed trust_pickle=True
        return joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot unpickle {path}: {exc}") from exc
