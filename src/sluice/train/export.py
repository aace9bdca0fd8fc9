"""Export a trained MLP to ONNX (standardisation inside the graph) and publish it as a model version.

The exported graph takes one float32 input ``input`` of shape ``[N, n_features]`` and computes
``net((input - mean) / std)``. A classifier outputs ``label`` (the class label of the arg-max: int64
for integer labels, string or bool for those) and ``probabilities`` (float32 ``[N, C]``, softmax,
columns in the order of ``classes``); a regressor outputs ``prediction`` (float32 ``[N]``).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sluice.errors import ModelError
from sluice.models.config import ModelConfig
from sluice.models.repository import ModelRepository

__all__ = ["ARTIFACT_NAME", "Task", "export_onnx", "publish"]

Task = Literal["classification", "regression"]
ARTIFACT_NAME = "model.onnx"
_OPSET = 18
# Class labels that are not integers are looked up by a Gather added to the graph after export.
_INDEX_OUTPUT = "label_index"


class _Exported(torch.nn.Module):
    """The trained net with standardisation in front and the task's outputs behind."""

    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor

    def __init__(self, net: torch.nn.Module, mean: np.ndarray, std: np.ndarray, task: Task, int_classes: bool,
                 classes: Sequence[Any] | None) -> None:  # fmt: skip
        super().__init__()
        self.net = net
        self.task = task
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float32)))
        labels = np.asarray(classes, dtype=np.int64) if int_classes and classes is not None else np.zeros(0, np.int64)
        self.register_buffer("classes", torch.as_tensor(labels))
        self.int_classes = int_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net((x - self.mean) / self.std)
        if self.task == "regression":
            return (out.squeeze(-1),)
        index = out.argmax(dim=-1)
        label = self.classes[index] if self.int_classes else index
        return label, torch.softmax(out, dim=-1)


def export_onnx(
    module: torch.nn.Module,
    n_features: int,
    mean: np.ndarray,
    std: np.ndarray,
    task: str,
    classes: Sequence[Any] | None,
    path: Path,
) -> None:
    """Write ``module`` as an ONNX model to ``path``, checked against the module with ONNX Runtime.

    ``mean`` and ``std`` are the per-feature statistics of the training split (std must be > 0;
    replace zeros by 1 before calling). ``classes`` lists the class labels in the order of the
    module's output units; integers become an int64 ``label``, strings a string ``label``, bools a
    bool ``label``.
    """
    mean, std = _statistics(mean, std, n_features)
    int_classes = _check_task(task, classes)
    net = copy.deepcopy(module).to("cpu", torch.float32).eval()
    wrapper = _Exported(net, mean, std, "regression" if task == "regression" else "classification", int_classes,
                        classes).eval()  # fmt: skip
    outputs = ["prediction"] if task == "regression" else ["label", "probabilities"]
    if task == "classification" and not int_classes:
        outputs[0] = _INDEX_OUTPUT
    sample = torch.from_numpy(np.random.default_rng(0).standard_normal((4, n_features)).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        _torch_export(wrapper, sample, outputs, path)
        if task == "classification" and not int_classes:
            _add_label_lookup(path, list(classes or []))
        _verify(wrapper, path, mean, std)


def _statistics(mean: np.ndarray, std: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean.shape != (n_features,) or std.shape != (n_features,):
        raise ValueError(f"mean and std must hold {n_features} values, found {mean.size} and {std.size}")
    if not (np.all(np.isfinite(std)) and np.all(std > 0)) or not np.all(np.isfinite(mean)):
        raise ValueError("mean must be finite and std finite and > 0 (replace a constant feature's 0 std by 1)")
    return mean, std


def _check_task(task: str, classes: Sequence[Any] | None) -> bool:
    """Whether the class labels go into the graph as int64 (True) or by a lookup added afterwards."""
    if task == "regression":
        return False
    if task != "classification":
        raise ValueError(f"task must be 'classification' or 'regression', found {task!r}")
    if not classes:
        raise ValueError("a classifier needs its class labels, in the order of the output units")
    kinds = {_label_kind(c) for c in classes}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"class labels must be all integers, all strings or all bools, found {list(classes)!r}")
    return kinds == {"int"}


def _label_kind(label: object) -> str | None:
    if isinstance(label, bool | np.bool_):
        return "bool"
    if isinstance(label, int | np.integer):
        return "int"
    if isinstance(label, str):
        return "str"
    return None


def _torch_export(wrapper: torch.nn.Module, sample: torch.Tensor, outputs: list[str], path: Path) -> None:
    if _has_onnxscript():
        _export_dynamo(wrapper, sample, outputs, path)
    else:
        _export_torchscript(wrapper, sample, outputs, path)


def _has_onnxscript() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxscript") is not None


def _export_dynamo(wrapper: torch.nn.Module, sample: torch.Tensor, outputs: list[str], path: Path) -> None:
    import logging

    # The exporter logs one warning per torchvision op it cannot register; torchvision is irrelevant here.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's exporter trips its own pytree deprecation; nothing the caller can act on.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)  # fmt: skip
            program = torch.onnx.export(
                wrapper,
                (sample,),
                input_names=["input"],
                output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=_OPSET,
                dynamo=True,
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    if program is None:
        raise ModelError("torch.onnx.export returned no ONNX program")
    program.save(str(path))


def _export_torchscript(wrapper: torch.nn.Module, sample: torch.Tensor, outputs: list[str], path: Path) -> None:
    with warnings.catch_warnings():
        # Without onnxscript only the legacy exporter is available; its deprecation notices are expected.
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)  # fmt: skip
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (sample,),
            str(path),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]},
            opset_version=_OPSET,
            dynamo=False,
        )


def _add_label_lookup(path: Path, classes: list[Any]) -> None:
    """Replace the ``label_index`` output by ``label``: the class labels gathered at that index."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    index_output = next(o for o in graph.output if o.name == _INDEX_OUTPUT)
    values = np.array(classes, dtype=np.bool_ if isinstance(classes[0], bool | np.bool_) else object)
    table = numpy_helper.from_array(values, name="class_labels")
    graph.initializer.append(table)
    graph.node.append(helper.make_node("Gather", ["class_labels", _INDEX_OUTPUT], ["label"], axis=0))
    dims = [d.dim_param or d.dim_value for d in index_output.type.tensor_type.shape.dim]
    label = helper.make_tensor_value_info("label", table.data_type, dims)
    position = list(graph.output).index(index_output)
    graph.output.remove(index_output)
    graph.output.insert(position, label)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _verify(wrapper: _Exported, path: Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Run the exported model and the module on the same rows; a mismatch is an export bug."""
    import onnxruntime as ort

    rows = (np.random.default_rng(1).standard_normal((7, mean.size)) * std + mean).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": rows})[-1]
    expected = wrapper(torch.from_numpy(rows))[-1].numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-5):
        raise ModelError(f"the ONNX export of the model disagrees with the torch module ({path})")


def publish(
    module: torch.nn.Module,
    feature_names: Sequence[str],
    mean: np.ndarray,
    std: np.ndarray,
    task: str,
    classes: Sequence[Any] | None,
    repository: ModelRepository | str | Path,
    model_name: str,
    training_metadata: Mapping[str, Any],
    *,
    description: str | None = None,
) -> int:
    """Export the module and publish it as the next version of ``model_name``; returns the version.

    ``model.yaml`` gets the feature columns, the ONNX format and artifact name, and ``training`` =
    ``training_metadata`` (config, metrics, data fingerprint, strategy…) plus the task and class
    labels; named labels such as ``stable`` are kept.
    """
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    training = {**_plain(dict(training_metadata)), "task": task}
    if classes is not None:
        training["classes"] = _plain(list(classes))
    existing = repo.config(model_name)
    config = existing.model_copy(
        update={
            "format": "onnx",
            "artifact": ARTIFACT_NAME,
            "callable": None,
            "inputs": None,
            "outputs": None,
            "features": list(feature_names),
            "description": description or f"{task} MLP trained by sluice train",
            "training": training,
        }
    )
    with tempfile.TemporaryDirectory(prefix="sluice-export-") as tmp:
        artifact = Path(tmp) / ARTIFACT_NAME
        export_onnx(module, len(feature_names), mean, std, task, classes, artifact)
        return repo.publish(model_name, artifact, ModelConfig.model_validate(config.model_dump()))


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe builtins: numpy values, paths, tuples and pydantic models converted."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
