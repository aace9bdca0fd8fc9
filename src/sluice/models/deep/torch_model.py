"""PyTorch adapter: TorchScript (``torch.jit.save``, ``.pt``) and ``torch.export`` (``.pt2``) programs.

Neither is unpickled as arbitrary Python objects: TorchScript archives are read by PyTorch's
TorchScript loader, export archives by ``torch.export.load`` once no part of them needs a full
unpickle. A ``torch.save`` file (a pickled ``nn.Module`` or state dict) is refused unless the
user trusts pickles, because loading it runs whatever code it names.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sluice.errors import ModelLoadError, PredictError, UnsafeModelError
from sluice.models.base import Model, ModelSource
from sluice.models.deep.device import HostToDevice, apply_threads, compute_dtype, resolve_device
from sluice.models.deep.torch_archive import archive_kind, export_pickled_parts, pickled_classes
from sluice.models.deep.torch_signature import (
    WARMUP_DYNAMIC_SIZES,
    WARMUP_ROWS,
    check_agrees,
    config_specs,
    export_inputs,
    name_outputs,
    warmup_arrays,
)
from sluice.models.signature import Signature, TensorSpec

__all__ = ["TorchModel"]


class TorchModel(Model):
    """A PyTorch program run in ``torch.inference_mode`` on the device and in the precision the
    load options name.

    Inputs arrive in their declared dtypes; with ``fp16``/``bf16`` the floating ones are cast on
    the device and floating outputs come back as float32. PyTorch releases the GIL while it
    computes, so several threads may call :meth:`predict` at once.
    """

    concurrency = "threads"

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        options = source.options
        self.device = resolve_device(options)
        self._dtype = compute_dtype(options)
        apply_threads(options)
        path = Path(source.location)
        program, found = _load_program(path, source)
        self._program: Callable[..., Any] = _placed(program, self.device, self._dtype)
        where = f"model {source.display_name}"
        inputs = _input_specs(source, found, program, where)
        declared_outputs = config_specs(source.config.outputs, where) if source.config.outputs else None
        self._input_names = [s.name for s in inputs]
        self._output_names = [s.name for s in declared_outputs] if declared_outputs else None
        self._to_device = HostToDevice(self.device)
        self.signature = Signature(inputs, declared_outputs or ())
        found_outputs = self._warm_up(inputs)
        if declared_outputs:
            check_agrees(declared_outputs, found_outputs, "output", "the warm-up call")
        else:
            self.signature = Signature(inputs, found_outputs)
            self._output_names = [s.name for s in found_outputs]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [self._as_compute(t) for t in self._to_device([inputs[n] for n in self._input_names])]
        where = f"model {self.source.display_name}"
        try:
            with torch.inference_mode():
                result = self._program(*tensors)
        except torch.OutOfMemoryError:
            raise  # the engines' out-of-memory back-off handles it
        except Exception as exc:  # a program raises whatever its ops raise; translate at this edge
            raise PredictError(f"{where} failed: {_reason(exc)}") from exc
        named = name_outputs(result, self._output_names, where)
        return {name: self._to_host(value) for name, value in named.items()}

    def close(self) -> None:
        """Drop the program, and on a GPU hand its cached memory back (a version being unloaded)."""
        self._program = _closed(f"model {self.source.display_name}")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _as_compute(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point() and self._dtype != torch.float32:
            return tensor.to(self._dtype)
        return tensor

    def _to_host(self, tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.detach()
        if tensor.dtype in (torch.float16, torch.bfloat16) and self._dtype != torch.float32:
            tensor = tensor.float()
        return tensor.cpu().numpy()

    def _warm_up(self, inputs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        """Call the program on two rows of zeros; the specs of what it returned.

        When an input has a dynamic inner dimension (a sequence length) a second call with
        another size tells the outputs' dynamic dimensions from their fixed ones.
        """
        outputs = self._warm_up_call(inputs, WARMUP_DYNAMIC_SIZES[0])
        dynamic = any(d < 0 for s in inputs for d in s.shape[1:])
        again = self._warm_up_call(inputs, WARMUP_DYNAMIC_SIZES[1]) if dynamic else outputs
        specs = []
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != WARMUP_ROWS:
                raise ModelLoadError(
                    f"model {self.source.display_name}: output '{name}' has shape {list(value.shape)} for "
                    f"{WARMUP_ROWS} rows of input; its first dimension must be the batch"
                )
            other = again[name].shape[1:]
            inner = [d if len(other) == value.ndim - 1 and d == other[i] else -1 for i, d in enumerate(value.shape[1:])]
            specs.append(TensorSpec(name, value.dtype, (-1, *inner)))
        return tuple(specs)

    def _warm_up_call(self, inputs: Sequence[TensorSpec], dynamic_size: int) -> dict[str, np.ndarray]:
        try:
            return self.predict(warmup_arrays(inputs, dynamic_size))
        except PredictError as exc:
            described = ", ".join(s.describe() for s in inputs)
            raise ModelLoadError(
                f"{exc} (the warm-up call with inputs {described}); check 'inputs:' and 'outputs:' in model.yaml"
            ) from exc


def _closed(where: str) -> Callable[..., Any]:
    def closed(*_: object) -> None:
        raise RuntimeError(f"{where} was closed")

    return closed


def _reason(exc: BaseException) -> str:
    """The error's type and first line; for a TorchScript traceback its last line, the error raised
    inside the program (after the program's source), which names its own type."""
    lines = str(exc).strip().splitlines()
    if lines and lines[0].startswith("The following operation failed in the TorchScript"):
        return lines[-1]
    return f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"


def _load_program(path: Path, source: ModelSource) -> tuple[torch.nn.Module, tuple[TensorSpec, ...] | None]:
    """The program, and the inputs it records (export programs do)."""
    kind = archive_kind(path)
    if kind == "pickle":
        return _load_pickle(path, source), None
    try:
        with warnings.catch_warnings():
            # torch.jit warns that it is deprecated in favour of torch.export; TorchScript files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            if kind == "torchscript":
                return torch.jit.load(str(path), map_location="cpu").eval(), None  # type: ignore[no-untyped-call]
            program = _load_export(path, source)
    except (ModelLoadError, UnsafeModelError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"PyTorch cannot load {path}: {_reason(exc)}") from exc
    return program.module(), export_inputs(program, path)


def _load_export(path: Path, source: ModelSource) -> torch.export.ExportedProgram:
    pickled = export_pickled_parts(path)
    if pickled and not source.options.trust_pickle:
        raise UnsafeModelError(
            f"{path} is a torch.export program, but {', '.join(pickled)} in it are pickles, and loading "
            "a pickle runs whatever code it names; export plain tensors, or pass `trust_pickle=True` if you "
            "created this file yourself or fully trust its source.",
            params=("trust_pickle",),
        )
    return torch.export.load(str(path))


def _load_pickle(path: Path, source: ModelSource) -> torch.nn.Module:
    classes = pickled_classes(path)
    if classes == []:
        raise UnsafeModelError(
            f"{path} is a state dict saved with torch.save: weights without the program that runs them. "
            "Save the program with torch.export.save (.pt2) or torch.jit.save (.pt) instead."
        )
    if not source.options.trust_pickle:
        what = f"a pickled {classes[0]}" if classes else "a pickle"
        raise UnsafeModelError(
            f"{path} was written by torch.save: {what}, and loading a pickle runs whatever code it names. "
            "Save the program with torch.export.save (.pt2) or torch.jit.save (.pt) instead, or pass "
            "`trust_pickle=True` if you created this file yourself or fully trust its source.",
            params=("trust_pickle",),
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)  # the user passed trust_pickle=True
    except Exception as exc:
        raise ModelLoadError(f"cannot unpickle {path}: {_reason(exc)}") from exc
    if not isinstance(loaded, torch.nn.Module):
        raise ModelLoadError(
            f"{path} holds a {type(loaded).__name__}, not an nn.Module; save the program with "
            "torch.export.save (.pt2) or torch.jit.save (.pt)"
        )
    return loaded.eval()


def _placed(program: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    program = program.to(device)
    return program.to(dtype) if dtype != torch.float32 else program


def _input_specs(
    source: ModelSource, found: tuple[TensorSpec, ...] | None, program: torch.nn.Module, where: str
) -> tuple[TensorSpec, ...]:
    """What the program records, checked against model.yaml; else what model.yaml declares."""
    declared = config_specs(source.config.inputs, where) if source.config.inputs else None
    if found is not None:
        if declared:
            check_agrees(declared, found, "input", "the program")
        return found
    names = _forward_arguments(program)
    if not declared:
        raise ModelLoadError(
            f"{where}: {Path(source.location).name} records its inputs' names ({', '.join(names)}) but not their "
            "dtypes and shapes; declare them under 'inputs:' in model.yaml (name, dtype, shape), or save the "
            "model with torch.export.save (.pt2), which records them"
        )
    if len(declared) != len(names):
        raise ModelLoadError(
            f"{where}: model.yaml declares {len(declared)} inputs but the program's forward takes "
            f"{len(names)}: {', '.join(names)}"
        )
    return declared


def _forward_arguments(program: torch.nn.Module) -> list[str]:
    if isinstance(program, torch.jit.ScriptModule):
        schema = getattr(program.forward, "schema")  # noqa: B009 - TorchScript methods are untyped
        return [a.name for a in schema.arguments[1:]]
    parameters = inspect.signature(program.forward).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
