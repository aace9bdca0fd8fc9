"""Plain Python models: ``module:function`` or ``module:Class`` with a ``predict`` method."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sluice.errors import ModelLoadError, PredictError
from sluice.models.base import Model, ModelSource
from sluice.models.config import TensorConfig
from sluice.models.signature import Signature, TensorSpec

__all__ = ["PythonModel", "import_callable"]

_DEFAULT_INPUTS = [TensorConfig(name="input", dtype="float64", shape=[-1, -1])]
_DEFAULT_OUTPUTS = [TensorConfig(name="prediction", dtype="float64", shape=[-1])]


class PythonModel(Model):
    """Wraps a Python callable.

    With one input, the callable receives the 2-D array (rows × features); with several,
    keyword arguments named after the inputs. It returns an array (the single output) or a
    mapping of output name to array. A class is instantiated without arguments, its
    ``setup()`` called once if it has one, and its ``predict`` used. Python code holds the
    GIL, so engines run these models in worker processes unless ``concurrency`` says
    otherwise in model.yaml.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        target = import_callable(source.location, source.search_path)
        if isinstance(target, type):
            instance = target()
            if callable(getattr(instance, "setup", None)):
                instance.setup()
            if not callable(getattr(instance, "predict", None)):
                raise ModelLoadError(f"{source.location} is a class without a predict() method")
            self._fn: Callable[..., Any] = instance.predict
        elif callable(target):
            self._fn = target
        else:
            raise ModelLoadError(f"{source.location} is a {type(target).__name__}, not a function or class")
        cfg = source.config
        self.signature = Signature(
            tuple(_spec(t) for t in (cfg.inputs or _DEFAULT_INPUTS)),
            tuple(_spec(t) for t in (cfg.outputs or _DEFAULT_OUTPUTS)),
        )
        self.concurrency = cfg.concurrency or "processes"

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if len(self.signature.inputs) == 1:
                result = self._fn(inputs[self.signature.inputs[0].name])
            else:
                result = self._fn(**inputs)
        except Exception as exc:
            raise PredictError(f"{self.source.location} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Mapping):
            declared = {s.name for s in self.signature.outputs}
            if not declared.issubset(result):
                raise PredictError(
                    f"{self.source.location} returned outputs {sorted(map(str, result))} but the model "
                    f"declares {sorted(declared)}; declare its outputs under 'outputs:' in model.yaml"
                )
            return {str(k): np.asarray(v) for k, v in result.items()}
        if len(self.signature.outputs) != 1:
            names = [s.name for s in self.signature.outputs]
            raise PredictError(
                f"{self.source.location} returned one array but the model declares outputs {names}; "
                "return a mapping of output name to array"
            )
        return {self.signature.outputs[0].name: np.asarray(result)}


def _spec(t: TensorConfig) -> TensorSpec:
    try:
        dtype = np.dtype(t.dtype)
    except TypeError:
        raise ModelLoadError(f"tensor '{t.name}': unknown dtype {t.dtype!r}") from None
    return TensorSpec(t.name, dtype, tuple(t.shape))


def import_callable(reference: str, search_path: str | None = None) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted), looking in ``search_path`` first."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(f"{reference!r} is not of the form 'module:function' or 'module:Class'")
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        obj: Any = _version_module(module_name, search_path) or importlib.import_module(module_name)
    except ImportError as exc:
        place = f" from {search_path} (or the Python path)" if search_path else ""
        raise ModelLoadError(f"cannot import module '{module_name}' for model {reference}{place}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelLoadError(f"module '{module_name}' has no attribute '{attr}'") from None
    return obj


def _version_module(module_name: str, search_path: str | None) -> ModuleType | None:
    # a module file in a version directory is that version's own code: imported under a name
    # unique to its path and contents, so versions (and a hot-reloaded version) never share
    # one cached module of the same name
    if not search_path or "." in module_name:
        return None
    path = Path(search_path) / f"{module_name}.py"
    if not path.is_file():
        return None
    digest = hashlib.blake2b(str(path.resolve()).encode() + path.read_bytes(), digest_size=8).hexdigest()
    unique = f"_sluice_version_{module_name}_{digest}"
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[unique]
        raise
    return module
