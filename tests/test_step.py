"""The one prediction step (bind → predict → unbind), lenient and strict, on real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sluice.batch.predictor import Predictor
from sluice.batch.step import RowFailure, predict_step
from sluice.errors import BindError, PredictError
from sluice.models import load_model
from sluice.models.base import Model
from sluice.models.config import ModelConfig
from support import FEATURES, make_table, onnx_predict, write_module

NAN = "value is NaN and the model does not accept NaN (allow_nan: false)"
PICKY = """
def predict(x):
    if (x[:, 0] > 100).any():
        raise ValueError("f0 above 100")
    return x[:, 0] + 1
"""
REJECTED = "step_picky_model:predict raised ValueError: f0 above 100"


@pytest.fixture
def picky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Model:
    """A Python model, run in this process, that rejects any batch with an ``f0`` above 100."""
    write_module(tmp_path / "mods", "step_picky_model", PICKY)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return load_model("step_picky_model:predict", config=ModelConfig(concurrency="threads"))


def with_values(table: pa.Table, changes: dict[str, tuple[list[int], float]]) -> pa.RecordBatch:
    """``table`` as one batch, with ``changes[column] = (rows, value)`` applied."""
    for column, (rows, value) in changes.items():
        values = table.column(column).to_numpy().copy()
        values[rows] = value
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    return table.combine_chunks().to_batches()[0]


def run(model: Model, batch: pa.RecordBatch, *, strict: bool, passthrough: tuple[str, ...] = ("id",)):
    bind = model.signature.plan(batch.schema, FEATURES, not_features=passthrough)
    predictor = Predictor(model, 1)
    try:
        return predict_step(batch, bind, predictor, strict=strict, passthrough=passthrough)
    finally:
        predictor.close()


def test_lenient_step_sets_aside_rows_that_do_not_bind_and_rows_the_model_rejects(picky: Model) -> None:
    batch = with_values(make_table(8), {"f0": ([5], 500.0), "f1": ([2], np.nan)})
    result = run(picky, batch, strict=False)
    assert result.failures == [RowFailure(2, "f1", NAN), RowFailure(5, None, REJECTED)]
    assert result.rows.tolist() == [0, 1, 3, 4, 6, 7]
    assert result.batch.schema.names == ["id", "prediction"]
    assert result.batch.column("id").to_pylist() == [0, 1, 3, 4, 6, 7]
    f0 = batch.column("f0").to_numpy()
    assert result.batch.column("prediction").to_pylist() == pytest.approx([f0[i] + 1 for i in (0, 1, 3, 4, 6, 7)])


def test_strict_step_raises_naming_the_row(picky: Model) -> None:
    unbindable = with_values(make_table(6), {"f3": ([4], np.nan)})
    with pytest.raises(BindError) as bind_error:
        run(picky, unbindable, strict=True)
    assert str(bind_error.value) == f"row 4, field 'f3': {NAN}"
    rejected = with_values(make_table(6), {"f0": ([3], 500.0)})
    with pytest.raises(PredictError) as predict_error:
        run(picky, rejected, strict=True)
    assert str(predict_error.value) == f"row 3: {REJECTED}"


def test_a_batch_with_no_bindable_row_gives_typed_empty_outputs(models) -> None:
    batch = with_values(make_table(3), {"f2": ([0, 1, 2], np.nan)})
    result = run(load_model(str(models.onnx)), batch, strict=False)
    assert [(f.row, f.field) for f in result.failures] == [(0, "f2"), (1, "f2"), (2, "f2")]
    assert result.batch.num_rows == 0 and result.rows.tolist() == []
    assert result.batch.schema == pa.schema(
        [("id", pa.int64()), ("label", pa.int64()), ("probabilities", pa.list_(pa.float32(), 2))]
    )


def test_clean_batches_pass_columns_through_without_copying(models) -> None:
    table = make_table(50)
    batch = with_values(table, {})
    result = run(load_model(str(models.onnx)), batch, strict=True)
    assert result.failures == [] and result.rows.tolist() == list(range(50))
    assert result.batch.column("id").buffers()[1].address == batch.column("id").buffers()[1].address
    want = onnx_predict(models.onnx, table)
    assert result.batch.column("label").to_pylist() == want["label"].tolist()
    got = np.array(result.batch.column("probabilities").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got, want["probabilities"])


def test_in_memory_prediction_binds_each_schema_it_meets(models) -> None:
    import sluice

    table = make_table(6)
    first = table.slice(0, 3).select(FEATURES).combine_chunks().to_batches()[0]
    second = table.slice(3).select([*reversed(FEATURES), "id"]).combine_chunks().to_batches()[0]
    model = load_model(str(models.onnx))
    out = list(sluice.predict_batches(model, iter([first, second]), features=FEATURES))
    assert [b.num_rows for b in out] == [3, 3]
    assert pa.Table.from_batches(out).column("label").to_pylist() == onnx_predict(models.onnx, table)["label"].tolist()
