"""End to end: PyTorch programs in a batch run over a real Parquet file and behind the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import tritonclient.http as httpclient

from sluice.serve.server import ServerThread, ServeSettings
from support import FEATURES, invoke, make_table, write_table
from torch_support import direct, save_export, save_torchscript, tiny_net

ROWS = 300
OUTPUT_NAMES = """\
outputs:
  - {name: logits, dtype: float32, shape: [-1, 3]}
  - {name: probabilities, dtype: float32, shape: [-1, 3]}
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-ts: the net as TorchScript (model.yaml declares its input); tiny-ep: as an export program."""
    root = tmp_path_factory.mktemp("torch-repo")
    net = tiny_net()
    for name in ("tiny-ts", "tiny-ep"):
        (root / name / "1").mkdir(parents=True)
    save_torchscript(net, root / "tiny-ts" / "1" / "model.pt")
    inputs = "inputs: [{name: x, dtype: float32, shape: [-1, 4]}]\n"
    (root / "tiny-ts" / "model.yaml").write_text(inputs + OUTPUT_NAMES)
    save_export(net, root / "tiny-ep" / "1" / "model.pt2")
    serving = "batching: {target_p99_ms: 5000, max_batch_size: 32}\n"  # two cores shared with the client
    (root / "tiny-ep" / "model.yaml").write_text(OUTPUT_NAMES + serving)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    table = make_table(ROWS, seed=11)
    path = write_table(table, tmp_path_factory.mktemp("torch-data") / "in.parquet")
    return path, np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float32)


def _predict(repository: Path, model: str, data: Path, out: Path, *flags: str) -> dict[str, object]:
    result = invoke(
        "predict", "-m", model, "-r", repository, "-i", data, "-o", out, "--key-column", "id",
        "--features", ",".join(FEATURES), "--batch-size", "64", "-q", *flags,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads((out / "_summary.json").read_text())
    return summary


@pytest.mark.parametrize("model", ["tiny-ts", "tiny-ep"])
def test_batch_predictions_equal_torchs(
    repository: Path, data: tuple[Path, np.ndarray], tmp_path: Path, model: str
) -> None:
    path, x = data
    summary = _predict(repository, model, path, tmp_path / "out", "--device", "cpu")
    assert (summary["rows"], summary["rows_failed"]) == (ROWS, 0)
    part = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert part.schema.names == ["id", "logits", "probabilities"]
    assert part.schema.field("probabilities").type == pa.list_(pa.float32(), 3)
    assert part.column("id").to_pylist() == list(range(ROWS))
    logits, probabilities = direct(tiny_net(), x)
    np.testing.assert_allclose(np.array(part.column("logits").to_pylist()), logits, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.array(part.column("probabilities").to_pylist()), probabilities, rtol=0, atol=1e-4)


def test_batch_in_bfloat16_returns_float32_close_to_torchs(
    repository: Path, data: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, x = data
    _predict(repository, "tiny-ep", path, tmp_path / "out", "--precision", "bf16")
    part = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert part.schema.field("probabilities").type == pa.list_(pa.float32(), 3)
    # probabilities lie in [0, 1]: 8 bf16 roundings (2^-8 each) bound the drift (see test_torch_model_devices)
    _, probabilities = direct(tiny_net(), x)
    np.testing.assert_allclose(np.array(part.column("probabilities").to_pylist()), probabilities, atol=8 * 2**-8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_batch_on_a_gpu_that_is_not_there_is_a_usage_error(
    repository: Path, data: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    result = invoke(
        "predict", "-m", "tiny-ep", "-r", repository, "-i", data[0], "-o", tmp_path / "o", "--device", "cuda"
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: device 'cuda' was requested but PyTorch cannot use a GPU here (it finds no CUDA GPU); "
        "use --device cpu or --device auto"
    )


def test_a_pickled_module_in_batch_names_the_flag(data: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    torch.save(tiny_net(), tmp_path / "net.pt")
    result = invoke("predict", "-m", tmp_path / "net.pt", "-i", data[0], "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        f"error: {tmp_path / 'net.pt'} was written by torch.save: a pickled torch_support.TinyNet, and loading a "
        "pickle runs whatever code it names. Save the program with torch.export.save (.pt2) or torch.jit.save "
        "(.pt) instead, or pass --trust-pickle if you created this file yourself or fully trust its source."
    )


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    settings = ServeSettings(repository=repository, port=0, log_level="warning", device="cpu")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=60)
        yield running


def test_served_programs_answer_as_torch_computes(server: ServerThread, data: tuple[Path, np.ndarray]) -> None:
    x = data[1][:7]
    logits, probabilities = direct(tiny_net(), x)
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        for model in ("tiny-ep", "tiny-ts"):
            meta = client.get_model_metadata(model)
            assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
            assert meta["outputs"] == [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            ]
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            answer = client.infer(model, [tensor])
            np.testing.assert_allclose(answer.as_numpy("logits"), logits, rtol=0, atol=1e-4)
            np.testing.assert_allclose(answer.as_numpy("probabilities"), probabilities, rtol=0, atol=1e-4)
    finally:
        client.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_tune_loads_the_model_on_the_device_asked_for(repository: Path, data: tuple[Path, np.ndarray]) -> None:
    result = invoke("tune", "-m", "tiny-ep", "-r", repository, "-i", data[0], "--device", "cuda:1")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: device 'cuda:1' was requested but PyTorch cannot use a GPU here (it finds no CUDA GPU); "
        "use --device cpu or --device auto"
    )


def test_tune_measures_a_program_in_bfloat16(repository: Path, data: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    result = invoke(
        "tune", "-m", "tiny-ep", "-r", repository, "-i", data[0], "--key-column", "id",
        "--features", ",".join(FEATURES), "--precision", "bf16", "--max-batch-size", "64",
        "--json-file", tmp_path / "tune.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    profile = json.loads((tmp_path / "tune.json").read_text())
    assert profile["sample_rows"] == ROWS
    assert profile["chosen"]["status"] == "ok"
    assert profile["chosen"]["setup"]["batch_size"] <= 64


def test_serve_refuses_an_unknown_device_before_it_starts(repository: Path) -> None:
    result = invoke("serve", "-r", repository, "--device", "tpu", "--port", "0", "--no-grpc")
    assert result.exit_code == 2
    assert result.output.strip() == "error: device: must be auto, cpu, cuda or cuda:N (N a GPU index); found 'tpu'"


def test_predict_refuses_an_unknown_precision(repository: Path, data: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    result = invoke(
        "predict", "-m", "tiny-ep", "-r", repository, "-i", data[0], "-o", tmp_path / "o", "--precision", "fp8"
    )
    assert result.exit_code == 2
    assert result.output.strip() == "error: invalid job: precision: Input should be 'fp32', 'fp16' or 'bf16'"
