"""The signature of a PyTorch program: read from an export program, declared in model.yaml, or defaulted.

An export program records its inputs' dtypes and shapes (a dynamic dimension is a symbol, here
``-1``); a TorchScript program records only its forward arguments' names. What model.yaml
declares must agree with what the program records; the outputs are read from warm-up calls and
checked against what model.yaml declares. A disagreement names the tensor and both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sluice.errors import ModelLoadError, PredictError
from sluice.models.config import TensorConfig
from sluice.models.signature import TensorSpec

__all__ = [
    "WARMUP_DYNAMIC_SIZES",
    "WARMUP_ROWS",
    "check_agrees",
    "config_specs",
    "export_inputs",
    "name_outputs",
    "numpy_dtype",
    "warmup_arrays",
]

_DEFAULT_DTYPE = np.dtype(np.float32)


def numpy_dtype(dtype: torch.dtype) -> np.dtype[np.generic]:
    """The numpy dtype of a torch dtype (bfloat16, which numpy lacks, is held as float32)."""
    if dtype == torch.bfloat16:
        return _DEFAULT_DTYPE
    return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)


def config_specs(tensors: Sequence[TensorConfig], where: str) -> tuple[TensorSpec, ...]:
    """Tensors declared in model.yaml as specs; an unknown dtype names the tensor."""
    specs = []
    for t in tensors:
        try:
            dtype = np.dtype(t.dtype)
        except TypeError:
            raise ModelLoadError(f"{where}: tensor '{t.name}' has unknown dtype {t.dtype!r}") from None
        if dtype.kind not in "biuf":
            raise ModelLoadError(f"{where}: tensor '{t.name}' is {t.dtype}; PyTorch programs take numeric tensors")
        specs.append(TensorSpec(t.name, dtype, tuple(t.shape)))
    return tuple(specs)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in value.shape)


def export_inputs(program: torch.export.ExportedProgram, path: Path) -> tuple[TensorSpec, ...]:
    """The user inputs an export program records; a fixed first (batch) dimension is refused."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[str(name)].meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(
                f"{path}: input '{name}' is a {type(value).__name__}; only tensor inputs are supported"
            )
        shape = _shape(value)
        if not shape or shape[0] >= 0:
            raise ModelLoadError(
                f"{path}: input '{name}' was exported with a fixed batch size (shape {list(shape)}); export it "
                f"with a dynamic first dimension, e.g. dynamic_shapes={{'{name}': {{0: torch.export.Dim('batch')}}}}"
            )
        specs.append(TensorSpec(str(name), numpy_dtype(value.dtype), shape))
    return tuple(specs)


def check_agrees(declared: Sequence[TensorSpec], found: Sequence[TensorSpec], kind: str, finder: str) -> None:
    """Every declared tensor exists in ``found`` with the same dtype and the same fixed dimensions."""
    by_name = {s.name: s for s in found}
    for spec in declared:
        other = by_name.get(spec.name)
        if other is None:
            names = ", ".join(s.name for s in found)
            raise ModelLoadError(f"{kind} '{spec.name}': model.yaml declares it but {finder} gives only {names}")
        fixed_differ = len(spec.shape) != len(other.shape) or any(
            a >= 0 and b >= 0 and a != b for a, b in zip(spec.shape, other.shape, strict=False)
        )
        if spec.dtype != other.dtype or fixed_differ:
            raise ModelLoadError(
                f"{kind} '{spec.name}': model.yaml declares {spec.describe()}, {finder} gives {other.describe()}"
            )


WARMUP_ROWS = 2
WARMUP_DYNAMIC_SIZES = (8, 5)
"""Sizes of a dynamic inner dimension in the two warm-up calls: outputs that change with it are dynamic."""


def warmup_arrays(specs: Sequence[TensorSpec], dynamic_size: int) -> dict[str, np.ndarray]:
    """Zeros of every input for a two-row call, ``dynamic_size`` long in each dynamic inner dimension."""
    return {
        s.name: np.zeros((WARMUP_ROWS, *(d if d >= 0 else dynamic_size for d in s.shape[1:])), dtype=s.dtype)
        for s in specs
    }


def name_outputs(result: object, declared: Sequence[str] | None, source: str) -> dict[str, torch.Tensor]:
    """A program's result as named tensors: ``output`` for one tensor, ``output_I`` for a tuple or
    list, the keys of a dict; names declared in model.yaml replace the first two by position."""
    if isinstance(result, torch.Tensor):
        result = (result,)
        default = ["output"]
    elif isinstance(result, (tuple, list)):
        default = [f"output_{i}" for i in range(len(result))]
    elif isinstance(result, Mapping):
        return _dict_outputs(result, declared, source)
    else:
        raise PredictError(
            f"{source} returned a {type(result).__name__}; expected a tensor, or a tuple or dict of them"
        )
    names = list(declared) if declared else default
    if len(names) != len(result):
        raise PredictError(f"{source} returned {len(result)} outputs but model.yaml declares {len(names)}: {names}")
    return {name: _tensor(value, name, source) for name, value in zip(names, result, strict=True)}


def _dict_outputs(result: Mapping[Any, Any], declared: Sequence[str] | None, source: str) -> dict[str, torch.Tensor]:
    names = list(declared) if declared else [str(k) for k in result]
    missing = [n for n in names if n not in result]
    if missing:
        raise PredictError(f"{source} returned outputs {sorted(map(str, result))}, not {missing}")
    return {name: _tensor(result[name], name, source) for name in names}


def _tensor(value: object, name: str, source: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise PredictError(f"{source} returned a {type(value).__name__} as output '{name}'; expected a tensor")
    return value
