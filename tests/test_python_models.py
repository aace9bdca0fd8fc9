"""Python-callable models: ``module:function``, ``module:Class`` with setup(), and repository ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sluice.errors import ModelLoadError
from sluice.models import load_model
from support import FEATURES, invoke, make_table, read_jsonl, write_module, write_table

SUM_MODULE = """
import numpy as np
import pyarrow as pa

def predict(x):
    return x.sum(axis=1)
"""

CLASS_MODULE = """
import numpy as np
import pyarrow as pa

class Scaler:
    def __init__(self):
        self.factor = None

    def setup(self):
        self.factor = 10.0

    def predict(self, x):
        return x[:, 0] * self.factor
"""

PICKY_MODULE = """
import numpy as np
import pyarrow as pa

def predict(x):
    if (x[:, 0] > 100).any():
        raise ValueError("f0 above 100")
    return x[:, 0] + 1
"""


def _expected_sum(table) -> list[float]:
    x = np.column_stack([table.column(f).to_numpy().astype(np.float64) for f in FEATURES])
    return x.sum(axis=1).tolist()


def _run(tmp_path: Path, model: str, table, *extra: str):
    write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = invoke(
        "predict", "-m", model, "-i", tmp_path / "in.parquet", "-o", out, "--key-column", "id",
        "--output-format", "jsonl", "-q", *extra,
    )  # fmt: skip
    return out, result


def test_function_model_in_worker_processes(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    write_module(work, "sum_features_a", SUM_MODULE)
    monkeypatch.chdir(work)  # 'module:function' is importable from the current directory
    table = make_table(13)
    out, result = _run(tmp_path, "sum_features_a:predict", table, "--batch-size", "4", "--workers", "2")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "part-00000.jsonl")
    assert [r["id"] for r in rows] == list(range(13))
    assert [r["prediction"] for r in rows] == pytest.approx(_expected_sum(table), rel=1e-12)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["workers"] == 2
    assert summary["model"] == "sum_features_a:predict"


def test_function_model_on_sys_path(tmp_path: Path, monkeypatch) -> None:
    write_module(tmp_path / "mods", "sum_features_b", SUM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    model = load_model("sum_features_b:predict")
    assert model.concurrency == "processes"
    assert model.signature.describe() == "inputs: input: float64[?, ?] -> outputs: prediction: float64[?]"
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    np.testing.assert_array_equal(model.predict_checked({"input": x})["prediction"], [6.0, 22.0])


def test_class_model_with_setup(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    write_module(work, "scaler_model_a", CLASS_MODULE)
    monkeypatch.chdir(work)
    table = make_table(7)
    out, result = _run(tmp_path, "scaler_model_a:Scaler", table, "--workers", "1")
    assert result.exit_code == 0, result.output
    got = [r["prediction"] for r in read_jsonl(out / "part-00000.jsonl")]
    assert got == pytest.approx((table.column("f0").to_numpy().astype(np.float64) * 10.0).tolist(), rel=1e-12)


def test_class_model_loaded_in_process(tmp_path: Path, monkeypatch) -> None:
    write_module(tmp_path / "mods", "scaler_model_b", CLASS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    model = load_model("scaler_model_b:Scaler")
    out = model.predict_checked({"input": np.array([[1.0, 0.0], [2.5, 0.0]])})
    np.testing.assert_array_equal(out["prediction"], [10.0, 25.0])


def test_unknown_module_and_attribute(tmp_path: Path, monkeypatch) -> None:
    write_module(tmp_path / "mods", "has_no_fn", "x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    with pytest.raises(ModelLoadError) as info:
        load_model("has_no_fn:predict")
    assert str(info.value) == "module 'has_no_fn' has no attribute 'predict'"
    with pytest.raises(ModelLoadError) as info:
        load_model("has_no_fn:x")
    assert str(info.value) == "has_no_fn:x is a int, not a function or class"
    with pytest.raises(ModelLoadError) as info:
        load_model("no_such_module_xyz:predict")
    assert str(info.value).startswith("cannot import module 'no_such_module_xyz' for model no_such_module_xyz:predict")


def test_repository_python_model_with_declared_outputs(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_module(
        root / "scorer" / "1",
        "repo_scorer_mod",
        "import numpy as np\n\n"
        "class Scorer:\n"
        "    def setup(self):\n"
        "        self.offset = 0.5\n\n"
        "    def predict(self, x):\n"
        "        s = x.sum(axis=1)\n"
        "        return {'score': s + self.offset, 'positive': (s > 0).astype(np.int64)}\n",
    )
    (root / "scorer" / "model.yaml").write_text(
        "callable: repo_scorer_mod:Scorer\n"
        "concurrency: threads\n"
        "features: [f0, f1, f2, f3]\n"
        "outputs:\n"
        "  - {name: score, dtype: float64, shape: [-1]}\n"
        "  - {name: positive, dtype: int64, shape: [-1]}\n"
    )
    table = make_table(9)
    out, result = _run(tmp_path, "scorer", table, "-r", str(root))
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "part-00000.jsonl")
    sums = _expected_sum(table)
    assert [r["score"] for r in rows] == pytest.approx([s + 0.5 for s in sums], rel=1e-12)
    assert [r["positive"] for r in rows] == [int(s > 0) for s in sums]
    assert list(rows[0]) == ["id", "score", "positive"]


def test_rows_the_model_rejects_are_isolated(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    write_module(work, "picky_model_a", PICKY_MODULE)
    monkeypatch.chdir(work)
    table = make_table(10)
    f0 = table.column("f0").to_numpy().copy()
    f0[[3, 8]] = 500.0
    table = table.set_column(2, "f0", pa.array(f0))
    out, result = _run(tmp_path, "picky_model_a:predict", table, "--batch-size", "5", "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out / "part-00000.jsonl")] == [0, 1, 2, 4, 5, 6, 7, 9]
    source = str(tmp_path / "in.parquet")
    message = "picky_model_a:predict raised ValueError: f0 above 100"
    assert read_jsonl(out / "_errors" / "errors-00000.jsonl") == [
        {"source": source, "row": 3, "key": 3, "field": None, "error": message},
        {"source": source, "row": 8, "key": 8, "field": None, "error": message},
    ]


def test_small_batch_where_every_row_fails(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    write_module(work, "picky_model_b", PICKY_MODULE)
    monkeypatch.chdir(work)
    table = make_table(6)
    f0 = table.column("f0").to_numpy().copy()
    f0[3:] = 500.0
    table = table.set_column(2, "f0", pa.array(f0))
    out, result = _run(tmp_path, "picky_model_b:predict", table, "--batch-size", "3", "--max-error-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out / "part-00000.jsonl")] == [0, 1, 2]
    assert [(e["row"], e["key"]) for e in read_jsonl(out / "_errors" / "errors-00000.jsonl")] == [
        (3, 3),
        (4, 4),
        (5, 5),
    ]


def test_model_broken_on_a_whole_large_batch_fails_the_job(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    write_module(work, "broken_model_a", "def predict(x):\n    raise RuntimeError('boom')\n")
    monkeypatch.chdir(work)
    _, result = _run(tmp_path, "broken_model_a:predict", make_table(20), "--workers", "1")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert " ".join(result.stderr.split()) == (
        "error: the model failed on every one of 20 records of a batch: "
        "broken_model_a:predict raised RuntimeError: boom"
    )


def test_model_returning_wrong_row_count(tmp_path: Path, monkeypatch) -> None:
    write_module(tmp_path / "mods", "short_model_a", "def predict(x):\n    return x[:1, 0]\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    model = load_model("short_model_a:predict")
    with pytest.raises(Exception) as info:
        model.predict_checked({"input": np.zeros((3, 2))})
    assert str(info.value) == "model short_model_a:predict returned 1 rows of 'prediction' for a batch of 3 rows"
