"""GPU figures in the summary (NVML): utilisation and peak device memory, or why there are none.

On a machine without a GPU both figures are null and the summary says why; on one with a GPU
(bench/gpu_check.sh's machine) they are filled in. Either way NVML itself answers, not a stand-in.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import Models
from support import invoke, make_table, write_table


def _nvml_answer() -> str | None:
    """What NVML says on this machine: None when it found a GPU, else the reason the summary gives."""
    if importlib.util.find_spec("pynvml") is None:
        return "no GPU figures: nvidia-ml-py is not installed (pip install 'sluice[gpu]')"
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no GPU figures: NVML did not start ({exc})"
    try:
        return None if pynvml.nvmlDeviceGetCount() else "no GPU figures: NVML found no GPU"
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture
def run(tmp_path: Path, models: Models) -> tuple[dict[str, object], str]:
    write_table(make_table(50), tmp_path / "in.parquet")
    result = invoke(
        "predict", "-m", models.onnx, "-i", tmp_path / "in.parquet", "-o", tmp_path / "out", "--key-column", "id"
    )
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads((tmp_path / "out" / "_summary.json").read_text())
    return summary, result.output


def test_summary_gpu_figures_or_the_reason_there_are_none(run: tuple[dict[str, object], str]) -> None:
    summary, table = run
    reason = _nvml_answer()
    assert summary["gpu_unavailable_reason"] == reason
    if reason is None:  # a GPU machine
        assert 0.0 <= float(str(summary["gpu_utilization"])) <= 1.0
        assert int(str(summary["gpu_peak_memory_bytes"])) >= 0
        return
    assert (summary["gpu_utilization"], summary["gpu_peak_memory_bytes"]) == (None, None)
    row = next(line for line in table.splitlines() if "GPU memory" in line)
    assert reason[:60] in row  # the CLI summary says why, in its "GPU memory" row
    assert "CPU / GPU use" in table


def test_memory_is_measured_on_the_host_until_cuda_holds_a_model() -> None:
    import torch  # a torch model in this process: the meter still measures the host without CUDA

    from sluice.tune.memory import memory_meter

    on_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()  # a model put tensors on the GPU
    assert memory_meter().where == (f"cuda:{torch.cuda.current_device()}" if on_gpu else "host")
