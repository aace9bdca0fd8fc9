"""ONNX Runtime adapter: the default and the fast path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sluice.errors import MissingDependency, ModelLoadError, PredictError
from sluice.models.base import Model, ModelSource
from sluice.models.signature import Signature, TensorSpec

__all__ = ["OnnxModel", "onnx_dtype"]

_ONNX_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def onnx_dtype(type_name: str) -> np.dtype[np.generic]:
    try:
        return np.dtype(_ONNX_TYPES[type_name])
    except KeyError:
        raise ModelLoadError(f"ONNX type {type_name} is not supported as a model input or output") from None


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in (arg.shape or [-1]))
    return TensorSpec(arg.name, onnx_dtype(arg.type), shape)


class OnnxModel(Model):
    """A model run by an ONNX Runtime ``InferenceSession``.

    ``predict`` releases the GIL and a session may be called from several threads at once.
    Classifier outputs that come as ZipMap sequences of maps are turned back into plain
    probability tensors when the model is loaded.
    """

    concurrency = "threads"

    def __init__(self, source: ModelSource) -> None:
        import onnxruntime as ort

        self.source = source
        opts = ort.SessionOptions()
        if source.options.intra_op_threads:
            opts.intra_op_num_threads = source.options.intra_op_threads
        if source.options.inter_op_threads:
            opts.inter_op_num_threads = source.options.inter_op_threads
        path = Path(source.location)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read ONNX model {path}: {exc.strerror}") from exc
        # from the path, not the bytes: ONNX Runtime finds external data files (which MLflow's onnx
        # flavor writes) beside the model only when it knows where the model lies
        model: bytes | str = _strip_zipmap(content, path) if b"ZipMap" in content else str(path)
        self.providers = _providers(source.options.device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(model, opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own untyped errors; translate at this edge
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.signature = Signature(
            tuple(_spec(a) for a in self._session.get_inputs()),
            tuple(_spec(a) for a in self._session.get_outputs()),
        )
        self._output_names = [s.name for s in self.signature.outputs]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._output_names, dict(inputs))
        except Exception as exc:
            raise PredictError(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(self._output_names, values, strict=True))


def _providers(device: str, available: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's CUDA provider (on GPU ``N`` for ``cuda:N``) when the device asks for or allows
    a GPU and this ONNX Runtime has one; the CPU provider otherwise, and as the fallback for
    operators the CUDA provider lacks."""
    gpu = device.startswith("cuda")
    if gpu and "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"device '{device}' was requested but ONNX Runtime has no CUDA provider here; "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use `device='cpu'`",
            params=("device",),
        )
    if device != "cpu" and "CUDAExecutionProvider" in available:
        _, _, index = device.partition(":")
        return [("CUDAExecutionProvider", {"device_id": index or "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _strip_zipmap(content: bytes, path: Path) -> bytes:
    """Replace ZipMap nodes (sequence-of-maps outputs) by the probability tensor they wrap."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise MissingDependency("onnx", "sklearn", f"Loading {path.name}, which has ZipMap outputs,") from None
    model = onnx.load(str(path))  # with its external data, which the bytes alone do not hold
    graph = model.graph
    zipmaps = [n for n in graph.node if n.op_type == "ZipMap"]
    if not zipmaps:
        return content
    for node in zipmaps:
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node("Identity", [node.input[0]], [node.output[0]]))
        for i, out in enumerate(graph.output):
            if out.name == node.output[0]:
                new = helper.make_tensor_value_info(out.name, onnx.TensorProto.FLOAT, [None, None])
                graph.output.remove(out)
                graph.output.insert(i, new)
                break
    return bytes(model.SerializeToString())
