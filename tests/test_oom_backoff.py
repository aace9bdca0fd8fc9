"""Out-of-memory back-off: a model that raises torch's OutOfMemoryError above a batch size.

The batch that ran out of memory is halved and retried, later calls take the smaller size,
and every record is predicted exactly once, in order; the summary counts the halvings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sluice.errors import ModelOutOfMemory, PredictError
from sluice.models import load_model
from support import FEATURES, invoke, make_table, read_output, write_module, write_table

# Every call's size goes to a log beside the module (worker processes are forked from a server
# started by an earlier test, whose environment they keep), so the test sees each call.
OOM_MODULE = """
import os
import numpy as np
import torch

MAX_ROWS = {max_rows}


def predict(x):
    with open(os.path.join(os.path.dirname(__file__), "calls.log"), "a") as log:
        log.write(f"{{x.shape[0]}}\\n")
    if x.shape[0] > MAX_ROWS:
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {{x.shape[0]}} MiB")
    return x.sum(axis=1)
"""

# A torch module wrapped as a Python model: the same back-off for a real torch computation.
TORCH_MODULE = """
import numpy as np
import torch

MAX_ROWS = {max_rows}


class Linear:
    def setup(self):
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1, dtype=torch.float64)

    def predict(self, x):
        if x.shape[0] > MAX_ROWS:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with torch.inference_mode():
            return self.layer(torch.from_numpy(x)).numpy()[:, 0]
"""

BROKEN_MODULE = """
import torch


def predict(x):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")
"""


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "work"
    write_module(directory, "oom_at_12", OOM_MODULE.format(max_rows=12))
    write_module(directory, "oom_never", OOM_MODULE.format(max_rows=1 << 30))
    write_module(directory, "oom_at_3", OOM_MODULE.format(max_rows=3))
    write_module(directory, "oom_always", OOM_MODULE.format(max_rows=0))
    write_module(directory, "torch_oom_at_12", TORCH_MODULE.format(max_rows=12))
    write_module(directory, "torch_oom_never", TORCH_MODULE.format(max_rows=1 << 30))
    write_module(directory, "torch_broken", BROKEN_MODULE)
    monkeypatch.chdir(directory)
    write_table(make_table(250), tmp_path / "in.parquet")
    return tmp_path


def _predict(work: Path, model: str, out: str, *extra: str) -> tuple[int, str, Path]:
    result = invoke(
        "predict", "-m", model, "-i", work / "in.parquet", "-o", work / out, "--key-column", "id",
        "--batch-size", "100", "--workers", "1", "-q", *extra,
    )  # fmt: skip
    return result.exit_code, result.output, work / out


def _calls(work: Path) -> list[int]:
    log = work / "work" / "calls.log"
    sizes = [int(line) for line in log.read_text().split()]
    log.unlink()
    return sizes


def _part(out: Path) -> pa.Table:
    return read_output(out / "part-00000.parquet")


def _summary(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "_summary.json").read_text())
    return data


def test_out_of_memory_halves_the_batch_and_later_calls_stay_small(work: Path) -> None:
    code, output, out = _predict(work, "oom_at_12:predict", "out")
    assert code == 0, output
    # 100 rows ran out of memory, then 50, then 25: calls of 12 rows from then on, in order
    first_batch = [100, 50, 25, 12, 12, 1, 12, 12, 1, 12, 12, 12, 12, 2]
    assert _calls(work) == [*first_batch, *[12] * 8, 4, *[12] * 4, 2]
    summary = _summary(out)
    assert (summary["rows"], summary["rows_failed"]) == (250, 0)
    assert (summary["batch_size"], summary["oom_backoffs"], summary["final_batch_size"]) == (100, 3, 12)
    table = _part(out)
    assert table.column("id").to_pylist() == list(range(250))

    code, output, plain = _predict(work, "oom_never:predict", "plain")
    assert code == 0, output
    assert _calls(work) == [100, 100, 50]
    assert _part(plain).equals(table)  # the same records, values and order as without running out
    summary = _summary(plain)
    assert (summary["oom_backoffs"], summary["final_batch_size"]) == (0, 100)


def test_back_off_is_shared_by_the_predict_workers(work: Path) -> None:
    code, output, out = _predict(work, "oom_at_12:predict", "out", "--workers", "2")
    assert code == 0, output
    assert max(s for s in _calls(work) if s <= 12) == 12
    summary = _summary(out)
    assert (summary["rows"], summary["rows_failed"], summary["final_batch_size"]) == (250, 0, 12)
    assert 3 <= int(str(summary["oom_backoffs"])) <= 6  # a halving per worker that hit it before the other halved
    assert _part(out).column("id").to_pylist() == list(range(250))


def test_torch_module_runs_to_completion_with_the_same_outputs(work: Path) -> None:
    code, output, out = _predict(work, "torch_oom_at_12:Linear", "out")
    assert code == 0, output
    code, output, plain = _predict(work, "torch_oom_never:Linear", "plain")
    assert code == 0, output
    got, want = _part(out), _part(plain)
    assert got.column("id").to_pylist() == want.column("id").to_pylist() == list(range(250))
    diff = np.abs(got.column("prediction").to_numpy() - want.column("prediction").to_numpy())
    assert float(diff.max()) <= 1e-12
    summary = _summary(out)
    assert (summary["rows"], summary["oom_backoffs"], summary["final_batch_size"]) == (250, 3, 12)


def test_a_record_that_never_fits_fails_the_run_naming_the_memory(work: Path) -> None:
    code, output, out = _predict(work, "oom_always:predict", "out")
    assert code == 1
    assert "the model failed on every one of 100 records of a batch: oom_always:predict ran out of memory: " in output
    assert "CUDA out of memory. Tried to allocate 1 MiB" in output
    assert not (out / "_SUCCESS").exists()


def test_the_memory_probe_halves_a_first_probe_that_runs_out(work: Path) -> None:
    code, output, out = _predict(work, "oom_at_3:predict", "out", "--memory-limit", "1GiB")
    assert code == 0, output
    calls = _calls(work)
    assert calls[:7] == [8, 4, 2, 2, 8, 100, 50]  # the probe: 8 and 4 ran out, 2 twice, 8 ran out; then the run
    summary = _summary(out)
    assert (summary["rows"], summary["rows_failed"]) == (250, 0)
    assert (summary["batch_size"], summary["oom_backoffs"], summary["final_batch_size"]) == (100, 5, 3)
    assert _part(out).column("id").to_pylist() == list(range(250))


def test_a_probe_out_of_memory_on_one_record_stops_the_run(work: Path) -> None:
    code, output, out = _predict(work, "oom_always:predict", "out", "--memory-limit", "1GiB")
    assert code == 1
    assert output.strip() == (
        "error: measuring the memory per record for --memory-limit: the model ran out of memory on one record: "
        "oom_always:predict ran out of memory: CUDA out of memory. Tried to allocate 1 MiB"
    )
    assert not out.exists() or not (out / "_SUCCESS").exists()


def test_torch_out_of_memory_becomes_model_out_of_memory(work: Path) -> None:
    model = load_model("oom_at_12:predict")
    x = {"input": np.ones((13, len(FEATURES)))}
    with pytest.raises(ModelOutOfMemory) as caught:
        model.predict_checked(x)
    assert str(caught.value) == "oom_at_12:predict ran out of memory: CUDA out of memory. Tried to allocate 13 MiB"
    assert model.predict_checked({"input": np.ones((12, 4))})["prediction"].tolist() == [4.0] * 12


def test_other_torch_errors_stay_record_failures(work: Path) -> None:
    model = load_model("torch_broken:predict")
    with pytest.raises(PredictError) as caught:
        model.predict_checked({"input": np.ones((3, 4))})
    assert type(caught.value) is PredictError
    assert str(caught.value) == (
        "torch_broken:predict raised RuntimeError: CUDA error: an illegal memory access was encountered"
    )


def test_any_adapter_letting_torch_out_of_memory_through_gives_model_out_of_memory(work: Path) -> None:
    import torch

    from sluice.models.base import Model

    loaded = load_model("oom_never:predict")

    class RawTorch(Model):  # an adapter that lets torch's error through unwrapped
        signature = loaded.signature
        source = loaded.source

        def predict(self, inputs: object) -> dict[str, np.ndarray]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB.\nGPU 0 has 1 GiB")

    with pytest.raises(ModelOutOfMemory) as caught:
        RawTorch().predict_prepared({"input": np.ones((2, 4))})
    assert str(caught.value) == "oom_never:predict ran out of memory: CUDA out of memory. Tried to allocate 20.00 MiB."
