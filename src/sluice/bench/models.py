"""Models the benchmarks build for themselves (nothing is downloaded)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_mlp_onnx"]


def write_mlp_onnx(path: Path, widths: Sequence[int], seed: int) -> Path:
    """An ONNX MLP (Gemm+Relu hidden layers, Softmax output ``probabilities``, input ``input``)
    with seeded random weights, written to ``path`` unless it already exists."""
    if path.exists():
        return path
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, tensor = [], [], "input"
    layers = list(itertools.pairwise(widths))
    for i, (fan_in, fan_out) in enumerate(layers):
        w = rng.normal(scale=(2 / fan_in) ** 0.5, size=(fan_in, fan_out)).astype(np.float32)
        b = rng.normal(scale=0.1, size=fan_out).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [tensor, f"w{i}", f"b{i}"], [f"gemm{i}"]))
        tensor = f"gemm{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [tensor], [f"relu{i}"]))
            tensor = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [tensor], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, widths[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, widths[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what opset 17 needs; newer IR versions may be unknown to the installed ORT
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return path
