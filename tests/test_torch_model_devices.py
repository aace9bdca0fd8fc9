"""Devices, precision and threads of PyTorch programs (and the device choice of ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sluice.errors import ModelLoadError
from sluice.models import LoadOptions, load_model
from sluice.models.deep.device import HostToDevice, compute_dtype, resolve_device
from sluice.models.onnx import _providers
from torch_support import direct, save_export, tiny_net

X = np.random.default_rng(5).normal(size=(64, 4)).astype(np.float32)
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.fixture(scope="module")
def export_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_export(tiny_net(), tmp_path_factory.mktemp("torch-devices") / "tiny.pt2")


@pytest.fixture
def torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cpu_is_the_cpu() -> None:
    assert resolve_device(LoadOptions(device="cpu")) == torch.device("cpu")


@needs_no_gpu
def test_auto_is_the_cpu_without_a_gpu() -> None:
    assert resolve_device(LoadOptions()) == torch.device("cpu")


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_asked_for_where_there_is_none(device: str, export_path: Path) -> None:
    message = (
        f"device '{device}' was requested but PyTorch cannot use a GPU here (it finds no CUDA GPU); "
        "use `device='cpu'` or `device='auto'`"
    )
    with pytest.raises(ModelLoadError) as info:
        resolve_device(LoadOptions(device=device))
    assert (str(info.value), info.value.params) == (message, ("device",))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(export_path), options=LoadOptions(device=device))
    assert str(info.value) == message


def test_an_unknown_device_name_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        LoadOptions(device="gpu")
    assert (
        info.value.errors()[0]["msg"] == "Value error, must be auto, cpu, cuda or cuda:N (N a GPU index); found 'gpu'"
    )


def test_on_the_cpu_a_batch_is_handed_over_without_a_copy() -> None:
    (tensor,) = HostToDevice(torch.device("cpu"))([X])
    assert tensor.data_ptr() == X.ctypes.data
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == X.shape


def test_a_read_only_batch_is_copied_not_shared() -> None:
    frozen = np.frombuffer(X.tobytes(), dtype=np.float32).reshape(X.shape)  # as a request body's bytes are
    (tensor,) = HostToDevice(torch.device("cpu"))([frozen])  # warnings are errors here: torch warns on sharing
    assert tensor.data_ptr() != frozen.ctypes.data
    np.testing.assert_array_equal(tensor.numpy(), X)


def test_a_strided_view_is_made_contiguous_for_the_program() -> None:
    (tensor,) = HostToDevice(torch.device("cpu"))([X[:, ::2]])
    assert tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.numpy(), X[:, ::2])


# Reduced precision keeps fewer significant bits: bf16 has 8 (a relative step of 2^-7 between
# neighbours, so rounding errs by at most 2^-8), fp16 11 (rounding errs by at most 2^-11). The
# net rounds its input, weights and two layers' activations; 8 roundings' worth, relative to the
# largest output, bounds what it may drift from float32 (observed here: about an eighth of that).
@pytest.mark.parametrize(("precision", "rounding"), [("bf16", 2**-8), ("fp16", 2**-11)])
def test_reduced_precision_is_close_to_float32_and_returned_as_float32(
    export_path: Path, precision: str, rounding: float
) -> None:
    model = load_model(str(export_path), options=LoadOptions(precision=precision))  # type: ignore[arg-type]
    assert compute_dtype(model.source.options) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    outputs = model.predict_checked({"x": X})
    for value, reference in zip(outputs.values(), direct(tiny_net(), X), strict=True):
        assert value.dtype == np.float32
        tolerance = 8 * rounding * float(np.abs(reference).max())
        np.testing.assert_allclose(value, reference, rtol=0, atol=tolerance)
        assert not np.array_equal(value, reference)  # it did compute in the reduced precision
    assert model.signature.outputs[0].dtype == np.float32


def test_intra_op_threads_set_torchs_thread_count(export_path: Path, torch_threads: None) -> None:
    torch.set_num_threads(2)
    load_model(str(export_path), options=LoadOptions(intra_op_threads=1))
    assert torch.get_num_threads() == 1


def test_onnx_runtime_takes_the_cuda_provider_on_the_gpu_asked_for() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _providers("cuda:1", available) == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    assert _providers("auto", available) == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert _providers("cpu", available) == ["CPUExecutionProvider"]
    assert _providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_onnx_runtime_without_a_cuda_provider_says_so() -> None:
    with pytest.raises(ModelLoadError) as info:
        _providers("cuda:1", ["CPUExecutionProvider"])
    assert str(info.value) == (
        "device 'cuda:1' was requested but ONNX Runtime has no CUDA provider here; "
        "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use `device='cpu'`"
    )


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
def test_on_a_gpu_a_batch_arrives_through_pinned_memory_on_the_device() -> None:
    device = torch.device("cuda", 0)
    (tensor,) = HostToDevice(device)([X])
    assert tensor.device == device
    np.testing.assert_array_equal(tensor.cpu().numpy(), X)


@needs_gpu
def test_on_a_gpu_a_program_predicts_as_on_the_cpu(export_path: Path) -> None:
    cpu = load_model(str(export_path), options=LoadOptions(device="cpu")).predict_checked({"x": X})
    model = load_model(str(export_path), options=LoadOptions(device="cuda"))
    assert model.device == torch.device("cuda", 0)  # type: ignore[attr-defined]
    for name, value in model.predict_checked({"x": X}).items():
        np.testing.assert_allclose(value, cpu[name], rtol=0, atol=1e-4)
