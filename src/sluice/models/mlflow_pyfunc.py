"""MLflow's ``python_function`` flavor: any MLflow model, run by MLflow itself.

The fallback for models whose flavors Sluice does not run natively. Loading one unpickles
its files, so :func:`~sluice.models.mlflow_format.mlflow_source` hands it over only with
``trust_pickle``. The model's MLflow signature is its Sluice signature.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sluice.errors import MissingDependency, ModelLoadError, PredictError
from sluice.models.base import Model, ModelSource
from sluice.models.mlflow_format import MLMODEL, read_mlmodel

__all__ = ["PyfuncModel", "mlflow_module"]


def mlflow_module(name: str, purpose: str) -> Any:
    """Import ``name`` (``mlflow`` or one of its modules); :class:`MissingDependency` names the extra."""
    try:
        with warnings.catch_warnings():
            # importing MLflow's pyfunc warns about MLflow's own type hints: nothing a user can act on
            warnings.simplefilter("ignore", UserWarning)
            return importlib.import_module(name)
    except ImportError:
        raise MissingDependency("mlflow", "mlflow", purpose) from None


class PyfuncModel(Model):
    """An MLflow model loaded with ``mlflow.pyfunc.load_model`` and called with ``predict``.

    A column-based signature makes one 1-D input per column, handed to the model as a pandas
    DataFrame with those columns; a tensor-based one passes the array (or a dict of arrays).
    What the model returns (DataFrame, Series, array, dict) is split into the signature's
    outputs. Runs in threads, as MLflow's own scoring server calls it.
    """

    concurrency = "threads"

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        directory = Path(source.location)
        info = read_mlmodel(directory)
        if info.signature is None:
            raise ModelLoadError(
                f"MLflow model {directory} has no signature, so Sluice cannot tell which columns it takes; "
                "log it with one (mlflow.models.infer_signature) or in a flavor Sluice runs natively"
            )
        self.signature = info.signature
        self._columns = info.column_names
        pyfunc = mlflow_module("mlflow.pyfunc", f"Loading the MLflow model {directory}")
        try:
            self._model = pyfunc.load_model(str(directory))
        except Exception as exc:  # MLflow and the flavor's library raise their own types
            raise ModelLoadError(f"MLflow cannot load {directory / MLMODEL}: {exc}") from exc

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._model.predict(self._model_input(inputs))
        except Exception as exc:
            raise PredictError(f"MLflow model {self.source.display_name} failed: {exc}") from exc
        return self._outputs(result)

    def _model_input(self, inputs: Mapping[str, np.ndarray]) -> Any:
        if self._columns is not None:
            import pandas as pd

            return pd.DataFrame({name: inputs[name] for name in self._columns})
        if len(self.signature.inputs) == 1:
            return inputs[self.signature.inputs[0].name]
        return dict(inputs)

    def _outputs(self, result: Any) -> dict[str, np.ndarray]:
        names = [spec.name for spec in self.signature.outputs]
        columns = getattr(result, "columns", None)
        if isinstance(result, Mapping):
            return {str(k): np.asarray(v) for k, v in result.items()}
        if columns is not None and set(names) <= {str(c) for c in columns}:
            return {name: result[name].to_numpy() for name in names}
        values = np.asarray(result.to_numpy() if hasattr(result, "to_numpy") else result)
        if len(names) != 1:
            raise PredictError(
                f"MLflow model {self.source.display_name} returned one {type(result).__name__} but its "
                f"signature declares outputs {names}; return a DataFrame with those columns"
            )
        if values.ndim == 2 and values.shape[1] == 1 and len(self.signature.outputs[0].shape) == 1:
            values = values[:, 0]
        return {names[0]: values}
